"""Full fine-tuning: `python -m recipes.full_finetune [overrides]` (or `tunekit run full_finetune`).

Composes conf/full_finetune.yaml, builds the pieces it names and hands them to the one training
loop (`tunekit.training.train`):

- the model on the meta device, weights assigned from the checkpointer (no second copy); every
  parameter trains;
- tokenizer, train + validation splits of `dataset` (packed with `packed=true`), the loaders;
- optimizer over all parameters, lr schedule over the run's optimizer steps, loss, metric
  logger; a checkpoint per epoch (and every `save_every_n_steps`, and on SIGTERM), written in
  the input's format (HF in -> HF out, Meta in -> Meta out);
- `resume=<run or epoch_/step_ dir>` or `resume=auto` continues a run exactly: the weights
  then come from the checkpoint, not from the base model (docs/recipes.md); full or sharded
  (`step_N/dcp/`) checkpoints, on any number of ranks.

Under torchrun/Slurm (several ranks) the model is built on the meta device on every rank, only
rank 0 reads the weights, and each rank keeps its FSDP2 shards (docs/distributed.md).

The run directory gets `config_resolved.yaml`, `run_info.json` (overrides, package versions),
`logs/metrics.jsonl`, `epoch_*/` checkpoints and `result.json`. `main()` returns the final
validation loss (the training loss without a validation split) for Hydra sweepers.
"""

from __future__ import annotations

import time

from omegaconf import DictConfig, OmegaConf

from tunekit.config import ConfigError, instantiate, is_multirun, job_overrides, recipe_main, resolved_yaml

RECIPE = "full_finetune"


@recipe_main("full_finetune")
def main(cfg: DictConfig) -> float | None:
    """Run the `full_finetune` recipe on a validated config."""
    # lazy: torch loads only when a run starts
    from tunekit.run.errors import user_errors
    from tunekit.run.process import process_group_teardown

    with user_errors(), process_group_teardown():
        return run(cfg)


def run(cfg: DictConfig) -> float | None:
    """Build everything `cfg` names, train, and return the final validation (else train) loss."""
    from tunekit.run import data, examples, model, process, records, resume
    from tunekit.run.saver import CheckpointSaver
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
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, world_size=world_size, seed=cfg.seed, lora=None)
    res = resume.open_resume(cfg.resume, checkpointer=checkpointer, output_dir=cfg.output_dir, recipe=RECIPE,
                             lora=False, model_type=cfg.checkpointer.model_type, trained_with=trained_with,
                             accept=list(cfg.resume_accept), rank=rank, search_siblings=not is_multirun())
    run_note = None if fresh else records.check_run_dir(
        cfg.output_dir, resuming_here=res is not None and res.inside(cfg.output_dir),
        resume_setting=cfg.resume, recipe=RECIPE)

    # ---- model: the base weights, or (resuming) the checkpoint's own weights; read by rank 0
    # only when sharded. A sharded step checkpoint supplies them through restore() instead.
    set_seed(cfg.seed)
    load_weights, source = resume.model_weights(res, checkpointer)
    net = model.build_training_model(instantiate(cfg.model, _partial_=True), load_weights, settings=settings,
                                     source=source, world_size=world_size, rank=rank,
                                     declared=checkpointer.model_settings)
    del load_weights  # sharded: rank 0 keeps no full copy
    if res is not None:
        resume.check_resume_fits(net, res, lora=False)
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
                                                    train_loader=train_loader, settings=settings, lora=False)
    saver = CheckpointSaver(checkpointer, model=net, optimizer=optimizer, lr_scheduler=lr_scheduler,
                            train_loader=train_loader, settings=settings, trained_with=trained_with)
    metric_logger = instantiate(cfg.metric_logger)

    if rank == 0:
        n_all = sum(p.numel() for p in net.parameters())
        records.announce_run(
            recipe=RECIPE, output_dir=cfg.output_dir, resolved_config_yaml=resolved_yaml(cfg),
            config=OmegaConf.to_container(cfg, resolve=True), overrides=overrides,
            metric_logger=metric_logger, model_summary=f"{n_all / 1e6:.2f}M parameters, all trainable",
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
    return records.finish_run(RECIPE, cfg, net=net, optimizer=optimizer, loss_fn=loss_fn, tokenizer=tokenizer,
                              metric_logger=metric_logger, result=result, probe=probe,
                              device=get_device(settings.device), rank=rank, overrides=overrides, t_start=t_start)


if __name__ == "__main__":
    main()
