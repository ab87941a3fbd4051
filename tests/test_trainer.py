"""The update step on a real (tiny, random) Llama: exact gradient accumulation, REINFORCE
equivalence, TIS, truncation masking, non-finite skipping, weight export, exact resume."""

from __future__ import annotations

import copy

import pytest
import torch

from grpo_core.algorithm.advantages import group_advantages
from grpo_core.algorithm.batch import build_batch
from grpo_core.config import AlgorithmConfig, TrainConfig
from grpo_core.algorithm.logprobs import naive_token_logprobs, token_logprobs
from grpo_core.algorithm.losses import AGGREGATIONS
from grpo_core.algorithm.optim import UpdateHyper, lr_factor, make_optimizer
from grpo_core.algorithm.learner import Learner

P, G = 2, 4


def make_rows(seed=0):
    """P*G rows of random prompts (2-6 tokens) and completions (1-7 tokens), advantages."""
    g = torch.Generator().manual_seed(seed)
    prompts, completions = [], []
    for i in range(P * G):
        prompt = [1] + torch.randint(3, 256, (int(torch.randint(1, 6, (1,), generator=g)),),
                                     generator=g).tolist()
        prompts.append(prompt)
        n = int(torch.randint(1, 8, (1,), generator=g))
        completions.append(torch.randint(3, 256, (n,), generator=g).tolist())
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.5, 1.0, 0.0]])  # (P, G)
    return prompts, completions, group_advantages(rewards).reshape(-1)


def make_batch(seed=0, truncated=None, sampler_shift=None):
    prompts, completions, adv = make_rows(seed)
    sampler = None if sampler_shift is None else [[-7.0] * len(c) for c in completions]
    return build_batch(prompts, completions, adv, pad_id=0, truncated=truncated,
                       sampler_logprobs=sampler)


def hyper(**kw):
    # temperature 1: the references below use the plain softmax (not the product's default)
    base = dict(autocast="float32", learning_rate=1e-3, max_grad_norm=1e9, micro_batch_size=8,
                temperature=1.0)
    base.update(kw)
    return UpdateHyper(**base)


def grads_after_update(model, h, batch):
    learner = Learner(copy.deepcopy(model), h)
    metrics = learner.update(batch)
    return [p.grad.clone() for p in learner.model.parameters()], metrics


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_microbatches_equal_full_batch_gradient(tiny_llama, mode, level):
    batch = make_batch()
    # one row per forward with the shared-prompt path (every row has its own prompt), which
    # would make both sides one pass per row: off, the micro-batch size is what differs
    kw = dict(loss_aggregation=mode, ratio_level=level, beta=0.05, max_completion_len=10,
              shared_prompt_forward=False)
    full, _ = grads_after_update(tiny_llama, hyper(micro_batch_size=8, **kw), batch)
    micro, m = grads_after_update(tiny_llama, hyper(micro_batch_size=3, **kw), batch)
    for a, b in zip(full, micro):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)  # reference == policy before the step


def test_mu1_equals_reinforce_with_group_baseline(tiny_llama):
    batch = make_batch()
    got, m = grads_after_update(tiny_llama, hyper(loss_aggregation="seq_mean_token_mean",
                                                  micro_batch_size=3), batch)
    assert m["ratio_min"] == m["ratio_max"] == 1.0 and m["clip_frac_high"] == 0.0
    # REINFORCE: -1/B sum_i A_i * 1/|o_i| sum_t grad log pi(o_it), A = group-normalised reward
    model = copy.deepcopy(tiny_llama)
    logp = naive_token_logprobs(model, batch.input_ids, batch.attention_mask,
                                batch.completion_mask)
    lengths = batch.completion_mask.sum(1)
    (-(batch.advantages * logp.sum(1) / lengths).mean()).backward()
    for a, p in zip(got, model.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-5)


def test_zero_advantage_rows_skip_the_model_but_count_in_the_normaliser(tiny_llama):
    prompts, completions, _ = make_rows()
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])  # group 2: no signal
    batch = build_batch(prompts, completions, group_advantages(rewards).reshape(-1), pad_id=0)
    learner = Learner(copy.deepcopy(tiny_llama), hyper(loss_aggregation="token_mean",
                                                       micro_batch_size=3))
    rows_seen = []
    learner.model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: rows_seen.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True)
    learner.update(batch)
    assert sum(rows_seen) == G  # only the first group went through the model
    # the full-batch token-mean REINFORCE gradient, every row's tokens in the denominator
    model = copy.deepcopy(tiny_llama)
    logp = naive_token_logprobs(model, batch.input_ids, batch.attention_mask,
                                batch.completion_mask)
    (-(batch.advantages * logp.sum(1)).sum() / batch.completion_mask.sum()).backward()
    for p, ref in zip(learner.model.parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, ref.grad, atol=1e-6, rtol=1e-5)


def test_no_trained_rows_still_takes_the_zero_gradient_step(tiny_llama):
    prompts, completions, _ = make_rows()
    batch = build_batch(prompts, completions, torch.zeros(P * G), pad_id=0)
    learner = Learner(copy.deepcopy(tiny_llama), hyper(weight_decay=0.1))
    before = [p.detach().clone() for p in learner.model.parameters()]
    metrics = learner.update(batch)
    assert all(float(p.grad.abs().max()) == 0 for p in learner.model.parameters())
    # AdamW's decoupled weight decay still applied: the step was taken, as a computed zero
    # gradient would have done
    assert any(not torch.equal(a, p) for a, p in zip(before, learner.model.parameters()))
    assert metrics["optimizer_steps"] == 1 and metrics["entropy"] != metrics["entropy"]  # NaN


def test_mu2_second_epoch_uses_frozen_old_logp(tiny_llama):
    learner = Learner(copy.deepcopy(tiny_llama), hyper(mu=3, learning_rate=3e-2))
    m = learner.update(make_batch())
    assert m["optimizer_steps"] == 3
    assert m["ratio_max"] > 1.0 and m["ratio_min"] < 1.0  # later epochs moved off pi_old


def test_tis_weight_scales_the_gradient(tiny_llama):
    # the sampler reports -7 per token, the random model gives about -4.2 to -5.1, so
    # exp(old - sampler) > 2 everywhere and the cap 2 binds: gradient doubles exactly
    batch = make_batch(sampler_shift=True)
    plain, _ = grads_after_update(tiny_llama, hyper(), batch)
    with_tis, _ = grads_after_update(tiny_llama, hyper(tis_cap=2.0), batch)
    logp = naive_token_logprobs(tiny_llama, batch.input_ids, batch.attention_mask,
                                batch.completion_mask)
    assert ((logp - batch.sampler_logp)[batch.completion_mask > 0] > 0.7).all()  # e^0.7 > 2
    for a, b in zip(plain, with_tis):
        torch.testing.assert_close(b, 2 * a, atol=1e-6, rtol=1e-5)


def test_mask_truncated_equals_dropping_the_rows(tiny_llama):
    drop = [False, True, False, False, True, False, False, False]
    batch = make_batch(truncated=drop)
    masked, m = grads_after_update(tiny_llama, hyper(mask_truncated=True), batch)
    keep = torch.tensor([not d for d in drop])
    prompts, completions, adv = make_rows()
    small = build_batch([p for p, d in zip(prompts, drop) if not d],
                        [c for c, d in zip(completions, drop) if not d], adv[keep], pad_id=0)
    expected, m2 = grads_after_update(tiny_llama, hyper(), small)
    assert m["tokens"] == m2["tokens"]
    for a, b in zip(masked, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_non_finite_loss_skips_the_step(tiny_llama):
    batch = make_batch()
    bad = type(batch)(**{**vars(batch), "advantages": torch.full((P * G,), float("nan"))})
    learner = Learner(copy.deepcopy(tiny_llama), hyper())
    before = [p.detach().clone() for p in learner.model.parameters()]
    m = learner.update(bad)
    assert m["skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, learner.model.parameters()))
    assert learner.update(batch)["skipped"] == 0.0  # the next good batch trains normally


def test_reference_skipped_at_beta0_and_refreshed(tiny_llama):
    assert Learner(copy.deepcopy(tiny_llama), hyper()).reference is None
    learner = Learner(copy.deepcopy(tiny_llama), hyper(beta=0.1, ref_refresh_every=2,
                                                       learning_rate=1e-2))
    batch = make_batch()
    learner.update(batch)
    assert learner.update(batch)["kl"] > 0  # policy moved away from the initial reference
    # iteration 2 refreshed the reference: KL is back to zero before the next step
    assert learner.update(batch)["kl"] == pytest.approx(0.0, abs=1e-7)


def test_exact_resume(tiny_llama, tmp_path):
    h = hyper(lr_schedule="cosine", warmup_iterations=1, iterations=4, mu=2, beta=0.05,
              ref_refresh_every=2)
    straight = Learner(copy.deepcopy(tiny_llama), h)
    for seed in range(3):
        straight.update(make_batch(seed))
    first = Learner(copy.deepcopy(tiny_llama), h)
    for seed in range(2):
        first.update(make_batch(seed))
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = Learner(copy.deepcopy(tiny_llama), h)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    m = resumed.update(make_batch(2))
    assert m["lr"] == pytest.approx(1e-3 * lr_factor("cosine", 1, 4)(2))
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_sync_weights_and_save_pretrained(tiny_llama, tmp_path):
    from transformers import LlamaForCausalLM

    learner = Learner(copy.deepcopy(tiny_llama), hyper())
    learner.update(make_batch())
    names = dict(learner.sync_weights())
    assert set(names) >= {n for n, _ in learner.model.named_parameters()}
    out = learner.save_pretrained(tmp_path / "ckpt")
    assert (out / "model.safetensors").is_file() and not (tmp_path / "ckpt.tmp").exists()
    loaded = LlamaForCausalLM.from_pretrained(out)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, names[name]), name


def test_lora_merged_weights(tiny_llama, tmp_path):
    from transformers import LlamaForCausalLM

    learner = Learner(copy.deepcopy(tiny_llama), hyper(lora_enabled=True, lora_r=4,
                                                       learning_rate=1e-2, beta=0.1))
    trainable = [n for n, p in learner.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = make_batch()
    learner.update(batch)
    assert learner.update(batch)["kl"] > 0  # reference = adapters disabled
    names = dict(learner.sync_weights())
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert not any("lora" in n or "base_layer" in n for n in names)
    loaded = LlamaForCausalLM.from_pretrained(learner.save_pretrained(tmp_path / "merged"))
    with torch.no_grad():
        want = learner.model(batch.input_ids, attention_mask=batch.attention_mask).logits
        got = loaded(batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.equal(names["model.layers.0.self_attn.q_proj.weight"],
                           tiny_llama.state_dict()["model.layers.0.self_attn.q_proj.weight"])


def test_hyper_from_config_sections():
    algo = AlgorithmConfig(beta=0.04, clip_high=0.28).model_dump()
    train = TrainConfig().model_dump()
    h = UpdateHyper.from_sections(algo, train, temperature=0.9, max_completion_len=200)
    assert (h.beta, h.clip_high, h.temperature, h.max_completion_len) == (0.04, 0.28, 0.9, 200)
    assert h.micro_batch_size == train["micro_batch_size"] and h.lora_enabled is False
    assert h.lora_target_modules == tuple(train["lora"]["target_modules"])


def test_hyper_defaults_are_the_schema_defaults():
    assert UpdateHyper() == UpdateHyper.from_sections(AlgorithmConfig().model_dump(),
                                                      TrainConfig().model_dump())


def test_lora_reference_refuses_refresh(tiny_llama):
    with pytest.raises(ValueError, match="ref_refresh_every needs LoRA off"):
        Learner(copy.deepcopy(tiny_llama), hyper(lora_enabled=True, beta=0.1, ref_refresh_every=2))


def test_plan_is_chosen_by_world_size_and_data_parallel():
    from grpo_core.parallel.plan import Replicated, Sharded, SingleProcess, make_plan

    cpu = torch.device("cpu")
    assert type(make_plan("fsdp2", 1, cpu, lora=True)) is SingleProcess
    assert type(make_plan("replicate", 2, cpu)) is Replicated
    assert type(make_plan("fsdp2", 2, cpu)) is Sharded
    with pytest.raises(ValueError, match="with LoRA is not supported"):
        make_plan("fsdp2", 2, cpu, lora=True)
    with pytest.raises(ValueError, match="unknown data_parallel"):
        make_plan("ddp", 1, cpu)


def test_lr_schedule_warmup_then_decay():
    f = lr_factor("linear", warmup=2, total=6)
    assert [round(f(i), 4) for i in range(7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    c = lr_factor("cosine", warmup=0, total=4)
    assert c(0) == 1.0 and c(2) == pytest.approx(0.5) and c(4) == pytest.approx(0.0)


def test_fused_adamw_steps_as_the_default_one():
    """Plain tensors get AdamW's fused kernel, and three of its steps (weight decay, warm-up
    schedule) move the weights as PyTorch's default implementation does."""
    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
    h = hyper(weight_decay=0.1, warmup_iterations=2)
    fused = [torch.nn.Parameter(p.clone()) for p in start]
    plain = [torch.nn.Parameter(p.clone()) for p in start]
    opt, sched = make_optimizer(fused, h)
    ref = torch.optim.AdamW(plain, lr=h.learning_rate, betas=h.adam_betas,
                            weight_decay=h.weight_decay)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(
        ref, lr_factor(h.lr_schedule, h.warmup_iterations, h.iterations))
    assert opt.defaults["fused"] and not ref.defaults["fused"]
    for step in grads:
        for o, s, params in ((opt, sched, fused), (ref, ref_sched, plain)):
            for p, g in zip(params, step):
                p.grad = g.clone()
            o.step()
            s.step()
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not torch.equal(fused[0], start[0])


def test_save_refuses_non_finite_weights(tiny_llama, tmp_path):
    learner = Learner(copy.deepcopy(tiny_llama), hyper())
    with torch.no_grad():
        next(learner.model.parameters())[0, 0] = float("inf")
    with pytest.raises(RuntimeError, match="non-finite"):
        learner.save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.tmp").exists()


def test_skip_iteration_advances_schedule(tiny_llama):
    learner = Learner(copy.deepcopy(tiny_llama), hyper(lr_schedule="linear", iterations=4))
    learner.skip_iteration()
    assert learner.iteration == 1
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.75)


def test_gradient_checkpointing_gives_the_same_gradient(tiny_llama):
    batch = make_batch()
    kw = dict(micro_batch_size=3, shared_prompt_forward=False)  # real 3-row micro-batches
    plain, _ = grads_after_update(tiny_llama, hyper(**kw), batch)
    ckpt, _ = grads_after_update(tiny_llama, hyper(gradient_checkpointing=True, **kw), batch)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("beta,checkpointing", [(0.0, False), (0.05, False), (0.05, True)])
def test_shared_prompt_forward_gives_the_same_update(tiny_llama, beta, checkpointing):
    _, completions, adv = make_rows()
    prompts = [[1, 5, 9, 33, 7]] * G + [[1, 40, 41]] * G  # two groups, one prompt each
    batch = build_batch(prompts, completions, adv, pad_id=0)
    kw = dict(beta=beta, mu=2, micro_batch_size=3, gradient_checkpointing=checkpointing)
    plain, _ = grads_after_update(tiny_llama, hyper(shared_prompt_forward=False, **kw), batch)
    shared, _ = grads_after_update(tiny_llama, hyper(shared_prompt_forward=True, **kw), batch)
    assert Learner(copy.deepcopy(tiny_llama), hyper(shared_prompt_forward=True, **kw)).share_prompt
    for a, b in zip(plain, shared):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_bf16_reference_is_bit_identical_and_smaller(tiny_llama_factory, tied):
    """Under bf16 autocast the frozen reference keeps its linear layers in bf16; autocast made
    the same casts on every call, so its log-probs do not change by a single bit."""
    model = tiny_llama_factory(tie_word_embeddings=tied)
    batch = make_batch()
    fp32 = Learner(copy.deepcopy(model), hyper(beta=0.1, autocast="float32"))
    bf16 = Learner(copy.deepcopy(model), hyper(beta=0.1, autocast="bfloat16"))
    assert all(p.dtype == torch.float32 for p in fp32.reference.model.parameters())
    dtypes = {n: p.dtype for n, p in bf16.reference.model.named_parameters()}
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == torch.bfloat16
    assert dtypes["model.layers.1.mlp.down_proj.weight"] == torch.bfloat16
    assert dtypes["model.embed_tokens.weight"] == torch.float32  # autocast never casts it
    assert dtypes["model.norm.weight"] == torch.float32
    assert ("lm_head.weight" not in dtypes) == tied  # tied: the embedding's own tensor
    if not tied:
        assert dtypes["lm_head.weight"] == torch.bfloat16

    def nbytes(m):
        return sum(p.numel() * p.element_size() for p in m.parameters())
    assert nbytes(bf16.reference.model) < 0.8 * nbytes(fp32.reference.model)
    mask = batch.completion_mask.float()
    args = (batch.input_ids, batch.attention_mask, mask)
    with torch.no_grad(), bf16.autocast():
        ours = bf16.reference.logprobs(batch, mask, temperature=bf16.hyper.temperature,
                                       share_prompt=bf16.share_prompt)
        expected = token_logprobs(fp32.reference.model, *args, share_prompt=bf16.share_prompt)
    assert torch.equal(ours, expected)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # the policy: fp32
