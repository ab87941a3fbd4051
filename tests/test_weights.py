"""`hf_weights` (what the engines receive): HF names and merged LoRA deltas, on a real tiny
Llama and real peft."""

from __future__ import annotations

import copy

import torch

from grpo_core.parallel.weights import hf_weights


def test_plain_model_is_its_state_dict(tiny_llama):
    """Tied weights appear under both names (lm_head.weight too), as `from_pretrained` has them."""
    got = dict(hf_weights(tiny_llama))
    want = tiny_llama.state_dict()
    assert "lm_head.weight" in got
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) and not got[k].requires_grad for k in got)


def test_lora_weights_are_merged_under_base_names(tiny_llama):
    from peft import LoraConfig, get_peft_model

    names = set(tiny_llama.state_dict())
    model = get_peft_model(copy.deepcopy(tiny_llama),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():  # lora_B starts at zero: make the delta real
        for k, p in model.named_parameters():
            if "lora_B" in k:
                p.normal_(0, 0.5)
    got = dict(hf_weights(model))
    assert got.keys() == names
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    for k in names:
        assert torch.allclose(got[k], merged[k], atol=1e-6), k
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(got[q], tiny_llama.state_dict()[q])  # delta applied
