"""Helpers for the tests of user datasets (data.custom): files in each format, and a real tiny
model that answers every question the same way, so a checker's verdict on real engine output is
known in advance."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

ANSWER = "#### 42"  # what the answering model writes after any prompt
# checker -> (gold answer, is "#### 42" right by that checker?) for the 4 rows of a dataset
GOLDS = {
    "numeric": [("42", True), ("42.0", True), ("41", False), ("-42", False)],
    "exact": [("42", True), ("42.", True), (" 42 ", True), ("forty-two", False)],
    "math_verify": [("6 \\cdot 7", True), ("43", False), ("41", False), ("40", False)],
}
EXPECTED = {c: sum(ok for _, ok in rows) / len(rows) for c, rows in GOLDS.items()}


def verdict(checker: str, gold: str) -> bool:
    """Whether ANSWER is right for a processed row (answers are stripped by `prepare`)."""
    return dict((g.strip(), ok) for g, ok in GOLDS[checker])[gold]


def questions(tag: str) -> list[str]:
    return [f"Problem {tag} {i}: what number is the answer to this question?" for i in range(4)]


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Rows as .jsonl, a .json array or .parquet, by the file's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    else:
        pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def dataset_rows(checker: str, tag: str, fields: dict[str, str]) -> list[dict]:
    """4 rows of `checker`'s golds, keyed by the dataset's own field names (question, answer,
    and optionally solution and id)."""
    rows = []
    for i, (q, (gold, _)) in enumerate(zip(questions(tag), GOLDS[checker])):
        row = {fields["question"]: q, fields["answer"]: gold}
        if fields.get("solution"):
            row[fields["solution"]] = f"Worked out: {gold}\n#### {gold}"
        if fields.get("id"):
            row[fields["id"]] = f"{tag}-{i}"
        rows.append(row)
    return rows


def train_answering_model(src: Path, out: Path, prompts: list[str], steps: int = 60) -> Path:
    """Teach the tiny random Llama in `src` to answer ANSWER (then EOS) after each prompt, and
    save it to `out` (60 Adam steps, 10-40 s on 2 cores); it generalises to prompts it never saw."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    target = tok(ANSWER, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    seqs = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(s) for s in seqs) + len(target)
    pad = model.config.pad_token_id
    ids = torch.tensor([s + target + [pad] * (width - len(s) - len(target)) for s in seqs])
    lengths = torch.tensor([len(s) + len(target) for s in seqs])
    mask = torch.arange(width)[None, :] < lengths[:, None]  # (B, L) bool
    # the positions whose next token is a target token, and that token
    at = [(r, len(s) - 1 + j, t) for r, s in enumerate(seqs) for j, t in enumerate(target)]
    rows, cols, labels = (torch.tensor(v) for v in zip(*at))
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        hidden = model.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[rows, cols]), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"the answering model did not learn its answer (loss {loss:.3f})"
    model.eval().save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def answering_dir(tmp_path_factory, tiny_sft_dir) -> Path:
    """The tiny random Llama of `tiny_sft_dir` (SmolLM2's tokenizer and chat template), trained
    to answer '#### 42' to the default prompt of any question."""
    from transformers import AutoTokenizer

    from grpo_core.config import load_config
    from grpo_core.data.prompts import PromptRenderer

    render = PromptRenderer(AutoTokenizer.from_pretrained(tiny_sft_dir),
                            instruction=load_config(None).data.prompt.instruction)
    prompts = render([q for tag in ("a", "b", "c") for q in questions(tag)] + [
        "What is 47 + 38?", "Mia has 45 stickers. She gets 17 more. How many now?"])
    return train_answering_model(tiny_sft_dir, tmp_path_factory.mktemp("answering") / "model",
                                 prompts)
