"""Attention: a plain PyTorch reference (`reference.py`) and our Triton flash attention (`flash_alibi.py`).

The package is not called `kernels`: transformers 5 requires Hugging Face's `kernels` distribution and imports it by
that name, which a top-level `kernels/` in the repository root would shadow (breaking transformers and
sentence-transformers, hence evaluate.py's grounding)."""
