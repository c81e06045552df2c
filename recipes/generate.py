"""Text generation: `python -m recipes.generate [overrides]` (or `tunekit run generate`).

Weights, in this order of preference:

- `checkpoint=<dir>`: a fine-tuning output: a run directory (its newest complete checkpoint),
  an `epoch_N/` / `step_N/` directory or its `model/` (the current layout; the older flat
  layout too), or any HF / Meta model directory (format detected by its files); full or
  merged LoRA weights; `model=` must name the same shape;
- else the base model the `checkpointer` group points at (the bundled tiny model by default);
- plus `adapter=<dir>`: a LoRA adapter merged on top of *base* weights (a LoRA run or its
  `epoch_N/`, whose `adapter/` + `adapter_0.pt` are used, or a PEFT dir with
  `adapter_config.json`). A LoRA run's own checkpoint already holds the merged weights, so
  `checkpoint=` such a checkpoint together with `adapter=` is refused (it would apply the
  update twice), unless the adapter was trained on those merged weights (its
  `adapter_config.json` names them as `base_model_name_or_path`).

The prompt is encoded as plain text after BOS, or as an Alpaca instruction (`template=alpaca`),
or as a Llama 2 chat turn (`chat=true`, optional `system_prompt=...`). Generation uses the KV
cache, stops at EOS, `max_new_tokens` or the model's context window (`max_seq_len`), and prints
the text, what stopped it and the tokens/s. `compile=true` compiles the one-token
decode step (`torch.compile`, CUDA graphs on GPUs; the compile time is printed apart).
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from tunekit.config import instantiate, recipe_main

RECIPE = "generate"


@recipe_main("generate")
def main(cfg: DictConfig) -> str:
    """Run the `generate` recipe on a validated config; returns the generated text."""
    from tunekit.run.errors import user_errors  # lazy: torch loads only when a run starts

    with user_errors():
        return run(cfg)


def _prompt_tokens(cfg: DictConfig, tokenizer) -> list[int]:
    from tunekit.data import alpaca_generation_tokens, llama2_chat_generation_tokens

    if cfg.chat:
        messages = [] if cfg.system_prompt is None else [{"role": "system", "content": cfg.system_prompt}]
        messages.append({"role": "user", "content": cfg.prompt})
        return llama2_chat_generation_tokens(tokenizer, messages)
    if cfg.template == "alpaca":
        return alpaca_generation_tokens(tokenizer, cfg.prompt)
    return tokenizer.encode(cfg.prompt, add_bos=True, add_eos=False)


def _check_sampling(cfg: DictConfig) -> None:
    """What the schema's range checks let through but generation cannot use."""
    import math

    from tunekit.config import ConfigError

    if not math.isfinite(cfg.temperature):
        raise ConfigError(
            f"`temperature`={cfg.temperature}: must be a finite number >= 0 (0 = greedy; 0.6-1.0 is "
            "typical; an infinite temperature would pick every token with the same probability)."
        )


def _check_prompt_fits(prompt: list[int], cfg: DictConfig, model) -> None:
    """A prompt that leaves no room in the model's context window is refused before any weight is read."""
    from omegaconf import OmegaConf

    from tunekit.config import ConfigError

    context = model.max_seq_len
    builder = OmegaConf.select(cfg, "model._component_") or OmegaConf.select(cfg, "model._target_")
    if len(prompt) < context:
        return
    words = max(1, len(cfg.prompt.split()))
    room = max(1, context - min(cfg.max_new_tokens, context // 2))
    fit_words = max(1, int(room * words / len(prompt)))
    raise ConfigError(
        f"The prompt is {len(prompt)} tokens long (`prompt`, {words} words"
        f"{', with the chat/template wrapping' if cfg.chat or cfg.template else ''}) but the model's context "
        f"window is {context} tokens (max_seq_len of {builder}), so there is no room "
        f"to generate anything. Shorten `prompt` so that it and `max_new_tokens`={cfg.max_new_tokens} fit "
        f"in {context} tokens: e.g. at most about {fit_words} words ({room} tokens) leaves room for "
        f"{context - room} new tokens."
    )


def run(cfg: DictConfig) -> str:
    """Load the weights, encode the prompt, generate, print."""
    import torch

    from tunekit.checkpointing import check_model_matches
    from tunekit.config import ConfigError
    from tunekit.generation import (
        TokenGenerator,
        check_adapter_not_merged,
        load_adapter,
        merge_adapter,
        resolve_checkpoint,
        weights_checkpointer,
    )
    from tunekit.run import model as setup
    from tunekit.training.device import get_device
    from tunekit.training.precision import get_dtype

    _check_sampling(cfg)
    try:
        device = get_device(cfg.device)
        dtype = get_dtype(cfg.dtype, device)
    except ValueError as err:  # no CUDA, or a dtype the device cannot run
        raise ConfigError(f"`device`={cfg.device!r}, `dtype`={cfg.dtype!r}: {err}.") from err
    model_type = cfg.checkpointer.model_type
    if cfg.checkpoint is not None:
        found = resolve_checkpoint(cfg.checkpoint)
        if cfg.adapter is not None:  # before any weight is read
            check_adapter_not_merged(found, cfg.adapter)
        source = found.weights_dir
        checkpointer = weights_checkpointer(source, model_type=model_type, output_dir=cfg.output_dir)
    else:
        checkpointer = instantiate(cfg.checkpointer)
        source = checkpointer.checkpoint_dir
    with torch.device("meta"):
        model = instantiate(cfg.model)  # nothing is allocated; the weights are assigned below
    # RoPE base / norm eps / RoPE scaling that the weights' config declares, before reading them
    check_model_matches(model, getattr(checkpointer, "model_settings", None), str(source))

    tokenizer = instantiate(cfg.tokenizer)
    prompt = _prompt_tokens(cfg, tokenizer)
    _check_prompt_fits(prompt, cfg, model)

    adapter = scalings = None
    if cfg.adapter is not None:  # read (and checked) before the model's weights
        attn = model.layers[0].attn
        adapter, scalings = load_adapter(cfg.adapter, model_type=model_type, num_heads=attn.num_heads,
                                         num_kv_heads=attn.num_kv_heads, embed_dim=attn.embed_dim)
    weights = checkpointer.load_checkpoint()["model"]
    if adapter is not None:
        weights = merge_adapter(weights, adapter, scalings, source=f"adapter={cfg.adapter}")
        del adapter
    weights = {k: v.to(device=device, dtype=dtype) for k, v in weights.items()}
    setup.load_model_weights(model, weights, lora=False, source=str(source))
    del weights
    model.eval()
    if cfg.quantize is not None:
        from tunekit.generation.quantize import quantize_model_

        print(f"tunekit {RECIPE}: {quantize_model_(model, cfg.quantize).describe()}", file=sys.stderr)

    note = setup.check_tokenizer_fits(tokenizer, model)
    if note:
        print(f"tunekit {RECIPE}: {note}", file=sys.stderr)
    # compile=true compiles the one-token decode step (CUDA graphs on GPUs); the cache holds
    # exactly prompt + max_new_tokens slots (capped by max_seq_len), as attention reads all of it.
    with TokenGenerator(model, compile=cfg.compile) as generator:
        result = generator.generate(prompt, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                    top_k=cfg.top_k, top_p=cfg.top_p, stop_tokens=[tokenizer.eos_id],
                                    seed=cfg.seed)
    text = tokenizer.decode(result.tokens[0])
    print(f"{cfg.prompt}{'' if cfg.prompt.endswith((' ', chr(10))) else ' '}{text}", flush=True)
    ended = result.describe_stop(0, stop_token_name=f"EOS (id {tokenizer.eos_id})")
    compiled = (f"; decode step compiled ({generator.compile_mode}) in {result.compile_seconds:.1f}s"
                if cfg.compile else "")
    print(f"[generate] {len(result.tokens[0])} new tokens from a {result.prompt_len}-token prompt "
          f"in {result.prefill_seconds + result.decode_seconds:.2f}s: {result.tokens_per_second:.1f} "
          f"tokens/s ({ended}{compiled}; weights: {source}"
          f"{'' if cfg.adapter is None else ' + adapter ' + str(cfg.adapter)})",
          file=sys.stderr, flush=True)
    return text


if __name__ == "__main__":
    main()
