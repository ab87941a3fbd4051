"""Policy weights in and out: optional LoRA, HF-named tensors for the sampler, plain
safetensors checkpoints.

With LoRA on, the sampler (vLLM `load_weights`) and saved checkpoints get MERGED weights
under the base model's HF names (`W + scale * B @ A`, computed on the fly), so neither needs
to know about adapters, and the policy's own base weights are never merged/unmerged in place
(repeated merge-unmerge drifts by rounding).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def apply_lora(model: nn.Module, r: int, alpha: int, dropout: float,
               target_modules: Sequence[str]) -> nn.Module:
    """Wrap a causal LM with fresh LoRA adapters (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def hf_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(HF parameter name, detached tensor) for every weight, as `from_pretrained` names them."""
    if not is_peft(model):
        from grpo_core.parallel.sharding import full

        gathered: dict[int, Tensor] = {}  # tied weights (one parameter, two names) stay one tensor
        for name, tensor in model.state_dict(keep_vars=True).items():
            if id(tensor) not in gathered:
                gathered[id(tensor)] = full(tensor.detach())  # FSDP2: gathered whole (collective)
            yield name, gathered[id(tensor)]
        return
    base = model.get_base_model()
    modules = dict(base.named_modules())
    adapter = model.active_adapter
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        if ".base_layer." not in name:
            yield name, tensor.detach()
            continue
        owner, _, leaf = name.rpartition(".base_layer.")
        if leaf == "weight":
            with torch.no_grad():
                tensor = tensor + modules[owner].get_delta_weight(adapter).to(tensor.dtype)
        yield f"{owner}.{leaf}", tensor.detach()


@contextlib.contextmanager
def _savable(model: nn.Module):
    """A GGUF-loaded model refuses `save_pretrained` (it carries a dequantizing quantizer);
    its weights are plain float tensors already, so hide the quantizer while saving."""
    quantizer = getattr(model, "hf_quantizer", None)
    qconfig = getattr(model.config, "quantization_config", None)
    if quantizer is not None:
        model.hf_quantizer = None
    if qconfig is not None:
        del model.config.quantization_config
    try:
        yield model
    finally:
        if quantizer is not None:
            model.hf_quantizer = quantizer
        if qconfig is not None:
            model.config.quantization_config = qconfig


def save_hf_dir(model: nn.Module, out_dir: str | Path, tokenizer=None,
                state: dict[str, Tensor] | None = None) -> Path:
    """Write a plain safetensors HF directory (merged if LoRA; `state` = `hf_weights(model)`
    already gathered). Refuses non-finite weights, and writes to a sibling temp dir first so a
    crash never leaves a half-written checkpoint."""
    out = Path(out_dir)
    state = dict(hf_weights(model)) if state is None else state
    bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise RuntimeError(f"refusing to save {out}: non-finite values in {bad[0]} "
                           f"({len(bad)} tensors)")
    base = model.get_base_model() if is_peft(model) else model
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _savable(base):
        base.save_pretrained(tmp, state_dict=state)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def store_linears_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the weights and biases of `model`'s nn.Linear layers to `dtype`, in place, except
    a layer whose weight another module also holds (a tied LM head is the input embedding,
    which autocast leaves in float32). -> number of parameters cast. Use it only on a frozen
    model that runs under autocast to `dtype`: autocast casts exactly these tensors, with the
    same rounding, on every call, so outputs do not change."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    cast = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and owners[id(module.weight)] == 1:
            module.to(dtype)
            cast += sum(p.numel() for p in module.parameters(recurse=False))
    return cast
