"""The digit tree: every token path that spells an integer 0-100, for any tokenizer.

The local judge needs P(the answer is the number n) for n = 0..100, exactly. The answer
"is n" when the generated text starts with the canonical digits of n and the next
character is not a digit (the terminator: a non-digit token, EOS, ...). Per token path
that spells ``str(n)``::

    P(path) = P(t1 | prompt) * P(t2 | prompt t1) * ... * P(next token does not start with a digit | path)

summed over all paths spelling ``str(n)`` (a tokenizer with multi-digit tokens spells
"42" as ``42`` and as ``4`` ``2``). Refinements, all exact:

* a token whose text starts with digits and goes on with non-digits (``"4th"``,
  ``"2,"``) spells those digits *and* terminates: after the path "4", ``"2nd"`` adds to
  P(42);
* the first token may carry leading whitespace (``" 42"``, ``"▁7"``): it spells its
  digits; later tokens with leading whitespace terminate the number ("4 2" is 4);
* sentencepiece byte tokens ``<0x30>``..``<0x39>`` (Gemma, Llama 2) are the digits they
  encode: they always count as digit continuations (never as terminators), but paths
  through them are expanded only with ``byte_digits=True`` -- they would quadruple the tree
  (Gemma 3: 388 nodes instead of 101) for mass that is ~0 in practice (digits have their
  own tokens); without it that mass counts for no number;
* a leading zero is not a valid number: after "0" any digit continuation makes the text
  invalid ("05", "00"), so that mass counts for no number. "100" is the only 3-digit
  number; "101".."109" after "10" are invalid likewise.

Not covered: a first token that is only whitespace followed by a digit token (the judge
prompt asks for the number alone; chat templates end the turn header with a newline).

Nodes are token paths (a trie over tokens, not over strings): a node's KV state depends on
the tokens, so "42" and "4"+"2" are two nodes. SmolLM2 (one digit per token) gives 101
nodes: 10 first digits, 90 second digits under "1".."9", and "0" under "10".
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

VALID_NUMBERS: dict[str, int] = {str(n): n for n in range(101)}
MAX_DIGITS = 3
_LEADING_SPACE = " \t\n\rĠĊĉ▁"  # byte-level BPE (Ġ space, Ċ newline, ĉ tab) and sentencepiece (▁) markers
_DIGITS = re.compile(r"[0-9]+")
_BYTE_DIGIT = re.compile(r"<0x3([0-9])>")


def _extendable(prefix: str) -> bool:
    """Whether some valid number strictly extends ``prefix`` ("1".."9", "10")."""
    return any(s.startswith(prefix) and len(s) > len(prefix) for s in VALID_NUMBERS)


@dataclass(frozen=True)
class DigitVocab:
    """Tokens classified by their text (first digits, and whether that is all of it).

    ``*_pure``: digits -> ids of tokens whose text is exactly those digits; ``*_mixed``:
    digits -> ids of tokens that are those digits followed by non-digits. ``first_*``
    allow leading whitespace (first generated token). ``digit_start_ids``: every token that
    starts with a digit, i.e. is not a terminator after a digit.
    """

    size: int
    first_pure: dict[str, list[int]]
    first_mixed: dict[str, list[int]]
    cont_pure: dict[str, list[int]]
    cont_mixed: dict[str, list[int]]
    digit_start_ids: list[int]


def _token_digits(raw: str) -> tuple[str, bool] | None:
    """(leading digits, pure) of a raw token string, or None if it does not start with a digit."""
    byte = _BYTE_DIGIT.fullmatch(raw)
    if byte:
        return byte.group(1), True
    m = _DIGITS.match(raw)
    if m is None:
        return None
    return m.group(0), m.end() == len(raw)


def spelled_digits(text: str, first: bool) -> tuple[str, bool] | None:
    """``(leading digits, pure)`` a token's text spells in an answer, or None when it is a
    terminator (does not start with a digit). ``first``: the answer's first token, whose
    leading whitespace is allowed; on later tokens it ends the number ("4 2" is 4)."""
    return _token_digits(text.lstrip(_LEADING_SPACE) if first else text)


def classify_vocab(tokenizer: Any, size: int | None = None, byte_digits: bool = False) -> DigitVocab:
    """Classify the first ``size`` token ids (default ``len(tokenizer)``; the model's logits
    may be wider, extra ids are never digits). Special tokens are terminators. Byte-digit
    tokens are digit continuations; tree nodes only with ``byte_digits``."""
    n = len(tokenizer) if size is None else size
    n_tok = min(n, len(tokenizer))
    raws = tokenizer.convert_ids_to_tokens(list(range(n_tok)))
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    first_pure: dict[str, list[int]] = {}
    first_mixed: dict[str, list[int]] = {}
    cont_pure: dict[str, list[int]] = {}
    cont_mixed: dict[str, list[int]] = {}
    digit_start: list[int] = []
    for i, raw in enumerate(raws):
        if not isinstance(raw, str) or not raw or i in special:
            continue
        if not byte_digits and _BYTE_DIGIT.fullmatch(raw):
            digit_start.append(i)
            continue
        cont = spelled_digits(raw, first=False)
        if cont is not None:
            digit_start.append(i)
            digits, pure = cont
            if len(digits) <= MAX_DIGITS:
                (cont_pure if pure else cont_mixed).setdefault(digits, []).append(i)
        first = spelled_digits(raw, first=True)
        if first is not None and len(first[0]) <= MAX_DIGITS:
            digits, pure = first
            (first_pure if pure else first_mixed).setdefault(digits, []).append(i)
    return DigitVocab(n, first_pure, first_mixed, cont_pure, cont_mixed, digit_start)


@dataclass(frozen=True)
class NumberTree:
    """Token-path trie of the numbers 0-100 (nodes in breadth-first order, parents first).

    ``mixed``: ``(node index or -1 for the root, number, token ids)``: tokens that spell
    the rest of ``number`` and terminate it, at that node.
    """

    token_N: list[int]
    parent_N: list[int]
    depth_N: list[int]
    value_N: list[int]
    text_N: list[str]
    mixed: list[tuple[int, int, list[int]]]
    digit_start_ids: list[int]
    vocab_size: int
    _tensors: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_nodes(self) -> int:
        return len(self.token_N)

    @property
    def max_depth(self) -> int:
        return max(self.depth_N, default=0)

    def ancestors(self) -> list[list[int]]:
        """Per node, its ancestor-or-self node indices (root excluded)."""
        out: list[list[int]] = []
        for v, parent in enumerate(self.parent_N):
            out.append((out[parent] if parent >= 0 else []) + [v])
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """Index tensors (CPU), built once."""
        if not self._tensors:
            import torch

            anc = torch.zeros(self.n_nodes, self.n_nodes, dtype=torch.bool)
            for v, path in enumerate(self.ancestors()):
                anc[v, path] = True
            self._tensors.update(
                token=torch.tensor(self.token_N, dtype=torch.long),
                parent=torch.tensor(self.parent_N, dtype=torch.long),
                depth=torch.tensor(self.depth_N, dtype=torch.long),
                value=torch.tensor(self.value_N, dtype=torch.long),
                ancestors=anc,
                digit_start=torch.tensor(self.digit_start_ids, dtype=torch.long),
            )
        return self._tensors


def build_number_tree(vocab: DigitVocab) -> NumberTree:
    """All token paths spelling a valid number, breadth first."""
    token, parent, depth, value, text = [], [], [], [], []
    mixed: list[tuple[int, int, list[int]]] = []
    for digits, ids in sorted(vocab.first_mixed.items()):
        if digits in VALID_NUMBERS:
            mixed.append((-1, VALID_NUMBERS[digits], ids))
    frontier: list[tuple[int, str]] = [(-1, "")]
    level = 0
    while frontier:
        level += 1
        nxt: list[tuple[int, str]] = []
        for node, prefix in frontier:
            pure = vocab.first_pure if node < 0 else vocab.cont_pure
            if node >= 0:
                for digits, ids in sorted(vocab.cont_mixed.items()):
                    if prefix + digits in VALID_NUMBERS:
                        mixed.append((node, VALID_NUMBERS[prefix + digits], ids))
            if node >= 0 and not _extendable(prefix):
                continue
            for digits, ids in sorted(pure.items()):
                s = prefix + digits
                if s not in VALID_NUMBERS:
                    continue
                for tid in ids:
                    token.append(tid)
                    parent.append(node)
                    depth.append(level)
                    value.append(VALID_NUMBERS[s])
                    text.append(s)
                    nxt.append((len(token) - 1, s))
        frontier = nxt
    tree = NumberTree(token, parent, depth, value, text, mixed, list(vocab.digit_start_ids), vocab.size)
    missing = sorted(set(range(101)) - set(value) - {n for _, n, _ in mixed})
    if missing:
        logger.warning("tokenizer cannot spell %d of the numbers 0-100 (e.g. %s)", len(missing), missing[:5])
    logger.debug("number tree: %d nodes, depth %d, %d mixed-token groups", tree.n_nodes, tree.max_depth,
                 len(mixed))
    return tree


def normalize_with_terminator(logits: torch.Tensor, digit_start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: ``logits`` -> log-softmax; also the terminator mass per position, summed
    over the non-digit tokens directly (not ``1 - digit mass``, which loses precision when
    a digit continuation is nearly certain). Returns ``(logp, terminator)``."""
    import torch

    logits = logits.float()
    lse = logits.logsumexp(-1)
    if digit_start.numel():
        saved = logits[..., digit_start].clone()
        logits[..., digit_start] = float("-inf")
        term = (logits.logsumexp(-1) - lse).exp()
        logits[..., digit_start] = saved
    else:
        term = torch.ones_like(lse)
    logits -= lse[..., None]
    return logits, term


def number_probs(
    tree: NumberTree,
    root_logp_BV: torch.Tensor,
    node_logp_BNV: torch.Tensor,
    node_term_BN: torch.Tensor | None = None,
) -> torch.Tensor:
    """P(number n) for n = 0..100, float64 ``[B, 101]``.

    ``root_logp_BV``: log-probabilities of the first answer token; ``node_logp_BNV``: of
    the token after each node's path (log-softmax over the full vocabulary);
    ``node_term_BN``: the terminator mass after each node (computed from the log-probs
    as ``1 - digit mass`` when not given; see :func:`normalize_with_terminator`).
    """
    import torch

    t = tree.tensors()
    batch = root_logp_BV.shape[0]
    out = torch.zeros(batch, 101, dtype=torch.float64)
    if tree.n_nodes == 0 and not tree.mixed:
        return out
    # probability of the token after each position, at the parent of each node
    parent_lp = torch.empty(batch, tree.n_nodes, dtype=torch.float64)
    is_root = t["parent"] < 0
    if tree.n_nodes:
        parent_lp[:, is_root] = root_logp_BV[:, t["token"][is_root]].double()
        inner = ~is_root
        if inner.any():
            pl = node_logp_BNV[:, t["parent"][inner], t["token"][inner]]
            parent_lp[:, inner] = pl.double()
    path = torch.zeros(batch, tree.n_nodes, dtype=torch.float64)
    for d in range(1, tree.max_depth + 1):
        at = t["depth"] == d
        base = torch.zeros(batch, int(at.sum()), dtype=torch.float64)
        if d > 1:
            base = path[:, t["parent"][at]]
        path[:, at] = base + parent_lp[:, at]
    path_p = path.exp()
    if tree.n_nodes:
        if node_term_BN is not None:
            term = node_term_BN.double()
        else:
            digit_mass = node_logp_BNV[:, :, t["digit_start"]].double().exp().sum(-1)
            term = (1.0 - digit_mass).clamp(min=0.0)
        out.index_add_(1, t["value"], path_p * term)
    for node, number, ids in tree.mixed:
        logp = root_logp_BV if node < 0 else node_logp_BNV[:, node]
        mass = logp[:, ids].double().exp().sum(-1)
        reach = torch.ones(batch, dtype=torch.float64) if node < 0 else path_p[:, node]
        out[:, number] += reach * mass
    return out


TopTokens = list[tuple[str, float]]  # (token text, logprob) of one position, most likely first


def walk_number_probs(fetch: Callable[[str], TopTokens], min_branch: float) -> tuple[dict[int, float], int]:
    """P(number n) from top-k token log-probs, walking the digit trie by text prefixes.

    For an API that shows only the top tokens of one position: ``fetch(prefix)`` returns
    them for the position after the answer's digits so far (``""``: the first answer
    token). The rule is the one :func:`number_probs` applies to the full vocabulary: a
    pure digit token extends the number, a mixed one (``"4,"``) spells it and ends it,
    after a prefix everything that does not start with a digit ends the number (taken as
    ``1 - digit mass`` of the top tokens: the tokens not shown are almost all non-digits),
    invalid spellings ("05", "101") count for no number. A prefix is fetched when its path
    probability is at least ``min_branch``. Below that, a prefix that can still grow ("4",
    "10") counts for no number, and one that cannot ("42", "0") ends with the mean
    probability of ending that fetched prefixes of its length had (1 when none was
    fetched). Text prefixes are re-tokenized by the server: exact for tokenizers that give
    each digit its own token (Gemma, Llama 2, Qwen, SmolLM2). Returns ``(probs, fetches)``.
    """
    probs: dict[int, float] = {}
    ends: dict[int, list[float]] = {}  # prefix length -> [sum of reach * P(end), sum of reach] of fetched leaves
    unfetched: list[tuple[int, int, float]] = []  # (number, prefix length, reach) of leaves not fetched
    frontier: list[tuple[str, float]] = [("", 1.0)]
    fetches = 0
    while frontier:
        grown: list[tuple[str, float]] = []
        for prefix, reach in frontier:
            top = fetch(prefix)
            fetches += 1
            digit_mass = 0.0
            for text, logprob in top:
                spelled = spelled_digits(text, first=not prefix)
                if spelled is None or logprob is None or not math.isfinite(logprob):
                    continue
                p = math.exp(logprob)
                digit_mass += p
                digits, pure = spelled
                number = VALID_NUMBERS.get(prefix + digits)
                if number is None:
                    continue
                if pure and reach * p >= min_branch:  # fetch what follows: more digits or the end
                    grown.append((prefix + digits, reach * p))
                elif not pure:
                    probs[number] = probs.get(number, 0.0) + reach * p
                elif not _extendable(prefix + digits):
                    unfetched.append((number, len(prefix + digits), reach * p))
            if prefix:  # the number ends here unless a digit follows
                end = max(0.0, 1.0 - digit_mass)
                probs[VALID_NUMBERS[prefix]] = probs.get(VALID_NUMBERS[prefix], 0.0) + reach * end
                if not _extendable(prefix):
                    acc = ends.setdefault(len(prefix), [0.0, 0.0])
                    acc[0] += reach * end
                    acc[1] += reach
        frontier = grown
    for number, length, reach in unfetched:
        acc = ends.get(length)
        probs[number] = probs.get(number, 0.0) + reach * (acc[0] / acc[1] if acc else 1.0)
    return probs, fetches
