"""Preference data (prompt, chosen, rejected) for DPO, from local JSON / JSONL files.

A record is one of:

- ``{"prompt": str, "chosen": str, "rejected": str}`` (TRL's standard form);
- ``{"prompt": [messages...], "chosen": ..., "rejected": ...}`` or the same with the key
  ``messages`` for the conversation so far (a chat ending with a ``user`` turn); ``chosen`` and
  ``rejected`` are then each a string, an ``{"role": "assistant", "content": ...}`` object or a
  list holding one (TRL's conversational form);
- ``{"chosen": [messages...], "rejected": [messages...]}``: two whole conversations that share
  every turn before their final ``assistant`` message (torchtune's ``preference_dataset`` and
  TRL's implicit-prompt form); the shared turns are the prompt. A ``prompt`` beside them (as
  UltraFeedback's) must be those turns, or a string that is one of their ``user`` messages.

Both replies are laid out after the same prompt with ``template``: ``plain`` (``<s>{prompt}{reply}</s>``),
``alpaca`` (the Stanford Alpaca prompt around a string prompt), ``llama2_chat`` (``[INST]`` turns)
or ``model`` (the chat template the tokenizer carries, via :mod:`tunekit.data.chat_template`).

**Loss mask.** Only the final reply's tokens (and what closes it: EOS or the template's end of
turn) are targets; the prompt, earlier turns and padding get label -100. ``train_on_input`` does
not apply: the prompt is shared by both sides, so it would cancel in DPO's log-ratio.

**Truncation.** Each side is cut to its first ``max_seq_len`` tokens (as the SFT data sets do,
so the last kept position still predicts its true next token). A pair where either side keeps
no reply token is dropped and counted (``dropped_rows``); if none is left the data set is
refused with the length that would keep 95% of the pairs.

**Batches.** :func:`preference_collate` pads a batch of ``B`` pairs into ``tokens``/``labels``
[2B, s]: the chosen replies first, then the rejected ones (the layout
``tunekit.training.preference_losses.DPOLoss`` reads).
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from tunekit.data._loading import (
    DataFormatError,
    DataSettingError,
    describe_value,
    format_problems,
    load_records,
    resolve_source,
    split_indices,
)
from tunekit.data.chat_template import (
    ChatTemplateError,
    chat_generation_tokens,
    chat_tokens,
    check_chat_messages,
    tokenizer_chat_template,
)
from tunekit.data.collate import padded_collate
from tunekit.data.templates import (
    _bos,
    _encode_pair,
    alpaca_prompt,
    llama2_chat_generation_tokens,
    tokenize_llama2_chat,
    validate_messages,
)
from tunekit.tokenizers import Tokenizer

IGNORE_INDEX = -100
#: Layouts ``PreferenceDataset(template=...)`` accepts.
PREFERENCE_TEMPLATES = ("plain", "alpaca", "llama2_chat", "model")

__all__ = ["PREFERENCE_TEMPLATES", "PreferenceDataset", "load_rows", "preference_collate"]


def load_rows(source: str | Path, check: Any, hint: str, *, split: str, val_fraction: float,
              split_seed: int) -> tuple[Path, str, list[int], list[Any]]:
    """The one place preference rows are read: ``(path, row word, 1-based rows, records)`` of a split.

    Every record is validated with ``check`` first (all problems named by row at once).
    """
    path = resolve_source(source)
    rows, row_word = load_records(path)
    if not rows:
        raise DataFormatError(
            f"Data file {str(path)!r} holds no records (an empty list). Point dataset.source at "
            f"a file with at least one record. {hint}")
    problems = [(row, msg) for row, rec in rows if (msg := check(rec))]
    if problems:
        raise DataFormatError(format_problems(path, row_word, problems, len(rows)) + " " + hint)
    idx = split_indices(len(rows), split, val_fraction, split_seed, path, row_word)
    return path, row_word, [rows[i][0] for i in idx], [rows[i][1] for i in idx]


def _reply_text(value: Any) -> str | None:
    """The reply's text from a string, an assistant message, or a list holding one."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and len(value) == 1:
        value = value[0]
    if isinstance(value, Mapping) and value.get("role", "assistant") == "assistant" \
            and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _conversation(value: Any) -> tuple[list[Any], str] | None:
    """(the turns before, the final assistant text) of a whole conversation, else None."""
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence) or len(value) < 2:
        return None
    last = value[-1]
    if isinstance(last, Mapping) and last.get("role") == "assistant" and isinstance(last.get("content"), str):
        return list(value[:-1]), last["content"]
    return None


def _prompt_of(rec: Mapping[str, Any]) -> Any:
    whole = _conversation(rec.get("chosen"))
    if whole is not None and _conversation(rec.get("rejected")) is not None:
        return whole[0]
    return rec["prompt"] if "prompt" in rec else rec.get("messages")


def _replies(rec: Mapping[str, Any]) -> tuple[str | None, str | None]:
    sides = [_conversation(rec[k]) for k in ("chosen", "rejected")]
    if all(sides):
        return sides[0][1], sides[1][1]
    return _reply_text(rec["chosen"]), _reply_text(rec["rejected"])


def _conversation_problem(rec: Mapping[str, Any]) -> str | None:
    """What is wrong with a pair of whole conversations (``chosen`` / ``rejected``), or None."""
    chosen, rejected = _conversation(rec.get("chosen")), _conversation(rec.get("rejected"))
    if chosen is None and rejected is None:
        return None
    if chosen is None or rejected is None:
        whole, other = ("chosen", "rejected") if chosen is not None else ("rejected", "chosen")
        return (f"'{whole}' is a whole conversation but '{other}' is {describe_value(rec.get(other))}; give both "
                f"as conversations ending with their 'assistant' reply, or both as the reply alone after 'prompt'")
    if chosen[0] != rejected[0]:
        i = next((i for i, (a, b) in enumerate(zip(chosen[0], rejected[0])) if a != b),
                 min(len(chosen[0]), len(rejected[0])))
        return (f"'chosen' and 'rejected' differ at message {i}, before their final 'assistant' reply; the two "
                f"conversations must share every turn but the last (the prompt), so the pair compares two replies")
    given = rec.get("prompt", rec.get("messages"))
    users = [m.get("content") for m in chosen[0] if isinstance(m, Mapping) and m.get("role") == "user"]
    if given is not None and given != chosen[0] and not (isinstance(given, str) and given in users):
        return ("'prompt' is neither the turns 'chosen' and 'rejected' share before their reply nor one of their "
                "'user' messages; remove 'prompt' (the shared turns are the prompt) or fix it")
    return None


def check_preference_record(rec: Any, *, chat: bool, template: str) -> str | None:
    """What is wrong with a preference record, or None."""
    if not isinstance(rec, Mapping):
        return f"expected an object with 'prompt', 'chosen' and 'rejected', got {describe_value(rec)}"
    whole = _conversation_problem(rec)
    if whole is not None:
        return whole
    if _prompt_of(rec) is None:
        return (f"missing the field 'prompt' (or 'messages' for a conversation, or 'chosen' and 'rejected' as whole "
                f"conversations) (it has {sorted(map(str, rec))})")
    prompt = _prompt_of(rec)
    if isinstance(prompt, str):
        pass
    elif not chat:
        return (f"the prompt is {describe_value(prompt)}, but dataset.template={template} takes a string "
                "prompt; use dataset.template=model (or llama2_chat) for conversations")
    else:
        problem = (check_chat_messages(prompt, need_assistant=False) if template == "model"
                   else validate_messages(prompt, final_role="user"))
        if problem is None and prompt and prompt[-1]["role"] != "user":
            problem = "the conversation before the replies must end with a 'user' message"
        if problem:
            return f"prompt: {problem}"
    for key in ("chosen", "rejected"):
        if key not in rec:
            return f"missing the field '{key}' (it has {sorted(map(str, rec))})"
        if _reply_text(rec[key]) is None and _conversation(rec[key]) is None:
            return (f"field '{key}' must be a string, an {{'role': 'assistant', 'content': str}} object, a list of "
                    f"one, or a whole conversation ending with its 'assistant' reply, got {describe_value(rec[key])}")
    chosen, rejected = _replies(rec)
    if chosen == rejected:
        return "'chosen' and 'rejected' are the same reply, so the pair states no preference; fix or remove the row"
    return None


def _prompt_messages(prompt: Any) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def _only_after(tokens: list[int], targets: list[bool], prompt_tokens: Sequence[int]) -> list[bool]:
    """Targets only past the prompt's tokens (the common prefix): the final reply alone."""
    n = 0
    for a, b in zip(tokens, prompt_tokens):
        if a != b:
            break
        n += 1
    return [t and i >= n for i, t in enumerate(targets)]


def tokenize_side(tokenizer: Tokenizer, template: str, prompt: Any, reply: str) -> tuple[list[int], list[bool]]:
    """``(tokens, targets)`` of ``prompt`` followed by ``reply``; targets only on the reply (and its end)."""
    if template in ("plain", "alpaca"):
        text = alpaca_prompt(prompt) if template == "alpaca" else prompt
        ids, n_prompt = _encode_pair(tokenizer, text, text + reply)
        head = _bos(tokenizer)
        return (head + ids + [tokenizer.eos_id],
                [False] * len(head) + [i >= n_prompt for i in range(len(ids))] + [True])
    messages = _prompt_messages(prompt)
    conversation = [*messages, {"role": "assistant", "content": reply}]
    if template == "llama2_chat":
        tokens, targets = tokenize_llama2_chat(tokenizer, conversation)
        return tokens, _only_after(tokens, targets, llama2_chat_generation_tokens(tokenizer, messages))
    tokens, targets = chat_tokens(tokenizer, conversation)
    return tokens, _only_after(tokens, targets, chat_generation_tokens(tokenizer, messages))


def _cut(tokens: list[int], targets: list[bool], max_seq_len: int) -> tuple[array, bytes]:
    """Tokens (one past ``max_seq_len``, for the last label) and the shifted target mask, truncated."""
    mask = bytes(targets[1:]) + b"\x00"  # position i predicts token i + 1
    return array("i", tokens[: max_seq_len + 1]), mask[:max_seq_len]


def _labels(tokens: array, mask: bytes) -> tuple[list[int], list[int]]:
    n = len(mask)
    labels = [t if m else IGNORE_INDEX for t, m in zip(tokens[1:n + 1], mask)]
    labels += [IGNORE_INDEX] * (n - len(labels))
    return tokens[:n].tolist(), labels


class PreferenceDataset(Dataset):
    """Preference pairs tokenized once: ``ds[i]`` gives ``chosen_tokens``, ``chosen_labels``,
    ``rejected_tokens``, ``rejected_labels`` (+ ``reference_logps`` [2] once set).

    Args:
        tokenizer: the tokenizer.
        source: a local ``.json`` (list of records) or ``.jsonl`` file.
        template: ``plain`` | ``alpaca`` | ``llama2_chat`` | ``model`` (see the module docstring).
        max_seq_len: each side is cut to this many tokens.
        split: ``"train"``, ``"validation"`` (alias ``"val"``) or ``"all"``.
        val_fraction: share of rows held out for validation (0: no validation set).
        split_seed: seed of the deterministic split.

    Attributes:
        rows: 1-based source rows of the pairs kept; ``dropped_rows``: rows truncation emptied;
        truncated: pairs with a side cut by ``max_seq_len``.

    Raises:
        FileNotFoundError, DataFormatError: a missing file; a malformed row (file, row, field and
            fix named); a setting that cannot work (``DataSettingError``); no pair left to learn.
    """

    hint = ("Each record needs 'prompt' (a string, or a list of chat messages ending with 'user'), "
            "'chosen' and 'rejected' (the preferred and the dispreferred reply: strings), or 'chosen' and "
            "'rejected' as two whole conversations sharing every turn before their final 'assistant' reply.")

    def __init__(self, tokenizer: Tokenizer, source: str | Path, *, template: str = "plain",
                 max_seq_len: int = 512, split: str = "train", val_fraction: float = 0.1,
                 split_seed: int = 0) -> None:
        if template not in PREFERENCE_TEMPLATES:
            raise DataSettingError(
                f"dataset.template={template!r} is not a layout of PreferenceDataset; the valid ones are "
                f"{', '.join(repr(t) for t in PREFERENCE_TEMPLATES)}. Use dataset.template=model for the "
                f"model's own chat template, or plain / alpaca for string prompts.")
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 2:
            raise DataSettingError(f"max_seq_len={max_seq_len!r} must be an integer >= 2; set e.g. max_seq_len=512.")
        if template == "model" and isinstance(tokenizer, Tokenizer) and not tokenizer_chat_template(tokenizer):
            raise DataSettingError(
                f"dataset.template=model uses the chat template the model ships, but the tokenizer "
                f"{str(getattr(tokenizer, 'path', type(tokenizer).__name__))!r} carries none (a "
                f"SentencePiece tokenizer.model never does). Use a tokenizer.json with its tokenizer_config.json "
                f"(tokenizer=hf), or set dataset.template=llama2_chat, alpaca or plain.")
        self.tokenizer, self.template, self.max_seq_len, self.split = tokenizer, template, max_seq_len, split
        chat = template in ("llama2_chat", "model")
        self.source, self.row_word, rows, records = load_rows(
            source, lambda r: check_preference_record(r, chat=chat, template=template), self.hint,
            split=split, val_fraction=val_fraction, split_seed=split_seed)
        self.rows: list[int] = []
        self.dropped_rows: list[int] = []
        self.truncated = 0
        self._pairs: list[tuple[array, bytes, array, bytes]] = []
        needed: list[int] = []
        for row, rec in zip(rows, records):
            sides = [self._tokenize(tokenizer, rec, key, row) for key in ("chosen", "rejected")]
            needed.append(max(len(t) for t, _ in sides))
            (ct, cm), (rt, rm) = (_cut(t, m, max_seq_len) for t, m in sides)
            if b"\x01" not in cm or b"\x01" not in rm:
                self.dropped_rows.append(row)
                continue
            self.truncated += needed[-1] > max_seq_len
            self.rows.append(row)
            self._pairs.append((ct, cm, rt, rm))
        self.reference_logps: torch.Tensor | None = None
        if not self._pairs:
            longest = sorted(needed)[max(0, int(0.95 * len(needed)) - 1)]
            raise DataFormatError(
                f"Data file {str(self.source)!r} ({split} split): max_seq_len={max_seq_len} cuts away every "
                f"reply of {len(needed)} pair(s) (the prompts alone fill it), so there is nothing to learn. "
                f"Set max_seq_len={longest} (keeps 95% of the pairs whole) or shorten the prompts.")

    def _tokenize(self, tokenizer: Tokenizer, rec: Mapping[str, Any], key: str,
                  row: int) -> tuple[list[int], list[bool]]:
        try:
            reply = _replies(rec)[0 if key == "chosen" else 1]
            return tokenize_side(tokenizer, self.template, _prompt_of(rec), reply or "")
        except (ChatTemplateError, ValueError) as e:
            raise DataFormatError(f"Data file {str(self.source)!r}, {self.row_word} {row} ('{key}'): {e}") from None

    def set_reference_logps(self, logps: torch.Tensor) -> None:
        """Attach precomputed reference log-probs ``[len(self), 2]`` (chosen, rejected) to the pairs."""
        if tuple(logps.shape) != (len(self), 2):
            raise ValueError(f"reference log-probs of shape {tuple(logps.shape)}, expected ({len(self)}, 2)")
        self.reference_logps = logps.float().cpu()

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ct, cm, rt, rm = self._pairs[index]
        chosen_tokens, chosen_labels = _labels(ct, cm)
        rejected_tokens, rejected_labels = _labels(rt, rm)
        sample: dict[str, Any] = {"chosen_tokens": chosen_tokens, "chosen_labels": chosen_labels,
                                  "rejected_tokens": rejected_tokens, "rejected_labels": rejected_labels}
        if self.reference_logps is not None:
            sample["reference_logps"] = self.reference_logps[index].tolist()
        return sample

    def as_sequences(self) -> _PairSequences:
        """Each pair as one ``{"tokens", "labels"}`` sample (chosen then rejected): for digests."""
        return _PairSequences(self)


class _PairSequences:
    def __init__(self, ds: PreferenceDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        s = self.ds[index]
        return {"tokens": s["chosen_tokens"] + s["rejected_tokens"],
                "labels": s["chosen_labels"] + s["rejected_labels"]}


def preference_collate(batch: Sequence[Mapping[str, Any]], pad_id: int,
                       ignore_index: int = IGNORE_INDEX) -> dict[str, torch.Tensor]:
    """Pad ``B`` pairs into ``tokens``/``labels`` [2B, s]: rows ``:B`` chosen, ``B:`` rejected.

    With precomputed reference log-probs, also ``reference_logps`` [2B] in the same order.
    """
    if not batch:
        raise ValueError("preference_collate() got an empty batch")
    sides = ([{"tokens": s["chosen_tokens"], "labels": s["chosen_labels"]} for s in batch]
             + [{"tokens": s["rejected_tokens"], "labels": s["rejected_labels"]} for s in batch])
    out = padded_collate(sides, pad_id, ignore_index)
    if all("reference_logps" in s for s in batch):
        ref = torch.tensor([s["reference_logps"] for s in batch], dtype=torch.float32)  # [B, 2]
        out["reference_logps"] = torch.cat([ref[:, 0], ref[:, 1]])
    return out
