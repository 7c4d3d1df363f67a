"""Evaluation: batched generation and beam search on our KV cache (`generate`), trie-constrained beams
(`constrained`), embedding + FAISS grounding of generated text (`matching`), the paper's metrics (`metrics`).
The command line is `evaluate.py` at the repository root; the protocol is ../shared/spec/evaluation.md.
"""
