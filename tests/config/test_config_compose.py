"""Composition of the real conf/ tree: every option of every group, precedence, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tunekit.config import ConfigError, compose, config_dir, config_problems
from tunekit.config.entrypoint import find_shipped_dir
from tunekit.config.validate import component_problems

CONF = config_dir()


# The preference recipes pick the same model options as the SFT ones (identical files, composed
# above for both SFT recipes); a sample of them keeps the suite's time.
MODEL_SAMPLE = {"lora_dpo": {"tiny", "llama2_7b", "llama3_2_1b", "qwen3_8b"},
                "full_dpo": {"tiny", "mistral_7b", "qwen2_5_0_5b"}}


def _cases() -> list[tuple[str, str, str]]:
    """(recipe, group, option) for every group option each primary config's defaults pick."""
    cases = []
    for primary in sorted(CONF.glob("*.yaml")):
        defaults = yaml.safe_load(primary.read_text()).get("defaults", [])
        for entry in defaults:
            if isinstance(entry, dict):
                for group in entry:
                    for option in sorted((CONF / group).glob("*.yaml")):
                        if group == "model" and option.stem not in MODEL_SAMPLE.get(primary.stem, {option.stem}):
                            continue
                        cases.append((primary.stem, str(group), option.stem))
    return cases


CASES = _cases()


def test_discovery_found_every_group():
    groups = {g for _, g, _ in CASES}
    assert {"model", "checkpointer", "tokenizer", "dataset", "optimizer", "lr_scheduler"} <= groups
    assert {r for r, _, _ in CASES} == {"lora_finetune", "full_finetune", "generate", "lora_dpo", "full_dpo", "evaluate"}


def _missing_keys(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _missing_keys(v, f"{prefix}{k}.")
    elif node == "???":
        yield prefix[:-1]


def _compose_filled(recipe: str, overrides: list[str], tmp_path: Path):
    """Compose, giving every `???` leaf a value (an existing file) as a user would have to."""
    cfg = compose(recipe, overrides)
    missing = list(_missing_keys(OmegaConf.to_container(cfg, resolve=False)))
    if not missing:
        return cfg
    data = tmp_path / "data.jsonl"
    data.write_text("{}\n")
    return compose(recipe, overrides + [f"{key}={data}" for key in missing])


@pytest.mark.parametrize(("recipe", "group", "option"), CASES, ids=["/".join(c) for c in CASES])
def test_every_option_composes_and_validates(recipe, group, option, tmp_path):
    cfg = _compose_filled(recipe, [f"{group}={option}"], tmp_path)
    assert config_problems(cfg, recipe) == []


@pytest.mark.parametrize("recipe", ["lora_finetune", "full_finetune"])
@pytest.mark.parametrize(
    ("checkpointer", "cls", "repo"),
    [("hf", "FullModelHFCheckpointer", "Llama-2-7b-hf"), ("meta", "FullModelMetaCheckpointer", "Llama-2-7b")],
)
def test_model_and_checkpointer_derive_paths(recipe, checkpointer, cls, repo, monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEKIT_MODELS_ROOT", str(tmp_path))
    cfg = compose(recipe, [f"checkpointer={checkpointer}", "model=llama2_7b"])
    assert cfg.checkpointer._component_ == f"tunekit.checkpointing.{cls}"
    assert cfg.checkpointer.checkpoint_dir == f"{tmp_path}/meta-llama/{repo}"
    assert cfg.checkpointer.model_type == "LLAMA2"
    assert cfg.model._component_ == "tunekit.models.llama2.llama2_7b"
    assert cfg.tokenizer.path == f"{tmp_path}/meta-llama/{repo}"  # tokenizer=auto reads the model dir
    # the config key beats the environment variable
    cfg = compose(recipe, [f"checkpointer={checkpointer}", "model=llama2_7b", "paths.models_root=/data/m"])
    assert cfg.checkpointer.checkpoint_dir == f"/data/m/meta-llama/{repo}"


def test_models_root_defaults_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("TUNEKIT_MODELS_ROOT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = compose("lora_finetune", ["model=llama2_13b"])
    assert cfg.model_info.hf_dir == f"{tmp_path}/tunekit/models/meta-llama/Llama-2-13b-hf"


def test_tiny_model_points_at_bundled_assets():
    cfg = compose("lora_finetune", ["checkpointer=meta"])
    import tunekit

    assets = Path(tunekit.__file__).parent / "assets"
    assert cfg.checkpointer.checkpoint_dir == str(assets / "tiny_llama2" / "meta")
    assert compose("lora_finetune").checkpointer.checkpoint_dir == str(assets / "tiny_llama2" / "hf")


def test_precedence_schema_then_yaml_then_cli():
    cfg = compose("lora_finetune")
    assert cfg.gradient_accumulation_steps == 1  # schema default, not in the YAML
    assert cfg.batch_size == 16  # YAML (16) beats the schema default (4)
    assert cfg.optimizer.lr == 5.0e-3  # primary YAML beats the group option (2e-5)
    cfg = compose("lora_finetune", ["batch_size=8", "optimizer.lr=0.123", "gradient_accumulation_steps=3"])
    assert (cfg.batch_size, cfg.optimizer.lr, cfg.gradient_accumulation_steps) == (8, 0.123, 3)


def test_output_dir_is_the_run_dir(monkeypatch):
    # The run id is time-based: make every clock read a new second, so `output_dir`, the log dir
    # and the checkpointer's dir must come from one read (CI once saw them straddle a second).
    import tunekit.config.resolvers as resolvers

    ticks = iter(range(10**6))
    monkeypatch.setattr(resolvers.time, "strftime", lambda fmt, *a: f"2026-01-01_00-00-{next(ticks):02d}")
    raw = compose("lora_finetune")
    cfg = OmegaConf.to_container(raw, resolve=True)
    assert Path(cfg["output_dir"]).is_absolute() and "outputs/lora_finetune/" in cfg["output_dir"]
    assert cfg["metric_logger"]["log_dir"] == cfg["output_dir"] + "/logs"
    assert cfg["checkpointer"]["output_dir"] == cfg["output_dir"]
    assert raw.metric_logger.log_dir == raw.output_dir + "/logs"  # node by node, too


def test_misspelt_key_suggests_nearest_and_plus():
    with pytest.raises(ConfigError) as err:
        compose("lora_finetune", ["optimzer.lr=1"])
    text = str(err.value)
    assert "Did you mean: optimizer?" in text and "+optimzer.lr=1" in text and "\n" not in text
    with pytest.raises(ConfigError, match=r"unknown key `lora.rnak`.*Did you mean: rank"):
        compose("lora_finetune", ["lora.rnak=4"])


def test_plus_adds_a_new_key():
    assert compose("lora_finetune", ["+notes=hello"]).notes == "hello"


def test_misspelt_key_in_yaml(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "defaults:\n  - lora_finetune_schema\n  - model: tiny\n  - _self_\nepochz: 3\n"
    )
    with pytest.raises(ConfigError, match=r"unknown key `epochz`.*Did you mean: epochs"):
        compose("lora_finetune", user_config_dir=tmp_path, config_name="mine")


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"`epochs` expects a value of type int, got 'abc'"):
        compose("lora_finetune", ["epochs=abc"])
    with pytest.raises(ConfigError, match=r"`lora.alpha` expects a value of type float"):
        compose("lora_finetune", ["lora.alpha=big"])


def test_unknown_group_option_lists_valid_options():
    with pytest.raises(ConfigError) as err:
        compose("lora_finetune", ["checkpointer=nope"])
    assert str(err.value) == (
        "`checkpointer=nope`: config group `checkpointer` has no option `nope`. "
        "Valid options for `checkpointer`: hf, meta."
    )
    with pytest.raises(ConfigError, match=r"Did you mean: llama2_7b.*Valid options for `model`"):
        compose("lora_finetune", ["model=llama2_7"])


def test_schema_problems_are_reported_all_at_once():
    cfg = compose(
        "lora_finetune",
        ["epochs=0", "dtype=fp16", "device=tpu", "lora.targets=[q_proj,qq]", "lora.dropout=1.5",
         "+lora.rank_pattern.k_proj=4", "max_steps_per_epoch=5", "save_every_n_steps=10"],
    )
    problems = config_problems(cfg, "lora_finetune")
    text = "\n".join(problems)
    for expected in (
        "`epochs`=0: must be >= 1",
        "`dtype`='fp16': must be one of: fp32, bf16",
        "`device`='tpu': is not a device: use auto, cpu, cuda, cuda:N (a GPU index) or mps",
        "`lora.targets`=['q_proj', 'qq']: unknown name(s) qq",
        "`lora.dropout`=1.5: must be in [0.0, 1.0)",
        "`lora.rank_pattern.k_proj`: `k_proj` matches no module of `lora.targets`",
        "`save_every_n_steps`=10 exceeds `max_steps_per_epoch`=5",
    ):
        assert expected in text
    assert len(problems) == 7


def test_generate_cross_field_rules(tmp_path):
    cfg = compose("generate", ["system_prompt=be brief", f"checkpoint={tmp_path / 'nope'}", "top_p=1.5"])
    text = "\n".join(config_problems(cfg, "generate"))
    assert "`system_prompt` is set but `chat`=false" in text
    assert "`checkpoint`=" in text and "not an existing directory" in text
    assert "`top_p`=1.5: must be in [0.0, 1.0]" in text


def test_missing_value_is_reported():
    cfg = compose("lora_finetune", ["dataset=alpaca"])
    assert "`dataset.source` has no value (???)" in "\n".join(config_problems(cfg, "lora_finetune"))


def _signature_problems(node: dict) -> list[str]:
    return component_problems(OmegaConf.create({"comp": node}).comp)


def test_component_signatures_checked_without_building():
    here = "test_config_instantiate"
    import test_config_instantiate  # noqa: F401  (fixtures live there)

    assert _signature_problems({"_component_": f"{here}.Point", "x": 1}) == []
    assert _signature_problems({"_component_": f"{here}.Point", "_partial_": True}) == []
    (problem,) = _signature_problems({"_component_": f"{here}.Point", "xx": 1})
    assert "`comp`: unexpected key `xx` (did you mean: x?)" in problem
    assert "missing required argument(s): x" in problem
    (problem,) = _signature_problems({"_target_": "torch.optim.AdamW", "_partial_": True, "lrr": 1})
    assert "did you mean: lr?" in problem and "Signature: torch.optim.AdamW(params, lr=" in problem
    (problem,) = _signature_problems({"_component_": "tunekit.checkpointing.NoSuchThing"})
    assert problem.startswith("`comp._component_`='tunekit.checkpointing.NoSuchThing'")


def test_nested_components_are_validated(tmp_path):
    cfg = OmegaConf.create(
        {"outer": {"_component_": "test_config_instantiate.Pair", "first": {"_component_": "test_config_instantiate.Point", "z": 1}}}
    )
    import test_config_instantiate  # noqa: F401

    problems = config_problems(cfg, "no_schema")
    assert len(problems) == 1 and problems[0].startswith("`outer.first`: unexpected key `z`")


def test_config_dir_discovery_for_both_layouts(tmp_path):
    installed = tmp_path / "site-packages" / "tunekit"
    (installed / "conf").mkdir(parents=True)
    assert find_shipped_dir("conf", installed) == installed / "conf"
    checkout = tmp_path / "repo"
    (checkout / "src" / "tunekit").mkdir(parents=True)
    (checkout / "conf").mkdir()
    (checkout / "recipes").mkdir()
    assert find_shipped_dir("conf", checkout / "src" / "tunekit") == checkout / "conf"
    assert find_shipped_dir("recipes", checkout / "src" / "tunekit") == checkout / "recipes"
    with pytest.raises(ConfigError, match="Cannot find tunekit's `recipes` directory"):
        find_shipped_dir("recipes", installed)
    assert (config_dir() / "lora_finetune.yaml").is_file()


def test_activation_checkpointing_policy_settings():
    cfg = compose("lora_finetune", ["ac_policy=some", "ac_every_k_layers=0"])
    text = "\n".join(config_problems(cfg, "lora_finetune"))
    assert "`ac_policy`='some': must be one of: full, selective" in text
    assert "`ac_every_k_layers`=0: must be >= 1" in text
    for overrides in (["activation_checkpointing=true", "ac_policy=selective"],
                      ["activation_checkpointing=true", "ac_policy=selective", "compile=true"], []):
        assert config_problems(compose("lora_finetune", overrides), "lora_finetune") == []
    cfg = compose("full_finetune", ["activation_checkpointing=true", "ac_policy=selective"])
    assert config_problems(cfg, "full_finetune") == []
    from tunekit.run.settings import train_settings

    s = train_settings(cfg)
    assert (s.activation_checkpointing, s.ac_policy, s.ac_every_k_layers) == (True, "selective", 1)


def test_schema_is_the_one_source_of_every_training_setting():
    """Every TrainSettings field has a schema field (so the loop can take all of them from cfg)."""
    import dataclasses

    from tunekit.config.schemas import FullFinetuneSchema, LoraFinetuneSchema
    try:  # where the loop's settings live moves with the training room's layout
        from tunekit.training.settings import TrainSettings
    except ImportError:
        from tunekit.training.loop import TrainSettings

    for schema in (LoraFinetuneSchema, FullFinetuneSchema):
        names = {f.name for f in dataclasses.fields(schema)}
        assert {f.name for f in dataclasses.fields(TrainSettings)} <= names
    cfg = compose("full_finetune")
    assert (cfg.clip_grad_norm, cfg.device) == (None, "auto")
    assert (cfg.max_eval_batches, cfg.handle_signals) == (None, True)
