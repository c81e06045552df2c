"""Tiny self-contained models, data and a fake checkpointer for the training tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunekit.run.resume import Resume, restore
from tunekit.run.saver import CheckpointSaver
from tunekit.run.settings import train_settings
from tunekit.training import build_dataloader, prepare_loss, prepare_model, train
from tunekit.training.losses import CrossEntropyLoss
from tunekit.training.lr_schedulers import cosine_with_warmup

VOCAB = 37


class Block(nn.Module):
    """Residual MLP with causal mixing (running mean), so positions interact."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *, mask: Any = None, input_pos: Any = None) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[None, :, None]
        mixed = x.cumsum(1) / steps
        return x + self.drop(self.fc2(torch.relu(self.fc1(mixed))))


class TinyLM(nn.Module):
    """Follows the TransformerDecoder contract: forward, forward_hidden, .layers, .output."""

    def __init__(self, dim: int = 16, num_layers: int = 2, dropout: float = 0.0,
                 output: nn.Module | None = None) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, dim)
        self.layers = nn.ModuleList(Block(dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.output = output if output is not None else nn.Linear(dim, VOCAB, bias=False)

    def forward_hidden(self, tokens: torch.Tensor, *, mask: Any = None, input_pos: Any = None) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, mask=mask, input_pos=input_pos)
        return self.norm(h)

    def forward(self, tokens: torch.Tensor, *, mask: Any = None, input_pos: Any = None) -> torch.Tensor:
        return self.output(self.forward_hidden(tokens, mask=mask, input_pos=input_pos))


def make_samples(n: int, seed: int = 0, max_len: int = 12) -> list[dict[str, list[int]]]:
    """Variable-length samples with pre-shifted labels and an ignored 'prompt' part."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(4, max_len + 1, (1,), generator=g))
        tokens = torch.randint(1, VOCAB, (length,), generator=g).tolist()
        prompt = int(torch.randint(1, length - 1, (1,), generator=g))
        labels = [-100] * prompt + tokens[prompt + 1 :] + [-100]
        out.append({"tokens": tokens, "labels": labels})
    return out


def collate(samples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    length = max(len(s["tokens"]) for s in samples)
    tokens = torch.zeros(len(samples), length, dtype=torch.long)
    labels = torch.full((len(samples), length), -100, dtype=torch.long)
    for i, s in enumerate(samples):
        tokens[i, : len(s["tokens"])] = torch.tensor(s["tokens"])
        labels[i, : len(s["labels"])] = torch.tensor(s["labels"])
    return {"tokens": tokens, "labels": labels}


class FakeCheckpointer:
    """In-memory checkpointer: deep copies of every saved state, keyed by dir name."""

    def __init__(self) -> None:
        self.saved: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[int, bool, int | None]] = []

    def save_checkpoint(self, state: dict[str, Any], epoch: int,
                        intermediate_checkpoint: bool = False, step: int | None = None,
                        info: Any = None) -> None:
        name = f"step_{step}" if step is not None else f"epoch_{epoch}"
        self.saved[name] = copy.deepcopy(state)
        self.calls.append((epoch, intermediate_checkpoint, step))

    def load_checkpoint(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.saved[name])


def make_run(*, batch_size: int = 4, n_samples: int = 24, dropout: float = 0.1, seed: int = 0,
             lr: float = 1e-2, model: nn.Module | None = None, settings_kw: dict | None = None,
             optimizer_cls: type = torch.optim.AdamW) -> dict[str, Any]:
    """Everything train() needs, built deterministically from ``seed``."""
    torch.manual_seed(seed)
    model = model if model is not None else TinyLM(dropout=dropout)
    settings = train_settings(**{"epochs": 2, "seed": seed, "clip_grad_norm": 1.0, "device": "cpu",
                                 "log_every_n_steps": 1, **(settings_kw or {})})
    loader = build_dataloader(make_samples(n_samples, seed=1), batch_size, collate,
                              shuffle=True, seed=seed)
    val_loader = build_dataloader(make_samples(8, seed=2), 4, collate, shuffle=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer_cls(params, lr=lr)
    from tunekit.training import num_training_steps

    scheduler = cosine_with_warmup(optimizer, 2, num_training_steps(len(loader), settings))
    return {"model": model, "optimizer": optimizer, "lr_scheduler": scheduler,
            "loss_fn": CrossEntropyLoss(), "train_loader": loader, "val_loader": val_loader,
            "settings": settings}


def run_train(parts: dict[str, Any], *, checkpointer: Any = None, resume_state: dict | None = None,
              adapter_config: Any = None, **kwargs: Any):
    """What a recipe does around train(): prepare, restore a saved state, save through a saver."""
    parts = dict(parts)
    model, settings = parts["model"], parts["settings"]
    prepare_model(model, settings)
    parts["loss_fn"] = prepare_loss(parts["loss_fn"], settings)
    start = None
    if resume_state is not None:
        start = restore(Resume(Path("<saved state>"), "resume_state", dict(resume_state)), model=model,
                        optimizer=parts["optimizer"], lr_scheduler=parts["lr_scheduler"],
                        train_loader=parts["train_loader"], settings=settings, lora=adapter_config is not None)
    saver = None
    if checkpointer is not None:
        saver = CheckpointSaver(checkpointer, model=model, optimizer=parts["optimizer"],
                                lr_scheduler=parts["lr_scheduler"], train_loader=parts["train_loader"],
                                settings=settings, adapter_config=adapter_config)
    return train(**parts, saver=saver, start=start, progress=False, **kwargs)
