"""The policy's weights as the engines want them: full tensors under Hugging Face names.

A plain transformers model is just `named_parameters()`. A peft LoRA wrapper has other names
(`base_model.model.<name>.base_layer.weight`, `lora_A`/`lora_B`) and its weights are
`W + B A * scaling`; `policy_weights` yields the merged tensors under the base model's names
without merging the adapter into the model (training goes on with it unmerged).
"""

from __future__ import annotations

from typing import Iterator

from torch import Tensor, nn


def policy_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(HF name, detached tensor) for every weight of `model`, LoRA deltas merged."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    lora = {name: m for name, m in base.named_modules()
            if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")}
    for name, param in base.named_parameters():
        if ".lora_" in name:
            continue
        if ".base_layer." in name:
            owner, _, leaf = name.partition(".base_layer.")
            layer = lora[owner]
            if leaf == "weight" and not layer.merged:
                param = param + sum(layer.get_delta_weight(a) for a in layer.active_adapters)
            name = f"{owner}.{leaf}"
        yield name, param.detach()
