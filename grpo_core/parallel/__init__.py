"""Where and how tensors are computed: torchrun data parallelism, FSDP2 sharding, policy
weights in and out (LoRA, HF names, safetensors), and the hardware behind `auto` dtypes."""
