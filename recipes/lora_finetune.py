"""LoRA fine-tuning: `python -m recipes.lora_finetune [overrides]` (or `tunekit run lora_finetune`).

Composes conf/lora_finetune.yaml, builds the pieces it names and hands them to the one training
loop (`tunekit.training.train`):

- the base model on the meta device, weights assigned from the checkpointer (no second copy),
  LoRA adapters from `lora.*`, only the adapters trainable;
- tokenizer, train + validation splits of `dataset` (packed with `packed=true`), the loaders;
- optimizer over the adapter parameters, lr schedule over the run's optimizer steps, loss,
  metric logger; a checkpoint per epoch (and every `save_every_n_steps`, and on SIGTERM);
- `resume=<run or epoch_/step_ dir>` or `resume=auto` continues a run exactly (docs/recipes.md),
  from full or sharded (`step_N/dcp/`) checkpoints, on any number of ranks.

Under torchrun/Slurm (several ranks) the model is built on the meta device on every rank, only
rank 0 reads the checkpoint, and each rank keeps its FSDP2 shards (docs/distributed.md).

The run directory gets `config_resolved.yaml`, `run_info.json` (overrides, package versions),
`logs/metrics.jsonl`, `epoch_*/` checkpoints and `result.json`. `main()` returns the final
validation loss (the training loss without a validation split) for Hydra sweepers.
"""

from __future__ import annotations

import time

from omegaconf import DictConfig, OmegaConf

from tunekit.config import instantiate, is_multirun, job_overrides, recipe_main, resolved_yaml

RECIPE = "lora_finetune"


@recipe_main("lora_finetune")
def main(cfg: DictConfig) -> float | None:
    """Run the `lora_finetune` recipe on a validated config."""
    # lazy: torch loads only when a run starts
    from tunekit.training.setup import process_group_teardown, user_errors

    with user_errors(), process_group_teardown():
        return run(cfg)


def run(cfg: DictConfig) -> float | None:
    """Build everything `cfg` names, train, and return the final validation (else train) loss."""
    from tunekit.modules.peft import LoRASpec
    from tunekit.training import num_training_steps, setup, train
    from tunekit.training.seed import set_seed

    t_start = time.perf_counter()
    rank, world_size = setup.init_distributed(cfg.device)
    overrides = job_overrides()
    resume_dir = setup.resolve_resume_dir(cfg.resume, cfg.output_dir, RECIPE,
                                          search_siblings=not is_multirun())
    settings = setup.train_settings(cfg)

    # ---- model: base weights from the checkpointer (rank 0 only when sharded), fresh adapters
    # (seeded); resuming from a sharded step checkpoint, every weight comes from it instead.
    spec = LoRASpec(**OmegaConf.to_container(cfg.lora, resolve=True))
    set_seed(cfg.seed)
    checkpointer = instantiate(cfg.checkpointer)
    resume_state = None
    if resume_dir is not None:
        resume_state = setup.load_resume(resume_dir, lora=True, model_type=cfg.checkpointer.model_type,
                                         rank=rank)
    sharded_resume = resume_state is not None and "sharded_checkpoint" in resume_state
    model = setup.build_training_model(
        instantiate(cfg.model, _partial_=True),
        None if sharded_resume else lambda: checkpointer.load_checkpoint()["model"],
        settings=settings, lora=spec, source=str(checkpointer.checkpoint_dir),
        world_size=world_size, rank=rank, declared=getattr(checkpointer, "model_settings", None))
    if resume_state is not None:
        setup.check_resume_fits(model, resume_state, str(resume_dir), lora=True)

    # ---- data
    tokenizer = instantiate(cfg.tokenizer)
    note = setup.check_tokenizer_fits(tokenizer, model)
    train_ds, val_ds = setup.build_datasets(
        instantiate(cfg.dataset), tokenizer, validation=cfg.dataset.val_fraction > 0,
        packed=cfg.packed, max_seq_len=cfg.max_seq_len)
    train_loader, val_loader = setup.build_loaders(
        train_ds, val_ds, batch_size=cfg.batch_size, packed=cfg.packed, pad_id=tokenizer.pad_id,
        seed=cfg.seed, rank=rank, world_size=world_size, pin_memory=setup.pin_memory_for(cfg.device))

    # ---- optimisation
    optimizer = instantiate(cfg.optimizer)([p for p in model.parameters() if p.requires_grad])
    total_steps = num_training_steps(len(train_loader), settings)
    lr_scheduler = instantiate(cfg.lr_scheduler)(optimizer, num_training_steps=total_steps)
    loss_fn = instantiate(cfg.loss)
    metric_logger = instantiate(cfg.metric_logger)

    if rank == 0:
        n_all = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        setup.announce_run(
            recipe=RECIPE, output_dir=cfg.output_dir, resolved_config_yaml=resolved_yaml(cfg),
            config=OmegaConf.to_container(cfg, resolve=True), overrides=overrides,
            metric_logger=metric_logger,
            model_summary=(f"{n_all / 1e6:.2f}M parameters, {n_train / 1e6:.3f}M trainable "
                           f"({100 * n_train / n_all:.2f}%, {'DoRA' if spec.use_dora else 'LoRA'} rank {spec.rank} on "
                           f"{', '.join(spec.targets)})"),
            num_train=len(train_ds), num_val=0 if val_ds is None else len(val_ds),
            total_steps=total_steps, resume_dir=resume_dir, resume_auto=cfg.resume == "auto",
            note=note)

    result = train(model, optimizer=optimizer, lr_scheduler=lr_scheduler, loss_fn=loss_fn,
                   train_loader=train_loader, val_loader=val_loader, checkpointer=checkpointer,
                   metric_logger=metric_logger, settings=settings, adapter_config=spec,
                   resume_state=resume_state, progress=rank == 0)
    metric_logger.close()
    return setup.report_result(RECIPE, cfg.output_dir, result, overrides=overrides,
                               seconds=time.perf_counter() - t_start, rank_zero=rank == 0)


if __name__ == "__main__":
    main()
