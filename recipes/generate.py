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

`model=auto` builds the model the weights' own config.json / params.json declares.

The prompt is encoded as plain text (after BOS where the tokenizer adds one), as an Alpaca
instruction (`template=alpaca`, with `input=...`), or as a chat: `chat=true` (the prompt as one
user turn, optional `system_prompt=...`) or `messages=` (a multi-turn list or a .json/.yaml file),
rendered with the checkpoint's own chat template and the generation prompt (ids equal to
transformers' `apply_chat_template(..., add_generation_prompt=True)`; Llama 2's [INST] layout for
a tokenizer without a template). Generation uses the KV cache, stops at the checkpoint's stop
tokens (EOS, generation_config.json's eos_token_id list, <|eot_id|>, <|im_end|>, ...),
`max_new_tokens` or the model's context window (`max_seq_len`), and prints the text, what
stopped it and the tokens/s. `compile=true` compiles the one-token
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


def _prompt(cfg: DictConfig, tokenizer):
    from omegaconf import OmegaConf

    from tunekit.config import ConfigError
    from tunekit.generation import PromptError, build_prompt

    messages = cfg.messages
    if messages is not None and not isinstance(messages, str):
        messages = OmegaConf.to_container(messages, resolve=True)
    try:
        return build_prompt(tokenizer, prompt=cfg.prompt, chat=cfg.chat, template=cfg.template, input=cfg.input,
                            system_prompt=cfg.system_prompt, messages=messages)
    except PromptError as err:
        raise ConfigError(str(err)) from None


def _check_sampling(cfg: DictConfig) -> None:
    """What the schema's range checks let through but generation cannot use."""
    import math

    from tunekit.config import ConfigError

    if not math.isfinite(cfg.temperature):
        raise ConfigError(
            f"`temperature`={cfg.temperature}: must be a finite number >= 0 (0 = greedy; 0.6-1.0 is "
            "typical; an infinite temperature would pick every token with the same probability)."
        )


def _check_prompt_fits(prompt: list[int], cfg: DictConfig, model, shown: str) -> None:
    """A prompt that leaves no room in the model's context window is refused before any weight is read."""
    from omegaconf import OmegaConf

    from tunekit.config import ConfigError

    context = model.max_seq_len
    builder = OmegaConf.select(cfg, "model._component_") or OmegaConf.select(cfg, "model._target_")
    if len(prompt) < context:
        return
    words = max(1, len(shown.split()))
    room = max(1, context - min(cfg.max_new_tokens, context // 2))
    fit_words = max(1, int(room * words / len(prompt)))
    key = "messages" if cfg.messages is not None else "prompt"
    wrapped = ", with the chat/template wrapping" if cfg.chat or cfg.template or cfg.messages is not None else ""
    raise ConfigError(
        f"The prompt is {len(prompt)} tokens long (`{key}`, {words} words{wrapped}) but the model's context "
        f"window is {context} tokens (max_seq_len of {builder}), so there is no room "
        f"to generate anything. Shorten `{key}` so that it and `max_new_tokens`={cfg.max_new_tokens} fit "
        f"in {context} tokens: e.g. at most about {fit_words} words ({room} tokens) leaves room for "
        f"{context - room} new tokens."
    )


def _token_name(tokenizer, token_id: int) -> str:
    what = "EOS, id" if token_id == tokenizer.eos_id else "id"
    try:
        return f"{tokenizer.id_to_piece(token_id)!s} ({what} {token_id})"
    except Exception:  # noqa: BLE001 - a name is only decoration
        return f"stop token id {token_id}"


def run(cfg: DictConfig) -> str:
    """Load the weights, encode the prompt, generate, print."""
    from omegaconf import OmegaConf

    from tunekit.generation import TokenGenerator, stop_token_ids
    from tunekit.run import model as setup

    _check_sampling(cfg)
    weights = setup.find_inference_weights(checkpoint=cfg.checkpoint, adapter=cfg.adapter,
                                           checkpointer=cfg.checkpointer, output_dir=cfg.output_dir,
                                           device=cfg.device, dtype=cfg.dtype)
    source = weights.source
    model = setup.build_inference_model(cfg.model, weights)  # meta device; checked against the weights' JSON

    auto_tok = setup.builds_from_checkpoint(cfg.model) and str(
        OmegaConf.select(cfg, "tokenizer._component_")).endswith("tokenizer_from_dir")
    # model=auto with tokenizer=auto: the tokenizer files that travel with the weights used
    tokenizer = instantiate(cfg.tokenizer, path=str(source)) if auto_tok else instantiate(cfg.tokenizer)
    formatted = _prompt(cfg, tokenizer)
    prompt = formatted.tokens
    _check_prompt_fits(prompt, cfg, model, formatted.shown)  # before any weight is read
    setup.load_inference_weights(model, weights)
    if cfg.quantize is not None:
        from tunekit.generation.quantize import quantize_model_

        print(f"tunekit {RECIPE}: {quantize_model_(model, cfg.quantize).describe()}", file=sys.stderr)

    note = setup.check_tokenizer_fits(tokenizer, model)
    if note:
        print(f"tunekit {RECIPE}: {note}", file=sys.stderr)
    # compile=true compiles the one-token decode step (CUDA graphs on GPUs); the cache holds
    # exactly prompt + max_new_tokens slots (capped by max_seq_len), as attention reads all of it.
    with TokenGenerator(model, compile=cfg.compile) as generator:
        stops = stop_token_ids(tokenizer)
        result = generator.generate(prompt, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                    top_k=cfg.top_k, top_p=cfg.top_p, stop_tokens=stops, seed=cfg.seed)
    text = tokenizer.decode(result.tokens[0])
    shown = formatted.shown
    print(f"{shown}{'' if shown.endswith((' ', chr(10))) else ' '}{text}", flush=True)
    ended_by = result.stop_token[0] if result.stop_token else None
    ended = result.describe_stop(0, stop_token_name=_token_name(tokenizer, stops[0] if ended_by is None else ended_by))
    compiled = (f"; decode step compiled ({generator.compile_mode}) in {result.compile_seconds:.1f}s"
                if cfg.compile else "")
    print(f"[generate] {len(result.tokens[0])} new tokens from a {result.prompt_len}-token prompt "
          f"in {result.prefill_seconds + result.decode_seconds:.2f}s: {result.tokens_per_second:.1f} "
          f"tokens/s ({ended}{compiled}; prompt: {formatted.layout}; weights: {source}"
          f"{'' if cfg.adapter is None else ' + adapter ' + str(cfg.adapter)})",
          file=sys.stderr, flush=True)
    return text


if __name__ == "__main__":
    main()
