"""How far any exact engine could take the training rollout on this CPU: the measured decode
step of the engine a run builds, beside the floor that the step's unavoidable work sets.

    .venv/bin/python bench/rollout_floor.py [--set rollout.max_new_tokens=200] [--json PATH]

The floor counts only what every exact decode step must do: multiply the running rows by each
weight matrix of the model (timed here with the fastest of the registered CPU kernels, every
layer its own weights so that nothing stays in cache, as in a real step) and read the KV cache
of every running sequence once (at the read bandwidth measured here). Norms, rotary, sampling,
scheduling and the prompts' prefill come on top, so `step / floor` bounds the speed-up that any
engine work (kernels, fusion, compilation, another engine) can bring at this shape. The
roofline line sets the step's FLOPs and weight bytes against this machine's best large-GEMM
rate and read bandwidth: a bound even for kernels that do not exist yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import load_avg, save_json  # noqa: E402
from grpo_core.env import apply_defaults  # noqa: E402

apply_defaults(offline=True)


def weight_shapes(config: dict) -> tuple[list[tuple[int, int]], tuple[int, int], int]:
    """((N, K) of one decoder layer's fused projections, (N, K) of the LM head, layers)."""
    h, i = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    d = config.get("head_dim") or h // heads
    layer = [((heads + 2 * kv) * d, h), (h, heads * d), (2 * i, h), (h, i)]
    return layer, (config["vocab_size"], h), config["num_hidden_layers"]


def _onednn(weight):
    import vllm._custom_ops as ops

    handle = ops.create_onednn_mm(weight.t(), 32)
    return lambda x: ops.onednn_mm(handle, x, None)


def _torch_linear(weight):
    import torch

    return lambda x: torch.nn.functional.linear(x, weight)


KERNELS = {"oneDNN (vLLM on CPU)": _onednn, "torch linear": _torch_linear}


def gemm_ms(kernel, config: dict, rows: int, dtype, repeats: int = 5) -> float:
    """Median ms of one decode step's matrix products at `rows` running sequences."""
    import torch

    layer, head, layers = weight_shapes(config)
    shapes = [s for _ in range(layers) for s in layer] + [head]
    ops = [(kernel(torch.randn(n, k, dtype=dtype) * 0.02), k) for n, k in shapes]
    inputs = {k: torch.randn(rows, k, dtype=dtype) for _, k in shapes}

    def step() -> float:
        start = time.perf_counter()
        for op, k in ops:
            op(inputs[k])
        return 1000 * (time.perf_counter() - start)

    step()
    return median(step() for _ in range(repeats))


def read_gb_per_s(gib: float = 0.5) -> float:
    """Best of 3 of summing a `gib` float32 tensor (one streaming read of memory)."""
    import torch

    t = torch.ones(int(gib * 2**30) // 4)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        float(t.sum())
        best = min(best, time.perf_counter() - start)
    return t.numel() * 4 / best / 1e9


def peak_gflops(dtype, n: int = 2048) -> float:
    """Best of 3 of one large square product: the rate the cores reach when data stays hot."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def measured_rollout(overrides: list[str], repeats: int, model: str) -> dict:
    """The engine as a run builds it: tokens/s, decode steps and per-step figures."""
    from rollout_profile import training_engine

    cfg, model_dir, engine, prompts, sampling = training_engine(overrides, model)
    g = cfg.rollout.group_size
    results = [engine.generate(prompts, g, sampling) for _ in range(repeats)]
    engine.close()
    result = sorted(results, key=lambda r: r.seconds)[len(results) // 2]
    lengths = [len(c.token_ids) for grp in result.groups for c in grp.completions]
    contexts = [len(grp.prompt_ids) + len(c.token_ids) / 2
                for grp in result.groups for c in grp.completions]
    steps = max(lengths)
    return dict(config=json.loads(Path(model_dir, "config.json").read_text()),
                dtype=str(engine.dtype).removeprefix("torch."), shape=f"{len(prompts)} x {g} x "
                f"{sampling.max_new_tokens}", tokens=sum(lengths), steps=steps,
                tokens_per_s=[round(r.metrics()["rollout/tokens_per_s"], 1) for r in results],
                step_ms=1000 * result.seconds / steps, rows=round(sum(lengths) / steps),
                mean_context=sum(contexts) / len(contexts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    ap.add_argument("--model", default="/tmp/grpo-profile-sft", help="materialised SFT dir")
    args = ap.parse_args()

    import torch

    from grpo_core.rollout import kv_bytes_per_token

    run = measured_rollout(args.overrides, args.repeats, args.model)
    dtype = getattr(torch, run["dtype"])
    element = torch.empty(0, dtype=dtype).element_size()
    kernels = {name: gemm_ms(make, run["config"], run["rows"], dtype)
               for name, make in KERNELS.items()}
    bandwidth, peak = read_gb_per_s(), peak_gflops(dtype)
    # one decode step reads the cache of every running row at its whole context
    kv_read = run["rows"] * run["mean_context"] * kv_bytes_per_token(run["config"], element)
    kv_ms = kv_read / bandwidth / 1e6
    layer, head, layers = weight_shapes(run["config"])
    params = layers * sum(n * k for n, k in layer) + head[0] * head[1]
    roofline_ms = max(2 * params * run["rows"] / peak / 1e6, params * element / bandwidth / 1e6)
    floor_ms = min(kernels.values()) + kv_ms
    figures = dict({k: v for k, v in run.items() if k != "config"}, kernels_ms=kernels, kv_read_ms=kv_ms, read_gb_per_s=bandwidth,
                   peak_gflops=peak, floor_ms=floor_ms, roofline_ms=roofline_ms + kv_ms,
                   ceiling=run["step_ms"] / floor_ms,
                   roofline_ceiling=run["step_ms"] / (roofline_ms + kv_ms), load_avg=load_avg(),
                   date=date.today().isoformat())
    print(f"{run['shape']} in {run['dtype']}: {median(run['tokens_per_s']):.0f} tokens/s "
          f"{run['tokens_per_s']}, {run['steps']} decode steps of {run['step_ms']:.0f} ms, "
          f"{run['rows']} rows a step, mean context {run['mean_context']:.0f} tokens")
    for name, ms in kernels.items():
        print(f"  matrix products, {name}: {ms:.0f} ms a step")
    print(f"  KV-cache read at {bandwidth:.1f} GB/s: {kv_ms:.1f} ms a step")
    print(f"  floor {floor_ms:.0f} ms a step -> at most {figures['ceiling']:.2f}x from engine work")
    print(f"  roofline ({peak:.0f} GFLOP/s, {bandwidth:.1f} GB/s): {figures['roofline_ms']:.0f} ms "
          f"a step -> at most {figures['roofline_ceiling']:.2f}x with perfect kernels")
    if args.json:
        save_json(figures, Path(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
