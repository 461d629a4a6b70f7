"""The one tokenization path for every builder.

Conventions (tested in ``tests/test_tokenization.py``):

* **Token ids are the truth.** A prompt is formatted and tokenized once, by
  :func:`format_prompt`; its ``ids`` are fed to the model as they are. The
  prompt/response boundary is ``prompt_len = len(prompt_ids)`` -- never
  ``len(tokenize(prompt_text))`` of a re-tokenized string (BPE merges across the
  boundary). :func:`response_boundary` and :func:`split_generated` build the full
  sequence from ids.
* **Chat or plain.** ``chat=None`` (default) uses the tokenizer's chat template when it
  has one; ``chat=False`` formats plain text (``natural`` prompt sets: text prefixes the
  model should continue); ``chat=True`` without a template is an error.
* **Chat template:** ``apply_chat_template(messages, add_generation_prompt=True)``
  renders the text, which is then tokenized with ``add_special_tokens=False``: templates
  write their own BOS. If a template does not start with BOS but the tokenizer normally
  adds one, that single BOS is prepended.
* **Plain text:** ``tokenizer(text)`` with the special tokens the model normally adds
  (Gemma prepends ``<bos>``; SmolLM2 adds nothing).
* **Never a second BOS.** Two BOS ids at the start (the classic bug: a template's BOS
  plus the tokenizer's) raise :class:`DoubleBOSError` (seed 002 of the research notes).
  Note that a BOS id may legitimately appear later in a sequence: SmolLM2's BOS is
  ``<|im_start|>``, which opens every chat turn.
* **System prompts** (``FormattedPrompt.system_mode``):

  - ``"none"`` -- no system prompt given. (A template may still insert its own default
    system turn: SmolLM2's does, "You are a helpful AI assistant named SmolLM...".)
  - ``"system_role"`` -- sent as a ``system`` message; the template accepts it
    (:func:`supports_system_prompt`).
  - ``"folded_into_user"`` -- the template refuses a system role (e.g. Gemma 2): the
    system text is prepended to the user message, separated by a blank line.
  - ``"plain_prefix"`` -- plain-text formatting: ``system + "\\n\\n" + user``.

* ``FormattedPrompt.text`` is the exact string that was tokenized (for chat prompts the
  rendered template, including its special tokens); a BOS the tokenizer adds itself is in
  ``ids`` only.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

SYSTEM_MODES = ("none", "system_role", "folded_into_user", "plain_prefix")
_SYSTEM_PROBE = "SYSTEM-PROBE-7f3a9c"
_USER_PROBE = "USER-PROBE-2b81e4"


class PromptFormatError(ValueError):
    """A prompt cannot be formatted as asked (e.g. chat=True without a chat template)."""


class DoubleBOSError(PromptFormatError):
    """The token ids would start with two BOS tokens."""


@dataclass(frozen=True)
class FormattedPrompt:
    """A prompt formatted and tokenized once. ``ids`` are the truth."""

    ids: list[int]
    text: str
    used_chat_template: bool
    system_mode: str  # one of SYSTEM_MODES

    @property
    def prompt_len(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class PromptResponse:
    """A full token sequence and where the response starts (``prompt_len``)."""

    ids: list[int]
    prompt_len: int

    @property
    def prompt_ids(self) -> list[int]:
        return self.ids[: self.prompt_len]

    @property
    def response_ids(self) -> list[int]:
        return self.ids[self.prompt_len :]

    @property
    def response_len(self) -> int:
        return len(self.ids) - self.prompt_len


# ----------------------------------------------------------------------- helpers


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def bos_token_id(tokenizer: Any) -> int | None:
    bos = getattr(tokenizer, "bos_token_id", None)
    return None if bos is None else int(bos)


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer(text)`` (default special tokens) starts with the BOS id."""
    bos = bos_token_id(tokenizer)
    if bos is None:
        return False
    ids = _input_ids(tokenizer("a"))
    return bool(ids) and ids[0] == bos


def _input_ids(encoding: Any) -> list[int]:
    ids = encoding["input_ids"] if not isinstance(encoding, list) else encoding
    return [int(i) for i in ids]


def _as_int_list(ids: Sequence[int] | Any) -> list[int]:
    if hasattr(ids, "tolist"):  # torch / numpy
        ids = ids.tolist()
    out = list(ids)
    if out and isinstance(out[0], list):
        raise ValueError("expected a single sequence of token ids, got a batch")
    return [int(i) for i in out]


def assert_no_double_bos(ids: Sequence[int] | Any, tokenizer: Any) -> None:
    """Raise :class:`DoubleBOSError` if ``ids`` start with two BOS tokens."""
    bos = bos_token_id(tokenizer)
    if bos is None:
        return
    head = _as_int_list(ids[:2] if hasattr(ids, "__getitem__") else list(ids)[:2])
    if len(head) == 2 and head[0] == bos and head[1] == bos:
        raise DoubleBOSError(
            f"token ids start with two BOS tokens ({tokenizer.bos_token!r}, id {bos}): the text "
            "already contains BOS and the tokenizer added another"
        )


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):  # some versions return a list for a batch
        if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str):
            return text[0]
        raise PromptFormatError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


_system_support: weakref.WeakKeyDictionary[Any, tuple[Any, bool]] = weakref.WeakKeyDictionary()


def supports_system_prompt(tokenizer: Any) -> bool:
    """Whether the chat template accepts a ``system`` message and renders its text.

    False without a chat template, when rendering raises (e.g. Gemma 2's "System role
    not supported"), or when the system text is silently dropped.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return False
    try:
        cached = _system_support.get(tokenizer)
    except TypeError:
        cached = None
    if cached is not None and cached[0] == template:
        return cached[1]
    try:
        text = _render(
            tokenizer,
            [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": _USER_PROBE}],
        )
        ok = _SYSTEM_PROBE in text and _USER_PROBE in text
    except Exception as exc:  # jinja2 TemplateError, raise_exception(...) in templates, ...
        logger.debug("chat template refuses a system role: %s", exc)
        ok = False
    try:
        _system_support[tokenizer] = (template, ok)
    except TypeError:
        pass
    return ok


# ------------------------------------------------------------------------ format


def format_prompt(
    tokenizer: Any,
    user: str,
    system: str | None = None,
    *,
    chat: bool | None = None,
) -> FormattedPrompt:
    """Format and tokenize one prompt (see the module docstring for the conventions)."""
    if not isinstance(user, str):
        raise TypeError(f"user must be str, got {type(user).__name__}")
    if system is not None and not isinstance(system, str):
        raise TypeError(f"system must be str or None, got {type(system).__name__}")
    system = system or None  # "" means no system prompt
    template = has_chat_template(tokenizer)
    use_chat = template if chat is None else bool(chat)
    if use_chat and not template:
        raise PromptFormatError("chat=True but the tokenizer has no chat template")

    if use_chat:
        if system is None:
            mode = "none"
            messages = [{"role": "user", "content": user}]
        elif supports_system_prompt(tokenizer):
            mode = "system_role"
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        else:
            mode = "folded_into_user"
            messages = [{"role": "user", "content": f"{system}\n\n{user}"}]
        try:
            text = _render(tokenizer, messages)
        except PromptFormatError:
            raise
        except Exception as exc:
            raise PromptFormatError(f"chat template failed to render: {exc}") from exc
        ids = _input_ids(tokenizer(text, add_special_tokens=False))
        bos = bos_token_id(tokenizer)
        if bos is not None and (not ids or ids[0] != bos) and tokenizer_adds_bos(tokenizer):
            ids = [bos] + ids
    else:
        mode = "plain_prefix" if system is not None else "none"
        text = f"{system}\n\n{user}" if system is not None else user
        ids = _input_ids(tokenizer(text))

    assert_no_double_bos(ids, tokenizer)
    return FormattedPrompt(ids=ids, text=text, used_chat_template=use_chat, system_mode=mode)


# ------------------------------------------------------------ response boundary


def response_boundary(prompt_ids: Sequence[int] | Any, response_ids: Sequence[int] | Any) -> PromptResponse:
    """Full sequence = prompt ids + response ids; ``prompt_len = len(prompt_ids)``."""
    prompt = _as_int_list(prompt_ids)
    return PromptResponse(ids=prompt + _as_int_list(response_ids), prompt_len=len(prompt))


def split_generated(
    prompt_ids: Sequence[int] | Any,
    output_ids: Sequence[int] | Any,
    *,
    pad_token_id: int | None = None,
) -> PromptResponse:
    """Split one ``model.generate`` output row (prompt + new tokens) at the prompt boundary.

    Leading ``pad_token_id`` tokens (left padding in a batch) are dropped first. The
    output must start with exactly ``prompt_ids``; otherwise ValueError. Trailing
    padding after EOS is left to the caller.
    """
    prompt = _as_int_list(prompt_ids)
    out = _as_int_list(output_ids)
    if pad_token_id is not None and out[: len(prompt)] != prompt:
        start = 0
        while start < len(out) and out[start] == pad_token_id:
            start += 1
        out = out[start:]
    if out[: len(prompt)] != prompt:
        raise ValueError(
            f"generated ids do not start with the prompt ids (prompt_len {len(prompt)}); "
            "was the prompt re-tokenized or padded?"
        )
    return PromptResponse(ids=out, prompt_len=len(prompt))


__all__ = [
    "DoubleBOSError",
    "FormattedPrompt",
    "PromptFormatError",
    "PromptResponse",
    "SYSTEM_MODES",
    "assert_no_double_bos",
    "bos_token_id",
    "format_prompt",
    "has_chat_template",
    "response_boundary",
    "split_generated",
    "supports_system_prompt",
    "tokenizer_adds_bos",
]


# ------------------------------------------------------------ end of an answer


_ANSWER_PROBE = "Fine, thanks."


def answer_end_id(tokenizer: Any, stop_ids: set[int], chat: bool) -> int | None:
    """The token a finished answer ends with, as the model learnt to stop.

    For chat-formatted text that is the stop token the template writes after an assistant
    turn (Llama 3's ``<|eot_id|>``, Gemma's ``<end_of_turn>``, SmolLM2's ``<|im_end|>``),
    which is not always ``tokenizer.eos_token_id`` (Gemma 3 it: eos is ``<eos>``); for
    plain text, the tokenizer's eos. ``None`` when there is none.
    """
    eos = tokenizer.eos_token_id
    if not chat or not has_chat_template(tokenizer):
        return int(eos) if eos is not None else None
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _ANSWER_PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as exc:  # templates that refuse a closing assistant turn
        logger.debug("chat template cannot render an assistant turn: %s", exc)
        text = None
    if isinstance(text, str) and _ANSWER_PROBE in text:
        tail = _input_ids(tokenizer(text.split(_ANSWER_PROBE, 1)[1], add_special_tokens=False))
        found = next((t for t in tail if t in stop_ids), None)
        if found is not None:
            return int(found)
    return int(eos) if eos is not None else None
