"""Data-parallel training on PyTorch's own runtime (`torchrun`): process group, sharding,
global normalisers and rank-0-only I/O helpers.

Each rank rolls out P / world whole groups (a group never straddles ranks, so per-group
advantages need no communication), and the update is the single-process update on the union
of the shards:

- every loss normaliser is global (`global_token_weights`): token counts and sequence counts
  are all-reduced, and Dr. GRPO's B * max_len uses the global B, every rank's rows including
  fully masked ones (and the global width when no max_len is given), so each rank's
  `(loss * weights).sum()` is its share of ONE global loss;
- gradients are SUMMED over ranks after the local micro-batch accumulation
  (`all_reduce_grads`), which makes them equal to the full-batch gradient. DDP would average
  (divide by world size) and needs every rank to run the same number of backward passes; a
  plain all-reduce after accumulation is exact, and a rank whose groups were all filtered
  out can still take part with zero gradients;
- clipping, the skip-on-non-finite decision and the optimizer step then see identical
  gradients on every rank, so the replicas stay identical without a parameter broadcast
  (one broadcast at start-up makes sure they begin identical);
- metrics are reduced (sums, min, max) so rank 0 logs what one process would have logged.

With world size 1 (no torchrun) none of this runs: every helper returns its input.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from grpo_core.errors import UserError
from grpo_core.algorithm.losses import token_weights

DEFAULT_TIMEOUT_S = 1800.0  # a dead or stuck rank fails the job after this long
TIMEOUT_ENV = "GRPO_DIST_TIMEOUT_S"  # overrides the configured timeout (tests, debugging)


# ----------------------------------------------------------------------------- process group
def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """Join the process group that `torchrun` describes (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); returns the world size. Without torchrun (no WORLD_SIZE, or 1)
    nothing is initialised. Backend: nccl when CUDA is available (each rank on cuda:LOCAL_RANK),
    else gloo. `timeout_s` (or $GRPO_DIST_TIMEOUT_S) bounds every collective, so a rank that
    died or hangs makes the others fail instead of waiting forever."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or dist.is_initialized():
        return world()
    timeout = float(os.environ.get(TIMEOUT_ENV, timeout_s))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return world()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0, and in a single process: the one that writes files and logs."""
    return rank() == 0


def device() -> torch.device:
    """This rank's training device: cuda:LOCAL_RANK under nccl, else the default device."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _comm_device() -> torch.device:
    """gloo reduces CPU tensors, nccl CUDA tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if (
        dist.is_initialized() and dist.get_backend() == "nccl") else torch.device("cpu")


# ----------------------------------------------------------------------------- sharding
def shard_range(count: int, name: str = "rollout.prompts_per_iteration") -> slice:
    """This rank's slice of `count` whole prompt groups. `count` must divide evenly, so every
    rank does the same work and a group never straddles ranks."""
    n = world()
    if count % n:
        raise UserError(f"{name} = {count} must be divisible by the number of training "
                        f"processes ({n}): use a multiple of {n}")
    size = count // n
    return slice(rank() * size, (rank() + 1) * size)


# ----------------------------------------------------------------------------- collectives
def all_reduce(t: Tensor, op: str = "sum") -> Tensor:
    """A reduced copy of `t` (sum | min | max | mean over ranks); `t` itself with one rank."""
    if world() == 1:
        return t
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX,
           "mean": dist.ReduceOp.SUM}
    out = t.detach().to(_comm_device(), copy=True)
    dist.all_reduce(out, op=ops[op])
    if op == "mean":
        out = out / world()
    return out.to(t.device)


def any_rank(flag: bool) -> bool:
    """True if `flag` is True on at least one rank."""
    return bool(all_reduce(torch.tensor([float(flag)]), "max").item())


def gather_rows(t: Tensor) -> Tensor:
    """Concatenate every rank's `(n_r, ...)` tensor along dim 0, in rank order (n_r may
    differ). Returns `(sum n_r, ...)` on every rank."""
    if world() == 1:
        return t
    parts: list[Any] = [None] * world()
    dist.all_gather_object(parts, t.detach().cpu())
    return torch.cat(parts, dim=0).to(t.device)


def gather_groups(local: Tensor) -> tuple[Tensor, slice]:
    """This rank's `(p_r, G)` tensor -> (every rank's rows `(P, G)` in rank order, the slice
    of them that is this rank's). For what needs the whole batch, e.g. batch-std advantages
    and batch-wide advantage metrics."""
    if world() == 1:
        return local, slice(0, local.shape[0])
    parts: list[Any] = [None] * world()
    dist.all_gather_object(parts, local.detach().cpu())
    start = sum(p.shape[0] for p in parts[:rank()])
    return torch.cat(parts, dim=0).to(local.device), slice(start, start + local.shape[0])


def gather_to_main(obj: Any) -> Optional[list[Any]]:
    """Every rank's `obj` (picklable) as a list on rank 0, in rank order; None elsewhere."""
    if world() == 1:
        return [obj]
    out: Optional[list[Any]] = [None] * world() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def broadcast_params(params: Iterable[Tensor]) -> None:
    """Copy rank 0's values into every rank's tensors (identical replicas at start-up)."""
    if world() == 1:
        return
    with torch.no_grad():
        for p in params:
            buf = p.detach().to(_comm_device(), copy=True)
            dist.broadcast(buf, src=0)
            p.copy_(buf.to(p.device))


def all_reduce_grads(params: Sequence[torch.nn.Parameter], bucket_numel: int = 1 << 24) -> None:
    """SUM the gradients over ranks in place (missing grads count as zeros), in flat buckets
    of at most `bucket_numel` elements (few large messages instead of one per tensor)."""
    if world() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[Tensor] = []
    numel = 0
    for p in params:
        bucket.append(p.grad)
        numel += p.grad.numel()
        if numel >= bucket_numel:
            _reduce_bucket(bucket)
            bucket, numel = [], 0
    if bucket:
        _reduce_bucket(bucket)


def _reduce_bucket(grads: list[Tensor]) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_comm_device())
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


# ----------------------------------------------------------------------------- global loss
def _counts(mask: Tensor) -> Tensor:
    """[tokens, sequences with >= 1 token, rows, width] of a `(B, T)` mask."""
    return torch.tensor([float(mask.sum()), float((mask.sum(dim=1) > 0).sum()),
                         float(mask.shape[0]), float(mask.shape[1])], dtype=torch.float64)


# local weights * scale(local counts, global counts, max_len) = global weights; each entry
# undoes the local normaliser of `grpo_core.algorithm.losses.AGGREGATIONS[mode]` and applies
# the global one (counts as in `_counts`; each max(., 1) mirrors a clamp in losses.py)
_RESCALE: dict[str, Callable[[Sequence[float], Sequence[float], Optional[int]], float]] = {
    "token_mean": lambda loc, glob, L: max(loc[0], 1) / max(glob[0], 1),
    "seq_mean_token_mean": lambda loc, glob, L: max(loc[1], 1) / max(glob[1], 1),
    # every row of every rank, fully masked ones included (Dr. GRPO's constant B * max_len)
    "seq_mean_token_sum_norm": lambda loc, glob, L: (
        max(loc[2], 1) * (L or loc[3])) / (max(glob[2], 1) * (L or glob[3])),
}


def rescale_to_global(local: Tensor, mask: Tensor, parts: Tensor, mode: str,
                      max_len: Optional[int] = None) -> Tensor:
    """This rank's `(B_r, T_r)` `token_weights` of `mask` -> its share of the global weights,
    given `parts`, the `(world, 4)` `_counts` of every rank's mask (this rank's included).
    Pure: `global_token_weights` is this after one all-gather."""
    glob = [float(parts[:, 0].sum()), float(parts[:, 1].sum()), float(parts[:, 2].sum()),
            float(parts[:, 3].max())]  # the widest shard is the single-process width
    return local * _RESCALE[mode]([float(x) for x in _counts(mask)], glob, max_len)


def global_token_weights(mask: Tensor, mode: str, max_len: Optional[int] = None) -> Tensor:
    """`token_weights` of this rank's `(B_r, T_r)` mask, normalised over ALL ranks' rows:
    the union of the ranks' weights equals `token_weights` of the whole batch, so summing
    the ranks' `(loss * weights).sum()` gives the single-process loss. A rank may hold no
    rows (B_r = 0). Collective: every rank must call it."""
    local = token_weights(mask, mode, max_len)
    if world() == 1:
        return local
    parts = gather_rows(_counts(mask).unsqueeze(0))  # (world, 4)
    return rescale_to_global(local, mask, parts, mode, max_len)


# ----------------------------------------------------------------------------- metrics
SUMMED = ("tokens", "clip_frac_low", "clip_frac_high", "ratio_mean", "kl", "entropy")


def reduce_sums(sums: dict[str, float]) -> dict[str, float]:
    """The Learner's token-weighted metric sums over all ranks: sums add up, ratio_min /
    ratio_max take the extreme (absent on a rank that had no tokens)."""
    if world() == 1:
        return sums
    out = dict(sums)
    total = all_reduce(torch.tensor([sums.get(k, 0.0) for k in SUMMED], dtype=torch.float64))
    out.update(zip(SUMMED, total.tolist()))
    lo = all_reduce(torch.tensor([sums.get("ratio_min", float("inf"))]), "min").item()
    hi = all_reduce(torch.tensor([sums.get("ratio_max", float("-inf"))]), "max").item()
    for key, value in (("ratio_min", lo), ("ratio_max", hi)):
        if abs(value) != float("inf"):
            out[key] = value
    return out


def reduce_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A flat metrics dict of one rank -> the same over all ranks: keys ending in `min` take
    the minimum, `max` the maximum, everything else the mean over the ranks that have the key
    (exact for means over equal shares and for values already global; an approximation for
    standard deviations; rates such as tokens/s are per rank). Collective."""
    if world() == 1:
        return metrics
    parts: list[Any] = [None] * world()
    dist.all_gather_object(parts, {k: float(v) for k, v in metrics.items() if v is not None})
    out: dict[str, float] = {}
    for key in sorted(set().union(*parts)):
        values = [p[key] for p in parts if key in p]
        out[key] = (min(values) if key.endswith("min") else max(values) if key.endswith("max")
                    else sum(values) / len(values))
    return out


# ----------------------------------------------------------------------------- rank-0 I/O
def main_only(default: Callable[[], Any] = lambda: None):
    """Decorator: run the function on rank 0 (or in a single process) only; the other ranks
    get `default()` without running it. For writers: files, checkpoints, MLflow."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            return fn(*args, **kwargs) if is_main() else default()
        return run
    return wrap


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. writes a directory), then the others run it (and
    find what rank 0 wrote). Assumes one filesystem shared by all ranks."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
