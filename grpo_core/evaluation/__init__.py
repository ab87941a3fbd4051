"""Evaluation metrics on (P, k) correctness: pass@1, pass@k, maj@k and breakdowns."""
