"""`grpo`: the command line. One subcommand per stage plus the whole pipeline.

Every subcommand gets the resolved config (params.yaml + `--set` overrides) and its own
arguments. Commands are a table of import paths so that `grpo --help` stays fast: a stage's
heavy imports (torch, vLLM, Prefect) happen only when that stage runs.

User mistakes raise `UserError`: one line on stderr, exit status 2, no traceback
(`--debug` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from flows import signals
from flows.signals import is_termination
from grpo_core.config import DEFAULT_PARAMS, Config, dump_yaml, load_config
from grpo_core.env import apply_defaults
from grpo_core.errors import UserError


@dataclass(frozen=True)
class Arg:
    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    help: str
    target: str  # "module:function", called as function(cfg, args) -> exit status or None
    args: tuple[Arg, ...] = ()
    flow: bool = False  # runs a Prefect flow (and says which config it read)


def show_config(cfg: Config, args: argparse.Namespace) -> int:
    """Print the resolved config tree (after overrides) as YAML."""
    print(dump_yaml(cfg), end="")
    return 0


COMMANDS: dict[str, Command] = {
    "config": Command("print the resolved config (params.yaml + --set overrides)",
                      "flows.cli:show_config"),
    "prepare": Command("load the datasets (GSM8K, MATH, arithmetic, data.custom) into "
                       "data/processed/*.parquet", "flows.prepare:cli"),
    "validate": Command("run the Great Expectations suites on the processed data", "flows.validate:cli"),
    "checkpoint": Command("materialise the SFT checkpoint (checkpoint.source) as safetensors", "flows.checkpoint:cli"),
    "train": Command("GRPO training: rollouts, rewards, updates, checkpoints (a Prefect flow)",
                     "flows.train:cli",
                     (arg("--resume", action="store_true",
                          help="continue from the last completed iteration in the same MLflow run"),
                      arg("--allow-change", action="append", default=[], metavar="KEY",
                          help="with --resume: let KEY differ from the interrupted run's recipe, "
                               "e.g. train.iterations (repeatable; recorded as an MLflow tag)"),
                      arg("--no-eval", action="store_true",
                          help="skip the final evaluation (the DVC pipeline runs it as a stage)")),
                     flow=True),
    "evaluate": Command("evaluate a checkpoint on evaluate.datasets, optionally against a "
                        "baseline (a Prefect flow)",
                        "flows.evaluate:cli",
                        (arg("--checkpoint", default="models/grpo/final", metavar="DIR",
                             help="HF model directory (default: %(default)s)"),
                         arg("--baseline", default=None, metavar="DIR",
                             help="also evaluate this model on the same problems and report "
                                  "the paired change with its 95%% CI")),
                        flow=True),
    "pipeline": Command("run every stage end to end (what `make run` runs)", "flows.pipeline:cli",
                        flow=True),
    "serve": Command("serve the pipeline as a Prefect deployment on a cron schedule",
                     "flows.serve:cli",
                     (arg("--cron", required=True, help='cron expression, e.g. "0 3 * * *"'),
                      arg("--name", default="nightly", help="deployment name (default: %(default)s)"))),
}


def _common_options(top_level: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the subcommand. They land in separate attributes
    (argparse would let the subcommand's defaults overwrite the top level's values) and are
    merged by `_merged_options`."""
    suffix = "" if top_level else "_sub"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", dest="params" + suffix, metavar="FILE",
                        help="config file (default: params.yaml; built-in defaults if absent)")
    common.add_argument("--set", dest="overrides" + suffix, action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config value, e.g. algorithm.beta=0.02 (repeatable)")
    common.add_argument("--debug", dest="debug" + suffix, action="store_true",
                        help="show tracebacks for errors")
    common.add_argument("--verbose", dest="verbose" + suffix, action="store_true",
                        help="show the libraries' logs too (Prefect, vLLM, MLflow, transformers)")
    return common


def _merged_options(args: argparse.Namespace) -> argparse.Namespace:
    args.params = args.params_sub or args.params or DEFAULT_PARAMS
    args.overrides = args.overrides + args.overrides_sub
    args.debug = args.debug or args.debug_sub
    args.verbose = args.verbose or args.verbose_sub
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grpo", parents=[_common_options(top_level=True)],
        description="GRPO training pipeline: prepare -> validate -> checkpoint -> train -> evaluate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options(top_level=False)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help, parents=[common])
        for a in command.args:
            p.add_argument(*a.flags, **a.options)
    return parser


def _resolve(target: str) -> Callable[[Config, argparse.Namespace], Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class _SaidByTheCli(logging.Filter):
    """On Prefect's task and flow run loggers: a failure the CLI's last line already states
    (a user's mistake: `grpo: error: ...`; Ctrl-C or SIGTERM: `grpo: interrupted`) loses its
    traceback (kept with --debug) and is marked, with the run's later error records about it
    (Prefect's "Finished in state Failed(...)"), so that the console leaves them out while
    Prefect's own record of the run keeps them."""

    def __init__(self) -> None:
        super().__init__()
        self._told_runs: set[str] = set()  # task or flow run ids whose failure the CLI states

    def filter(self, record: logging.LogRecord) -> bool:
        run = getattr(record, "task_run_id", None) or getattr(record, "flow_run_id", None)
        if record.exc_info and _told(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
            if run is not None:  # a record outside any run marks only itself
                self._told_runs.add(str(run))
        # "Crash detected!" carries no exception; it is logged while handling the stop
        handling = sys.exc_info()[1]
        if record.levelno >= logging.ERROR and (
                str(run) in self._told_runs or signals.pending() or _told(handling)):
            record.said_by_the_cli = True
        return True


def _told(exc: BaseException | None) -> bool:
    """Whether the CLI's last line states this failure (so its traceback says nothing more)."""
    return isinstance(exc, (UserError, KeyboardInterrupt)) or is_termination(exc)


class _NotTwice(logging.Filter):
    """On the console handler: leaves out what `_SaidByTheCli` marked."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "said_by_the_cli", False)


def _quiet_prefect_console() -> None:
    """Prefect's console handler sits on the root logger once prefect is imported (the
    command's module imports it); it is looked up by name to keep `grpo --help` fast."""
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.addFilter(_NotTwice())


def _config_source(params: str, overrides: list[str]) -> str:
    """Which file the config came from: without params.yaml in this directory (a run started
    from a subdirectory, say) the built-in defaults apply, which is worth saying."""
    source = (str(params) if Path(params).is_file() else
              f"the built-in defaults (no {params} in {Path.cwd()})")
    return source + (f" with {len(overrides)} --set" if overrides else "")


def main(argv: list[str] | None = None) -> int:
    args = _merged_options(build_parser().parse_args(argv))
    # telemetry off, patient start-up, library logs off the console unless --verbose; hub
    # access stays on for `hf:` sources (the Makefile and CI also switch it off)
    apply_defaults(offline=False, terse=not args.verbose)
    if not args.debug:
        said = _SaidByTheCli()  # one for both: a task's failure is its flow's too
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(said)
    try:
        cfg = load_config(args.params, args.overrides)
        command = COMMANDS[args.command]
        if command.flow:  # a run says what it was configured by
            print(f"config: {_config_source(args.params, args.overrides)}", file=sys.stderr)
            signals.install()
        target = _resolve(command.target)
        if not args.debug and command.flow:
            _quiet_prefect_console()
        status = target(cfg, args)
        return int(status or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"grpo: error: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:  # SIGTERM (ours or Prefect's), then Ctrl-C
        if is_termination(exc):
            print("grpo: terminated", file=sys.stderr)
            return 128 + signal.SIGTERM
        if isinstance(exc, KeyboardInterrupt):
            print("grpo: interrupted", file=sys.stderr)
            return 130
        raise


if __name__ == "__main__":
    sys.exit(main())
