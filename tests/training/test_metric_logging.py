import builtins
import json

import pytest
import torch

from tunekit.training.metric_logging import (
    JsonlLogger,
    MetricLogger,
    StdoutLogger,
    TensorBoardLogger,
    WandBLogger,
)


def test_jsonl_records(tmp_path, capsys):
    logger = JsonlLogger(tmp_path / "logs")
    assert isinstance(logger, MetricLogger)
    logger.log_dict({"loss": torch.tensor(1.5), "lr": 1e-4}, step=1)
    # flushed per write: readable before close
    lines = (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"step": 1, "loss": 1.5, "lr": 1e-4}
    logger.log_dict({"loss": float("nan")}, step=2)
    logger.log_config({"optimizer": {"lr": 1e-4}})
    logger.close()
    lines = (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines][1] == {"step": 2, "loss": "nan"}
    assert json.loads((tmp_path / "logs" / "config.json").read_text()) == {"optimizer": {"lr": 1e-4}}
    assert "step 1 | loss: 1.5" in capsys.readouterr().out
    # a resumed run appends
    again = JsonlLogger(tmp_path / "logs", also_stdout=False)
    again.log_dict({"loss": 1.0}, step=3)
    again.close()
    assert len((tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()) == 3


def test_non_zero_rank_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    logger = JsonlLogger(tmp_path / "logs")
    logger.log_dict({"loss": 1.0}, step=1)
    logger.close()
    StdoutLogger().log_dict({"loss": 1.0}, step=1)
    assert not (tmp_path / "logs").exists()
    assert capsys.readouterr().out == ""


def _block_import(monkeypatch, blocked):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == blocked or name.startswith(blocked + "."):
            raise ImportError(f"No module named '{blocked}'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_tensorboard_missing_hint(monkeypatch, tmp_path):
    _block_import(monkeypatch, "torch.utils.tensorboard")
    with pytest.raises(ImportError, match=r'pip install "tunekit\[tensorboard\]"'):
        TensorBoardLogger(tmp_path)


def test_wandb_missing_hint(monkeypatch, tmp_path):
    _block_import(monkeypatch, "wandb")
    with pytest.raises(ImportError, match=r'pip install "tunekit\[wandb\]"'):
        WandBLogger(project="p", log_dir=tmp_path)
