"""SFT checkpoint materialisation on real files: the bundled GGUF, a real local HF directory,
and each bad input with its one-line error."""

from __future__ import annotations

import json
import logging
import time

import pytest

from grpo_core.checkpoints import sft as checkpoint
from grpo_core.checkpoints.sft import FALLBACK_CHAT_TEMPLATE, MARKER, materialize, read_marker
from grpo_core.errors import UserError
from tests.conftest import bundled_gguf, tiny_llama_config


def one_line_error(source, tmp_path, match):
    with pytest.raises(UserError, match=match) as err:
        materialize(str(source), tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing half-made where the checkpoint goes
    return str(err.value)


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory, smollm2_tokenizer):
    """A real HF directory: a tiny Llama with SmolLM2's vocabulary, and its tokenizer with the
    chat template removed."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("local") / "tiny"
    LlamaForCausalLM(tiny_llama_config(vocab_size=49152)).save_pretrained(d)
    smollm2_tokenizer.save_pretrained(d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def test_bundled_source_becomes_a_safetensors_dir_with_chat_template(sft_dir):
    from transformers import AutoConfig, AutoTokenizer

    assert (sft_dir / "model.safetensors").stat().st_size > 500e6  # 134.5M params, float32
    assert AutoConfig.from_pretrained(sft_dir).model_type == "llama"
    tok = AutoTokenizer.from_pretrained(sft_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert read_marker(sft_dir) == {"source": "bundled:smollm2-135m-instruct", "kind": "bundled",
                                    "chat_template": "own", "trust_remote_code": False}
    assert not list(sft_dir.glob("*.bin"))


def test_same_source_is_reused(sft_dir):
    stamp = (sft_dir / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert materialize("bundled:smollm2-135m-instruct", sft_dir) == sft_dir
    assert time.perf_counter() - start < 1.0
    assert (sft_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_local_dir_without_chat_template_gets_the_fallback_once(local_dir, tmp_path, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with caplog.at_level(logging.WARNING, logger="grpo_core.checkpoints.sft"):
        out = materialize(str(local_dir), tmp_path / "sft")
        materialize(str(local_dir), tmp_path / "sft")  # reused: no second warning
    assert sum("no chat template" in r.message for r in caplog.records) == 1
    assert read_marker(out)["chat_template"] == "fallback"
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == FALLBACK_CHAT_TEMPLATE
    rendered = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        tokenize=False, add_generation_prompt=True)
    assert rendered == "system: Be brief.\n\nuser: 2+2?\n\nassistant:"  # by hand
    assert AutoModelForCausalLM.from_pretrained(out).config.hidden_size == 64


def test_a_new_source_replaces_the_old_directory(local_dir, tmp_path):
    out = tmp_path / "sft"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"source": "somewhere-else"}))
    materialize(str(local_dir), out)
    assert read_marker(out)["source"] == str(local_dir)
    assert (out / "model.safetensors").is_file()


def test_a_reused_directory_whose_weights_were_cut_is_made_again(local_dir, tmp_path, caplog):
    out = materialize(str(local_dir), tmp_path / "sft")
    weights = out / "model.safetensors"
    whole = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:-1000])  # the marker still matches the source
    with caplog.at_level(logging.WARNING, logger="grpo_core.checkpoints.sft"):
        assert materialize(str(local_dir), out) == out
    assert weights.stat().st_size == whole
    assert any("truncated or corrupt safetensors file" in r.message and "materialising it "
               "again" in r.message for r in caplog.records)


def test_model_directories_given_by_flag_get_the_same_checks(local_dir, tmp_path):
    import shutil

    d = tmp_path / "pickled"
    shutil.copytree(local_dir, d)
    checkpoint.check_model_dir(d, "--checkpoint x")  # whole: accepted
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"^--checkpoint x: only pickled weights "
                                        r"\(pytorch_model.bin\), which are refused"):
        checkpoint.check_model_dir(d, "--checkpoint x")


def test_missing_path(tmp_path):
    one_line_error(tmp_path / "nope", tmp_path, "no such file or directory")


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(tmp_path / "empty", tmp_path, "not a Hugging Face model directory")


def test_directory_that_is_not_a_causal_lm(tmp_path):
    import torch
    from safetensors.torch import save_file
    from transformers import ViTConfig

    d = tmp_path / "vit"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(d)
    save_file({"w": torch.zeros(2, 2)}, d / "model.safetensors")
    one_line_error(d, tmp_path, "model type 'vit' is not a causal language model")


def test_truncated_safetensors(local_dir, tmp_path):
    import shutil

    d = tmp_path / "cut"
    shutil.copytree(local_dir, d)
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    one_line_error(d, tmp_path, r"truncated or corrupt safetensors file \(\d+ bytes")


def test_corrupt_safetensors_header(local_dir, tmp_path):
    import shutil

    d = tmp_path / "garbage"
    shutil.copytree(local_dir, d)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    one_line_error(d, tmp_path, "corrupt safetensors file")


def test_pickled_weights_are_refused(local_dir, tmp_path):
    import shutil

    d = tmp_path / "pickled"
    shutil.copytree(local_dir, d)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    one_line_error(d, tmp_path, "only pickled weights .*refused")


def test_unknown_bundled_name(tmp_path):
    msg = one_line_error("bundled:gpt-9", tmp_path, "unknown bundled checkpoint")
    assert "bundled:smollm2-135m-instruct" in msg


def test_gguf_errors(tmp_path):
    one_line_error("gguf:" + str(tmp_path / "x.gguf"), tmp_path, "no such file")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not gguf")
    one_line_error(f"gguf:{fake}", tmp_path, "not a GGUF file")
    assert bundled_gguf().is_file()


def test_hub_source_offline_says_how_to_fix(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    msg = one_line_error("hf:NoSuchOrg/no-such-model", tmp_path, "offline")
    assert "set checkpoint.source to the local directory" in msg


def test_cli_checkpoint_command(local_dir, tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "cli_sft"
    assert main(["checkpoint", "--set", f"checkpoint.source={local_dir}",
                 "--set", f"checkpoint.output_dir={out}"]) == 0
    assert "chat template fallback" in capsys.readouterr().out
    assert main(["checkpoint", "--set", "checkpoint.source=bundled:nope",
                 "--set", f"checkpoint.output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("grpo: error: ") and "unknown bundled" in err and "\n" not in err


def test_sources_registry_parses_prefixes():
    assert checkpoint.parse_source("hf:Org/Name") == ("hf", "Org/Name")
    assert checkpoint.parse_source("gguf:/m.gguf") == ("gguf", "/m.gguf")
    assert checkpoint.parse_source("/data/my:model") == ("dir", "/data/my:model")
    with pytest.raises(UserError, match="nothing after 'hf:'"):
        checkpoint.parse_source("hf:")
