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
  then come from the checkpoint, not from the base model (docs/recipes.md).

The run directory gets `config_resolved.yaml`, `run_info.json` (overrides, package versions),
`logs/metrics.jsonl`, `epoch_*/` checkpoints and `result.json`. `main()` returns the final
validation loss (the training loss without a validation split) for Hydra sweepers.
"""

from __future__ import annotations

import sys
import time

from omegaconf import DictConfig, OmegaConf

from tunekit.config import instantiate, is_multirun, job_overrides, recipe_main, resolved_yaml

RECIPE = "full_finetune"


@recipe_main("full_finetune")
def main(cfg: DictConfig) -> float | None:
    """Run the `full_finetune` recipe on a validated config."""
    from tunekit.training.setup import user_errors  # lazy: torch loads only when a run starts

    with user_errors():
        return run(cfg)


def run(cfg: DictConfig) -> float | None:
    """Build everything `cfg` names, train, and return the final validation (else train) loss."""
    from tunekit.checkpointing import ADAPTER_FILE, CheckpointError, load_resume_state
    from tunekit.training import TrainSettings, num_training_steps, setup, train
    from tunekit.training.seed import set_seed

    t_start = time.perf_counter()
    rank, world_size = setup.init_distributed(cfg.device)
    rank_zero = rank == 0
    overrides = job_overrides()
    resume_dir = setup.resolve_resume_dir(cfg.resume, cfg.output_dir, RECIPE,
                                          search_siblings=not is_multirun())

    # ---- model: the base weights, or (resuming) the checkpoint's own weights
    set_seed(cfg.seed)
    checkpointer = instantiate(cfg.checkpointer)
    resume_state = None
    if resume_dir is None:
        weights, source = checkpointer.load_checkpoint().pop("model"), str(checkpointer.checkpoint_dir)
    else:
        if (resume_dir / ADAPTER_FILE).is_file():
            raise CheckpointError(
                f"resume: {resume_dir} was saved by lora_finetune (it holds {ADAPTER_FILE}); its "
                "model files are merged LoRA weights. Resume it with `python -m "
                "recipes.lora_finetune resume=...`, or fine-tune the merged model from scratch "
                f"with checkpointer.checkpoint_dir={resume_dir}."
            )
        resume_state = load_resume_state(resume_dir, cfg.checkpointer.model_type)
        weights, source = resume_state.pop("model"), str(resume_dir)  # assigned below, not copied
    model = setup.build_model(instantiate(cfg.model, _partial_=True), weights, source=source)
    del weights
    if world_size > 1:
        from tunekit.training import distributed

        model = distributed.shard_model(model)

    # ---- data
    tokenizer = instantiate(cfg.tokenizer)
    note = setup.check_tokenizer_fits(tokenizer, model)
    train_ds, val_ds = setup.build_datasets(
        instantiate(cfg.dataset), tokenizer, validation=cfg.dataset.val_fraction > 0,
        packed=cfg.packed, max_seq_len=cfg.max_seq_len)
    train_loader, val_loader = setup.build_loaders(
        train_ds, val_ds, batch_size=cfg.batch_size, packed=cfg.packed, pad_id=tokenizer.pad_id,
        seed=cfg.seed, rank=rank, world_size=world_size)

    # ---- optimisation
    settings = TrainSettings(
        epochs=cfg.epochs, max_steps_per_epoch=cfg.max_steps_per_epoch,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        clip_grad_norm=cfg.clip_grad_norm, log_every_n_steps=cfg.log_every_n_steps,
        save_every_n_steps=cfg.save_every_n_steps, eval_every_n_steps=cfg.eval_every_n_steps,
        device=cfg.device, dtype=cfg.dtype, compile=cfg.compile,
        activation_checkpointing=cfg.activation_checkpointing, seed=cfg.seed)
    optimizer = instantiate(cfg.optimizer)(list(model.parameters()))
    total_steps = num_training_steps(len(train_loader), settings)
    lr_scheduler = instantiate(cfg.lr_scheduler)(optimizer, num_training_steps=total_steps)
    loss_fn = instantiate(cfg.loss)
    metric_logger = instantiate(cfg.metric_logger)

    if rank_zero:
        setup.write_run_info(cfg.output_dir, recipe=RECIPE, resolved_config_yaml=resolved_yaml(cfg),
                             overrides=overrides, resumed_from=None if resume_dir is None else str(resume_dir))
        metric_logger.log_config(OmegaConf.to_container(cfg, resolve=True))
        n_all = sum(p.numel() for p in model.parameters())
        print(f"tunekit {RECIPE}: {n_all / 1e6:.2f}M parameters, all trainable; "
              f"{len(train_ds)} train / {0 if val_ds is None else len(val_ds)} validation samples; "
              f"{total_steps} optimizer steps; output: {cfg.output_dir}", flush=True)
        if resume_dir is not None:
            print(f"tunekit {RECIPE}: resuming from {resume_dir}", flush=True)
        elif cfg.resume == "auto":
            print(f"tunekit {RECIPE}: resume=auto found no checkpoint; starting fresh", flush=True)
        if note:
            print(f"tunekit {RECIPE}: {note}", file=sys.stderr, flush=True)

    result = train(model, optimizer=optimizer, lr_scheduler=lr_scheduler, loss_fn=loss_fn,
                   train_loader=train_loader, val_loader=val_loader, checkpointer=checkpointer,
                   metric_logger=metric_logger, settings=settings, adapter_config=None,
                   resume_state=resume_state, progress=rank_zero)
    metric_logger.close()
    return _report(cfg.output_dir, result, overrides, time.perf_counter() - t_start, rank_zero)


def _report(output_dir: str, result, overrides, seconds: float, rank_zero: bool) -> float | None:
    """Write result.json, print a one-line summary, return the value sweeps minimise."""
    from tunekit.training import setup

    if rank_zero:
        setup.write_result(output_dir, result, overrides=overrides, wall_seconds=seconds)
        losses = result.step_losses
        span = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no steps run"
        val = "" if result.final_val_loss is None else f", val_loss {result.final_val_loss:.4f}"
        if result.interrupted:
            print(f"tunekit {RECIPE}: interrupted at step {result.global_step} ({span}); checkpoint "
                  f"saved; continue with resume={output_dir}", flush=True)
        else:
            print(f"tunekit {RECIPE}: done in {seconds:.1f}s, {result.global_step} steps, {span}{val}; "
                  f"checkpoints in {output_dir}", flush=True)
    return result.final_val_loss if result.final_val_loss is not None else result.final_train_loss


if __name__ == "__main__":
    main()
