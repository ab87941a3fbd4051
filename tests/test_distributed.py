"""Data-parallel update on real processes (gloo, CPU): 2 ranks, each holding half of the
groups, take exactly the step one process takes on the whole batch; helpers' contracts;
a failing or hanging rank fails the job instead of hanging it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from grpo_core.parallel import distributed, sharding
from grpo_core.algorithm.advantages import group_advantages
from grpo_core.algorithm.batch import build_batch
from grpo_core.algorithm.experience import advantages_for
from grpo_core.algorithm.optim import UpdateHyper
from grpo_core.algorithm.learner import Learner
from grpo_core.algorithm.losses import AGGREGATIONS, token_weights
from tests.conftest import tiny_llama_config

P, G, WORLD = 4, 3, 2
REPO = Path(__file__).resolve().parents[1]

# the cases' own settings, not the product's defaults; the LM head's log-softmax eager: the
# compiled one (tests/test_head_stats.py) may round by the chunk's row count, which differs
# between one process and two ranks, and this compares the parallelism plans alone
BASE = dict(autocast="float32", learning_rate=1e-4, max_grad_norm=1e9, micro_batch_size=4,
            mu=2, beta=0.05, temperature=1.0, fused_logprobs=False)
# name -> (update settings, ranks that hold no rows). Every case has mu > 1 and beta > 0.
CASES = {
    "token_mean": (dict(loss_aggregation="token_mean"), ()),
    "seq_mean_token_mean": (dict(loss_aggregation="seq_mean_token_mean"), ()),
    "dr_grpo_width": (dict(loss_aggregation="seq_mean_token_sum_norm"), ()),  # global T
    "dr_grpo_max_len": (dict(loss_aggregation="seq_mean_token_sum_norm",
                             max_completion_len=12), ()),
    # truncated rows masked: Dr. GRPO still counts them, every rank's rows in the global B
    "dr_grpo_truncated": (dict(loss_aggregation="seq_mean_token_sum_norm", mask_truncated=True,
                               max_completion_len=12), ()),
    "clipped_truncated_gspo": (dict(loss_aggregation="token_mean", max_grad_norm=1e-2,
                                    mask_truncated=True, ratio_level="sequence",
                                    micro_batch_size=3, learning_rate=3e-2, mu=3), ()),
    "rank1_empty": (dict(loss_aggregation="seq_mean_token_mean"), (1,)),
}
# The same update with FSDP2: sharded parameters, padded passes on the rank with no rows.
CASES.update({f"fsdp2_{name}": ({**CASES[name][0], "data_parallel": "fsdp2"}, CASES[name][1])
              for name in ("token_mean", "dr_grpo_max_len", "clipped_truncated_gspo",
                           "rank1_empty")})


def rows(seed=0):
    """P*G rows (group-major): random prompts (2-6 tokens), completions of 1-9 tokens, some
    truncated, and group advantages of fixed rewards."""
    g = torch.Generator().manual_seed(seed)
    prompts, completions = [], []
    for _ in range(P * G):
        n = int(torch.randint(1, 6, (1,), generator=g))
        prompts.append([1] + torch.randint(3, 256, (n,), generator=g).tolist())
        m = int(torch.randint(1, 10, (1,), generator=g))
        completions.append(torch.randint(3, 256, (m,), generator=g).tolist())
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 1.0], [1.0, 1.0, 0.0], [0.2, 0.0, 0.9]])
    truncated = [i % 5 == 1 for i in range(P * G)]
    return prompts, completions, group_advantages(rewards).reshape(-1), truncated


def batch_of(groups):
    """The update batch of the given groups, padded on its own (as a rank pads its shard)."""
    prompts, completions, adv, truncated = rows()
    idx = [p * G + i for p in groups for i in range(G)]
    return build_batch([prompts[i] for i in idx], [completions[i] for i in idx], adv[idx],
                       truncated=[truncated[i] for i in idx], pad_id=0)


def run_case(settings, groups):
    """(parameters, last epoch's grads, metrics) after one update on `groups` (None: no rows)."""
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    learner = Learner(LlamaForCausalLM(tiny_llama_config()).eval(), UpdateHyper(**{**BASE, **settings}))
    metrics = learner.update(batch_of(groups) if groups else None)
    return _whole_params(learner), _whole_grads(learner), metrics


def _whole_params(learner):
    """Unsharded copies (FSDP2 gathers: every rank calls this, same order)."""
    return {n: sharding.full(p.detach()).clone() for n, p in learner.model.named_parameters()}


def _whole_grads(learner):
    return {n: sharding.full(p.grad).clone() for n, p in learner.model.named_parameters()
            if p.grad is not None}


def fsdp2_resume_and_save(rank: int, out: Path) -> dict:
    """FSDP2: the full state written by rank 0 and loaded by every rank into a fresh learner
    continues exactly; `save_pretrained` writes the whole weights once; each rank holds about
    half of the parameters."""
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    hyper = UpdateHyper(**{**BASE, "data_parallel": "fsdp2"})
    per = P // WORLD
    shard = batch_of(list(range(rank * per, (rank + 1) * per)))
    torch.manual_seed(0)
    first = Learner(LlamaForCausalLM(tiny_llama_config()).eval(), hyper)
    first.update(shard)
    state = first.state_dict()  # collective; the full state on rank 0 only
    if rank == 0:
        torch.save(state, out / "state.pt")
    first.save_pretrained(out / "ckpt")
    saved = _whole_params(first)
    local = sum(p.to_local().numel() for p in first.model.parameters())
    dist.barrier()
    torch.manual_seed(0)  # the initial weights (and reference): the update must come from the state
    second = Learner(LlamaForCausalLM(tiny_llama_config()).eval(), hyper)
    second.load_state_dict(torch.load(out / "state.pt", weights_only=False))
    first.update(shard)
    second.update(shard)
    return {"continued": _whole_params(first), "resumed": _whole_params(second),
            "saved": saved, "state_keys": sorted(k for k, v in state.items() if v != {}),
            "local_numel": local,
            "written": load_file(str(out / "ckpt" / "model.safetensors")) if rank == 0 else None}


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=WORLD, timeout=__import__("datetime").timedelta(seconds=60))
    torch.set_num_threads(1)
    results = {}
    per = P // WORLD
    for name, (settings, empty) in CASES.items():
        groups = [] if rank in empty else list(range(rank * per, (rank + 1) * per))
        results[name] = run_case(settings, groups)
    # batch-std advantages over the whole batch, from each rank's own groups
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 1.0], [1.0, 1.0, 0.0], [0.2, 0.0, 0.9]])
    local = rewards[rank * per:(rank + 1) * per]
    everything, mine = distributed.gather_groups(local)
    adv, adv_metrics = advantages_for(everything, "batch_std", 1e-6)
    results["batch_std"] = (adv[mine], adv_metrics)
    results["reduced"] = distributed.reduce_metrics(
        {"a/mean": float(rank), "b/min": float(rank), "b/max": float(rank)})
    results["gathered"] = distributed.gather_to_main(f"rank{rank}")
    results["fsdp2_resume"] = fsdp2_resume_and_save(rank, Path(out))
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Both ranks' results of every case (one spawn for all: process start-up dominates)."""
    out = tmp_path_factory.mktemp("dist")
    mp.start_processes(_worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True,
                       start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_ranks_take_the_single_process_step(two_ranks, name):
    settings, empty = CASES[name]
    per = P // WORLD
    groups = [g for r in range(WORLD) if r not in empty for g in range(r * per, (r + 1) * per)]
    params, grads, metrics = run_case(settings, groups)
    # Adam divides by sqrt(v): where a gradient is near zero, summation-order rounding (two
    # ranks' partial sums vs one) moves the step by a fraction of the learning rate. On an
    # AVX512 EPYC the GSPO case (lr 3e-2, mu 3) differed by 1.2e-5 in 2 of 8192 weights.
    lr = {**BASE, **settings}["learning_rate"]
    atol = max(1e-5, 1e-3 * lr)
    for r in range(WORLD):
        p2, g2, m2 = two_ranks[r][name]
        for key, value in params.items():
            torch.testing.assert_close(p2[key], value, atol=atol, rtol=0,
                                       msg=lambda m, r=r, key=key: f"rank {r} {key}: {m}")
            torch.testing.assert_close(g2[key], grads[key], atol=1e-6, rtol=1e-4)
        for key in ("loss", "kl", "entropy", "grad_norm", "clip_frac_low", "clip_frac_high",
                    "ratio_mean", "ratio_min", "ratio_max", "tokens", "skipped"):
            assert m2[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-7), (r, key)
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    start = dict(LlamaForCausalLM(tiny_llama_config()).named_parameters())
    moved = max(float((params[k] - start[k].detach()).abs().max()) for k in params)
    assert moved > 1e-5  # the comparison is not between two unchanged models
    assert metrics["kl"] > 0  # beta > 0 was active in epochs 2..mu


def test_clipping_uses_the_global_norm(two_ranks):
    _, _, metrics = two_ranks[0]["clipped_truncated_gspo"]
    assert metrics["grad_norm"] > 1e-2  # the clip bound was active (and equal: see above)


def test_batch_std_advantages_are_global(two_ranks):
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 1.0], [1.0, 1.0, 0.0], [0.2, 0.0, 0.9]])
    expected, metrics = advantages_for(rewards, "batch_std", 1e-6)
    got = torch.cat([two_ranks[r]["batch_std"][0] for r in range(WORLD)])
    torch.testing.assert_close(got, expected)
    assert two_ranks[1]["batch_std"][1] == pytest.approx(metrics)
    # not what the per-rank std would give: the test can tell the two apart
    local, _ = advantages_for(rewards[:2], "batch_std", 1e-6)
    assert not torch.allclose(local, expected[:2])


def test_reduced_metrics_and_gather(two_ranks):
    for r in range(WORLD):
        assert two_ranks[r]["reduced"] == {"a/mean": 0.5, "b/min": 0.0, "b/max": 1.0}
    assert two_ranks[0]["gathered"] == ["rank0", "rank1"] and two_ranks[1]["gathered"] is None


def test_fsdp2_shards_saves_and_resumes_exactly(two_ranks):
    res = [two_ranks[r]["fsdp2_resume"] for r in range(WORLD)]
    for r in range(WORLD):
        for key, value in res[r]["continued"].items():
            torch.testing.assert_close(res[r]["resumed"][key], value, atol=1e-6, rtol=0)
    assert {"model", "optimizer"} <= set(res[0]["state_keys"])
    assert "model" not in res[1]["state_keys"]  # rank 1 keeps no copy of the full state
    written = res[0]["written"]
    for key, value in res[0]["saved"].items():
        if key in written:  # a tied lm_head is stored once, as the embedding
            torch.testing.assert_close(written[key], value)
    total = sum(v.numel() for v in res[0]["saved"].values())
    for r in range(WORLD):  # sharded: each rank holds about half (dim 0 rounds up)
        assert res[r]["local_numel"] <= 0.55 * total, (r, res[r]["local_numel"], total)


def _shard_mask(lengths, truncated):
    """A shard's `(B_r, T_r)` loss mask as the Learner builds it under mask_truncated: padded
    to the shard's own longest completion, truncated rows zeroed; no rows: `(0, 1)`."""
    if not lengths:
        return torch.zeros((0, 1))
    width = max(lengths)
    return torch.tensor([[0.0 if cut else float(t < n) for t in range(width)]
                         for n, cut in zip(lengths, truncated)])


@pytest.mark.parametrize("max_len", [None, 12])
@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_rank_weights_are_slices_of_the_whole_batch_weights(mode, max_len):
    # uneven shards of different widths, fully masked rows on some ranks, a rank with no rows
    lengths = [3, 7, 1, 5, 2, 9, 4, 6]
    truncated = [False, True, False, False, True, True, False, False]
    shards = [slice(0, 3), slice(3, 3), slice(3, 4), slice(4, 8)]
    whole = token_weights(_shard_mask(lengths, truncated), mode, max_len)  # one process
    masks = [_shard_mask(lengths[s], truncated[s]) for s in shards]
    parts = torch.stack([distributed._counts(m) for m in masks])  # what the all-gather returns
    for s, mask in zip(shards, masks):
        got = distributed.rescale_to_global(token_weights(mask, mode, max_len), mask, parts,
                                            mode, max_len)
        torch.testing.assert_close(got, whole[s, :mask.shape[1]], rtol=1e-6, atol=0)
    assert set(distributed._RESCALE) == set(AGGREGATIONS)


def test_single_process_helpers_are_identities():
    t = torch.arange(6.0).reshape(3, 2)
    assert distributed.world() == 1 and distributed.is_main()
    assert distributed.all_reduce(t) is t and distributed.gather_rows(t) is t
    assert distributed.gather_groups(t) == (t, slice(0, 3))
    assert distributed.shard_range(8) == slice(0, 8)
    with pytest.raises(ValueError, match="only for a rank with no rows"):
        Learner(torch.nn.Linear(2, 2), UpdateHyper()).update(None)


# ----------------------------------------------------------------------------- failures
SCRIPT = """
import os, sys, time, torch
from grpo_core.parallel import distributed
from grpo_core.errors import UserError
distributed.init_from_env(float(sys.argv[2]))
if distributed.rank() == 1:
    if sys.argv[1] == "raise":
        raise UserError("rank 1 could not read its shard")
    if sys.argv[1] == "shard":
        distributed.shard_range(3)
    time.sleep(120)  # hang: never reaches the collective
print("sum", distributed.all_reduce(torch.ones(1)).item(), flush=True)
"""


def _torchrun(tmp_path, mode, timeout_s):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", str(script), mode, str(timeout_s)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    return out, time.perf_counter() - start


@pytest.mark.parametrize("mode, shown", [
    ("raise", "rank 1 could not read its shard"),
    ("shard", "rollout.prompts_per_iteration = 3 must be divisible by the number of training "
              "processes (2)"),
])
def test_a_failing_rank_fails_the_job_with_its_error(tmp_path, mode, shown):
    out, seconds = _torchrun(tmp_path, mode, timeout_s=300)
    assert out.returncode != 0
    assert shown in out.stdout + out.stderr
    assert seconds < 60  # not the 300 s collective timeout: the failure is noticed at once


def test_a_hanging_rank_times_out(tmp_path):
    out, seconds = _torchrun(tmp_path, "hang", timeout_s=3)
    assert out.returncode != 0
    assert "sum" not in out.stdout
    assert seconds < 60  # the hanging rank sleeps 120 s: the collective timeout ended the job



# ----------------------------------------------------------------------------- launcher
def test_torchrun_command_lines():
    from flows.launch import torchrun_command

    one = torchrun_command(4, overrides=("algorithm.beta=0",), evaluate_at_end=False)
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc_per_node", "4", "--standalone",
                       "-m", "flows.cli", "train", "--params", "params.yaml",
                       "--set", "algorithm.beta=0", "--no-eval"]
    many = torchrun_command(8, nnodes=2, rdzv_endpoint="node0:29400", resume=True)
    assert many[3:14] == ["--nproc_per_node", "8", "--nnodes", "2", "--rdzv-backend", "c10d",
                          "--rdzv-endpoint", "node0:29400", "--rdzv-id", "grpo", "-m"]
    assert many[-1] == "--resume"
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_command(8, nnodes=2)


def test_launcher_fails_when_the_job_fails(tmp_path, monkeypatch):
    from flows.launch import run_torchrun, torchrun_command

    monkeypatch.chdir(tmp_path)
    cmd = torchrun_command(2, overrides=("algorithm.beta=-1",))  # every rank: a UserError
    with pytest.raises(RuntimeError, match="torchrun exited with status"):
        run_torchrun.fn(cmd)
