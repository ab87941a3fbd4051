"""`policy_weights`: HF names and merged LoRA deltas, on a real tiny Llama and real peft."""

from __future__ import annotations

import copy

import torch

from grpo_core.rollout.weights import policy_weights


def test_plain_model_is_its_named_parameters(tiny_llama):
    got = dict(policy_weights(tiny_llama))
    want = dict(tiny_llama.named_parameters())
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) and not got[k].requires_grad for k in got)


def test_lora_weights_are_merged_under_base_names(tiny_llama):
    from peft import LoraConfig, get_peft_model

    names = {k for k, _ in tiny_llama.named_parameters()}
    model = get_peft_model(copy.deepcopy(tiny_llama),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():  # lora_B starts at zero: make the delta real
        for k, p in model.named_parameters():
            if "lora_B" in k:
                p.normal_(0, 0.5)
    got = dict(policy_weights(model))
    assert got.keys() == names
    merged = dict(copy.deepcopy(model).merge_and_unload().named_parameters())
    for k in names:
        assert torch.allclose(got[k], merged[k], atol=1e-6), k
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(got[q], dict(tiny_llama.named_parameters())[q])  # delta applied
