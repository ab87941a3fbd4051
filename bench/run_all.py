"""`make bench`: every benchmark in its own process, one JSON summary, one printed table.

Each benchmark writes its own JSON under bench/results/ and prints its own figures (shown as
it runs); this collects them into bench/results/summary.json with the load averages seen before
and after each, and prints a table of the headline figures. The learning run (a 55-minute budget)
is not part of `make bench`; run `bench/learning.py` for it, or pass --learning.

    .venv/bin/python bench/run_all.py [--quick] [--only vs_trl iteration] [--learning]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BIN, OFFLINE, RESULTS, load_avg, save_json  # noqa: E402

BENCH = Path(__file__).resolve().parent
# name -> (script, extra arguments, extra arguments with --quick)
SUITE = {
    "data_rewards": ("data_rewards.py", [], []),
    "rollout": ("rollout.py", [], ["--quick"]),
    "update_step": ("update_step.py", [], ["--quick"]),
    "iteration": ("iteration.py", [], ["--iterations", "1", "--set", "rollout.max_new_tokens=32"]),
    "vs_trl": ("vs_trl.py", ["--steps", "3"], ["--steps", "1", "--quick"]),
}
LEARNING = ("learning.py", [], ["--quick", "--minutes", "1", "--eval-rows", "8"])


def run_one(name: str, script: str, extra: list[str]) -> dict:
    import os

    out = RESULTS / f"{name}.json"
    before, start = load_avg(), time.perf_counter()
    print(f"\n=== {name}: {script} {' '.join(extra)} (load {before})", flush=True)
    rc = subprocess.run([str(BIN / "python"), str(BENCH / script), *extra, "--json", str(out)]
                        if name != "learning" else [str(BIN / "python"), str(BENCH / script), *extra],
                        env={**os.environ, **OFFLINE}).returncode
    if name == "learning":
        out = RESULTS / "learning.json"
    figures = json.loads(out.read_text()) if rc == 0 and out.is_file() else None
    return {"rc": rc, "seconds": time.perf_counter() - start, "load_before": before,
            "load_after": load_avg(), "json": str(out), "figures": figures}


def _vs_trl(f: dict) -> str:
    ours, trl = f["ours"], f["trl"]
    return (f"ours {ours['median_step_s']:.1f} s vs TRL {trl['median_step_s']:.1f} s "
            f"{trl.get('precision', '')} (x{f['time_ratio']:.2f}); RSS {ours['peak_tree_rss_gb']:.1f} vs "
            f"{trl['peak_tree_rss_gb']:.1f} GB")


def _iteration(f: dict) -> str:
    m = f["medians"]
    parts = [f"{p} {m.get(f'time/{p}_s', 0):.1f}" for p in
             ("rollout", "reward", "reference", "update", "sync")]
    return f"iteration {m.get('time/iteration_s', 0):.1f} s = " + ", ".join(parts)


def _rollout(f: dict) -> str:
    cases = [f"{case.split('_')[0]} vLLM {f['vllm'][case]['tokens_per_s']:.0f} vs HF "
             f"{f['hf'][case]['tokens_per_s']:.0f} tok/s (x{ratio:.2f})"
             for case, ratio in f["ratio_vllm_over_hf"].items()]
    return "; ".join(cases) + f"; sync {f['weight_sync_s']:.2f} s"


def _update_step(f: list) -> str:
    return "; ".join(f"{r['autocast']} micro {r['micro']}{' ckpt' if r['ckpt'] else ''} "
                     f"{r['seconds']:.1f} s" for r in f if r["kind"] == "update")


def _learning(f: dict) -> str:
    return (f"accuracy {f['before']['accuracy']:.1%} -> {f['after']['accuracy']:.1%}, formatted "
            f"{f['before']['formatted']:.1%} -> {f['after']['formatted']:.1%}")


HEADLINES = {"vs_trl": _vs_trl, "iteration": _iteration, "rollout": _rollout,
             "update_step": _update_step, "learning": _learning}


def headline(name: str, f: dict | list | None) -> str:
    """A one-line digest of a benchmark's figures (its first four numbers where it has no
    digest of its own)."""
    if not f:
        return "no figures"
    if name in HEADLINES:
        return HEADLINES[name](f)
    flat = _numbers(f)
    return ", ".join(f"{k} {v:.3g}" for k, v in list(flat.items())[:4])


def _numbers(obj, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, (dict, list)):
            out.update(_numbers(v, key + "."))
    return out


def merged(results: dict, quick: bool) -> dict:
    """This run's results over those of the summary already written at the same setting, so
    that `--only NAME` refreshes NAME and keeps the other benchmarks' figures."""
    path = RESULTS / "summary.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    kept = old.get("results", {}) if old.get("quick") == quick else {}
    return {**kept, **results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="each benchmark's smoke settings")
    ap.add_argument("--only", nargs="+", choices=sorted(SUITE) + ["learning"])
    ap.add_argument("--learning", action="store_true", help="also the learning run (a 55-minute training budget)")
    args = ap.parse_args()
    suite = dict(SUITE, **({"learning": LEARNING} if args.learning else {}))
    names = args.only or list(suite)
    results = {}
    for name in names:
        script, full, quick = suite.get(name, LEARNING)
        results[name] = run_one(name, script, quick if args.quick else full)
    summary = {"quick": args.quick, "results": merged(results, args.quick)}
    save_json(summary, RESULTS / "summary.json")
    print(f"\n{'benchmark':<14}{'rc':>4}{'seconds':>9}  {'load 1/5/15 min':<20}headline")
    for name, r in results.items():
        print(f"{name:<14}{r['rc']:>4}{r['seconds']:>9.0f}  {str(r['load_before']):<20}"
              f"{headline(name, r['figures'])}")
    print(f"summary: {RESULTS / 'summary.json'}")
    return max((r["rc"] for r in results.values()), default=0)


if __name__ == "__main__":
    sys.exit(main())
