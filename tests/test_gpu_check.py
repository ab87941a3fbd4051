"""bench/gpu_check.py, the prepared check for a CUDA machine that has torch, transformers and
pydantic but none of vLLM, Prefect, MLflow, DVC: its CPU smoke run (--tiny) passes with those
packages made unimportable, the library modules it needs import without them, and its runner
records a failing or overrunning check and goes on."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"
PIPELINE_ONLY = ("vllm", "prefect", "mlflow", "dvc")  # never needed by the core loop
# also absent from a machine with only torch, transformers and pydantic
NOT_ON_A_BARE_GPU_BOX = PIPELINE_ONLY + ("pandas", "great_expectations", "math_verify", "peft",
                                         "accelerate")


def _without(names: tuple[str, ...], body: str) -> str:
    """Python source that makes `names` unimportable (None in sys.modules: `import x` raises
    ImportError and `importlib.util.find_spec(x)` is None, as for a package not installed),
    then runs `body`."""
    return (f"import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n{body}\n")


def _run(source: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", source], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_smoke_run_passes_without_the_pipeline_packages(tmp_path):
    out = tmp_path / "gpu_check.json"
    body = (f"import runpy\nsys.argv = [{str(SCRIPT)!r}, '--device', 'cpu', '--tiny', "
            f"'--out', {str(out)!r}]\nrunpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    start = time.monotonic()
    done = _run(_without(NOT_ON_A_BARE_GPU_BOX, body))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["passed"] is True and report["device"] == "cpu" and report["model"] == "tiny"
    assert {k: v["status"] for k, v in report["checks"].items()} == {
        "logprobs": "passed", "microbatch": "passed", "throughput": "passed",
        "engine_sync": "passed"}
    sync = report["checks"]["engine_sync"]["iterations"]
    assert [it["after_sync"]["max_abs_diff"] for it in sync] == [0.0, 0.0]
    # the log-prob check would see stale weights: they are far from the sampler's log-probs
    assert sync[1]["logp_vs_previous_weights"]["mean_abs_diff"] > 100 * sync[1]["logp"]["mean_abs_diff"]
    assert report["checks"]["throughput"]["tokens_per_s"] > 0
    assert "all checks passed" in done.stdout
    assert time.monotonic() - start < 90


def test_core_modules_import_without_vllm_prefect_mlflow_dvc():
    algorithm = sorted(p.stem for p in (REPO / "grpo_core" / "algorithm").glob("*.py")
                       if p.stem != "__init__")
    modules = [f"grpo_core.algorithm.{m}" for m in algorithm] + ["grpo_core.rollout",
                                                                 "grpo_core.rollout.hf_engine"]
    body = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    done = _run(_without(PIPELINE_ONLY, body + "print('imported')"))
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_cuda_asked_without_cuda_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", "/dev/null"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert done.stderr.startswith("gpu_check: --device cuda, but torch")


def _load_script():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("bench_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runner_records_an_error_and_a_check_that_overruns(monkeypatch):
    import torch

    gpu_check = _load_script()

    def broken(ctx):
        raise RuntimeError("kernel said no")

    monkeypatch.setitem(gpu_check.CHECKS, "broken", broken)
    monkeypatch.setitem(gpu_check.CHECKS, "slow", lambda ctx: time.sleep(30))
    monkeypatch.setitem(gpu_check.CHECKS, "fine", lambda ctx: {"passed": True})
    ctx = {"device": torch.device("cpu")}
    now = time.monotonic()
    failed = gpu_check.run_check("broken", ctx, now + 60)
    assert failed["status"] == "error" and failed["error"] == "RuntimeError: kernel said no"
    assert "kernel said no" in failed["traceback"]
    start = time.monotonic()
    slow = gpu_check.run_check("slow", ctx, start + 1.5)
    assert slow["status"] == "error" and slow["error"].startswith("BudgetSpent")
    assert time.monotonic() - start < 10
    assert gpu_check.run_check("fine", ctx, time.monotonic() + 60)["status"] == "passed"
    skipped = gpu_check.run_check("fine", ctx, time.monotonic())
    assert skipped == {"status": "skipped", "passed": False,
                       "error": "time budget spent before it began"}
