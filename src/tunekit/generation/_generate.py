"""Autoregressive decoding with the model's KV cache: one prefill pass, then one token a step.

:class:`TokenGenerator` owns the decode loop. Its one-token step (forward + next-token pick)
is the unit ``torch.compile`` sees: static shapes (a fixed-length KV cache, ``[b, 1]`` tokens,
positions as a ``[b, 1]`` tensor), no Python branching on tensor values and on-device
sampling, so ``compile=True`` gives one graph (CUDA graphs via ``mode="reduce-overhead"`` on
GPUs) that every step replays. The host syncs only every ``stop_check_interval`` steps, to
see whether every row has produced a stop token. The prompt pass (prefill) stays eager: its
length changes per prompt, and it runs once.

:func:`generate` is the one-call form (builds a :class:`TokenGenerator`, runs, cleans up).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from tunekit.generation._sampling import pick_next_token

__all__ = [
    "STOP_CACHE_LEN",
    "STOP_MAX_NEW_TOKENS",
    "STOP_MAX_SEQ_LEN",
    "STOP_TOKEN",
    "GenerationResult",
    "TokenGenerator",
    "default_compile_mode",
    "generate",
]

#: ``GenerationResult.stop_reason`` values: what ended a row's continuation.
STOP_TOKEN = "stop_token"  # one of ``stop_tokens`` (e.g. EOS) was generated
STOP_MAX_NEW_TOKENS = "max_new_tokens"  # ``max_new_tokens`` tokens were generated
STOP_MAX_SEQ_LEN = "max_seq_len"  # prompt + new tokens filled the model's context window
STOP_CACHE_LEN = "cache_len"  # ... filled the KV cache the caller installed


@dataclass
class GenerationResult:
    """What :func:`generate` / :meth:`TokenGenerator.generate` return.

    Attributes:
        tokens: the new tokens of each prompt (a stop token and what follows excluded).
        stopped: per prompt, whether a stop token ended it (else ``max_new_tokens`` or the
            model's ``max_seq_len`` did: see ``stop_reason``).
        prompt_len: prompt length (all prompts share it).
        prefill_seconds: time of the prompt pass (first new token included).
        decode_seconds: time of the remaining one-token steps.
        steps: tokens generated per row until every row stopped (stop tokens included).
        compile_seconds: time spent compiling (and capturing CUDA graphs for) the decode step
            during this call; not part of the other two times.
        stop_reason: per prompt, what ended it: :data:`STOP_TOKEN`, :data:`STOP_MAX_NEW_TOKENS`,
            :data:`STOP_MAX_SEQ_LEN` (the context window ran out first) or
            :data:`STOP_CACHE_LEN` (a caller-installed KV cache ran out first).
        max_new_tokens: the cap the caller asked for.
        context_len: the positions available to prompt + new tokens (the model's ``max_seq_len``,
            or a caller-installed cache's length).
        stop_token: per prompt, the stop token id that ended it (None: none did).
    """

    tokens: list[list[int]]
    stopped: list[bool]
    prompt_len: int
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    steps: int = field(default=0)
    compile_seconds: float = 0.0
    stop_reason: list[str] = field(default_factory=list)
    max_new_tokens: int = 0
    context_len: int = 0
    stop_token: list[int | None] = field(default_factory=list)

    def describe_stop(self, row: int = 0, *, stop_token_name: str = "a stop token") -> str:
        """One phrase saying what ended row ``row``, with the numbers (for logs and the CLI)."""
        reason = self.stop_reason[row] if self.stop_reason else (STOP_TOKEN if self.stopped[row] else
                                                                   STOP_MAX_NEW_TOKENS)
        n = len(self.tokens[row])
        if reason == STOP_TOKEN:
            return f"stopped at {stop_token_name} after {n} new tokens"
        if reason == STOP_MAX_NEW_TOKENS:
            return f"reached max_new_tokens={self.max_new_tokens or n}"
        where = "the model's context window" if reason == STOP_MAX_SEQ_LEN else "the KV cache's length"
        key = "max_seq_len" if reason == STOP_MAX_SEQ_LEN else "cache length"
        return (f"stopped at {where}: {key}={self.context_len} = {self.prompt_len}-token prompt + {n} new "
                f"tokens, before max_new_tokens={self.max_new_tokens} was reached")

    @property
    def num_new_tokens(self) -> int:
        """Tokens generated over all prompts (stop tokens included, as they were computed)."""
        return self.steps * len(self.tokens)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second, prefill included (compilation excluded)."""
        total = self.prefill_seconds + self.decode_seconds
        return self.num_new_tokens / total if total > 0 else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_compile_mode(device: torch.device | str) -> str:
    """``"reduce-overhead"`` (CUDA graphs) on CUDA, else inductor's ``"default"``."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


def _last_logits(model: nn.Module, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """Logits ``[b, vocab]`` of the last position only: the prefill projects one position to the
    vocabulary instead of the whole prompt (a 4k-token prompt x 128k vocab would be 2 GB of fp32)."""
    forward_hidden = getattr(model, "forward_hidden", None)
    if forward_hidden is None:
        return model(tokens, input_pos=input_pos)[:, -1]
    hidden = forward_hidden(tokens, input_pos=input_pos)[:, -1:]  # [b, 1, dim]
    return model.output(hidden)[:, -1]


def _decode_step(
    model: nn.Module,
    tokens: torch.Tensor,
    input_pos: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    seed: torch.Tensor,
    *,
    greedy: bool,
) -> torch.Tensor:
    """Logits of the last position -> next token ``[b]``; used for prefill and every step."""
    logits = _last_logits(model, tokens, input_pos)  # [b, vocab]
    return pick_next_token(logits, greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                           seed=seed, position=input_pos[:, -1])


class TokenGenerator:
    """Reusable KV-cached decoding for one model, eager or with a compiled decode step.

    Build it once and call :meth:`generate` as often as needed: the compiled step (and its
    CUDA graphs) is reused as long as the batch size and cache length stay the same. The
    first call that needs a new shape compiles; :attr:`GenerationResult.compile_seconds`
    reports that time separately from the generation times.

    KV cache: a cache the caller set up (``model.setup_caches``) is used as it is (reset at
    each call; new tokens are capped by its length) and left in place. Otherwise the
    generator installs one of ``cache_len`` slots (default: what the first call needs,
    ``prompt + max_new_tokens``; grown when a later call needs more) and removes it in
    :meth:`close`. Attention reads the whole cache each step, so a tight cache is faster.

    Args:
        model: a ``TransformerDecoder`` (``setup_caches``, ``forward(tokens, input_pos=...)``),
            in its final dtype and device.
        compile: compile the one-token decode step with ``torch.compile(fullgraph=True,
            dynamic=False)``.
        compile_mode: ``torch.compile`` mode; default :func:`default_compile_mode` of the
            model's device (``"reduce-overhead"`` on CUDA, ``"default"`` on the CPU).
        cache_len: KV-cache slots to install up front (None: sized by the first call).
        stop_check_interval: with stop tokens, steps between two host checks of "every row
            has stopped" (the only host syncs of the loop). Up to this many - 1 tokens are
            computed after the last row stopped, and discarded.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        compile: bool = False,
        compile_mode: str | None = None,
        cache_len: int | None = None,
        stop_check_interval: int = 8,
    ) -> None:
        if stop_check_interval < 1:
            raise ValueError(f"stop_check_interval must be >= 1, got {stop_check_interval}")
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        self.compile = compile
        self.compile_mode = compile_mode or default_compile_mode(self.device)
        self.stop_check_interval = stop_check_interval
        self._own_cache = not model.caches_are_enabled()
        self._cache_shape: tuple[int, int] | None = None  # (batch, slots) of an owned cache
        self._warm: set[tuple] = set()
        self._step: Callable[..., torch.Tensor] = self._eager_step
        if compile:
            # A closure over the model (not the model as an argument): parameters and cache
            # buffers are then static graph inputs, which CUDA graphs need.
            self._step = torch.compile(self._eager_step, mode=self.compile_mode, fullgraph=True,
                                       dynamic=False)
        if cache_len is not None:
            self._ensure_cache(1, cache_len)

    # ---- cache ----------------------------------------------------------------------------

    def _eager_step(self, tokens, input_pos, temperature, top_k, top_p, seed, *, greedy):
        return _decode_step(self.model, tokens, input_pos, temperature, top_k, top_p, seed, greedy=greedy)

    def _cache_capacity(self) -> tuple[int, int]:
        """(batch, slots) of the model's current cache."""
        kv = self.model.layers[0].attn.kv_cache
        return kv.k_cache.shape[0], kv.k_cache.shape[2]

    def _ensure_cache(self, batch: int, slots: int) -> None:
        if not self._own_cache:
            return
        if self._cache_shape is not None:
            have_b, have_s = self._cache_shape
            if batch <= have_b and slots <= have_s:
                return
            batch, slots = max(batch, have_b), max(slots, have_s)
        self.model.setup_caches(batch_size=batch, dtype=self.dtype, max_seq_len=slots)
        self._cache_shape = (batch, slots)

    def close(self) -> None:
        """Removes the KV cache this generator installed (a caller's cache stays)."""
        if self._own_cache and self._cache_shape is not None:
            self.model.remove_caches()
            self._cache_shape = None

    def __enter__(self) -> TokenGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- decoding -------------------------------------------------------------------------

    def _warm_up(self, batch: int, greedy: bool, args: tuple[torch.Tensor, ...]) -> float:
        """Compiles (and on CUDA captures) the step for this shape; returns the seconds spent.

        Runs the step on dummy tokens at position 0: that cache slot is rewritten by the
        prefill that follows.
        """
        key = (batch, self._cache_capacity(), greedy)
        if not self.compile or key in self._warm:
            return 0.0
        _sync(self.device)
        t0 = time.perf_counter()
        tok = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        pos = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        for _ in range(3):  # CUDA graph trees: warm-up run, recording, first replay
            self._step(tok, pos, *args, greedy=greedy).clone()
        _sync(self.device)
        self._warm.add(key)
        return time.perf_counter() - t0

    @torch.no_grad()
    def generate(
        self,
        prompt_tokens: Sequence[int] | torch.Tensor,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens: Iterable[int] = (),
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> GenerationResult:
        """Continue ``prompt_tokens`` with up to ``max_new_tokens`` tokens.

        Args:
            prompt_tokens: one prompt (``list[int]`` / ``[s]``) or equal-length prompts ``[b, s]``.
            max_new_tokens: cap on new tokens (also capped by the model's ``max_seq_len`` and
                by a caller-installed cache's length).
            temperature: 0 = greedy (argmax); > 0 samples from ``softmax(logits / T)``.
            top_k: keep the k most likely tokens (None: off).
            top_p: nucleus sampling mass in (0, 1] (None: off).
            stop_tokens: ids that end a row's continuation (e.g. the tokenizer's EOS).
            seed: sampling seed; the same seed gives the same tokens, eager or compiled.
            generator: alternative to ``seed``: one seed is drawn from it (on its device).
                Neither: drawn from torch's global RNG (so ``torch.manual_seed`` applies).

        Returns:
            A :class:`GenerationResult`.

        Raises:
            ValueError: an empty prompt, one that fills the model's context already, or a
                bad sampling setting (each message names the setting and the valid values).
        """
        model, device = self.model, self.device
        prompt = torch.as_tensor(prompt_tokens, dtype=torch.long, device=device)
        if prompt.dim() == 1:
            prompt = prompt.unsqueeze(0)
        b, s = prompt.shape
        if s == 0:
            raise ValueError("generate() got an empty prompt; it needs at least one token (e.g. BOS).")
        limit = model.max_seq_len if self._own_cache else self._cache_capacity()[1]
        limit_name = "the model's context window (max_seq_len)" if self._own_cache else "the installed KV cache"
        if s >= limit:
            raise ValueError(f"the prompt has {s} tokens but {limit_name} is {limit} positions: no room to "
                             f"generate; shorten the prompt to at most {limit - 1} tokens.")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 (or None: off), got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (or None: off), got {top_p}")
        max_new = min(max_new_tokens, limit - s)
        # What ends a row that no stop token ends: the cap asked for, or the room left.
        cap_reason = (STOP_MAX_NEW_TOKENS if max_new_tokens <= limit - s
                      else STOP_MAX_SEQ_LEN if self._own_cache else STOP_CACHE_LEN)

        self._ensure_cache(b, s + max_new)
        model.reset_caches()
        greedy = temperature == 0
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (), generator=generator,
                                     device=generator.device if generator is not None else "cpu"))
        vocab = model.tok_embeddings.num_embeddings
        args = (  # tensors, so new values never recompile the step
            torch.tensor(max(temperature, 1e-6), dtype=torch.float32, device=device),
            torch.tensor(vocab if top_k is None else top_k, dtype=torch.long, device=device),
            torch.tensor(1.0 if top_p is None else top_p, dtype=torch.float32, device=device),
            torch.tensor(seed, dtype=torch.long, device=device),
        )
        stop_ids = sorted({int(t) for t in stop_tokens})
        stop = torch.tensor(stop_ids, dtype=torch.long, device=device)
        was_training = model.training
        model.eval()
        try:
            compile_s = self._warm_up(b, greedy, args)
            out = torch.empty(b, max_new, dtype=torch.long, device=device)
            done = torch.zeros(b, dtype=torch.bool, device=device)
            _sync(device)
            t0 = time.perf_counter()
            positions = torch.arange(s, device=device).expand(b, s)
            tok = _decode_step(model, prompt, positions, *args, greedy=greedy)  # eager prefill
            _sync(device)
            t1 = time.perf_counter()
            input_pos = torch.full((b, 1), s, dtype=torch.long, device=device)
            computed = max_new
            for i in range(max_new):
                out[:, i] = tok
                if stop_ids:
                    done |= (tok.unsqueeze(-1) == stop).any(-1)  # [b]; no sync
                    # The loop's only host sync, every stop_check_interval steps.
                    if (i + 1) % self.stop_check_interval == 0 and bool(done.all()):
                        computed = i + 1
                        break
                if i == max_new - 1:
                    break
                # clone: a CUDA-graph output is overwritten by the next replay
                tok = self._step(tok.unsqueeze(1), input_pos, *args, greedy=greedy).clone()
                input_pos += 1
            new = out[:, :computed].tolist()  # syncs
            t2 = time.perf_counter()
        finally:
            model.train(was_training)

        stop_set = set(stop_ids)
        tokens, stopped, steps, ended_by = [], [], 0, []
        for row in new:
            cut = next((j for j, t in enumerate(row) if t in stop_set), None)
            tokens.append(row if cut is None else row[:cut])
            stopped.append(cut is not None)
            ended_by.append(None if cut is None else int(row[cut]))
            steps = max(steps, len(row) if cut is None else cut + 1)
        return GenerationResult(tokens=tokens, stopped=stopped, prompt_len=s, prefill_seconds=t1 - t0,
                                decode_seconds=t2 - t1, steps=steps, compile_seconds=compile_s,
                                stop_reason=[STOP_TOKEN if st else cap_reason for st in stopped],
                                max_new_tokens=max_new_tokens, context_len=limit, stop_token=ended_by)


def generate(
    model: nn.Module,
    prompt_tokens: Sequence[int] | torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Iterable[int] = (),
    seed: int | None = None,
    generator: torch.Generator | None = None,
    compile: bool = False,
) -> GenerationResult:
    """Continue ``prompt_tokens`` with up to ``max_new_tokens`` sampled tokens.

    One call of a fresh :class:`TokenGenerator` (see it for the KV-cache rules): the model
    gets a cache of ``prompt + new`` slots for the call, unless the caller set one up (then it
    is reset and left in place). To generate repeatedly with ``compile=True``, keep a
    :class:`TokenGenerator` instead, so the compiled step is reused.

    Args:
        model: a ``TransformerDecoder``.
        prompt_tokens: one prompt (``list[int]`` / ``[s]``) or equal-length prompts ``[b, s]``.
        max_new_tokens: cap on new tokens (also capped by the model's ``max_seq_len``).
        temperature: 0 = greedy.
        top_k: top-k filtering (None: off).
        top_p: nucleus filtering (None: off).
        stop_tokens: ids that end a prompt's continuation (e.g. the tokenizer's EOS).
        seed: sampling seed (see :meth:`TokenGenerator.generate`).
        generator: RNG to draw the seed from, when ``seed`` is None.
        compile: compile the decode step (:class:`TokenGenerator`).

    Returns:
        A :class:`GenerationResult`.

    Raises:
        ValueError: an empty prompt, or one that fills the model's context already.
    """
    with TokenGenerator(model, compile=compile) as gen:
        return gen.generate(prompt_tokens, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p, stop_tokens=stop_tokens, seed=seed,
                            generator=generator)
