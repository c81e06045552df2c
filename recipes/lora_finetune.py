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

from tunekit.config import ConfigError, instantiate, is_multirun, job_overrides, recipe_main, resolved_yaml

RECIPE = "lora_finetune"


@recipe_main("lora_finetune")
def main(cfg: DictConfig) -> float | None:
    """Run the `lora_finetune` recipe on a validated config."""
    # lazy: torch loads only when a run starts
    from tunekit.run.errors import user_errors
    from tunekit.run.process import process_group_teardown

    with user_errors(), process_group_teardown():
        return run(cfg)


def run(cfg: DictConfig) -> float | None:
    """Build everything `cfg` names, train, and return the final validation (else train) loss."""
    from tunekit.modules.peft import LoRASpec
    from tunekit.run import data, examples, model, process, records, resume
    from tunekit.run.saver import CheckpointSaver, log_merge_drift
    from tunekit.run.settings import schedule_warnings, train_settings
    from tunekit.training import num_training_steps, prepare_loss, prepare_model, train
    from tunekit.training.device import get_device
    from tunekit.training.low_memory import low_memory_setup
    from tunekit.training.seed import set_seed

    t_start = time.perf_counter()
    rank, world_size = process.init_distributed(cfg.device)
    if cfg.optimizer_in_backward and world_size > 1:
        raise ConfigError(f"optimizer_in_backward=true runs on one process in this version, this launch has "
                          f"{world_size} ranks: run without torchrun, or set optimizer_in_backward=false.")
    overrides = job_overrides()
    settings = train_settings(cfg)
    spec = LoRASpec(**OmegaConf.to_container(cfg.lora, resolve=True))
    checkpointer = instantiate(cfg.checkpointer)
    fresh = cfg.resume is None and not checkpointer.resume_from_checkpoint
    if fresh:  # before any work: a used run directory is refused at once
        records.check_run_dir(cfg.output_dir, resuming_here=False, resume_setting=None, recipe=RECIPE)

    # ---- data, and what this run trains with (checked against any checkpoint it resumes)
    tokenizer = instantiate(cfg.tokenizer)
    if cfg.eval_tasks:  # an unknown task or a bad task file fails now, not after training
        from tunekit.evaluation import check_tasks

        check_tasks(list(cfg.eval_tasks), "eval_tasks")
    train_ds, val_ds = data.build_datasets(
        instantiate(cfg.dataset), tokenizer, validation=cfg.dataset.val_fraction > 0,
        packed=cfg.packed, max_seq_len=cfg.max_seq_len)
    trained_with = resume.fingerprint(
        recipe=RECIPE, model=OmegaConf.to_container(cfg.model, resolve=True),
        checkpoint_dir=checkpointer.checkpoint_dir, tokenizer_path=getattr(tokenizer, "path", None),
        train_dataset=train_ds, batch_size=cfg.batch_size, max_seq_len=cfg.max_seq_len, packed=cfg.packed,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, world_size=world_size, seed=cfg.seed,
        lora=OmegaConf.to_container(cfg.lora, resolve=True))
    res = resume.open_resume(cfg.resume, checkpointer=checkpointer, output_dir=cfg.output_dir, recipe=RECIPE,
                             lora=True, model_type=cfg.checkpointer.model_type, trained_with=trained_with,
                             accept=list(cfg.resume_accept), rank=rank, search_siblings=not is_multirun())
    run_note = None if fresh else records.check_run_dir(
        cfg.output_dir, resuming_here=res is not None and res.inside(cfg.output_dir),
        resume_setting=cfg.resume, recipe=RECIPE)

    # ---- model: base weights from the checkpointer (rank 0 only when sharded), fresh adapters
    # (seeded); resuming from a sharded step checkpoint, every weight comes from it instead.
    set_seed(cfg.seed)
    load_weights, source = resume.model_weights(res, checkpointer)
    net = model.build_training_model(
        instantiate(cfg.model, _partial_=True), load_weights, settings=settings, lora=spec, source=source,
        world_size=world_size, rank=rank, declared=checkpointer.model_settings)
    if res is not None:
        resume.check_resume_fits(net, res, lora=True)
    note = model.check_tokenizer_fits(tokenizer, net)
    prepare_model(net, settings)
    loss_fn = prepare_loss(instantiate(cfg.loss), settings)
    train_loader, val_loader = data.build_loaders(
        train_ds, val_ds, batch_size=cfg.batch_size, packed=cfg.packed, pad_id=tokenizer.pad_id,
        seed=cfg.seed, rank=rank, world_size=world_size, pin_memory=process.pin_memory_for(cfg.device))

    # ---- optimisation, the resume point, saving
    # the optimizer (stepped in backward with optimizer_in_backward) and the loss as the loop calls it
    optimizer, loss_fn = low_memory_setup(
        net, instantiate(cfg.optimizer), loss_fn, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        clip_grad_norm=cfg.clip_grad_norm, optimizer_in_backward=cfg.optimizer_in_backward,
        activation_offloading=cfg.activation_offloading)
    total_steps = num_training_steps(len(train_loader), settings)
    lr_scheduler = instantiate(cfg.lr_scheduler)(optimizer, num_training_steps=total_steps)
    start = None if res is None else resume.restore(res, model=net, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                                    train_loader=train_loader, settings=settings, lora=True)
    saver = CheckpointSaver(checkpointer, model=net, optimizer=optimizer, lr_scheduler=lr_scheduler,
                            train_loader=train_loader, settings=settings, adapter_config=spec,
                            trained_with=trained_with)
    metric_logger = instantiate(cfg.metric_logger)

    if rank == 0:
        n_all = sum(p.numel() for p in net.parameters())
        n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
        records.announce_run(
            recipe=RECIPE, output_dir=cfg.output_dir, resolved_config_yaml=resolved_yaml(cfg),
            config=OmegaConf.to_container(cfg, resolve=True), overrides=overrides,
            metric_logger=metric_logger,
            model_summary=(f"{n_all / 1e6:.2f}M parameters, {n_train / 1e6:.3f}M trainable "
                           f"({100 * n_train / n_all:.2f}%, {'DoRA' if spec.use_dora else 'LoRA'} rank {spec.rank} on "
                           f"{', '.join(spec.targets)})"),
            num_train=len(train_ds), num_val=0 if val_ds is None else len(val_ds),
            total_steps=total_steps, resume=res, resume_auto=cfg.resume == "auto",
            notes=[n for n in (run_note, note) if n] + schedule_warnings(lr_scheduler, total_steps))

    # `examples`: held-out rows answered before training and after it (off unless configured)
    probe = examples.probe_for_run(cfg.examples, val_ds, tokenizer, world_size=world_size,
                                   resumed_at=None if start is None else start.global_step, rank=rank)
    if probe is not None:
        probe.record_before(net)
    result = train(net, optimizer=optimizer, lr_scheduler=lr_scheduler, loss_fn=loss_fn,
                   train_loader=train_loader, val_loader=val_loader, saver=saver,
                   metric_logger=metric_logger, settings=settings, start=start, progress=rank == 0)
    # QLoRA: what merging cost (README, QLoRA)
    log_merge_drift(net, lora=spec, result=result, saver=saver, loss_fn=loss_fn, val_loader=val_loader,
                    device=get_device(settings.device), metric_logger=metric_logger, rank=rank)
    return records.finish_run(RECIPE, cfg, net=net, optimizer=optimizer, loss_fn=loss_fn, tokenizer=tokenizer,
                              metric_logger=metric_logger, result=result, probe=probe,
                              device=get_device(settings.device), rank=rank, overrides=overrides, t_start=t_start)


if __name__ == "__main__":
    main()
