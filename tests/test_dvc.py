"""`dvc repro` on the real dvc.yaml in a temporary git repository: a full run, a no-op rerun,
then an experiment with a changed algorithm param that reruns only train and evaluate."""


from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.pipeline_support import BIN, REPO, VARIETY_REWARD, grpo_env, tiny_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def sh(root: Path, *cmd: str, timeout: int = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=root, env=grpo_env(root), capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def ran(output: str) -> set[str]:
    """Stage names that `dvc repro` / `dvc exp run` executed."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_sft_dir, data_dir) -> Path:
    root = tmp_path_factory.mktemp("dvcproj")
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    for pkg in ("grpo_core", "flows"):  # stage deps
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "myrewards.py").write_text(VARIETY_REWARD)  # a signal even for a random model
    tiny_params(root, tiny_sft_dir, data_dir, engine="hf", iterations=1,
                evaluate={"samples": 1}, reward={"functions": {"myrewards:vowels": 1.0}})
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "ci@example.invalid")
    sh(root, "git", "config", "user.name", "ci")
    sh(root, str(BIN / "dvc"), "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "tiny project")
    return root


def test_repro_noop_and_param_change(project):
    dvc = str(BIN / "dvc")
    first = sh(project, dvc, "repro")
    assert ran(first.stdout) == {"prepare", "validate", "checkpoint", "train", "evaluate"}
    assert json.loads((project / "metrics" / "eval.json").read_text()).keys() == {"gsm8k", "math500"}
    assert (project / "rollouts" / "iter_00001.parquet").is_file()

    again = sh(project, dvc, "repro")
    assert ran(again.stdout) == set(), again.stdout
    assert "Data and pipelines are up to date." in again.stdout

    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "first repro")
    # scaled advantages give another update, so a new model: train and evaluate rerun
    exp = sh(project, dvc, "exp", "run", "-S", "algorithm.advantage=dr_grpo")
    assert ran(exp.stdout) == {"train", "evaluate"}, exp.stdout

    params = sh(project, dvc, "params", "diff").stdout
    assert "algorithm.advantage" in params and "grpo" in params and "dr_grpo" in params
    metrics = sh(project, dvc, "metrics", "show").stdout
    assert "gsm8k.accuracy" in metrics and "metrics/validation.json" in metrics
    shown = sh(project, dvc, "exp", "show", "--csv").stdout
    assert "dr_grpo" in shown


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_stages_depend_on_the_training_mixture_params(stage):
    """train draws the mixture (rows, difficulty limits, seed) itself, and evaluate takes its
    few-shot examples from it: a change there must rerun them, not only `prepare`."""
    import yaml

    params = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["params"]
    assert {"data.train", "data.seed", "data.prompt"} <= set(params)
