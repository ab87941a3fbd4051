"""A Prefect flow that launches `grpo train` under `torchrun`: the flow to deploy on a Prefect
work pool of GPU machines (README, "Scaling out").

A worker of a `process` work pool runs one Python process per flow run; data-parallel
training needs one process per GPU. So the deployed flow is this launcher: its task runs the
torchrun line on the worker's machine and fails when the job fails. Rank 0 of the job runs
the `grpo-train` flow itself and reports it to the same Prefect server (the worker's
PREFECT_API_URL is inherited), so the UI shows the launcher run and the training run.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Optional

from prefect import flow, task


def torchrun_command(nproc_per_node: int, *, nnodes: int = 1,
                     rdzv_endpoint: Optional[str] = None, rdzv_id: str = "grpo",
                     params: str = "params.yaml", overrides: tuple[str, ...] = (),
                     resume: bool = False, evaluate_at_end: bool = True) -> list[str]:
    """argv of `torchrun ... -m flows.cli train ...`. One node: `--standalone` (a free local
    port); several: c10d rendezvous at `rdzv_endpoint` (host:port of any one node)."""
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError(f"nproc_per_node and nnodes must be >= 1, got {nproc_per_node}, {nnodes}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node)]
    if nnodes == 1:
        cmd.append("--standalone")
    elif not rdzv_endpoint:
        raise ValueError("several nodes need rdzv_endpoint (host:port of one of them)")
    else:
        cmd += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id]
    cmd += ["-m", "flows.cli", "train", "--params", params]
    for item in overrides:
        cmd += ["--set", item]
    return cmd + (["--resume"] if resume else []) + ([] if evaluate_at_end else ["--no-eval"])


@task(name="torchrun")
def run_torchrun(cmd: list[str]) -> int:
    """Run the job; its output goes to the worker's stdout/stderr (one stream per rank)."""
    code = subprocess.run(cmd).returncode
    if code:
        raise RuntimeError(f"torchrun exited with status {code}: {' '.join(cmd)}")
    return code


@flow(name="grpo-train-torchrun")
def torchrun_train(nproc_per_node: int = 1, nnodes: int = 1, rdzv_endpoint: Optional[str] = None,
                   params: str = "params.yaml", overrides: Optional[list[str]] = None,
                   resume: bool = False, evaluate_at_end: bool = True) -> int:
    """Deployable: `grpo train` on this machine's GPUs (one rank per GPU)."""
    return run_torchrun(torchrun_command(
        nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint, params=params,
        overrides=tuple(overrides or ()), resume=resume, evaluate_at_end=evaluate_at_end))
