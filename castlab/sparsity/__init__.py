"""Sparsity for castlab: N:M masks, AdamS (CAST), weight scaling, distillation, masked forward
(SR-STE / AST), one-shot pruners (magnitude, Wanda, SparseGPT), finalize. See CAST_SPEC.md.

Submodules are imported lazily by their users; this package only names them.
"""

__all__ = ["adams", "bench", "distill", "finalize", "masks", "oneshot", "scaling", "ste"]
