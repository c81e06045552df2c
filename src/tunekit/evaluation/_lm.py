"""tunekit's model + tokenizer as an lm-evaluation-harness language model.

:class:`TunekitLM` subclasses the harness's ``TemplateLM`` (an ``LM`` that splits a request's
context/continuation the way the harness's own HF backend does), so a task scores the same
tokens here as with ``HFLM`` on the transformers model of the same checkpoint:

- ``loglikelihood``: context + continuation encoded whole, then split (the harness's
  ``_encode_pair``); an empty context conditions on the prefix token (BOS, else EOS);
- ``loglikelihood_rolling``: the harness's disjoint rolling windows of the model's context;
- ``generate_until``: greedy (or sampled) KV-cached decoding through
  :class:`tunekit.generation.TokenGenerator`, cut at the first ``until`` string.

Requests are batched: scoring sorts them longest first and right-pads a batch; generation
batches prompts of equal length with the same generation settings. This module imports
``lm_eval`` (the ``eval`` extra); :func:`tunekit.evaluation.make_lm` imports it lazily.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM

from tunekit.generation import TokenGenerator

__all__ = ["TunekitLM"]

Request = tuple[tuple[str, str] | None, list[int], list[int]]


class TunekitLM(TemplateLM):
    """A ``TransformerDecoder`` and a tunekit tokenizer for the harness.

    Args:
        model: the decoder (eval mode, on ``device``).
        tokenizer: a tunekit tokenizer (``encode``/``decode``, ``bos_id``, ``eos_id``).
        batch_size: sequences per forward pass.
        max_length: the context used (default: the model's ``max_seq_len``).
        max_gen_toks: new tokens per ``generate_until`` request unless the task sets its own.
        device: where ``model`` lives (default: its parameters' device).
    """

    backend = "causal"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, batch_size: int = 8,
                 max_length: int | None = None, max_gen_toks: int = 256,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_length = int(max_length or model.max_seq_len)
        self.max_gen_toks = int(max_gen_toks)
        self._device = torch.device(device) if device is not None else next(model.parameters()).device
        self._adds_bos = bool(getattr(tokenizer, "adds_bos", tokenizer.bos_id is not None))

    @property
    def device(self) -> torch.device:
        return self._device

    # ---- tokenization: as the harness's HF backend does with a tokenizer's defaults
    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_id)

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_id
        return int(bos) if bos is not None and bos >= 0 else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """``string``'s ids; BOS first when the tokenizer adds one (``add_special_tokens``=None/True)."""
        add_bos = self._adds_bos if add_special_tokens is None else bool(add_special_tokens) and self._adds_bos
        return list(self.tokenizer.encode(string, add_bos=add_bos, add_eos=False))

    def tok_decode(self, tokens: Sequence[int], **kwargs: Any) -> str:
        return self.tokenizer.decode(list(tokens))

    # ---- scoring
    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests: Sequence[Request], disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """``(sum of continuation log-probs, continuation is the greedy choice)`` per request."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        # the harness's truncation: the last max_length + 1 tokens, the last one only predicted
        inputs = [(list(ctx) + list(cont))[-(self.max_length + 1):][:-1] for _, ctx, cont in requests]
        order = sorted(range(len(requests)), key=lambda i: -len(inputs[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            width = max(len(inputs[i]) for i in chunk)
            batch = torch.full((len(chunk), width), self.eot_token_id, dtype=torch.long)
            for row, i in enumerate(chunk):
                batch[row, :len(inputs[i])] = torch.tensor(inputs[i], dtype=torch.long)
            # right padding under a causal mask leaves every real position's logits unchanged
            logprobs = F.log_softmax(self.model(batch.to(self._device)).float(), dim=-1)
            for row, i in enumerate(chunk):
                cont = list(requests[i][2])
                n, length = len(cont), len(inputs[i])
                scored = logprobs[row, length - n:length]  # the predictions of the continuation
                target = torch.tensor(cont, dtype=torch.long, device=scored.device)
                greedy = bool((scored.argmax(dim=-1) == target).all())
                logprob = float(scored.gather(-1, target[:, None]).sum())
                results[i] = (logprob, greedy)
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return [r for r in results if r is not None]

    def loglikelihood_rolling(self, requests: Iterable[Any], disable_tqdm: bool = False) -> list[float]:
        """Each string's whole log-likelihood over disjoint windows of the model's context."""
        windows: list[Request] = []
        owner: list[int] = []
        reqs = list(requests)
        for idx, req in enumerate(reqs):
            (string,) = req.args
            for ctx, pred in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, pred))
                owner.append(idx)
        totals = [0.0] * len(reqs)
        for idx, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[idx] += logprob
        for req, total in zip(reqs, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    # ---- generation
    def generate_until(self, requests: Iterable[Any], disable_tqdm: bool = False) -> list[str]:
        """Continue each context until one of its ``until`` strings, EOS or ``max_gen_toks``."""
        reqs = list(requests)
        out: list[str | None] = [None] * len(reqs)
        groups: dict[tuple[int, str], list[tuple[int, list[int], dict[str, Any]]]] = defaultdict(list)
        for i, req in enumerate(reqs):
            context, gen_kwargs = req.args
            kwargs = dict(gen_kwargs or {})
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            # leave room for the new tokens: the context is cut from the left (as the harness does)
            prompt = self.tok_encode(context)[-max(1, self.max_length - max_new):]
            groups[(len(prompt), repr(sorted(kwargs.items(), key=lambda kv: kv[0])))].append((i, prompt, kwargs))
        with TokenGenerator(self.model) as generator:
            for items in groups.values():
                for start in range(0, len(items), self.batch_size):
                    chunk = items[start:start + self.batch_size]
                    for (i, _, _), text in zip(chunk, self._generate_batch(generator, chunk)):
                        out[i] = text
                        self.cache_hook.add_partial("generate_until", reqs[i].args, text)
        return [o if o is not None else "" for o in out]

    def _generate_batch(self, generator: TokenGenerator,
                        chunk: list[tuple[int, list[int], dict[str, Any]]]) -> list[str]:
        kwargs = chunk[0][2]
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        eos_text = self.tok_decode([self.eot_token_id])
        do_sample = bool(kwargs.get("do_sample", False))
        temperature = float(kwargs.get("temperature", 0.0)) if do_sample else 0.0
        result = generator.generate(
            torch.tensor([p for _, p, _ in chunk], dtype=torch.long),
            max_new_tokens=int(kwargs.get("max_gen_toks", self.max_gen_toks)), temperature=temperature,
            top_k=kwargs.get("top_k"), top_p=kwargs.get("top_p"), stop_tokens=[self.eot_token_id],
            seed=kwargs.get("seed", 0))
        texts = []
        for tokens in result.tokens:
            text = self.tok_decode(tokens)
            for stop in [*until, eos_text] if eos_text else until:
                if stop:
                    text = text.split(stop)[0]
            texts.append(text)
        return texts
