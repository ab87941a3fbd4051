"""Great Expectations suites for the processed datasets, run before anything trains.

Each dataset gets a suite of expected columns, non-null and non-empty question and answer,
unique ids, question length bounds and a known checker name; then what its rows say they are
decides the extras: numeric answers where the checker is `numeric` (GSM8K, arithmetic, a
user's numeric dataset) and the level range of a levelled source (MATH 1-5, arithmetic 1-3).
Each training dataset also gets a contamination suite: none of its questions
(whitespace-collapsed, lower-cased) may appear in an evaluation dataset. The result is a JSON
report (a DVC metric) and, optionally, GX Data Docs HTML.

great_expectations is imported inside the functions: the import costs seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from grpo_core.data import arithmetic
from grpo_core.data.sources import SCHEMA, question_key
from grpo_core.errors import UserError
from grpo_core.rewards.answers import CHECKERS

NUMERIC = r"^-?\d+(?:\.\d+)?$"  # a canonical GSM8K answer: commas removed by `prepare`
KEY = "question_key"
# checker -> the form its gold answers must have (other checkers take any non-blank text)
ANSWER_FORMS = {"numeric": NUMERIC}
# source -> (lowest, highest) level; other sources have no levels to check
LEVELS = {"math": (1, 5), "math500": (1, 5),
          "arithmetic": (1, max(level for level, _ in arithmetic.KINDS.values()))}


def expectations(frame: pd.DataFrame, min_chars: int, max_chars: int) -> list:
    """The suite of one processed dataset; the extras follow the checker and the source that
    its rows name (a numeric checker needs numeric answers; a levelled source, its levels)."""
    import great_expectations.expectations as gxe

    suite = [gxe.ExpectTableColumnsToMatchSet(column_set=list(SCHEMA), exact_match=True)]
    suite += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("id", "question", "answer")]
    suite += [
        gxe.ExpectColumnValuesToMatchRegex(column="answer", regex=r"\S"),  # not blank
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="question", min_value=min_chars,
                                                max_value=max_chars),
    ]
    suite.append(gxe.ExpectColumnValuesToBeInSet(column="checker", value_set=list(CHECKERS)))
    named = {c: set(frame[c].dropna()) if c in frame else set() for c in ("checker", "source")}
    for checker in sorted(named["checker"] & set(ANSWER_FORMS)):
        suite.append(gxe.ExpectColumnValuesToMatchRegex(column="answer",
                                                        regex=ANSWER_FORMS[checker]))
    for source in sorted(named["source"] & set(LEVELS)):
        low, high = LEVELS[source]
        suite.append(gxe.ExpectColumnValuesToBeBetween(column="level", min_value=low,
                                                       max_value=high))
    return suite


def validate(paths: dict[str, Path], *, train_names: Sequence[str], eval_names: Sequence[str],
             min_chars: int = 10, max_chars: int = 8000, sample_rows: int = 5,
             docs_dir: Optional[Path] = None) -> tuple[dict, bool]:
    """Run every suite. paths: {"gsm8k_train": parquet, ...}; train_names/eval_names say which
    of them are trained on and evaluated on (for the contamination check).
    Returns (report, ok); with docs_dir, Data Docs HTML is written there as well."""
    unknown = [n for n in (*train_names, *eval_names) if n not in paths]
    if unknown:
        raise UserError(f"validate: no processed file for {', '.join(unknown)} (run `grpo prepare`)")
    frames = {name: _read(Path(path)) for name, path in paths.items()}
    eval_keys = sorted({question_key(q) for n in eval_names for q in frames[n]["question"].dropna()})
    runner = Runner(sample_rows, docs_dir)
    report: dict[str, Any] = {"datasets": {}}
    for name, frame in frames.items():
        results = runner.run(name, frame, expectations(frame, min_chars, max_chars))
        if name in train_names and eval_keys:
            keyed = pd.DataFrame({"id": frame.get("id"), KEY: frame["question"].map(question_key)})
            overlap = runner.run(f"{name}.contamination", keyed, [_no_overlap(eval_keys)])
            results += [{**r, "check": "contamination: question also in an evaluation set"}
                        for r in overlap]
        report["datasets"][name] = {
            "rows": len(frame), "success": all(r["success"] for r in results),
            "train": name in train_names, "eval": name in eval_names, "expectations": results}
    report["failed_expectations"] = sum(not r["success"] for d in report["datasets"].values()
                                        for r in d["expectations"])
    report["success"] = report["failed_expectations"] == 0
    if docs_dir is not None:
        report["data_docs"] = runner.build_docs()
    return report, report["success"]


def _no_overlap(eval_keys: list[str]):
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToNotBeInSet(column=KEY, value_set=eval_keys)


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"validate: processed file not found: {path} (run `grpo prepare`)")
    try:
        return pd.read_parquet(path)
    except Exception as exc:
        raise UserError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None


class Runner:
    """One ephemeral GX context for all datasets; each dataset is a dataframe asset. Also
    the rollout gate's (`grpo_core.rollout.gates`): an expectation's `meta["check"]` names
    what it checks in its summary (GX does not keep the suite's order in its results)."""

    def __init__(self, sample_rows: int, docs_dir: Optional[Path]):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.source = self.context.data_sources.add_pandas("processed")
        self.sample_rows = sample_rows
        self.docs_dir = docs_dir
        if docs_dir is not None:
            self.context.add_data_docs_site("local", {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": str(Path(docs_dir).resolve())},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})

    def run(self, name: str, frame: pd.DataFrame, suite_items: list) -> list[dict]:
        gx = self.gx
        batch = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = self.context.suites.add(gx.ExpectationSuite(name=name, expectations=suite_items))
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite))
        result_format = {"result_format": "COMPLETE",
                         "unexpected_index_column_names": ["id"] if "id" in frame else []}
        if self.docs_dir is None:
            result = definition.run(batch_parameters={"dataframe": frame},
                                    result_format=result_format)
        else:  # a checkpoint stores the result where the Data Docs builder finds it
            checkpoint = self.context.checkpoints.add(gx.Checkpoint(
                name=name, validation_definitions=[definition], result_format=result_format))
            result = next(iter(checkpoint.run(
                batch_parameters={"dataframe": frame}).run_results.values()))
        return [self._summarise(r) for r in result.results]

    def _summarise(self, r) -> dict:
        config = r.expectation_config
        res = r.result or {}
        index = res.get("unexpected_index_list") or []
        ids = [row.get("id") for row in index if isinstance(row, dict) and row.get("id") is not None]
        examples = [str(v) for v in dict.fromkeys(ids)][: self.sample_rows]
        out = {"expectation": config.type, "column": config.kwargs.get("column"),
               "success": bool(r.success), "unexpected_count": int(res.get("unexpected_count") or 0),
               "example_ids": examples}
        if (config.meta or {}).get("check"):
            out["check"] = config.meta["check"]
            values = res.get("partial_unexpected_list") or []
            out["example_values"] = list(values)[: self.sample_rows]
        if config.type == "expect_table_columns_to_match_set" and not r.success:
            observed = set(res.get("observed_value") or [])
            out["missing_columns"] = sorted(set(SCHEMA) - observed)
            out["extra_columns"] = sorted(observed - set(SCHEMA))
        exc = (r.exception_info or {}).get("exception_message") if r.exception_info else None
        if exc:
            out["error"] = str(exc).splitlines()[0]
        return out

    def build_docs(self) -> Optional[str]:
        """Data Docs index path, or None when the site cannot be built (no network needed)."""
        try:
            urls = self.context.build_data_docs()
        except Exception:
            return None
        index = Path(self.docs_dir) / "index.html"
        return str(index) if index.is_file() else next(iter(urls.values()), None)


def write_report(report: dict, path: str | Path) -> Path:
    """The report as JSON (a DVC metric file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def write_html(report: dict, path: str | Path) -> Path:
    """A self-contained HTML table of the report. GX Data Docs pull their scripts and styles
    from CDNs when opened; this page needs nothing beyond the file itself."""
    from html import escape

    rows = []
    for name, d in report["datasets"].items():
        for r in d["expectations"]:
            mark = "pass" if r["success"] else "FAIL"
            rows.append(
                f"<tr class='{mark}'><td>{escape(name)}</td><td>{escape(r['expectation'])}</td>"
                f"<td>{escape(str(r.get('column') or ''))}</td><td>{mark}</td>"
                f"<td>{r['unexpected_count']} / {d['rows']}</td>"
                f"<td>{escape(', '.join(r.get('example_ids') or []))}</td></tr>")
    verdict = "passed" if report["success"] else f"failed ({report['failed_expectations']})"
    page = (
        "<!doctype html><meta charset='utf-8'><title>Data validation</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}"
        ".FAIL{background:#fdd}</style>"
        f"<h1>Data validation {escape(verdict)}</h1><table><tr><th>dataset</th>"
        "<th>expectation</th><th>column</th><th>result</th><th>unexpected rows</th>"
        "<th>example ids</th></tr>" + "".join(rows) + "</table>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def summary(report: dict, limit: int = 10) -> str:
    """What failed, for a person: one line per failed expectation, with rows and example ids."""
    lines = []
    for name, d in report["datasets"].items():
        for r in d["expectations"]:
            if r["success"]:
                continue
            what = r["expectation"] + (f" on '{r['column']}'" if r.get("column") else "")
            what += f" ({r['check']})" if r.get("check") else ""
            detail = f"{r['unexpected_count']} of {d['rows']} rows"
            if r.get("missing_columns") or r.get("extra_columns"):
                detail = (f"missing columns {r.get('missing_columns')}, "
                          f"unexpected columns {r.get('extra_columns')}")
            if r.get("error"):
                detail += f" (error: {r['error']})"
            ids = f"; e.g. ids {', '.join(r['example_ids'])}" if r.get("example_ids") else ""
            lines.append(f"{name}: {what} failed: {detail}{ids}")
    if not lines:
        return "all expectations passed"
    more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
    return (f"data validation failed ({len(lines)} expectations):\n" + "\n".join(lines[:limit])
            + more)
