"""Model directories on disk: the SFT input checkpoint (`sft`) and the resume state of a
training run (`resume`). Saved policy snapshots are plain HF directories (`parallel.weights`)."""
