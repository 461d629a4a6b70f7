"""Fast loading of a converted checkpoint's tokenizer (identical to ``AutoTokenizer``'s).

``AutoTokenizer.from_pretrained(ckpt)`` in transformers 5 is slow for big vocabularies.
For Gemma 3 (262k tokens, 515k merges, 33 MB ``tokenizer.json``; ~5 s of CPU in all) it
parses ``tokenizer.json`` with Python's ``json`` twice, ~65% of the time: once in
``_from_pretrained`` only for its ``added_tokens`` (our ``tokenizer_config.json`` has no
``added_tokens_decoder``), once in ``GemmaTokenizer.convert_to_native_format`` for vocab and
merges, from which ``GemmaTokenizer.__init__`` rebuilds the backend (``tokenizers.BPE``,
~15%); the rest is turning the merges into tuples and deep-copying the 6k added tokens in
``init_kwargs``. (``tokenizers.Tokenizer.from_file`` is no way out: its own parse of that
file takes longer than building the BPE from Python objects.)

So next to the checkpoint we keep a memo, ``traitstore_tokenizer.json``, holding what those
parses produce, in a form quick to read: the ``added_tokens`` list and, when the tokenizer
class rebuilds its backend from vocab and merges, the vocabulary as a list ordered by id,
the merges as id pairs (base64 int32) and the rest of ``tokenizer.json`` (normalizer,
post-processor, ...; no vocab). A load calls the same class's ``from_pretrained`` with
these passed in (``added_tokens_decoder``, vocab and merges as ``__init__``'s positional
arguments, ``post_processor``), so transformers runs its usual code minus those parses.
Classes that load ``tokenizer.json`` with ``Tokenizer.from_file`` (SmolLM2's
``TokenizersBackend``) only skip the added-tokens parse.

The memo is written on the first load (or by the conversion), and says "fast" only after
the fast load was checked to give the same tokenizer: same class, same backend
serialization (``backend_tokenizer.to_str()``: vocab, merges, added tokens, normalizer,
pre-tokenizer, post-processor, decoder), the same attributes (init kwargs, special tokens,
chat template, padding side, ...) and the same ids on a few probe texts; otherwise it
records that this checkpoint loads the ordinary way. It is keyed on the names, sizes and
mtimes of the checkpoint's files and on the transformers and tokenizers versions, so a
change or an upgrade checks again. A read-only cache just means ordinary loads.

Kept after measuring (issue 14, ``out/r7/time_tokenizer.py``: Gemma 3 270M, a fresh process
per load, transformers import excluded, 4 runs each on a loaded 2-core machine): CPU time
4.1-4.7 s ordinary vs 2.6-2.8 s from the memo, about 1.7 s saved per load (wall clock
was too noisy there to quote). The transformers internals it touches stay in this module,
behind :func:`load_checkpoint_tokenizer`, this module's only public function (the
converter seeds the memo by calling it on the checkpoint it just saved).
"""

from __future__ import annotations

import array
import base64
import contextlib
import inspect
import json
import logging
import sys
from pathlib import Path
from typing import Any

from transforms.models.cache import atomic_write
from transforms.models.refs import short_message

logger = logging.getLogger(__name__)

TOKENIZER_MEMO = "traitstore_tokenizer.json"
#: the tokenizer fingerprints' memo (transforms.models.tokenizer_identity), also written next to the checkpoint
FINGERPRINT_MEMO = "tokenizer_fingerprint.json"
_MEMO_VERSION = 1
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
#: checked at memo time: the fast tokenizer must give the reference's ids on these
PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog. 42 + 7 =",
    "  leading spaces,\ttabs\nand\n\nnewlines   ",
    "Ünïcödé: naïve café, Straße, 東京, Привет, 🙂👍🏽, e\u0301",
    "def f(x):\n    return {'a': [x, x ** 2]}  # code\n",
    "<bos><eos><pad><unk><mask><|im_start|>user\nhi<|im_end|></s><s>",
)


# ------------------------------------------------------------------------ loading


def load_checkpoint_tokenizer(ckpt: str | Path) -> Any:
    """``AutoTokenizer.from_pretrained(ckpt, local_files_only=True)``, fast when memoized.

    Why it exists: transformers parses Gemma 3's 33 MB ``tokenizer.json`` twice per load;
    the memo next to the checkpoint saves about 1.7 s of CPU per load (measured, issue 14),
    and the fast load is used only after it was checked to give the identical tokenizer.
    Every use of transformers' tokenizer internals stays behind this function.

    ``ckpt`` is a converted checkpoint (ours, immutable). Without a valid memo this is the
    ordinary load, after which the memo is written (see the module docstring).
    """
    ckpt = Path(ckpt)
    memo = _read_memo(ckpt)
    if memo is not None and memo.get("fast"):
        try:
            return _fast_load(ckpt, memo)
        except Exception as exc:  # a damaged memo: the ordinary load still works
            logger.warning("fast tokenizer load of %s failed (%s); loading it the ordinary way",
                           ckpt, short_message(exc))
            memo = None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    if memo is None:
        _write_memo(ckpt, tokenizer)
    return tokenizer


def _fast_load(ckpt: Path, memo: dict[str, Any]) -> Any:
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    cls = tokenizer_class_from_name(memo["class"])
    if cls is None or cls.__name__ != memo["class"]:
        raise ValueError(f"tokenizer class {memo['class']} not found")
    init_inputs: tuple[Any, ...] = ()
    overrides: dict[str, Any] = {}
    if memo.get("added_tokens") is not None:
        # what _from_pretrained's legacy branch reads from tokenizer.json's "added_tokens"
        decoder = {}
        for entry in memo["added_tokens"]:
            entry = dict(entry)
            decoder[entry.pop("id")] = entry  # dicts: _from_pretrained makes the AddedTokens
        overrides["added_tokens_decoder"] = decoder
    native = memo.get("native")
    if native is not None:
        from tokenizers import Tokenizer

        tokens = native["tokens"]
        pairs = array.array("i")
        pairs.frombytes(base64.b64decode(native["merges"]))
        if sys.byteorder != "little":  # pragma: no cover
            pairs.byteswap()
        vocab = dict(zip(tokens, range(len(tokens))))
        merges = list(zip(map(tokens.__getitem__, pairs[0::2]), map(tokens.__getitem__, pairs[1::2])))
        # what convert_to_native_format takes from a copy of tokenizer.json without vocab
        skeleton = Tokenizer.from_str(json.dumps(native["skeleton"]))
        overrides["post_processor"] = skeleton.post_processor
        overrides["tokenizer_padding"] = skeleton.padding
        overrides["tokenizer_truncation"] = skeleton.truncation
        # passed positionally: keyword arguments would go through convert_added_tokens,
        # which walks (and turns tuples into lists in) all 515k merges
        init_inputs = (vocab, merges)
        overrides["tokenizer_file"] = ""  # not a file: convert_to_native_format skips its parse
    tokenizer = cls.from_pretrained(str(ckpt), *init_inputs, local_files_only=True, **overrides)
    order = memo.get("init_kwargs_order")
    if order and set(order) == set(tokenizer.init_kwargs):
        # our arguments join init_kwargs earlier than the parsed ones would (only the key
        # order differs; save_pretrained sorts keys anyway)
        tokenizer.init_kwargs = {k: tokenizer.init_kwargs[k] for k in order}
    return tokenizer


# -------------------------------------------------------------------------- memo


def _stamp(ckpt: Path) -> dict[str, Any]:
    import tokenizers
    import transformers

    files = sorted(
        (f.relative_to(ckpt).as_posix(), f.stat().st_size, f.stat().st_mtime_ns)
        for f in ckpt.rglob("*")
        if f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(ckpt).parts)
        and f.name != FINGERPRINT_MEMO
        and not f.name.startswith("traitstore_")  # this memo, the conversion's record
        and not f.name.endswith(_WEIGHT_SUFFIXES)
    )
    return json.loads(json.dumps({
        "memo_version": _MEMO_VERSION,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "files": files,
    }))


def _read_memo(ckpt: Path) -> dict[str, Any] | None:
    """The memo if it belongs to the checkpoint's current files and library versions."""
    try:
        memo = json.loads((ckpt / TOKENIZER_MEMO).read_text(encoding="utf-8"))
        if isinstance(memo, dict) and memo.get("stamp") == _stamp(ckpt):
            return memo
    except (OSError, ValueError):
        pass
    return None


def _write_memo(ckpt: str | Path, reference: Any) -> bool:
    """Write the memo for ``ckpt``, whose ordinary load gave ``reference``.

    Records ``"fast": true`` only if the fast load reproduces ``reference`` exactly.
    Returns whether later loads will be fast. Never raises (a failure only costs speed).
    """
    ckpt = Path(ckpt)
    try:
        stamp = _stamp(ckpt)
        memo = _memo_for(ckpt, reference)
    except Exception as exc:  # unreadable files: try again next time
        logger.warning("tokenizer of %s: no fast load (%s)", ckpt, short_message(exc))
        return False
    if memo is None:
        problem: str | None = "not a tokenizers-backed tokenizer with a tokenizer.json"
    else:
        memo["stamp"] = stamp
        try:
            problem = _difference(_fast_load(ckpt, memo), reference)
        except Exception as exc:
            problem = f"the fast load failed: {short_message(exc)}"
    if problem is not None:
        logger.warning("tokenizer of %s: no fast load (%s)", ckpt, problem)
        memo = {"stamp": stamp, "fast": False, "reason": problem}
    try:
        text = json.dumps(memo, ensure_ascii=False)
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates in the vocabulary
        text = json.dumps(memo)
    with contextlib.suppress(OSError), atomic_write(ckpt / TOKENIZER_MEMO) as tmp:
        tmp.write_text(text, encoding="utf-8")  # a read-only cache: fine, just slower
    return bool(memo.get("fast"))


def _memo_for(ckpt: Path, reference: Any) -> dict[str, Any] | None:
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    cls = type(reference)
    tokenizer_json = ckpt / "tokenizer.json"
    if not isinstance(reference, TokenizersBackend) or not tokenizer_json.is_file():
        return None
    with tokenizer_json.open(encoding="utf-8") as fh:
        data = json.load(fh)
    config = json.loads((ckpt / "tokenizer_config.json").read_text(encoding="utf-8"))
    memo: dict[str, Any] = {
        "fast": True,
        "class": cls.__name__,
        "init_kwargs_order": list(reference.init_kwargs),
        "added_tokens": None,
        "native": None,
    }
    # _from_pretrained reads tokenizer.json for its added tokens only in this case
    if (
        "added_tokens_decoder" not in config
        and not (ckpt / "special_tokens_map.json").exists()
        and not (ckpt / "added_tokens.json").exists()
    ):
        memo["added_tokens"] = data.get("added_tokens", [])
    memo["native"] = _native_part(cls, data)
    return memo


def _native_part(cls: type, data: dict[str, Any]) -> dict[str, Any] | None:
    """Vocab, merges and the rest of tokenizer.json, when ``cls`` rebuilds its backend.

    That is convert_to_native_format's case of a class with its own ``__init__``; only the
    plain BPE form of it is covered (no truncation, padding or precompiled charsmap).
    """
    from tokenizers.models import BPE
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    if cls is TokenizersBackend or "__init__" not in cls.__dict__:
        return None  # these load tokenizer.json with tokenizers.Tokenizer.from_file
    params = list(inspect.signature(cls.__init__).parameters)
    model = data.get("model") or {}
    if (
        getattr(cls, "model", None) is not BPE
        or params[1:3] != ["vocab", "merges"]
        or model.get("type") != "BPE"
        or not isinstance(model.get("vocab"), dict)
        or not isinstance(model.get("merges"), list)
        or data.get("truncation") is not None
        or data.get("padding") is not None
        or "Precompiled" in json.dumps(data.get("normalizer"))
    ):
        return None
    vocab: dict[str, int] = model["vocab"]
    tokens: list[str | None] = [None] * len(vocab)
    for token, index in vocab.items():
        if not 0 <= index < len(tokens) or tokens[index] is not None:
            return None  # ids not exactly 0..n-1
        tokens[index] = token
    pairs = array.array("i")
    try:
        for merge in model["merges"]:
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            pairs.append(vocab[left])
            pairs.append(vocab[right])
    except (ValueError, KeyError, TypeError):  # not a pair of vocabulary tokens
        return None
    if sys.byteorder != "little":  # pragma: no cover
        pairs.byteswap()
    skeleton = dict(data)
    skeleton["model"] = {**model, "vocab": {}, "merges": []}
    skeleton["added_tokens"] = []
    return {"tokens": tokens, "merges": base64.b64encode(pairs.tobytes()).decode("ascii"),
            "skeleton": skeleton}


def _difference(fast: Any, reference: Any) -> str | None:
    """Why ``fast`` is not the same tokenizer as ``reference`` (None: it is)."""
    if type(fast) is not type(reference):
        return f"class {type(fast).__name__} != {type(reference).__name__}"
    if fast.backend_tokenizer.to_str() != reference.backend_tokenizer.to_str():
        return "backend tokenizer differs"
    mine = {k: repr(v) for k, v in vars(fast).items() if k != "_tokenizer"}
    theirs = {k: repr(v) for k, v in vars(reference).items() if k != "_tokenizer"}
    if mine != theirs:
        keys = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        return f"attributes differ: {keys}"
    for text in PROBE_TEXTS:
        if fast(text)["input_ids"] != reference(text)["input_ids"]:
            return f"tokenizes {text!r} differently"
    return None

