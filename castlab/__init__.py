"""castlab: scaling laws and experiment analysis for CAST 2:4 sparse training."""

__version__ = "0.1.0"
