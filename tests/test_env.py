"""The environment switches live in grpo_core/env/*.env: the Makefile (and so CI) exports
exactly those, and `grpo` fills in the telemetry ones a user has not set."""

from __future__ import annotations

import os
import subprocess

from grpo_core.env import OFFLINE, QUIET, TERSE, read_env_file
from tests.import_graph import REPO


def test_the_makefile_exports_every_switch(tmp_path):
    show = tmp_path / "show.mk"
    names = sorted({**QUIET, **OFFLINE})
    show.write_text("show:\n" + "".join(f"\t@echo {n}=$${n}\n" for n in names))
    env = {k: v for k, v in os.environ.items() if k not in names}  # nothing inherited
    out = subprocess.run(["make", "-s", "-f", "Makefile", "-f", str(show), "show"], cwd=REPO,
                         env=env, capture_output=True, text=True, check=True).stdout
    assert dict(line.split("=", 1) for line in out.split()) == {**QUIET, **OFFLINE}


def test_switch_files_are_plain_key_value_lines(tmp_path):
    f = tmp_path / "x.env"
    f.write_text("# a comment\n\nA=1\nB = false\n")
    assert read_env_file(f) == {"A": "1", "B": "false"}
    assert QUIET["DO_NOT_TRACK"] == "1" and OFFLINE["HF_HUB_OFFLINE"] == "1"


def _unset(monkeypatch, names) -> None:
    """Unset `names` for this test; whatever the test sets is removed after it."""
    for name in names:
        monkeypatch.setenv(name, "")  # recorded, so that teardown restores the real state
        monkeypatch.delenv(name)


def test_the_cli_sets_telemetry_defaults_but_leaves_the_hub_reachable(monkeypatch, capsys):
    from flows.cli import main

    _unset(monkeypatch, {**QUIET, **OFFLINE, **TERSE})
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "mine")  # the user's value wins
    assert main(["config"]) == 0
    assert {k: os.environ.get(k) for k in QUIET} == {**QUIET, "MLFLOW_DISABLE_TELEMETRY": "mine"}
    assert not any(k in os.environ for k in OFFLINE)  # `hf:` sources need the hub
    capsys.readouterr()


def test_library_logs_stay_off_the_console_unless_verbose(monkeypatch, capsys):
    from flows.cli import main

    _unset(monkeypatch, TERSE)
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "INFO")  # the user's value wins
    assert main(["config"]) == 0
    assert {k: os.environ.get(k) for k in TERSE} == {**TERSE, "VLLM_LOGGING_LEVEL": "INFO"}
    _unset(monkeypatch, TERSE)
    assert main(["--verbose", "config"]) == 0 and main(["config", "--verbose"]) == 0
    assert not any(k in os.environ for k in TERSE)
    assert "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL" in TERSE and "VLLM_LOGGING_LEVEL" in TERSE
    capsys.readouterr()
