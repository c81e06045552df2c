"""The config layer's error paths in-process: required values, refused values, YAML, devices,
secrets, sweep summaries (the same paths run end to end in tests/reliability)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tunekit.config import ConfigError, check_device, compose, config_problems, instantiate
from tunekit.config.callbacks import failed_jobs_paragraph, summarize_sweep, write_job_failure
from tunekit.config.entrypoint import compose_with_hydra, split_hydra_argv, unknown_yaml_keys
from tunekit.config.errors import yaml_error_text
from tunekit.config.schemas import LoraFinetuneSchema
from tunekit.config.secrets import REDACTED, redact, redact_override, secret_problems
from tunekit.config.validate import build_error_text, cli_value, find_culprits

HERE = __name__
TOKEN = "hf_" + "Ab1" * 12


def strict(x: int, scale: float = 1.0, mode: str = "a") -> tuple:
    if scale <= 0:
        raise ValueError(f"Invalid scale value: {scale}")
    if mode not in ("a", "b"):
        raise ValueError("unsupported choice")
    return (x, scale, mode)



# ------------------------------------------------------------------------ required values


def test_required_value_hidden_by_a_default_is_reported(tmp_path):
    d = tmp_path
    src = Path(__file__).resolve().parents[2] / "conf" / "lora_finetune.yaml"
    (d / "my.yaml").write_text(src.read_text().replace("epochs: 3", "epochs: ???").replace("  lr: 5.0e-03", "  lr: ???"))
    cfg, hydra_node = compose_with_hydra("lora_finetune", user_config_dir=d, config_name="my")
    assert cfg.epochs == 1  # OmegaConf kept the schema default underneath the ???
    problems = config_problems(cfg, "lora_finetune", hydra_node)
    assert any(p.startswith("`epochs` is required (`???` in") and str(d / "my.yaml") in p for p in problems)
    assert any(p.startswith("`optimizer.lr` is required") for p in problems)
    # given on the command line: fine
    cfg, hydra_node = compose_with_hydra("lora_finetune", ["epochs=2", "optimizer.lr=1e-4"],
                                         user_config_dir=d, config_name="my")
    assert config_problems(cfg, "lora_finetune", hydra_node) == []


def test_shipped_configs_have_no_hidden_required_values():
    for recipe in ("lora_finetune", "full_finetune", "generate"):
        cfg, hydra_node = compose_with_hydra(recipe)
        assert not [p for p in config_problems(cfg, recipe, hydra_node) if "is required" in p]


# ---------------------------------------------------------------- all problems at once


def test_every_bad_override_is_reported_in_one_error():
    with pytest.raises(ConfigError) as err:
        compose("lora_finetune", ["lora.rnak=4", "model=llama9", "batch_size=x", "epochs=2"])
    text = str(err.value)
    assert "(3 problems)" in text
    assert "`lora.rnak=4`: unknown key" in text and "Did you mean: rank?" in text
    assert "`model=llama9`: config group `model` has no option" in text
    assert "`batch_size=x`: `batch_size` expects a value of type int" in text


def test_collect_returns_the_config_without_the_bad_overrides():
    collected: list[str] = []
    cfg, _ = compose_with_hydra("lora_finetune", ["lora.rnak=4", "epochs=2"], collect=collected)
    assert cfg.epochs == 2 and len(collected) == 1 and "lora.rnak" in collected[0]


def test_unknown_keys_of_a_yaml_file_all_at_once(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("defaults:\n  - lora_finetune_schema\n  - _self_\nepochz: 1\nlora:\n  rnak: 2\n  alpha: 3\npaths: {modls_root: x}\n")
    problems = unknown_yaml_keys(f, LoraFinetuneSchema)
    assert len(problems) == 3
    assert "unknown key `epochz`" in problems[0] and "Did you mean: epochs?" in problems[0]
    assert "unknown key `lora.rnak`" in problems[1] and "Did you mean: rank?" in problems[1]
    assert "unknown key `paths.modls_root`" in problems[2]
    with pytest.raises(ConfigError, match=r"(?s)\(3 problems\).*epochz.*lora.rnak"):
        compose("lora_finetune", user_config_dir=tmp_path, config_name="my")


def test_split_hydra_argv():
    argv = ["-m", "--cfg", "job", "--config-dir=d", "-cn", "n", "a=1", "--resolve", "b=2"]
    assert split_hydra_argv(argv) == (["a=1", "b=2"], "d", "n", True)


# ----------------------------------------------------------------------- YAML errors


@pytest.mark.parametrize(
    ("text", "needles"),
    [("a:\n\tb: 1\n", ["line 2, column 1", "tab", "spaces"]),
     ("a: [1, 2\n", ["line 2, column 1", "expected ',' or ']'", "unclosed bracket"]),
     ("a: 1\na: 2\n", ["duplicate key a", "merge the two blocks"])],
)
def test_yaml_error_text(tmp_path, text, needles):
    f = tmp_path / "x.yaml"
    f.write_text(text)
    from omegaconf import OmegaConf as OC

    with pytest.raises(yaml.YAMLError) as err:
        OC.load(f)
    msg = yaml_error_text(err.value)
    assert str(f) in msg and "\n" not in msg
    for n in needles:
        assert n in msg


# ------------------------------------------------------------ values a component refuses


def test_find_culprits_by_name_spelling_value_and_probe():
    assert find_culprits(ValueError("Invalid scale value: -1"), {"scale": -1, "x": 1}, {}) == ["scale"]
    assert find_culprits(ValueError("Invalid learning rate: -1"), {"lr": -1, "eps": 1e-8}, {}) == ["lr"]
    assert find_culprits(ValueError("bad: 'zz'"), {"mode": "zz", "x": 1}, {}) == ["mode"]
    probe = functools.partial(strict, 1, scale=1.0, mode="c")
    culprits = find_culprits(ValueError("unsupported choice"), {"scale": 1.0, "mode": "c"},
                             {"scale": 1.0, "mode": "a"}, probe)
    assert culprits == ["mode"]


def test_build_error_text_reports_every_bad_value_with_its_default():
    values = {"scale": -2.0, "mode": "c"}

    def probe(**reset):
        return strict(1, **{**values, **reset})

    try:
        probe()
    except ValueError as exc:
        text = build_error_text(exc, path="thing", dotted=f"{HERE}.strict", target=strict,
                                values=values, probe=probe)
    assert "`thing.scale`=-2.0: refused by" in text and "(the default is `thing.scale=1.0`)" in text
    assert "`thing.mode`='c'" in text and "unsupported choice" in text and "`thing.mode=a`" in text


def test_cli_value():
    assert cli_value((0.9, 0.999)) == "[0.9,0.999]" and cli_value(None) == "null" and cli_value(True) == "true"


def test_partial_call_names_the_key_and_keeps_partial_semantics():
    root = OmegaConf.create({"comp": {"_component_": f"{HERE}.strict", "_partial_": True, "scale": -1.0}})
    part = instantiate(root.comp)
    assert isinstance(part, functools.partial)
    with pytest.raises(ConfigError) as err:
        part(3)
    assert "`comp.scale`=-1.0: refused by" in str(err.value) and "`comp.scale=1.0`" in str(err.value)
    assert instantiate(OmegaConf.create({"c": {"_component_": f"{HERE}.strict", "_partial_": True}}).c)(3) == (3, 1.0, "a")


def test_direct_build_names_the_key():
    root = OmegaConf.create({"loss": {"_component_": f"{HERE}.strict", "x": 1, "mode": "q"}})
    with pytest.raises(ConfigError, match=r"`loss.mode`='q': refused by .*unsupported choice.*`loss.mode=a`"):
        instantiate(root.loss)


def test_torch_optimizer_values_name_their_keys():
    torch = pytest.importorskip("torch")
    p = [torch.nn.Parameter(torch.zeros(2))]
    cfg = compose("lora_finetune", ["optimizer.betas=[0.9]", "optimizer.eps=-1"])
    with pytest.raises(ConfigError) as err:
        instantiate(cfg.optimizer)(p)
    text = str(err.value)
    assert "`optimizer.betas`=[0.9]" in text and "`optimizer.betas=[0.9,0.999]`" in text
    assert "`optimizer.eps`=-1" in text


# --------------------------------------------------------------------------- devices


@pytest.mark.parametrize("value", ["auto", "cpu"])
def test_check_device_always_fine(value):
    assert check_device(value) is None


@pytest.mark.parametrize("value", ["foo", "cuda:x", "gpu", "cpu:0", ""])
def test_check_device_syntax(value):
    problem = check_device(value)
    assert problem is not None and "is not a device" in problem and "cuda:N" in problem


def test_check_device_cuda_matches_this_machine():
    torch = pytest.importorskip("torch")
    problem = check_device("cuda")
    assert (problem is None) == torch.cuda.is_available()
    if problem:
        assert "`device=cpu`" in problem
    big = check_device("cuda:99")
    assert big is not None and "`device=cpu`" in big or "cuda:0 to" in big


def test_config_import_does_not_import_torch():
    code = "import sys, tunekit.config; tunekit.config.check_device('cpu'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- secrets


def test_redaction():
    assert redact({"a": {"hf_token": "abc", "max_new_tokens": 5, "x": TOKEN, "tokenizer": "p"}}) == {
        "a": {"hf_token": REDACTED, "max_new_tokens": 5, "x": REDACTED, "tokenizer": "p"}}
    assert redact_override(f"+hf_token={TOKEN}") == f"+hf_token={REDACTED}"
    assert redact_override(f"+notes=see {TOKEN}") == f"+notes={REDACTED}"
    assert redact_override("optimizer.lr=1") == "optimizer.lr=1"


def test_secret_problems_never_show_the_value():
    problems = secret_problems({"metric_logger": {"api_key": "s3cr3t"}}, [f"+x={TOKEN}"])
    assert len(problems) == 2 and "`metric_logger.api_key`" in problems[0] and "`+x`" in problems[1]
    assert "s3cr3t" not in " ".join(problems) and TOKEN not in " ".join(problems)


def test_resolved_yaml_and_overrides_are_redacted():
    from tunekit.config import resolved_yaml

    cfg = compose("lora_finetune", [f"+notes={TOKEN}"])
    assert TOKEN not in resolved_yaml(cfg) and REDACTED in resolved_yaml(cfg)
    assert any("access token" in p for p in config_problems(cfg, "lora_finetune"))


# -------------------------------------------------------------------------- sweeps


def test_summary_lists_failed_jobs(tmp_path):
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.1\n")
    (tmp_path / "0" / "result.json").write_text(json.dumps({"final_train_loss": 1.5, "final_val_loss": 2.0}))
    (tmp_path / "1" / ".hydra").mkdir(parents=True)
    (tmp_path / "1" / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr=-1\n- +t={TOKEN}\n")
    write_job_failure(tmp_path / "1", "`optimizer.lr`=-1: refused | by torch.")
    records = summarize_sweep(tmp_path)
    assert [r["status"] for r in records] == ["ok", "failed"]
    assert records[1]["error"].startswith("`optimizer.lr`=-1")
    md = (tmp_path / "summary.md").read_text()
    assert "failed: `optimizer.lr`=-1: refused \\| by torch." in md and TOKEN not in md
    text = failed_jobs_paragraph({"dir": str(tmp_path), "records": records})
    assert text.startswith("1 of 2 sweep job(s) failed: job 1 (optimizer.lr=-1 +t=<redacted>)") and "\n" not in text
    # a point that never started is listed too
    records = summarize_sweep(tmp_path, not_started="`lora.rank=abc`: bad")
    assert records[-1]["job"] == "-" and "does not compose" in records[-1]["error"]
