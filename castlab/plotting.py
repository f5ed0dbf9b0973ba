"""Matplotlib set-up and axis labels shared by every castlab figure (``fit-law``, ``report``,
``curves``).

Figures are read at a glance: plain tick labels (100, 110; 16k, 1M), never powers of ten, which
matplotlib's log axes print by default (1.1x10^2) when an axis spans less than a decade. Layout is
matplotlib's constrained layout, which keeps titles, labels and legends placed "outside" inside the
saved canvas (``tight_layout`` with a hand-made margin clipped the one-panel report figure).
Model sizes are coloured along one sequential colormap in size order (``size_colors``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot(font_size: int = 10):
    """matplotlib.pyplot on the file-only Agg backend, with castlab's font sizes."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": font_size, "axes.titlesize": font_size + 1,
                         "figure.dpi": 110, "figure.constrained_layout.use": True})
    return plt


# one colour per method in every castlab figure (``report`` and ``curves``)
METHOD_COLORS = {"cast": "tab:red", "dense-kd": "tab:blue", "sr-ste": "tab:green",
                 "ast": "tab:purple", "dense": "black", "dense-kd-adam": "tab:cyan"}

# viridis from dark purple to green: its last fifth is yellow, unreadable on white
SIZE_CMAP, SIZE_CMAP_RANGE = "viridis", (0.0, 0.78)


def size_colors(count: int) -> list:
    """``count`` colours for model sizes listed smallest first: dark (small) to light green
    (large) along viridis, never its yellow end."""
    import matplotlib

    cmap = matplotlib.colormaps[SIZE_CMAP]
    lo, hi = SIZE_CMAP_RANGE
    return [cmap(lo + (hi - lo) * i / max(1, count - 1)) for i in range(count)]


def wrapped(text: str, width_in: float, font_size: float = 11) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``font_size`` points (a title
    wider than its figure is cut at the canvas edge)."""
    import textwrap

    chars = max(20, int(width_in * 72 / (0.55 * font_size)))
    return "\n".join(textwrap.wrap(text, chars))


def tokens_label(v: float, _pos=None) -> str:
    """16k, 131k, 1M, 2.5M: a token count as a reader says it."""
    if v >= 1e6:
        return f"{v / 1e6:.3g}M"
    if v >= 1e4:  # 16,384 -> 16k, 131,072 -> 131k: whole thousands read best on a log axis
        return f"{v / 1e3:.0f}k"
    if v >= 1e3:
        return f"{v / 1e3:.2g}k"
    return f"{v:.3g}"


def plain_label(v: float, _pos=None) -> str:
    """100, 110, 2.5: a number without an exponent."""
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


def plain_axis(axis, label=plain_label, log_base: float | None = None) -> None:
    """Plain labels on one axis (``ax.xaxis`` / ``ax.yaxis``). On a log axis the minor ticks are
    labelled too while the axis spans less than a decade (else no major tick may show at all)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    if log_base is not None:
        axis.set_major_locator(LogLocator(base=log_base))
    axis.set_major_formatter(FuncFormatter(label))
    if axis.get_scale() == "log":
        def minor(v: float, _pos=None) -> str:
            lo, hi = sorted(axis.get_view_interval())
            return label(v) if lo > 0 and np.log10(hi / lo) < 1 else ""

        axis.set_minor_formatter(FuncFormatter(minor))


def save(fig, path: Path, rect=(0, 0, 1, 1)) -> Path:
    """Lay out, write and close ``fig``; returns ``path``. Figures made under ``pyplot()`` use
    constrained layout; ``rect`` applies to the others (tight layout)."""
    if fig.get_layout_engine() is None:
        fig.tight_layout(rect=rect)
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
