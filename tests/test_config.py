"""The config tree: every validation rule, with its exact one-line message, and the override path."""

from __future__ import annotations

import fnmatch
import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from grpo_core.config import Config, load_config
from grpo_core.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# (override, exact message). Each constrained field of the tree appears at least once
# (test_every_rule_has_a_case checks that), so a new rule cannot land untested.
RULES = [
    ("data.train=[]", "data.train must not be empty"),
    ("promote.registered_model=''", "promote.registered_model must not be empty"),
    ("promote.alias=''", "promote.alias must not be empty"),
    ("promote.metric=pass", "promote.metric must be one of 'accuracy' or 'mean_of_k', got 'pass'"),
    ("data.train=[{name: gsm8k8}]",
     "data.train.0.name: must be a built-in dataset (gsm8k, math, math500, arithmetic) or a key "
     "of data.custom (none defined), got 'gsm8k8'"),
    ("data.train=[{name: gsm8k, split: dev}]",
     "data.train.0.split must be one of 'train' or 'test', got 'dev'"),
    ("data.train=[{name: gsm8k, rows: 0}]", "data.train.0.rows must be >= 1, got 0"),
    ("data.train=[{name: gsm8k, max_steps: 0}]", "data.train.0.max_steps must be >= 1, got 0"),
    ("data.train=[{name: math, max_level: 6}]", "data.train.0.max_level must be <= 5, got 6"),
    ("data.train=[{name: gsm8k, max_level: 2}]",
     "data.train.0: max_level is a level of math, math500 or arithmetic; gsm8k has none, "
     "use max_steps"),
    ("data.train=[{name: arithmetic, max_steps: 2}]",
     "data.train.0: max_steps counts GSM8K solution steps; arithmetic has levels, use max_level"),
    ("data.custom.gsm8k={files: {train: a.jsonl}, checker: exact}",
     "data.custom.gsm8k: gsm8k is a built-in dataset; give yours another name"),
    ("data.custom.my set={files: {train: a.jsonl}, checker: exact}",
     "data.custom.my set: a dataset name holds letters, digits, '_' and '-' (it names files "
     "and metrics)"),
    ("evaluate.datasets=[{name: math500, split: test, max_steps: 2}]",
     "evaluate.datasets.0: max_steps counts GSM8K solution steps; math500 has levels, use max_level"),
    ("data.prompt.few_shot=-1", "data.prompt.few_shot must be >= 0, got -1"),
    ("data.prompt.few_shot=9", "data.prompt.few_shot must be <= 8, got 9"),
    ("validate.min_question_chars=0", "validate.min_question_chars must be >= 1, got 0"),
    ("validate.max_question_chars=0", "validate.max_question_chars must be >= 1, got 0"),
    ("validate.min_question_chars=9000",
     "validate: min_question_chars must be <= max_question_chars"),
    ("validate.sample_rows=0", "validate.sample_rows must be >= 1, got 0"),
    ("checkpoint.source=", "checkpoint.source must not be empty"),
    ("rollout.engine=sglang", "rollout.engine must be one of 'vllm' or 'hf', got 'sglang'"),
    ("rollout.prompts_per_iteration=0", "rollout.prompts_per_iteration must be >= 1, got 0"),
    ("rollout.group_size=1", "rollout.group_size must be >= 2, got 1"),
    ("rollout.temperature=0", "rollout.temperature must be > 0.0, got 0"),
    ("rollout.top_p=0", "rollout.top_p must be > 0.0, got 0"),
    ("rollout.top_p=1.5", "rollout.top_p must be <= 1.0, got 1.5"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens must be >= 1, got 0"),
    ("rollout.refill_rounds=-1", "rollout.refill_rounds must be >= 0, got -1"),
    ("rollout.min_group_size=1", "rollout.min_group_size must be >= 2, got 1"),
    ("rollout.min_group_size=16", "rollout: min_group_size (16) must be <= group_size (8)"),
    ("rollout.samples_per_prompt=0", "rollout.samples_per_prompt must be > 0.0, got 0"),
    ("rollout.max_prompt_tokens=0", "rollout.max_prompt_tokens must be >= 1, got 0"),
    ("rollout.overlong_prompts=drop",
     "rollout.overlong_prompts must be one of 'skip' or 'truncate', got 'drop'"),
    ("rollout.dtype=int8",
     "rollout.dtype must be one of 'auto', 'bfloat16', 'float32' or 'float16', got 'int8'"),
    ("rollout.cpu_kv_cache_gib=0",
     "rollout.cpu_kv_cache_gib: must be 'auto' or a number of GiB > 0, got 0"),
    ("rollout.cpu_kv_cache_gib=big",
     "rollout.cpu_kv_cache_gib: must be 'auto' or a number of GiB > 0, got 'big'"),
    ("rollout.cpu_kv_block_size=48", "rollout.cpu_kv_block_size must be a multiple of 32, got 48"),
    ("rollout.cpu_kv_block_size=0", "rollout.cpu_kv_block_size must be >= 32, got 0"),
    ("rollout.gpu_memory_utilization=0", "rollout.gpu_memory_utilization must be > 0.0, got 0"),
    ("rollout.gpu_memory_utilization=1.1",
     "rollout.gpu_memory_utilization must be <= 1.0, got 1.1"),
    ("rollout.tensor_parallel_size=0", "rollout.tensor_parallel_size must be >= 1, got 0"),
    ("reward.functions={}", "reward.functions must not be empty"),
    ("reward.timeout_s=0", "reward.timeout_s must be > 0.0, got 0"),
    ("reward.failure_warn_rate=0", "reward.failure_warn_rate must be > 0.0, got 0"),
    ("reward.failure_stop_rate=1.5", "reward.failure_stop_rate must be <= 1.0, got 1.5"),
    ("reward.overlong_buffer=0", "reward.overlong_buffer must be >= 1, got 0"),
    ("reward.answer_format=xml", "reward.answer_format must be one of 'hashes' or 'boxed', got 'xml'"),
    ("reward.reward_model_batch_size=0", "reward.reward_model_batch_size must be >= 1, got 0"),
    ("algorithm.advantage=ppo",
     "algorithm.advantage must be one of 'grpo', 'dr_grpo', 'rloo', 'batch_std', 'median' or "
     "'median_std', got 'ppo'"),
    ("algorithm.eps=0", "algorithm.eps must be > 0.0, got 0"),
    ("algorithm.loss_aggregation=sum",
     "algorithm.loss_aggregation must be one of 'seq_mean_token_mean', 'token_mean' or "
     "'seq_mean_token_sum_norm', got 'sum'"),
    ("algorithm.ratio_level=batch",
     "algorithm.ratio_level must be one of 'token' or 'sequence', got 'batch'"),
    ("algorithm.beta=-0.1", "algorithm.beta must be >= 0.0, got -0.1"),
    ("algorithm.clip_low=0", "algorithm.clip_low must be > 0.0, got 0"),
    ("algorithm.clip_low=1", "algorithm.clip_low must be < 1.0, got 1"),
    ("algorithm.clip_high=-0.2", "algorithm.clip_high must be > 0.0, got -0.2"),
    ("algorithm.mu=0", "algorithm.mu must be >= 1, got 0"),
    ("algorithm.tis_cap=0", "algorithm.tis_cap must be > 0.0, got 0"),
    ("algorithm.ref_refresh_every=-1", "algorithm.ref_refresh_every must be >= 0, got -1"),
    ("gates.advantage_sum_tol=0", "gates.advantage_sum_tol must be > 0.0, got 0"),
    ("gates.max_truncated_frac=1.5", "gates.max_truncated_frac must be <= 1.0, got 1.5"),
    ("gates.max_empty_frac=-0.1", "gates.max_empty_frac must be >= 0.0, got -0.1"),
    ("gates.max_cross_prompt_answer_frac=2",
     "gates.max_cross_prompt_answer_frac must be <= 1.0, got 2"),
    ("train.iterations=0", "train.iterations must be >= 1, got 0"),
    ("train.max_minutes=0", "train.max_minutes must be > 0.0, got 0"),
    ("train.learning_rate=-1e-6", "train.learning_rate must be >= 0.0, got -1e-06"),
    ("train.warmup_iterations=-1", "train.warmup_iterations must be >= 0, got -1"),
    ("train.lr_schedule=step",
     "train.lr_schedule must be one of 'constant', 'cosine' or 'linear', got 'step'"),
    ("train.weight_decay=-0.1", "train.weight_decay must be >= 0.0, got -0.1"),
    ("train.max_grad_norm=0", "train.max_grad_norm must be > 0.0, got 0"),
    ("train.micro_batch_size=0", "train.micro_batch_size must be >= 1, got 0"),
    ("train.autocast=float16",
     "train.autocast must be one of 'auto', 'bfloat16' or 'float32', got 'float16'"),
    ("train.data_parallel=ddp",
     "train.data_parallel must be one of 'replicate' or 'fsdp2', got 'ddp'"),
    ("train.checkpoint_every=0", "train.checkpoint_every must be >= 1, got 0"),
    ("train.resume_every=0", "train.resume_every must be >= 1, got 0"),
    ("train.dist_timeout_s=0", "train.dist_timeout_s must be > 0.0, got 0"),
    ("train.lora.r=0", "train.lora.r must be >= 1, got 0"),
    ("train.lora.alpha=0", "train.lora.alpha must be >= 1, got 0"),
    ("train.lora.dropout=-0.1", "train.lora.dropout must be >= 0.0, got -0.1"),
    ("train.lora.dropout=1", "train.lora.dropout must be < 1.0, got 1"),
    ("evaluate.datasets=[]", "evaluate.datasets must not be empty"),
    ("evaluate.max_new_tokens=0", "evaluate.max_new_tokens must be >= 1, got 0"),
    ("evaluate.samples=0", "evaluate.samples must be >= 1, got 0"),
    ("evaluate.quick_rows=0", "evaluate.quick_rows must be >= 1, got 0"),
    ("evaluate.final_rows=0", "evaluate.final_rows must be >= 1, got 0"),
    ("evaluate.temperature=0", "evaluate.temperature must be > 0.0, got 0"),
    ("tracking.experiment=", "tracking.experiment must not be empty"),
    ("tracking.sample_table_rows=-1", "tracking.sample_table_rows must be >= 0, got -1"),
]

# data.pass_rates is null by default: each case switches it on with a rollouts list first
PASS_RATES_ON = "data.pass_rates.rollouts=[runs/a/rollouts]"
PASS_RATE_RULES = [
    ("data.pass_rates.rollouts=[]", "data.pass_rates.rollouts must not be empty"),
    ("data.pass_rates.reward=", "data.pass_rates.reward must not be empty"),
    ("data.pass_rates.min_rate=2", "data.pass_rates.min_rate must be <= 1.0, got 2"),
    ("data.pass_rates.max_rate=-1", "data.pass_rates.max_rate must be >= 0.0, got -1"),
    ("data.pass_rates.min_samples=0", "data.pass_rates.min_samples must be >= 1, got 0"),
]

# a dataset of your own: each case starts from this definition (the last override is the one
# the message names)
CUSTOM_ON = ("data.custom.caps={files: {train: my/train.jsonl, test: my/test.parquet}, "
             "question: prompt, answer: target, checker: exact}")
ALLOWED = "one of 'numeric', 'exact' or 'math_verify'"
CUSTOM_RULES = [
    (["data.custom.caps.checker=fuzzy"],
     f"data.custom.caps.checker must be {ALLOWED}, got 'fuzzy'"),
    (["data.custom.caps.question="], "data.custom.caps.question must not be empty"),
    (["data.custom.caps.answer="], "data.custom.caps.answer must not be empty"),
    (["data.custom.caps.solution="], "data.custom.caps.solution must not be empty"),
    (["data.custom.caps.id="], "data.custom.caps.id must not be empty"),
    (["data.custom.caps.hub="], "data.custom.caps.hub must not be empty"),
    (["data.custom.caps.hub_config="], "data.custom.caps.hub_config must not be empty"),
    (["data.custom.caps.question=7"], "data.custom.caps.question must be a valid string, got 7"),
    (["data.custom.caps={files: {train: a.jsonl}}"], "data.custom.caps.checker is required"),
    (["data.custom.caps.files={dev: a.jsonl}"],
     "data.custom.caps.files keys must be one of 'train' or 'test', got 'dev'"),
    (["data.custom.caps.files.train=my/train.csv"],
     "data.custom.caps.files.train: must be a .jsonl, .json or .parquet file, "
     "got 'my/train.csv'"),
    (["data.custom.caps.files={}"],
     "data.custom.caps: give files (a path per split) or hub (a Hugging Face dataset id)"),
    (["data.train=[{name: capz}]"],
     "data.train.0.name: must be a built-in dataset (gsm8k, math, math500, arithmetic) or a key "
     "of data.custom (caps), got 'capz'"),
    (["evaluate.datasets=[{name: caps, split: test, max_level: 2}]"],
     "evaluate.datasets.0: caps is a data.custom dataset, without difficulty levels: drop "
     "max_steps and max_level (use rows)"),
    (["data.custom.caps.files={train: my/train.jsonl}",
      "evaluate.datasets=[{name: caps, split: test}]"],
     "evaluate.datasets.0.split: caps has no split 'test' (data.custom.caps.files has train; "
     "or set hub)"),
]

TYPES = [
    ("train.iterations=abc", "train.iterations must be a valid integer, got 'abc'"),
    ("train.iterations=1.5", "train.iterations must be a valid integer, got 1.5"),
    ("train.iterations=true", "train.iterations must be a valid integer, got True"),
    ("algorithm.beta=yes", "algorithm.beta must be a valid number, got 'yes'"),
    ("algorithm.beta.x=1", "algorithm.beta must be a valid number, got {'x': 1}"),
    ("checkpoint.trust_remote_code=1",
     "checkpoint.trust_remote_code must be a valid boolean, got 1"),
    ("rollout.stop=[a, 1]", "rollout.stop.1 must be a valid string, got 1"),
    ("train.adam_betas=[0.9]", "train.adam_betas.1 is required"),
    ("train=3", "train must be a mapping of keys, got 3"),
]


@pytest.mark.parametrize("override, message", RULES + TYPES)
def test_override_rejected_with_exact_message(override, message):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert str(err.value) == f"--set {override}: {message}"


@pytest.mark.parametrize("override, message", PASS_RATE_RULES)
def test_pass_rate_override_rejected_with_exact_message(override, message):
    with pytest.raises(UserError) as err:
        load_config(None, [PASS_RATES_ON, override])
    assert str(err.value) == f"--set {override}: {message}"


@pytest.mark.parametrize("overrides, message", CUSTOM_RULES)
def test_custom_dataset_rejected_with_exact_message(overrides, message):
    with pytest.raises(UserError) as err:
        load_config(None, [CUSTOM_ON, *overrides])
    assert str(err.value) == f"--set {overrides[-1]}: {message}"


def test_custom_dataset_is_used_by_name():
    cfg = load_config(None, [CUSTOM_ON, "data.train=[{name: caps, rows: 3}, {name: arithmetic, "
                             "max_level: 2}]", "evaluate.datasets=[{name: caps, split: test}]"])
    caps = cfg.data.custom["caps"]
    assert (caps.question, caps.answer, caps.solution, caps.checker) == ("prompt", "target",
                                                                         None, "exact")
    assert caps.files == {"train": "my/train.jsonl", "test": "my/test.parquet"}
    assert [(d.name, d.rows, d.max_level) for d in cfg.data.train] == [("caps", 3, None),
                                                                       ("arithmetic", None, 2)]
    assert cfg.flat()["data.custom.caps.checker"] == "exact"


def _constrained_fields(model: type[BaseModel] = Config, prefix: str = "", seen=None):
    """Yield dotted names of fields carrying a bound, a length rule or a fixed set of choices.
    A section class used twice (DatasetSpec) is walked once, at its first place; the sections
    of a mapping (data.custom) appear under `*`, its user-chosen key."""
    seen = set() if seen is None else seen
    seen.add(model)
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        if field.metadata or typing.get_origin(field.annotation) is typing.Literal:
            yield key
        mapping = typing.get_origin(field.annotation) is dict
        for arg in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in seen:
                yield from _constrained_fields(arg, key + (".*." if mapping else "."), seen)


@pytest.mark.parametrize("mode", ["median", "median_std"])
def test_median_advantage_modes_are_accepted(mode, tmp_path):
    assert load_config(None, [f"algorithm.advantage={mode}"]).algorithm.advantage == mode
    path = tmp_path / "params.yaml"
    path.write_text(f"algorithm:\n  advantage: {mode}\n")
    assert load_config(path).algorithm.advantage == mode


def test_every_rule_has_a_case():
    # a rule is covered when its key is overridden directly or named by a message
    rules = RULES + PASS_RATE_RULES + [(o[-1], m) for o, m in CUSTOM_RULES]
    keys = [o.split("=")[0] for o, _ in rules] + [m.split()[0].rstrip(":") for _, m in rules]
    covered = {re.sub(r"\.\d+", "", key) for key in keys}
    missing = sorted(f for f in _constrained_fields()
                     if not any(fnmatch.fnmatchcase(key, f) for key in covered))
    assert not missing, f"rules without an exact-message test: {missing}"


def test_unknown_keys_name_the_allowed_ones():
    with pytest.raises(UserError) as err:
        load_config(None, ["algorithm.betta=0.1"])
    assert str(err.value).startswith("--set algorithm.betta=0.1: unknown key 'algorithm.betta' "
                                     "(allowed here: advantage, beta, clip_high, clip_low,")
    with pytest.raises(UserError) as err:
        load_config(None, ["data.train=[{name: gsm8k, rowz: 3}]"])
    assert str(err.value).endswith(
        "unknown key 'data.train.0.rowz' (allowed here: max_level, max_steps, name, rows, split)")
    with pytest.raises(UserError) as err:
        load_config(None, [CUSTOM_ON, "data.custom.caps.questio=q"])
    assert str(err.value) == (
        "--set data.custom.caps.questio=q: unknown key 'data.custom.caps.questio' (allowed here: "
        "answer, checker, files, hub, hub_config, id, question, solution)")
    with pytest.raises(UserError) as err:
        load_config(None, ["trainer.iterations=3"])
    assert "unknown key 'trainer' (allowed here: algorithm, checkpoint, data, evaluate," in str(
        err.value)


FILE_ERRORS = [  # (params.yaml bytes, the message after "<path>")
    (b"algorithm:\n  beta: 0.1\n  clip_low: 0.2\n  betta: 3\n",
     r":4: unknown key 'algorithm.betta' \(allowed here: advantage, beta,"),
    (b"rollout:\n  group_size: 1\n", r":2: rollout.group_size must be >= 2, got 1$"),
    (b"rollout:\n  stop: [a\n", r":3: not valid YAML: "),
    (b"- a\n- b\n", r": the top level must be a mapping of sections, got list$"),
    (b"data:\n  custom:\n    caps: {files: {train: a.jsonl}, checker: fuzzy}\n",
     r":3: data.custom.caps.checker must be one of 'numeric', 'exact' or 'math_verify', "
     r"got 'fuzzy'$"),
    (b"data:\n  train:\n    - {name: arithmetic}\n    - {name: capz}\n",
     r":4: data.train.1.name: must be a built-in dataset \(gsm8k, math, math500, arithmetic\) "
     r"or a key of data.custom \(none defined\), got 'capz'$"),
    (b"rollout:\n  stop: ['\xff']\n", r": not valid YAML"),
    (b"", r": the file is empty \(give at least one section, or delete it to run on the "
          r"built-in defaults\)$"),
    (b"# all commented out\n", r": the file is empty"),
    (b"train:\n  iterations: 2\nrollout:\n  group_size: 4\ntrain:\n  iterations: 5\n",
     r":5: duplicate key 'train' \(first at line 1\); YAML would keep only the last$"),
    (b"train:\n  iterations: 2\n  learning_rate: 1.0e-5\n  iterations: 3\n",
     r":4: duplicate key 'train.iterations' \(first at line 2\)"),
]


@pytest.mark.parametrize("content, message", FILE_ERRORS)
def test_file_errors_name_file_and_line(tmp_path, content, message):
    p = tmp_path / "params.yaml"
    p.write_bytes(content)
    with pytest.raises(UserError, match="^" + re.escape(str(p)) + message):
        load_config(p)


def test_missing_file(tmp_path):
    with pytest.raises(UserError) as err:
        load_config(tmp_path / "nope.yaml")
    assert str(err.value) == f"config file not found: {tmp_path / 'nope.yaml'}"


def test_malformed_overrides():
    for bad in ["algorithm.beta", "=3", "a..b=1", ".x=1"]:
        with pytest.raises(UserError) as err:
            load_config(None, [bad])
        assert str(err.value) == (f"--set {bad!r}: expected KEY.PATH=VALUE, "
                                  "e.g. --set algorithm.beta=0.02")
    with pytest.raises(UserError) as err:
        load_config(None, ["algorithm.beta=1", "algorithm.beta.x=1"])
    assert str(err.value) == "--set algorithm.beta.x=1: algorithm.beta is not a section"


def test_yaml_1_2_scalars():
    """`1e-6` is a number and `yes` is not a boolean, in the file and in overrides."""
    cfg = load_config(None, ["train.learning_rate=1e-6", "algorithm.beta=4E-2",
                             "rollout.stop=[yes, 'no']"])
    assert cfg.train.learning_rate == 1e-6 and cfg.algorithm.beta == 0.04
    assert cfg.rollout.stop == ("yes", "no")


def test_overrides_apply_in_order_and_keep_types(tmp_path):
    cfg = load_config(None, ["algorithm.beta=0.02", "rollout.group_size=16",
                             "rollout.stop=['</s>', '####']", "algorithm.beta=0.04",
                             "data.train=[{name: gsm8k, rows: 100}, {name: math, rows: 50}]"])
    assert cfg.algorithm.beta == 0.04
    assert cfg.rollout.group_size == 16
    assert cfg.rollout.stop == ("</s>", "####")
    assert [(d.name, d.split, d.rows) for d in cfg.data.train] == [
        ("gsm8k", "train", 100), ("math", "train", 50)]
    # an override beats the file, and an int is accepted where a float belongs
    p = tmp_path / "params.yaml"
    p.write_text("algorithm:\n  beta: 0.1\n")
    assert load_config(p, ["algorithm.beta=1"]).algorithm.beta == 1.0


def test_tree_is_frozen_and_flattens_for_mlflow():
    cfg = load_config(None)
    with pytest.raises(Exception):
        cfg.algorithm.beta = 1.0  # type: ignore[misc]
    flat = cfg.flat()
    assert flat["algorithm.beta"] == cfg.algorithm.beta
    assert flat["validate.report"] == cfg.validate_.report
    assert "data.prompt.instruction" in flat


def test_repository_params_yaml_is_valid_and_complete():
    cfg = load_config(REPO / "params.yaml")
    # params.yaml spells out every key, so a user sees every knob in one file
    written = set(load_config_dict(REPO / "params.yaml"))
    assert written == set(Config().flat()), "params.yaml and the config tree list different keys"
    assert cfg.to_dict()["validate"]["report"] == cfg.validate_.report


def load_config_dict(path: Path) -> dict:
    import yaml

    from grpo_core.config import flatten as _flatten

    return dict(_flatten(yaml.safe_load(path.read_text())))


def test_params_yaml_spells_out_the_built_in_defaults():
    """The schema holds the defaults; params.yaml writes them out for DVC and the reader. A
    value changed in one and not the other would make `grpo` with and without the file differ."""
    assert load_config(REPO / "params.yaml").flat() == Config().flat()


def test_adaptive_group_budget_below_its_first_round_is_refused():
    with pytest.raises(UserError) as err:
        load_config(None, ["rollout.min_group_size=4", "rollout.samples_per_prompt=3"])
    assert str(err.value) == ("--set rollout.samples_per_prompt=3: rollout: samples_per_prompt "
                              "(3) must be >= min_group_size (4): the first round alone spends that")
    cfg = load_config(None, ["rollout.min_group_size=4", "rollout.samples_per_prompt=6"])
    assert (cfg.rollout.min_group_size, cfg.rollout.samples_per_prompt) == (4, 6.0)
