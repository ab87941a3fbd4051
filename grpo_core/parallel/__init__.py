"""Where and how tensors are computed: torchrun data parallelism, FSDP2 sharding, the plan
that puts one of them behind one interface for the update step, policy weights in and out
(LoRA, HF names, safetensors), and the hardware behind `auto` dtypes."""
