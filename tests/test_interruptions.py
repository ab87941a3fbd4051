"""Runs that are interrupted, resumed with a different recipe, resumed after they finished or
fed a broken part (issue 21): real `grpo` processes, real SIGKILL, a real MLflow store, the HF
engine on the tiny model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.pipeline_support import (BIN, VARIETY_REWARD, grpo_env, kill_at_rollout, run_grpo,
                                    tiny_params)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

BROKEN_REWARD = """
def broken(completions, **_):
    raise KeyError("no such field")
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_sft_dir, data_dir) -> Path:
    root = tmp_path_factory.mktemp("interrupted")
    (root / "myrewards.py").write_text(VARIETY_REWARD + BROKEN_REWARD)
    tiny_params(root, tiny_sft_dir, data_dir, engine="hf", iterations=4,
                train={"checkpoint_every": 4, "resume_every": 2},
                reward={"functions": {"myrewards:vowels": 1.0}})
    assert run_grpo(root, "prepare").returncode == 0
    return root


def _one_line_error(out, says: str) -> None:
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"grpo: error: {says}" in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert "| ERROR" not in out.stderr, out.stderr[-3000:]  # Prefect's copy of the same error


def _runs(root: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time"])


def test_resume_continues_only_the_interrupted_run_with_its_own_recipe(project):
    grpo = project / "models" / "grpo"
    kill_at_rollout(project, 3, "--no-eval")  # the state holds iteration 2
    assert json.loads((grpo / "run.json").read_text())["status"] == "RUNNING"

    out = run_grpo(project, "train", "--resume", "--set", "rollout.group_size=4")
    _one_line_error(out, "--resume with a different recipe: rollout.group_size 2 -> 4; a resumed "
                         "run continues the saved one (allow a change with --allow-change KEY, "
                         "or start a new run)")

    learner = grpo / "resume" / "learner.pt"
    saved = learner.read_bytes()
    learner.write_bytes(saved[: len(saved) // 2])
    out = run_grpo(project, "train", "--resume")
    _one_line_error(out, f"the resume state {Path('models/grpo/resume')} is damaged")
    learner.write_bytes(saved)

    (grpo / "resume.tmp").mkdir()  # what a save killed before its commit point leaves
    out = run_grpo(project, "train", "--resume", "--no-eval", "--set", "train.iterations=5",
                   "--allow-change", "train.iterations")
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (grpo / "resume.tmp").exists()
    client, runs = _runs(project)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["resumed_at_3.train.iterations"] == "4 -> 5"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "reward/total/mean")]
    assert sorted(steps) == [1, 2, 3, 4, 5]
    marker = json.loads((grpo / "run.json").read_text())
    assert marker == {"run_id": runs[0].info.run_id, "status": "FINISHED", "iteration": 5}

    out = run_grpo(project, "train", "--resume")
    _one_line_error(out, f"nothing to resume: run {runs[0].info.run_id} finished at iteration 5")

    shutil.rmtree(project / "rollouts")  # so that the kill waits for the new run's rollout
    kill_at_rollout(project, 1)  # a new run, killed before its first saved state
    assert not (grpo / "resume").exists(), "the new run replaced the finished run's state"
    _, runs = _runs(project)
    out = run_grpo(project, "train", "--resume")
    _one_line_error(out, f"nothing to resume: run {runs[-1].info.run_id} stopped before it "
                         f"saved a state")
    assert [r.info.status for r in runs] == ["FINISHED", "RUNNING"]


def test_prompts_that_never_fit_stop_the_run_in_one_line(project):
    out = run_grpo(project, "train", "--set", "rollout.max_prompt_tokens=8")
    _one_line_error(out, "rollout.max_prompt_tokens=8: no training prompt fits (the shortest has")


def test_a_reward_function_that_always_raises_is_reported_then_stops_the_run(project):
    out = run_grpo(project, "train", "--no-eval", "--set", "train.iterations=2",
                   "--set", "reward.functions={\"myrewards:broken\": 1.0}",
                   "--set", "reward.failure_stop_rate=null")
    assert out.returncode == 0, out.stderr[-3000:]
    first = ("warning: reward function myrewards:broken failed on 4 of 4 completions (scored 0); "
             "first failure: KeyError: 'no such field'")
    assert out.stderr.count(first) == 1, out.stderr[-3000:]  # said once, not per iteration
    _, runs = _runs(project)
    assert runs[-1].data.tags["reward.myrewards_broken.failure"] == first.removeprefix("warning: ")

    out = run_grpo(project, "train", "--no-eval",
                   "--set", "reward.functions={\"myrewards:broken\": 1.0}",
                   "--set", "rollout.prompts_per_iteration=8", "--set", "rollout.group_size=8")
    _one_line_error(out, "reward function myrewards:broken failed on 100% of 64 completions "
                         "(reward.failure_stop_rate=0.5): KeyError: 'no such field'")


def test_evaluate_refuses_a_pickle_only_checkpoint_before_starting(project, tiny_sft_dir):
    pickled = project / "pickled"
    shutil.copytree(tiny_sft_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    out = run_grpo(project, "evaluate", "--checkpoint", "pickled")
    _one_line_error(out, "--checkpoint pickled: only pickled weights (pytorch_model.bin), which "
                         "are refused: convert them to safetensors")


def _own_servers(root: Path) -> list[int]:
    """Pids of Prefect servers started for this project (their PREFECT_HOME is its own)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if b"prefect.server.api.server:create_app" not in (proc / "cmdline").read_bytes():
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if f"PREFECT_HOME={root / '.prefect'}".encode() in env:
            pids.append(int(proc.name))
    return pids


def _start_alone(root: Path, *args: str) -> subprocess.Popen:
    """`grpo train` with no PREFECT_API_URL (so it starts its own server), in its own process
    group as a terminal's foreground job is."""
    env = grpo_env(root)
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([str(BIN / "grpo"), "train", *args], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_file(path: Path, proc: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.time() + seconds
    while not path.is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, f"timed out waiting for {path}"
        time.sleep(0.05)


@pytest.mark.parametrize("sig,status,says", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_ends_the_run_in_seconds_killed_and_resumable(project, sig, status,
                                                                         says):
    shutil.rmtree(project / "rollouts", ignore_errors=True)
    proc = _start_alone(project, "--no-eval", "--set", "train.iterations=6")
    _wait_for_file(project / "rollouts" / "iter_00003.parquet", proc)  # a state at 2 is saved
    assert len(_own_servers(project)) == 1
    os.killpg(proc.pid, sig)  # SIGINT: what Ctrl-C at the terminal sends
    start = time.time()
    _, err = proc.communicate(timeout=120)
    took = time.time() - start
    assert proc.returncode == status, err[-3000:]
    assert took < 30, f"stopping took {took:.0f} s"
    assert err.strip().splitlines()[-1] == f"grpo: {says}" and "Traceback" not in err
    assert "| ERROR" not in err, err[-3000:]  # "Crash detected!": the last line says it
    _, runs = _runs(project)
    assert runs[-1].info.status == "KILLED"
    marker = json.loads((project / "models" / "grpo" / "run.json").read_text())
    assert marker["status"] == "KILLED" and marker["run_id"] == runs[-1].info.run_id
    assert _own_servers(project) == []
    out = run_grpo(project, "train", "--resume", "--no-eval", "--set", "train.iterations=6")
    assert out.returncode == 0, out.stderr[-3000:]  # the interrupted run continues


def test_sigkill_leaves_no_prefect_server_behind(project):
    shutil.rmtree(project / "rollouts", ignore_errors=True)
    proc = _start_alone(project, "--no-eval")
    _wait_for_file(project / "rollouts" / "iter_00001.parquet", proc)
    servers = _own_servers(project)
    assert len(servers) == 1
    os.kill(proc.pid, signal.SIGKILL)  # grpo alone: its server is in its own session
    proc.communicate(timeout=60)
    deadline = time.time() + 20
    while _own_servers(project) and time.time() < deadline:
        time.sleep(0.2)
    assert _own_servers(project) == [], "the server outlived the process that started it"


def test_a_training_flow_run_from_a_deployment_meets_the_lock_too(project, monkeypatch):
    import sys

    from flows.train import train_flow
    from grpo_core.errors import UserError

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from flows.run.lock import run_lock\n"
         "with run_lock('models/grpo', 'grpo train (by hand)'):\n"
         "    print('held', flush=True); time.sleep(120)"],
        cwd=project, env=grpo_env(project), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.chdir(project)
        start = time.time()
        with pytest.raises(UserError, match=r"models/grpo is in use by another run \(pid "
                                            rf"{holder.pid}, since .*: grpo train \(by hand\)\)"):
            train_flow("params.yaml", ["train.iterations=1"])  # what a served run calls
        assert time.time() - start < 60
    finally:
        holder.kill()
        holder.wait()


def test_a_prefect_server_that_dies_mid_run_is_restarted_and_the_run_ends_with_results(project):
    shutil.rmtree(project / "rollouts", ignore_errors=True)
    proc = _start_alone(project, "--no-eval")
    _wait_for_file(project / "rollouts" / "iter_00001.parquet", proc)
    [server] = _own_servers(project)
    os.kill(server, signal.SIGKILL)  # the server dies; grpo does not
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "warning: the temporary Prefect server stopped (status -9); restarting it" in err
    assert "Traceback" not in err and "ConnectError" not in err
    _, runs = _runs(project)
    assert runs[-1].info.status == "FINISHED"
    assert (project / "rollouts" / "iter_00004.parquet").is_file()  # every iteration ran
    assert (project / "models" / "grpo" / "final" / "model.safetensors").is_file()
    assert _own_servers(project) == []  # the restarted one is stopped too


def test_a_second_run_in_the_same_project_stops_at_once_and_a_dead_runs_lock_is_taken(project):
    shutil.rmtree(project / "rollouts", ignore_errors=True)
    first = subprocess.Popen([str(BIN / "grpo"), "train", "--no-eval"], cwd=project,
                             env=grpo_env(project), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_file(project / "rollouts" / "iter_00001.parquet", first)
        start = time.time()
        second = run_grpo(project, "train", "--no-eval")
        assert time.time() - start < 30, "the second run waited before it refused"
        _one_line_error(second, f"{Path('models/grpo')} is in use by another run (pid "
                                f"{first.pid}, since ")
        assert "grpo train --no-eval); wait for it to end, or give this run another " \
               "train.output_dir" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the holder dies without releasing anything
        first.wait(timeout=60)
    out = run_grpo(project, "train", "--set", "rollout.max_prompt_tokens=8")
    _one_line_error(out, "rollout.max_prompt_tokens=8: no training prompt fits")  # got the lock
