"""The house rules, checked on the source: no import cycle among project modules, no module
taking another's private names, small files and functions, and dvc.yaml stages that depend on
every project module their command imports (else `dvc repro` calls a stale result up to
date)."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from tests.import_graph import REPO, closure, cycles, module_name, project_modules

MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def test_no_import_cycle():
    assert cycles(project_modules()) == []


def test_no_private_name_crosses_a_module():
    """Counting the tests and benchmarks: a name that another module needs is public."""
    modules = project_modules(("grpo_core", "flows", "tests", "bench"))
    taken = {m.name: m.private for m in modules.values() if m.private}
    assert taken == {}


def _sources():
    return [p for root in ("grpo_core", "flows") for p in sorted((REPO / root).rglob("*.py"))]


def test_files_and_functions_stay_small():
    too_long = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{module_name(path)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{module_name(path)}.{node.name}: {lines} lines")
    assert too_long == []


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _resolve(template: str) -> str:
    """`${train.output_dir}/final` -> `models/grpo/final`, from params.yaml as DVC does."""
    def lookup(match):
        node = _params()
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)
    return re.sub(r"\$\{([\w.]+)\}", lookup, template)


def _entry_modules(cmd: str) -> list[str]:
    """`grpo train --no-eval` -> the CLI module and the module of the `train` command."""
    from flows.cli import COMMANDS

    words = cmd.split()
    assert words[0] == "grpo", f"a stage command that is not `grpo ...`: {cmd}"
    return ["flows.cli", COMMANDS[words[1]].target.partition(":")[0]]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_dvc_stage_depends_on_the_code_it_runs(stage):
    spec = _stages()[stage]
    deps = [_resolve(d) for d in spec.get("deps", [])]
    modules = project_modules()
    # the CLI's command table names every stage: only this stage's command runs
    needed = closure(modules, _entry_modules(spec["cmd"]), skip_targets_of=("flows.cli",))
    files = sorted(str(modules[m].path.relative_to(REPO)) for m in needed if not modules[m].inert)
    missing = [f for f in files if not _covered(f, deps)]
    assert missing == [], f"dvc.yaml stage {stage!r} runs these files but does not depend on them"
    for dep in deps:  # a dep that does not exist is a typo DVC reports only at run time
        if not dep.startswith(("data/", "models/", "metrics/", "reports/", "rollouts/")):
            assert (REPO / dep).exists(), f"dvc.yaml stage {stage!r}: no such dep {dep}"


# Keys a stage may read without depending on them: where results are logged, not what they are.
NOT_INPUTS = ("tracking",)


def _param_covered(key: str, params: list[str]) -> bool:
    """"rollout.engine" is covered by `rollout` or `rollout.engine`; a whole section read
    ("evaluate") only by the section itself."""
    return any(key == p or key.startswith(p + ".") for p in params)


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_dvc_stage_depends_on_the_settings_it_reads(stage):
    spec = _stages()[stage]
    params = [p if isinstance(p, str) else next(iter(p)) for p in spec.get("params", [])]
    modules = project_modules()
    needed = closure(modules, _entry_modules(spec["cmd"]), skip_targets_of=("flows.cli",))
    read = set().union(*(modules[m].settings for m in needed))
    # a key templated into the stage's cmd, deps or outs is one DVC sees already
    templated = set(re.findall(r"\$\{([\w.]+)\}", yaml.safe_dump(spec)))
    missing = sorted(k for k in read - templated
                     if not k.startswith(NOT_INPUTS) and not _param_covered(k, params))
    assert missing == [], f"dvc.yaml stage {stage!r} reads these settings but does not list them"


def test_readme_is_a_short_guide_with_the_two_commands_first():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300
    head = "\n".join(lines[:40])
    assert "make run" in head and "make test" in head
