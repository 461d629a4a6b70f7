"""What identifies a tokenizer: its full fingerprint, its vocabulary, and how two differ.

* :func:`tokenizer_fingerprint` -- the whole tokenizer as shipped (vocabulary, special
  tokens, chat template); responses record it.
* :func:`vocabulary_fingerprint` -- only the token -> id mapping (added tokens included).
  Replaying one model's token ids through another needs exactly this to match: a base and
  an instruct model (Llama-3.1-8B and -Instruct) share it while their eos token and chat
  template differ.
* :func:`tokenizer_traits` / :func:`tokenizer_differences` -- the special tokens and the
  chat template's hash, and which of them differ between two tokenizers (what a replay
  records about the pair).

The pad token :func:`transforms.models.load_model` sets (pad = eos, when a tokenizer ships
none) is ours, not the tokenizer's: :func:`mark_pad_set_at_load` records it so that no
fingerprint or trait sees it.
"""

from __future__ import annotations

import hashlib
import json
import contextlib
from pathlib import Path
from typing import Any

from transforms.models.cache import atomic_write
from transforms.models.fast_tokenizer import FINGERPRINT_MEMO

#: attribute set on a tokenizer whose pad token was added at load (not shipped)
_PAD_AT_LOAD = "_traitstore_pad_set_at_load"
_FINGERPRINT_VERSION = 2  # 2: the vocabulary fingerprint memoized beside the full one


def _hash(payload: Any) -> str:
    blob = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def mark_pad_set_at_load(tokenizer: Any) -> None:
    """Record that ``tokenizer``'s pad token was set by us at load, not shipped with it."""
    setattr(tokenizer, _PAD_AT_LOAD, True)


def shipped_special_tokens(tokenizer: Any) -> dict[str, str]:
    """The special-tokens map as shipped: without a pad token set at load."""
    special = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    if getattr(tokenizer, _PAD_AT_LOAD, False):
        special.pop("pad_token", None)
    return special


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 (first 16 hex) over the sorted vocabulary, special tokens and chat template.

    A pad token set at load (:func:`mark_pad_set_at_load`) does not count."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    added_special = sorted(
        (int(i), str(t)) for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)
    )
    return _hash({
        "vocab": vocab,
        "special_tokens": shipped_special_tokens(tokenizer),
        "added_special_tokens": added_special,
        "chat_template": tokenizer.chat_template or None,
    })


def vocabulary_fingerprint(tokenizer: Any) -> str:
    """sha256 (first 16 hex) over the token -> id mapping, added tokens' ids included.

    Independent of which tokens are special (eos, pad, ...) and of the chat template: two
    tokenizers with the same one give every token id the same meaning."""
    mapping = dict(tokenizer.get_vocab())
    for index, token in tokenizer.added_tokens_decoder.items():
        mapping[str(token)] = int(index)
    return _hash({"vocabulary": sorted((int(i), t) for t, i in mapping.items())})


def _template_hash(tokenizer: Any) -> str | None:
    template = tokenizer.chat_template or None
    return None if template is None else _hash({"chat_template": template})


def tokenizer_traits(tokenizer: Any, vocabulary: str | None = None) -> dict[str, Any]:
    """JSON-able: vocabulary fingerprint, special tokens as shipped, chat template hash.

    ``vocabulary``: its fingerprint when already known (Gemma's takes ~0.3 s to hash)."""
    return {
        "vocabulary_fingerprint": vocabulary or vocabulary_fingerprint(tokenizer),
        "special_tokens": shipped_special_tokens(tokenizer),
        "chat_template_sha256": _template_hash(tokenizer),
    }


def tokenizer_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What differs between two :func:`tokenizer_traits`: ``{"eos_token": [a, b], ...,
    "chat_template_sha256": [a, b]}`` (empty when nothing does; vocabulary not included)."""
    out: dict[str, Any] = {}
    special_a, special_b = a.get("special_tokens") or {}, b.get("special_tokens") or {}
    for key in sorted(special_a.keys() | special_b.keys()):
        if special_a.get(key) != special_b.get(key):
            out[key] = [special_a.get(key), special_b.get(key)]
    if a.get("chat_template_sha256") != b.get("chat_template_sha256"):
        out["chat_template_sha256"] = [a.get("chat_template_sha256"), b.get("chat_template_sha256")]
    return out


def cached_fingerprints(tokenizer: Any, ckpt: Path | None) -> tuple[str, str]:
    """(:func:`tokenizer_fingerprint`, :func:`vocabulary_fingerprint`), memoized inside a
    converted checkpoint (ours, immutable). Gemma's 262k vocabulary takes about a second to
    hash, on every load otherwise."""
    if ckpt is None:
        return tokenizer_fingerprint(tokenizer), vocabulary_fingerprint(tokenizer)
    memo = ckpt / FINGERPRINT_MEMO
    stamp = sorted(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns)
        for f in ckpt.iterdir()
        if (f.name.startswith("tokenizer") and f.name != FINGERPRINT_MEMO)
        or f.name == "chat_template.jinja"
    )
    stamp_json = json.loads(json.dumps(stamp))
    try:
        cached = json.loads(memo.read_text())
        if cached.get("version") == _FINGERPRINT_VERSION and cached.get("files") == stamp_json:
            return str(cached["fingerprint"]), str(cached["vocabulary"])
    except (OSError, ValueError, KeyError):
        pass
    full, vocabulary = tokenizer_fingerprint(tokenizer), vocabulary_fingerprint(tokenizer)
    with contextlib.suppress(OSError), atomic_write(memo) as tmp:  # a read-only cache: fine, just slower
        tmp.write_text(json.dumps({"version": _FINGERPRINT_VERSION, "files": stamp_json,
                                   "fingerprint": full, "vocabulary": vocabulary}))
    return full, vocabulary
