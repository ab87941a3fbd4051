"""What autograd keeps for backward: one micro-batch forward of `token_logprobs` on
SmolLM2-135M-Instruct, float32 vs bfloat16 autocast.

    .venv/bin/python bench/saved_tensors.py [--rows 8] [--prompt 64] [--completion 192]

Every tensor saved for backward is caught with `torch.autograd.graph.saved_tensors_hooks` and
counted once per storage, by dtype and kind: `param` (a parameter itself: no extra memory),
`param-cast` (autocast's bfloat16 copy of a weight), `activation` (the rest). Why: bench/
update_step.py measured a higher peak RSS for the bf16 update than for float32; this tells
whether the saved tensors are the reason.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from update_step import model_dir  # noqa: E402


def saved_bytes(model, ids, attention, completion_mask, *, bf16: bool) -> dict[str, int]:
    """{'kind/dtype': bytes} of the tensors the forward saves for backward."""
    from grpo_core.algorithm.logprobs import token_logprobs

    params = {p.data_ptr() for p in model.parameters()}
    shapes = {tuple(p.shape) for p in model.parameters()}
    seen: set[tuple[int, torch.dtype]] = set()
    tally: collections.Counter = collections.Counter()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if (storage.data_ptr(), t.dtype) not in seen:
            seen.add((storage.data_ptr(), t.dtype))
            if t.data_ptr() in params:
                kind = "param"
            elif tuple(t.shape) in shapes and t.dtype != torch.float32:
                kind = "param-cast"
            else:
                kind = "activation"
            tally[f"{kind}/{str(t.dtype).removeprefix('torch.')}"] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            token_logprobs(model, ids, attention, completion_mask)
    return dict(sorted(tally.items()))


def main() -> int:
    from transformers import AutoModelForCausalLM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--completion", type=int, default=192)
    ap.add_argument("--model-dir", default=None)
    args = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(model_dir(args.model_dir), dtype=torch.float32)
    model.train()
    g = torch.Generator().manual_seed(0)
    width = args.prompt + args.completion
    ids = torch.randint(100, model.config.vocab_size, (args.rows, width), generator=g)
    attention = torch.ones_like(ids)
    completion_mask = torch.ones(args.rows, args.completion)
    print(f"{args.rows} rows x ({args.prompt} prompt + {args.completion} completion) tokens")
    for name, bf16 in (("float32", False), ("bf16 autocast", True)):
        tally = saved_bytes(model, ids, attention, completion_mask, bf16=bf16)
        extra = sum(v for k, v in tally.items() if not k.startswith("param/"))
        parts = ", ".join(f"{k} {v / 2**30:.3f}" for k, v in tally.items() if v)
        print(f"{name:<14} saved beyond the parameters: {extra / 2**30:.2f} GiB ({parts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
