"""Text generation: `python -m recipes.generate [overrides]` (or `tunekit run generate`).

Weights, in this order of preference:

- `checkpoint=<dir>`: a fine-tuning output: a run directory (its newest complete checkpoint) or
  an `epoch_N/` / `step_N/` directory, HF or Meta format (detected by its files), full or
  merged LoRA weights; `model=` must name the same shape;
- else the base model the `checkpointer` group points at (the bundled tiny model by default);
- plus `adapter=<dir>`: a LoRA adapter merged on top (a tunekit checkpoint dir with
  `adapter_0.pt` / `adapter/`, or a PEFT dir with `adapter_config.json`).

The prompt is encoded as plain text after BOS, or as an Alpaca instruction (`template=alpaca`),
or as a Llama 2 chat turn (`chat=true`, optional `system_prompt=...`). Generation uses the KV
cache, stops at EOS, and prints the text and the tokens/s. `compile=true` compiles the one-token
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


def run(cfg: DictConfig) -> str:
    """Load the weights, encode the prompt, generate, print."""
    import torch

    from tunekit.generation import TokenGenerator
    from tunekit.generation._loading import find_weights_dir, load_adapter, merge_adapter, weights_checkpointer
    from tunekit.run import model as setup
    from tunekit.training.device import get_device
    from tunekit.training.precision import get_dtype

    device = get_device(cfg.device)
    dtype = get_dtype(cfg.dtype, device)
    model_type = cfg.checkpointer.model_type
    if cfg.checkpoint is not None:
        source = find_weights_dir(cfg.checkpoint)
        checkpointer = weights_checkpointer(source, model_type=model_type, output_dir=cfg.output_dir)
    else:
        checkpointer = instantiate(cfg.checkpointer)
        source = checkpointer.checkpoint_dir
    with torch.device("meta"):
        model = instantiate(cfg.model)  # nothing is allocated; the weights are assigned below
    # RoPE base / norm eps / RoPE scaling that the weights' config declares, before reading them
    setup.check_model_settings(model, getattr(checkpointer, "model_settings", None), str(source))
    weights = checkpointer.load_checkpoint()["model"]
    if cfg.adapter is not None:
        attn = model.layers[0].attn
        adapter, scalings = load_adapter(cfg.adapter, model_type=model_type, num_heads=attn.num_heads,
                                         num_kv_heads=attn.num_kv_heads, embed_dim=attn.embed_dim)
        weights = merge_adapter(weights, adapter, scalings)
    weights = {k: v.to(device=device, dtype=dtype) for k, v in weights.items()}
    setup.load_model_weights(model, weights, lora=False, source=str(source))
    del weights
    model.eval()

    tokenizer = instantiate(cfg.tokenizer)
    note = setup.check_tokenizer_fits(tokenizer, model)
    if note:
        print(f"tunekit {RECIPE}: {note}", file=sys.stderr)
    prompt = _prompt_tokens(cfg, tokenizer)
    # compile=true compiles the one-token decode step (CUDA graphs on GPUs); the cache holds
    # exactly prompt + max_new_tokens slots, as attention reads all of it every step.
    with TokenGenerator(model, compile=cfg.compile) as generator:
        result = generator.generate(prompt, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                    top_k=cfg.top_k, top_p=cfg.top_p, stop_tokens=[tokenizer.eos_id],
                                    seed=cfg.seed)
    text = tokenizer.decode(result.tokens[0])
    print(f"{cfg.prompt}{'' if cfg.prompt.endswith((' ', chr(10))) else ' '}{text}", flush=True)
    ended = "stopped at EOS" if result.stopped[0] else f"reached max_new_tokens={cfg.max_new_tokens}"
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
