"""Rollout engines on the real bundled SmolLM2-135M-Instruct: vLLM (CPU build) and transformers.

One float32 vLLM engine and one HF engine serve the whole module (engine start ~12 s). The
weight-sync test perturbs the weights and restores them before it ends.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from grpo_core.errors import UserError
from grpo_core.rollout import (SamplingSettings, encode_prompts, kv_bytes_per_token,
                               kv_cache_tokens, make_engine)
from grpo_core.rollout.records import COLUMNS, to_frame, write_records
from grpo_core.parallel.weights import hf_weights

pytestmark = pytest.mark.slow

QUESTIONS = ["What is 2 + 3?", "Name one primary color.",
             "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
             "clips in May. How many clips did Natalia sell altogether in April and May?"]
EOS = 2  # <|im_end|> of SmolLM2-Instruct
BATCH = (3, 4, 512, 48)  # the engine's KV cache is sized for 3 prompts x 4 samples x 48 tokens
CONTEXT = 512 + 64


@pytest.fixture(scope="module")
def engine(sft_dir):
    e = make_engine("vllm", sft_dir, dtype="float32", seed=0, cpu_kv_cache_gib="auto",
                    max_model_len=CONTEXT, kv_cache_tokens=kv_cache_tokens(*BATCH),
                    max_prompt_tokens=512, overlong_prompts="skip")
    yield e
    e.close()


@pytest.fixture(scope="module")
def hf_engine(sft_dir):
    e = make_engine("hf", sft_dir, dtype="float32", seed=0)
    yield e
    e.close()


@pytest.fixture(scope="module")
def prompts(engine):
    tok = engine.tokenizer
    return [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                    add_generation_prompt=True) for q in QUESTIONS]


@pytest.fixture(scope="module")
def trainer(hf_engine):
    """The 'trainer side': a plain transformers float32 model (the HF engine's own model,
    loaded once; the weight-sync test restores it)."""
    return hf_engine.model


def trainer_logprobs(model, prompt_ids, completion_ids, temperature=1.0) -> torch.Tensor:
    """log p(completion token | prefix) under `model`, logits / temperature: (T,)."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1: -1].float() / temperature  # (T, V)
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion_ids)[:, None])[:, 0]


def vllm_scores(engine, prompt_ids, completion_ids) -> torch.Tensor:
    """vLLM's log-probs of a FIXED completion (prompt log-probs of prompt + completion): (T,)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    out = engine.llm.generate([TokensPrompt(prompt_token_ids=list(prompt_ids) + list(completion_ids))],
                              SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    steps = out.prompt_logprobs[len(prompt_ids):]
    return torch.tensor([s[t].logprob for s, t in zip(steps, completion_ids)])


def test_vllm_groups_have_g_samples_finish_reasons_and_logprobs(engine, prompts):
    result = engine.generate(prompts, 4, SamplingSettings(temperature=1.0, max_new_tokens=16))
    assert [g.prompt_index for g in result.groups] == [0, 1, 2] and not result.skipped
    for g, text in zip(result.groups, prompts):
        assert list(g.prompt_ids) == engine.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(g.completions) == 4
        for c in g.completions:
            assert 1 <= len(c.token_ids) <= 16 and len(c.logprobs) == len(c.token_ids)
            assert all(math.isfinite(x) and x <= 0 for x in c.logprobs)
            ended = c.token_ids[-1] == EOS
            assert c.finish_reason == ("stop" if ended else "length")
            assert ended or len(c.token_ids) == 16
    m = result.metrics()
    assert m["rollout/completions"] == 12 and m["rollout/tokens"] > 0


def test_auto_kv_cache_is_sized_for_one_rollout_batch(engine, sft_dir):
    config = json.loads((Path(sft_dir) / "config.json").read_text())
    per_token = 2 * 30 * 3 * 64 * 4  # SmolLM2-135M: 30 layers, 3 KV heads of 64, float32
    assert kv_bytes_per_token(config, 4) == per_token
    assert kv_cache_tokens(*BATCH) == 3 * 512 + 3 * 4 * (48 + 256)
    cache = engine.llm.llm_engine.vllm_config.cache_config
    assert cache.kv_cache_memory_bytes == kv_cache_tokens(*BATCH) * per_token
    assert engine.context_len == CONTEXT


def test_the_samples_of_a_prompt_share_its_full_kv_blocks(engine, prompts):
    """With 32-token blocks a group prefills its prompt once up to the last full block: every
    further sample recomputes less than one block. vLLM's CPU default of 128 would have
    prefilled this prompt (well under 128 tokens) once per sample."""
    assert engine.llm.llm_engine.vllm_config.cache_config.block_size == 32
    model = engine.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
    processed = []  # tokens each forward pass computes

    def count(_, args, kwargs):
        processed.append(kwargs.get("input_ids", args[0] if args else None).shape[0])

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    g, prompt = 4, prompts[2]
    try:
        engine.llm.reset_prefix_cache()
        result = engine.generate([prompt], g, SamplingSettings(max_new_tokens=1))
    finally:
        hook.remove()
    length = len(result.groups[0].prompt_ids)
    assert 64 < length < 128
    assert length <= sum(processed) <= length + (g - 1) * 32


def test_vllm_stop_strings_end_completions(engine, prompts):
    result = engine.generate(prompts, 4, SamplingSettings(temperature=1.0, max_new_tokens=48,
                                                          stop=(" ",)))
    done = [c for g in result.groups for c in g.completions]
    assert all(c.finish_reason == "stop" and " " not in c.text for c in done)
    assert max(len(c.token_ids) for c in done) < 48


def test_same_seed_same_rollouts_other_seed_differs(engine, prompts):
    def run(seed):
        r = engine.generate(prompts[:2], 3, SamplingSettings(max_new_tokens=8, seed=seed))
        return [c.token_ids for g in r.groups for c in g.completions]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_overlong_prompts_are_skipped_or_truncated_and_counted(engine, prompts):
    long = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "count: " + " ".join(map(str, range(200)))}],
        tokenize=False, add_generation_prompt=True)
    enc = encode_prompts(engine.tokenizer, [prompts[0], long], 100, "skip")
    assert [i for i, _ in enc.kept] == [0] and enc.skipped == [1]
    enc = encode_prompts(engine.tokenizer, [prompts[0], long], 100, "truncate")
    full = engine.tokenizer(long, add_special_tokens=False)["input_ids"]
    assert enc.truncated == [1] and enc.kept[1][1] == full[-100:]  # the end is kept
    engine.max_prompt_tokens = 100
    try:
        result = engine.generate([prompts[0], long], 2, SamplingSettings(max_new_tokens=4))
    finally:
        engine.max_prompt_tokens = 512
    assert result.skipped == (1,) and [g.prompt_index for g in result.groups] == [0]
    assert result.metrics()["rollout/skipped_prompts"] == 1


def test_hf_and_vllm_agree_on_greedy_output(engine, hf_engine, prompts):
    greedy = SamplingSettings(temperature=0, max_new_tokens=24)
    ours, ref = engine.generate(prompts, 2, greedy), hf_engine.generate(prompts, 2, greedy)
    for a, b in zip(ours.groups, ref.groups):
        assert a.prompt_ids == b.prompt_ids
        assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
        assert a.completions[0].text == b.completions[0].text
        assert a.completions[0].finish_reason == b.completions[0].finish_reason
        # fp32 on both sides: per-token log-probs agree to accumulated rounding
        diff = torch.tensor(a.completions[0].logprobs) - torch.tensor(b.completions[0].logprobs)
        assert diff.abs().max() < 1e-3


def test_hf_engine_sampler_logprobs_match_the_trainer(hf_engine, trainer, prompts):
    result = hf_engine.generate(prompts[:2], 3, SamplingSettings(temperature=0.7,
                                                                 max_new_tokens=16))
    for g in result.groups:
        assert len(g.completions) == 3
        for c in g.completions:
            want = trainer_logprobs(trainer, g.prompt_ids, c.token_ids, temperature=0.7)
            assert (torch.tensor(c.logprobs) - want).abs().mean() < 1e-3


def test_records_frame_and_parquet(engine, prompts, tmp_path):
    result = engine.generate(prompts, 2, SamplingSettings(max_new_tokens=8))
    frame = to_frame(1, ["q0", "q1", "q2"], prompts, result)
    assert tuple(frame.columns) == COLUMNS and len(frame) == 6
    assert list(frame.sample_index) == [0, 1] * 3 and list(frame.prompt_id) == ["q0"] * 2 + \
        ["q1"] * 2 + ["q2"] * 2
    assert frame.reward.isna().all() and frame.advantage.isna().all()
    first = result.groups[0].completions[0]
    assert frame.completion_tokens[0] == len(first.token_ids)
    assert frame.logprob_sum[0] == pytest.approx(sum(first.logprobs))
    path = write_records(frame, tmp_path / "rollouts", 1)
    assert path.name == "iter_00001.parquet" and not list(path.parent.glob("*.tmp"))
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)


def test_weight_sync_is_real(engine, trainer, prompts):
    """Push a large update: vLLM's log-probs of a fixed completion must follow the trainer.

    Tolerance 1e-3 (mean |diff| in nats) for float32 on both sides: rounding (eps 1.2e-7)
    accumulated over 30 layers and different kernels gives ~1e-5..1e-4; the update moves the
    log-probs by far more than 0.1, so the two regimes cannot be confused."""
    first = engine.generate(prompts[:1], 1, SamplingSettings(temperature=0, max_new_tokens=24))
    prompt_ids, fixed = first.groups[0].prompt_ids, first.groups[0].completions[0].token_ids
    original = {k: v.clone() for k, v in trainer.state_dict().items()}
    before = vllm_scores(engine, prompt_ids, fixed)
    assert (before - trainer_logprobs(trainer, prompt_ids, fixed)).abs().mean() < 1e-3

    torch.manual_seed(0)
    with torch.no_grad():  # the "large update": noise at 30% of each tensor's scale
        for p in trainer.parameters():
            p.add_(torch.randn_like(p) * p.std().clamp(min=1e-3) * 0.3)
    want = trainer_logprobs(trainer, prompt_ids, fixed)
    stale = vllm_scores(engine, prompt_ids, fixed)
    assert (stale - want).abs().mean() > 0.1  # without the push: the old policy

    seconds = engine.update_weights(hf_weights(trainer))
    synced = vllm_scores(engine, prompt_ids, fixed)
    assert 0 < seconds < 30
    assert (synced - want).abs().mean() < 1e-3
    # and the sampler's own log-probs (temperature 0.7) are of the new policy too
    sampled = engine.generate(prompts[:1], 2, SamplingSettings(temperature=0.7, max_new_tokens=12))
    for c in sampled.groups[0].completions:
        recomputed = trainer_logprobs(trainer, prompt_ids, c.token_ids, temperature=0.7)
        assert (torch.tensor(c.logprobs) - recomputed).abs().mean() < 1e-3

    trainer.load_state_dict(original)
    engine.update_weights(hf_weights(trainer))
    assert (vllm_scores(engine, prompt_ids, fixed) - before).abs().max() < 1e-4


def test_unknown_engine_is_a_user_error(sft_dir):
    with pytest.raises(UserError, match="unknown engine"):
        make_engine("tgi", sft_dir)


def test_evaluation_with_every_prompt_skipped_is_an_error(engine, prompts):
    from grpo_core.evaluation.metrics import evaluate_frame

    frame = pd.DataFrame({"answer": ["5"], "source": ["gsm8k"]})
    engine.max_prompt_tokens = 8  # shorter than any chat-templated prompt
    try:
        with pytest.raises(UserError, match=r"all 1 prompts are longer than the prompt limit "
                                            r"\(rollout.max_prompt_tokens = 8\)"):
            evaluate_frame(engine, prompts[:1], frame, max_new_tokens=4, samples=1,
                           temperature=1.0)
    finally:
        engine.max_prompt_tokens = 512
