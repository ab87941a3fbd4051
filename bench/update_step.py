"""Benchmark: one GRPO update on SmolLM2-135M-Instruct, and the log-prob routine.

    .venv/bin/python bench/update_step.py [--quick] [--repeats N] [--json PATH] [--model-dir DIR]

Measures (each case in its own subprocess, so peak memory is that case's own):
- one `Learner.update` on B completions (default 32, of 128-256 tokens; prompts of 64 tokens)
  with float32 vs bfloat16 autocast, a few micro-batch sizes, and gradient checkpointing;
- forward + backward of the chunked `token_logprobs` vs the naive full float32 log-softmax
  on one micro-batch.
Time is wall-clock seconds, the median of --repeats runs of the case in its process (default
3, each run timed alone; `runs_seconds` keeps them all: the first pays the one-time set-up of
the process); memory is the peak RSS of the subprocess (CPU) or `torch.cuda.max_memory_allocated`
(GPU) over all its runs, minus the footprint right after loading the model.
`--quick`: 8 completions of 128 tokens, fewer cases, one run each (a smoke run). How long the
full run takes: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import add_repeats_option, median, repeats_of, timed_runs  # noqa: E402


def cases(quick: bool, repeats: int) -> list[dict]:
    rows, lo, hi = (8, 128, 128) if quick else (32, 128, 256)
    shape = dict(rows=rows, min_len=lo, max_len=hi, repeats=repeats)
    combos = [("float32", 8, False), ("bfloat16", 8, False), ("float32", 8, True)]
    if not quick:
        combos += [("float32", 4, False), ("float32", 16, False), ("bfloat16", 16, False)]
    update = [dict(kind="update", autocast=a, micro=m, ckpt=c, **shape) for a, m, c in combos]
    lp_rows = min(rows, 8)
    logp = [dict(kind="logprobs", method=m, chunk=c, rows=lp_rows, min_len=lo, max_len=hi,
                 repeats=repeats)
            for m, c in [("chunked", 256), ("naive", 0)] + ([] if quick else [("chunked", 1024)])]
    return update + logp


def peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_batch(case: dict, vocab: int, seed: int = 0):
    import torch

    from grpo_core.algorithm.batch import build_batch

    g = torch.Generator().manual_seed(seed)
    rows = case["rows"]
    prompts = [torch.randint(100, vocab, (64,), generator=g).tolist() for _ in range(rows)]
    lengths = torch.randint(case["min_len"], case["max_len"] + 1, (rows,), generator=g)
    completions = [torch.randint(100, vocab, (int(n),), generator=g).tolist() for n in lengths]
    adv = torch.randn(rows, generator=g)
    return build_batch(prompts, completions, adv, pad_id=0)


def worker(case: dict, model_dir: str) -> dict:
    """Run one case in this process and return its figures."""
    import torch
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    batch = make_batch(case, model.config.vocab_size).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = peak_mb(device) if device.type == "cuda" else _rss_mb()
    run = run_update if case["kind"] == "update" else run_logprobs
    runs, extra = run(model, batch, case)
    return dict(case, device=device.type, seconds=median(runs), runs_seconds=runs,
                peak_mb=peak_mb(device) - base, tokens=int(batch.completion_mask.sum()), **extra)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_update(model, batch, case):
    from grpo_core.algorithm.optim import UpdateHyper
    from grpo_core.algorithm.learner import Learner

    hyper = UpdateHyper(autocast=case["autocast"], micro_batch_size=case["micro"],
                        gradient_checkpointing=case["ckpt"], learning_rate=1e-6)
    learner = Learner(model, hyper)
    metrics, runs = timed_runs(lambda: learner.update(batch), case["repeats"])
    return runs, {"loss": metrics["loss"]}


def run_logprobs(model, batch, case):
    import torch

    from grpo_core.algorithm.logprobs import naive_token_logprobs, token_logprobs

    args = (model, batch.input_ids, batch.attention_mask, batch.completion_mask)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        if case["method"] == "chunked":
            logp = token_logprobs(*args, chunk_tokens=case["chunk"])
        else:
            logp = naive_token_logprobs(*args)
        (logp * batch.completion_mask).sum().backward()
        if batch.input_ids.is_cuda:
            torch.cuda.synchronize()
        return float(logp.detach().sum())

    logp_sum, runs = timed_runs(forward_backward, case["repeats"])
    return runs, {"logp_sum": logp_sum}


def model_dir(arg: str | None) -> str:
    if arg:
        return arg
    from grpo_core.checkpoints.sft import materialize

    return str(materialize("bundled:smollm2-135m-instruct", ROOT / "models" / "sft"))


def label(r: dict) -> str:
    if r["kind"] == "update":
        ckpt = " grad-ckpt" if r["ckpt"] else ""
        return f"update  {r['autocast']:<8} micro={r['micro']:<3}{ckpt}"
    chunk = f"chunk={r['chunk']}" if r["method"] == "chunked" else "full (B,T,V)"
    return f"logprob {r['method']:<8} {chunk:<12}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    add_repeats_option(p, quick=True)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--model-dir", help="HF directory (default: materialise the bundled SmolLM2)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker), args.model_dir)))
        return 0
    repeats = repeats_of(args)
    where = model_dir(args.model_dir)
    results = []
    print(f"{'case':<34} {'rows':>4} {'tokens':>6} {'seconds':>8} {'peak MB':>8}  runs (s)")
    for case in cases(args.quick, repeats):
        out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case),
                              "--model-dir", where], capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            print(f"{json.dumps(case)} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            return 1
        r = json.loads(line[0][len("RESULT "):])
        results.append(r)
        runs = ", ".join(f"{x:.2f}" for x in r["runs_seconds"])
        print(f"{label(r):<34} {r['rows']:>4} {r['tokens']:>6} {r['seconds']:>8.2f} "
              f"{r['peak_mb']:>8.0f}  {runs}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
