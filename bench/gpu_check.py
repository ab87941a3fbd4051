"""GPU check: the update step's numerics and speed, and the HF engine's weight sync, on CUDA.

    python bench/gpu_check.py [--out PATH] [--device cuda|cpu] [--tiny] [--budget-s S]
                              [--only CHECK ...]

One prepared script for a CUDA machine that has torch, transformers and pydantic (the
config schema behind `UpdateHyper`) and this checkout: no vLLM, Prefect, MLflow or DVC, no
download (the models are random Llamas built from a `LlamaConfig`, the tokenizer a word-level
one built on the spot). Default model ~100M parameters (12 layers x 768, vocabulary 16384,
untied head); `--tiny`: 2 layers x 64, vocabulary 512, for a CPU smoke run (`--device cpu`).

1. logprobs: `token_logprobs` (chunked LM head) against `naive_token_logprobs` (full
   log_softmax, then gather), same model and batch, under bfloat16 autocast (the trainer's
   setting on a GPU) and in float32: max |difference| over the completion tokens.
2. microbatch: `Learner.update`'s gradient with micro-batches of 5 rows against one pass
   over the whole batch, for every loss aggregation x token/sequence ratio (beta > 0, so the
   reference path runs too) in float32, the default aggregation under bfloat16 autocast, and
   groups of 4 rows sharing a prompt with the shared-prompt forward on: max over parameters
   of |g_micro - g_full| / |g_full|, and the same over all parameters at once.
3. throughput: one `Learner.update` (bfloat16 autocast over float32 weights, no gradient
   checkpointing, mu 1, beta 0) on a fixed batch shape: tokens/s and TFLOP/s counted as
   6 x (matmul parameters) x (real tokens), a median of timed runs after a warm-up.
4. engine_sync: two iterations of HFEngine.generate -> Learner.update -> update_weights:
   the engine's weights must equal the learner's (cast to the engine's dtype) after each
   sync, and the sampler's log-probs must match the learner's on the sampled tokens.
Each check records its wall time and peak memory (CUDA: `torch.cuda.max_memory_allocated`
since the check began; CPU: the process's peak RSS so far). Checks are independent: an error
is recorded with its text and the next check runs. `--budget-s` (default 270) bounds the
whole run: a check still running when it is spent is stopped and recorded as failed, later
ones as skipped. Exit code 0 only if every check ran and passed. Results: docs/benchmarks.md.

The LM head is drawn with std 2/sqrt(hidden) (logits of std ~2) instead of the usual 0.02:
a freshly initialised model's next-token distribution is nearly uniform, and a misaligned
log-prob (wrong position, temperature or weights) would then go unnoticed.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import RESULTS, load_avg, median, save_json, self_peak_rss_gb, timed_runs  # noqa: E402
from grpo_core.env import apply_defaults  # noqa: E402

try:
    import torch
except ImportError as exc:  # one line, not a traceback: this runs on a freshly set-up machine
    sys.exit(f"gpu_check: {exc} (needs torch, transformers and pydantic)")

apply_defaults(offline=True)

HEAD_LOGIT_STD = 2.0
TEMPERATURE = 0.8  # the rollout default: the log-prob routines must divide by it
# ~100M parameters: 12 x (attention 1.57M + MLP 4.72M) + 2 x 16384 x 768 (embedding, head)
MODELS = {"default": dict(vocab_size=16384, hidden_size=768, intermediate_size=2048,
                          num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                          max_position_embeddings=2048),
          "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=512)}
# batch shapes (bench/update_step.make_batch: 64-token prompts, completions of min..max tokens)
SHAPES = {"default": {"logprobs": dict(rows=16, min_len=64, max_len=256),
                      "microbatch": dict(rows=32, min_len=16, max_len=128),
                      "throughput": dict(rows=64, min_len=960, max_len=960, micro=16, repeats=3),
                      "engine": dict(prompts=8, group=8, new_tokens=64)},
          "tiny": {"logprobs": dict(rows=4, min_len=4, max_len=24),
                   "microbatch": dict(rows=8, min_len=1, max_len=12),
                   "throughput": dict(rows=8, min_len=64, max_len=64, micro=4, repeats=1),
                   "engine": dict(prompts=2, group=4, new_tokens=12)}}
# Tolerances. float32: both sides compute the same sums in another order (1e-6 relative);
# the bounds leave a wide margin and still catch a wrong normaliser or position (>= 1e-1).
# bfloat16: the two log-prob routines run the LM head on different shapes, so a logit may
# round to the neighbouring bfloat16 value (a step of 0.0625 for |logit| in [8, 16), 0.078
# after the temperature); the engine runs on bfloat16 weights with a KV cache, the learner on
# float32 weights under autocast, so per-token log-probs differ by bfloat16 rounding. A
# wrong position, temperature or stale weights move them by nats (logp_vs_previous_weights).
TOL = {"logprobs": {"float32": 1e-4, "bfloat16": 0.125},  # max |diff| (nats)
       "microbatch": {"float32": 1e-3, "bfloat16": 5e-2},  # float32: per parameter; bf16: global
       "engine_logp": {"float32": {"mean": 1e-4, "max": 1e-3},
                       "bfloat16": {"mean": 0.1, "max": 1.0}}}


class BudgetSpent(Exception):
    pass


def random_llama(spec: dict, device, seed: int = 0):
    """A seeded random Llama (float32) on `device`, its head scaled (see the module doc)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**spec, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, HEAD_LOGIT_STD / cfg.hidden_size ** 0.5)
    return model.eval()


def matmul_params(model) -> int:
    """Parameters that take part in a matmul: all but the input embedding (a lookup)."""
    embed = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embed


def autocast(device, dtype: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=dtype == "bfloat16")


def hyper(**kw):
    from grpo_core.algorithm.optim import UpdateHyper

    base = dict(autocast="float32", learning_rate=1e-4, max_grad_norm=1e9, temperature=1.0)
    return UpdateHyper(**{**base, **kw})


# ---------------------------------------------------------------- 1. log-probs
def check_logprobs(ctx: dict) -> dict:
    from grpo_core.algorithm.logprobs import naive_token_logprobs, token_logprobs
    from update_step import make_batch

    dev, model = ctx["device"], ctx["model"]
    batch = make_batch(ctx["shapes"]["logprobs"], model.config.vocab_size, seed=1).to(dev)
    args = (model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    on = batch.completion_mask.bool()
    out, values = {"tokens": int(on.sum()), "temperature": TEMPERATURE}, {}
    with torch.no_grad():
        for dtype in ("bfloat16", "float32"):
            with autocast(dev, dtype):
                ours = token_logprobs(*args, temperature=TEMPERATURE)
                naive = naive_token_logprobs(*args, temperature=TEMPERATURE)
            diff = float((ours - naive)[on].abs().max())
            values[dtype] = ours
            out[dtype] = {"max_abs_diff": diff, "tolerance": TOL["logprobs"][dtype],
                          "passed": diff <= TOL["logprobs"][dtype]}
    # for information: how far bfloat16 training log-probs are from float32 ones
    out["bf16_vs_fp32_max_abs_diff"] = float((values["bfloat16"] - values["float32"])[on].abs().max())
    out["passed"] = out["bfloat16"]["passed"] and out["float32"]["passed"]
    return out


# ---------------------------------------------------------------- 2. micro-batches
def grads_after_update(model, h, batch) -> list:
    from grpo_core.algorithm.learner import Learner

    learner = Learner(copy.deepcopy(model), h)
    learner.update(batch)
    return [p.grad.detach().float().clone() for p in learner.params]


def relative_diffs(full: list, micro: list) -> tuple[float, float, float]:
    """(max over parameters of |micro - full| / |full|, the same over all parameters at once,
    |full|)."""
    per = [float((m - f).norm() / f.norm().clamp_min(1e-30)) for f, m in zip(full, micro)]
    num = torch.sqrt(sum(((m - f) ** 2).sum() for f, m in zip(full, micro)))
    den = torch.sqrt(sum((f ** 2).sum() for f in full))
    return max(per), float(num / den), float(den)


def grouped_batch(shape: dict, vocab: int, group: int = 4, seed: int = 5):
    """rows / group prompts (8-32 tokens) each repeated `group` times, as a rollout has them."""
    from grpo_core.algorithm.batch import build_batch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(100, vocab, (int(torch.randint(8, 33, (1,), generator=g)),),
                             generator=g).tolist() for _ in range(shape["rows"] // group)]
    lengths = torch.randint(shape["min_len"], shape["max_len"] + 1, (len(prompts) * group,), generator=g)
    completions = [torch.randint(100, vocab, (int(n),), generator=g).tolist() for n in lengths]
    return build_batch([p for p in prompts for _ in range(group)], completions,
                       torch.randn(len(completions), generator=g), pad_id=0)


def check_microbatch(ctx: dict) -> dict:
    """Full batch = ONE pass (shared_prompt_forward off: with it, each prompt is its own pass);
    micro = passes of 5 rows; the last case also runs the shared-prompt forward on groups."""
    from grpo_core.algorithm.losses import AGGREGATIONS
    from update_step import make_batch

    model, shape = ctx["model"], ctx["shapes"]["microbatch"]
    vocab = model.config.vocab_size
    batches = {False: make_batch(shape, vocab, seed=2), True: grouped_batch(shape, vocab)}
    default = hyper().loss_aggregation
    cases = [(m, lvl, "float32", False) for m in sorted(AGGREGATIONS) for lvl in ("token", "sequence")]
    cases += [(default, lvl, "bfloat16", False) for lvl in ("token", "sequence")]
    cases += [(default, "token", "float32", True)]
    rows = []
    for mode, level, dtype, shared in cases:
        kw = dict(loss_aggregation=mode, ratio_level=level, beta=0.05, mu=1, autocast=dtype,
                  max_completion_len=shape["max_len"])
        batch = batches[shared]
        full = grads_after_update(model, hyper(micro_batch_size=batch.size,
                                               shared_prompt_forward=False, **kw), batch)
        micro = grads_after_update(model, hyper(micro_batch_size=5, shared_prompt_forward=shared,
                                                **kw), batch)
        per_param, overall, norm = relative_diffs(full, micro)
        gate = per_param if dtype == "float32" else overall
        tol = TOL["microbatch"][dtype]
        rows.append({"aggregation": mode, "ratio_level": level, "dtype": dtype,
                     "shared_prompt_forward": shared, "grad_norm_full": norm,
                     "max_rel_diff_per_param": per_param, "rel_diff_all_params": overall,
                     "tolerance": tol, "passed": norm > 0 and gate <= tol})
    return {"rows": shape["rows"], "micro_batch_size": 5, "beta": 0.05,
            "gated_on": {"float32": "max_rel_diff_per_param", "bfloat16": "rel_diff_all_params"},
            "max_rel_diff_float32": max(r["max_rel_diff_per_param"] for r in rows
                                        if r["dtype"] == "float32"),
            "cases": rows, "passed": all(r["passed"] for r in rows)}


# ---------------------------------------------------------------- 3. throughput
def check_throughput(ctx: dict) -> dict:
    from grpo_core.algorithm.learner import Learner
    from update_step import make_batch

    dev, shape = ctx["device"], ctx["shapes"]["throughput"]
    model = copy.deepcopy(ctx["model"])
    batch = make_batch(shape, model.config.vocab_size, seed=3).to(dev)
    learner = Learner(model, hyper(autocast="bfloat16", micro_batch_size=shape["micro"],
                                   gradient_checkpointing=False, shared_prompt_forward=False,
                                   beta=0.0, mu=1, learning_rate=1e-6))

    def step():
        metrics = learner.update(batch)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return metrics

    step()  # warm-up: kernel selection, Adam's state
    metrics, runs = timed_runs(step, shape["repeats"])
    seconds = median(runs)
    tokens = int(batch.attention_mask.sum())
    n = matmul_params(model)
    return {"dtype": "bfloat16 autocast, float32 weights and Adam", "params": ctx["params"],
            "matmul_params": n, "batch_rows": batch.size, "seq_len": batch.input_ids.shape[1],
            "prompt_tokens_per_row": batch.input_ids.shape[1] - batch.completion_len,
            "completion_tokens": int(batch.completion_mask.sum()), "tokens": tokens,
            "micro_batch_size": shape["micro"], "gradient_checkpointing": False,
            "seconds": seconds, "runs_seconds": runs, "tokens_per_s": tokens / seconds,
            "tflops": 6 * n * tokens / seconds / 1e12,
            "flops_formula": "6 x matmul_params x tokens (forward 2, backward 4 per parameter "
                             "and token; tokens = real prompt + completion tokens; the input "
                             "embedding lookup, attention scores, the LM head's recomputation "
                             "in backward and the optimizer are not counted)",
            "loss": metrics["loss"], "passed": bool(metrics["skipped"] == 0)}


# ---------------------------------------------------------------- 4. engine + sync
def word_tokenizer(vocab_size: int):
    """A word-level tokenizer: token i is the word "t{i}" (0-3: pad, bos, eos, unk)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3,
             **{f"t{i}": i for i in range(4, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def to_batch(result):
    """A RolloutResult -> RolloutBatch, advantages from a made-up reward (share of even ids)."""
    from grpo_core.algorithm.advantages import group_advantages
    from grpo_core.algorithm.batch import build_batch

    done = [(g.prompt_ids, c) for g in result.groups for c in g.completions]
    rewards = torch.tensor([[sum(t % 2 == 0 for t in c.token_ids) / max(len(c.token_ids), 1)
                             for c in g.completions] for g in result.groups])  # (P, G)
    return build_batch([list(p) for p, _ in done], [list(c.token_ids) for _, c in done],
                       group_advantages(rewards).reshape(-1), pad_id=0,
                       sampler_logprobs=[list(c.logprobs) for _, c in done],
                       truncated=[c.finish_reason == "length" for _, c in done])


def weight_gap(engine_model, learner_model) -> dict:
    """Max |engine - learner| over every weight: exact (learner cast to the engine's dtype)
    and against the float32 master weights (the cast's rounding)."""
    mine = engine_model.state_dict()
    exact = rounding = 0.0
    for name, w in learner_model.state_dict().items():
        e = mine[name]
        exact = max(exact, float((e - w.to(e.dtype)).abs().max()))
        rounding = max(rounding, float((e.float() - w.float()).abs().max()))
    return {"max_abs_diff": exact, "max_abs_diff_vs_float32": rounding}


def logp_gap(model, batch, dev, dtype) -> dict:
    """The learner's log-probs of the sampled tokens against the sampler's."""
    from grpo_core.algorithm.logprobs import token_logprobs

    on = batch.completion_mask.bool()
    with torch.no_grad(), autocast(dev, dtype):
        ours = token_logprobs(model, batch.input_ids.to(dev), batch.attention_mask.to(dev),
                              batch.completion_mask.to(dev), temperature=TEMPERATURE).cpu()
    diff = (ours - batch.sampler_logp)[on].abs()
    return {"mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
            "tokens": int(on.sum())}


def check_engine_sync(ctx: dict) -> dict:
    from grpo_core.algorithm.learner import Learner
    from grpo_core.rollout import SamplingSettings
    from grpo_core.rollout.hf_engine import HFEngine

    dev, shape = ctx["device"], ctx["shapes"]["engine"]
    dtype = "bfloat16" if dev.type == "cuda" else "float32"
    model_dir = ctx["scratch"] / "random-llama"
    ctx["model"].save_pretrained(model_dir, safe_serialization=True)
    word_tokenizer(ctx["model"].config.vocab_size).save_pretrained(model_dir)
    engine = HFEngine(model_dir, dtype=dtype, seed=0, batch_size=shape["prompts"] * shape["group"])
    if engine.device != dev.type:  # the engine picks CUDA whenever there is one
        engine.model, engine.device = engine.model.to(dev), dev.type
    learner = Learner(copy.deepcopy(ctx["model"]), hyper(autocast=dtype, micro_batch_size=8,
                                                         learning_rate=1e-3, temperature=TEMPERATURE))
    gen = torch.Generator().manual_seed(4)
    prompts = [" ".join(f"t{int(i)}" for i in torch.randint(4, ctx["model"].config.vocab_size, (16,),
                                                            generator=gen))
               for _ in range(shape["prompts"])]
    sampling = SamplingSettings(temperature=TEMPERATURE, top_p=1.0, max_new_tokens=shape["new_tokens"])
    iterations, tol = [], TOL["engine_logp"][dtype]
    previous = None  # the learner before iteration 0's update, for iteration 1
    for it in range(2):
        batch = to_batch(engine.generate(prompts, shape["group"], sampling))
        row = {"iteration": it, "logp": logp_gap(learner.model, batch, dev, dtype)}
        if it == 1:  # the weights before the update: what a stale sync would have sampled from
            row["logp_vs_previous_weights"] = logp_gap(previous, batch, dev, dtype)
        previous = copy.deepcopy(learner.model) if it == 0 else None
        row["update"] = {k: learner.update(batch)[k] for k in ("loss", "grad_norm", "tokens")}
        row["before_sync"] = weight_gap(engine.model, learner.model)
        row["sync_seconds"] = engine.update_weights(learner.sync_weights())
        row["after_sync"] = weight_gap(engine.model, learner.model)
        row["passed"] = (row["after_sync"]["max_abs_diff"] == 0.0
                         and row["before_sync"]["max_abs_diff"] > 0.0
                         and row["logp"]["mean_abs_diff"] <= tol["mean"]
                         and row["logp"]["max_abs_diff"] <= tol["max"])
        iterations.append(row)
    engine.close()
    return {"engine_dtype": dtype, "learner": f"float32 weights, autocast {dtype}",
            "prompts": shape["prompts"], "group": shape["group"],
            "max_new_tokens": shape["new_tokens"], "temperature": TEMPERATURE,
            "logp_tolerance": tol, "weights_tolerance": 0.0,
            "pass_rule": "after sync the weights are equal, the update moved them, and the "
                         "sampler's log-probs match the learner's within logp_tolerance",
            "iterations": iterations, "passed": all(r["passed"] for r in iterations)}


CHECKS = {"logprobs": check_logprobs, "microbatch": check_microbatch,
          "throughput": check_throughput, "engine_sync": check_engine_sync}


# ---------------------------------------------------------------- the runner
def _spent(signum, frame):
    raise BudgetSpent("the --budget-s time budget ran out during this check")


def run_check(name: str, ctx: dict, deadline: float) -> dict:
    """One check under the remaining budget -> its record (never raises but for Ctrl-C)."""
    left = deadline - time.monotonic()
    if left <= 1:
        return {"status": "skipped", "passed": False, "error": "time budget spent before it began"}
    cuda = ctx["device"].type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _spent)
    signal.setitimer(signal.ITIMER_REAL, left)
    try:
        out = CHECKS[name](ctx)
        out["status"] = "passed" if out["passed"] else "failed"
    except Exception as exc:  # recorded; the next check runs
        out = {"status": "error", "passed": False, "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc(limit=-6)}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    out["seconds_total"] = time.perf_counter() - start
    if cuda:
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        out["peak_rss_gb_process_so_far"] = self_peak_rss_gb()
    gc.collect()
    return out


def headline(name: str, r: dict) -> str:
    if r["status"] in ("error", "skipped"):
        return r["error"]
    if name == "logprobs":
        return (f"max|diff| bf16 {r['bfloat16']['max_abs_diff']:.3g} (tol {r['bfloat16']['tolerance']}), "
                f"fp32 {r['float32']['max_abs_diff']:.3g} (tol {r['float32']['tolerance']})")
    if name == "microbatch":
        bf = max(c["rel_diff_all_params"] for c in r["cases"] if c["dtype"] == "bfloat16")
        return (f"max rel grad diff fp32 {r['max_rel_diff_float32']:.3g} (tol "
                f"{TOL['microbatch']['float32']}), bf16 {bf:.3g} (tol {TOL['microbatch']['bfloat16']})")
    if name == "throughput":
        return (f"{r['tokens_per_s']:.0f} tokens/s, {r['tflops']:.2f} TFLOP/s "
                f"({r['batch_rows']} x {r['seq_len']} tokens, {r['seconds']:.3f} s)")
    last = r["iterations"][-1]
    return (f"weights max|diff| after sync {last['after_sync']['max_abs_diff']:.3g}, sampler "
            f"logp mean|diff| {max(i['logp']['mean_abs_diff'] for i in r['iterations']):.3g} "
            f"max {max(i['logp']['max_abs_diff'] for i in r['iterations']):.3g}")


def environment(dev) -> dict:
    import platform

    import transformers

    out = {"device": dev.type, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
           "load_avg": load_avg()}
    if dev.type == "cuda":
        out.update(device_name=torch.cuda.get_device_name(dev), cuda=torch.version.cuda,
                   float32_matmul_precision=torch.get_float32_matmul_precision())
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json", help="the JSON written")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model and small batches (smoke run)")
    p.add_argument("--budget-s", type=float, default=270.0, help="time budget of the whole run")
    p.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="run these checks only")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    try:
        import transformers
    except ImportError as exc:
        sys.exit(f"gpu_check: {exc} (needs torch, transformers and pydantic)")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"gpu_check: --device cuda, but torch {torch.__version__} sees no CUDA device "
                 f"(CUDA build: {torch.version.cuda}); --device cpu --tiny runs a smoke test")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.device == "cpu" and args.tiny:  # tiny matmuls gain nothing from threads, and on a
        torch.set_num_threads(1)  # shared machine extra threads spin against other processes
    dev = torch.device(args.device)
    size = "tiny" if args.tiny else "default"
    model = random_llama(MODELS[size], dev)
    report = {"script": "bench/gpu_check.py", "argv": sys.argv[1:] if argv is None else argv,
              "model": size, "model_config": MODELS[size], "head_logit_std": HEAD_LOGIT_STD,
              "params": sum(p.numel() for p in model.parameters()), "budget_s": args.budget_s,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **environment(dev), "checks": {}}
    deadline = start + args.budget_s
    with tempfile.TemporaryDirectory() as scratch:
        ctx = {"device": dev, "model": model, "params": report["params"],
               "shapes": SHAPES[size], "scratch": Path(scratch)}
        for name in args.only or CHECKS:
            report["checks"][name] = r = run_check(name, ctx, deadline)
            took = f"{r['seconds_total']:6.1f} s" if "seconds_total" in r else " " * 8
            print(f"{r['status'].upper():<7} {name:<12} {took}  {headline(name, r)}", flush=True)
    report["seconds"], report["load_avg_end"] = time.monotonic() - start, load_avg()
    report["passed"] = all(r["passed"] for r in report["checks"].values())
    save_json(report, args.out)
    print(f"{'all checks passed' if report['passed'] else 'FAILED'} in {report['seconds']:.0f} s "
          f"({report['params'] / 1e6:.1f}M parameters, {dev.type}); {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
