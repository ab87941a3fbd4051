"""The `grpo` console script, run as a user runs it: exit codes, one-line errors, overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

GRPO = Path(sys.executable).with_name("grpo")


def grpo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(GRPO), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120)


def test_config_prints_resolved_tree_with_overrides(tmp_path):
    out = grpo("--set", "algorithm.beta=0.02", "config", "--set", "rollout.group_size=4",
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    tree = yaml.safe_load(out.stdout)
    assert tree["algorithm"]["beta"] == 0.02
    assert tree["rollout"]["group_size"] == 4
    assert set(tree) == {"data", "validate", "checkpoint", "rollout", "reward", "algorithm",
                         "gates", "train", "evaluate", "tracking", "promote"}


def test_user_error_is_one_line_exit_2_no_traceback(tmp_path):
    out = grpo("config", "--set", "algorithm.beta=-1", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr == ("grpo: error: --set algorithm.beta=-1: "
                          "algorithm.beta must be >= 0.0, got -1\n")
    assert out.stdout == ""


def test_bad_params_file_names_file_and_line(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  iterations: 3\n  lr: 0.1\n")
    out = grpo("config", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("grpo: error: params.yaml:3: unknown key 'train.lr' ")
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


def test_debug_shows_the_traceback(tmp_path):
    out = grpo("--debug", "config", "--set", "train.iterations=0", cwd=tmp_path)
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "UserError" in out.stderr


def test_help_lists_commands_and_unknown_command_fails():
    out = grpo("--help")
    assert out.returncode == 0 and "config" in out.stdout
    out = grpo("no-such-stage")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_a_run_says_which_config_it_read_and_checks_its_inputs_before_starting(tmp_path):
    """From a directory without params.yaml (a subdirectory, say) a run says it is on the
    built-in defaults, and stops at once (no Prefect server started) on missing data."""
    out = grpo("train", "--set", "train.iterations=2", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [
        f"config: the built-in defaults (no params.yaml in {tmp_path}) with 1 --set",
        "grpo: error: processed dataset not found: data/processed/arithmetic_train.parquet "
        "(run `grpo prepare`)"]
    (tmp_path / "params.yaml").write_text("train:\n  iterations: 2\n")
    out = grpo("evaluate", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.splitlines()[0] == "config: params.yaml"
