"""The logit lens on persona pairs (issue 16 item 3): what each layer would answer at a prompt position.

    python -m builders.logit_lens --variant instruct --prompt-set persona --position 'prompt[-1]'

For every pair of a persona set (:mod:`transforms.prompts.persona`) and each side (``clean`` =
the expert persona, ``corrupted`` = the child one), the residual at the position (a single
token, or a span of the prompt mean-pooled) is read at each layer through the model's own final
norm and unembedding (:func:`transforms.circuits.lens.span_logit_lens`). Prompts are
formatted as every stage formats them (:func:`transforms.sequences.format_prompt`: the chat
template when there is one); the two sides need not align token for token here.

Published ``logitlens-<experiment>-<variant>-<set>-<position slug>``:

- ``top_tokens``: pair, side, layer, rank, token id / text, logit, probability (softmax over the
  whole vocabulary);
- ``tracked``: per pair, side and layer the logit and probability of the two tracked tokens
  (default the question's ``expert_token`` and ``simple_token``; ``--track A B`` sets them for
  every pair, A in the ``expert`` columns) and ``logit_diff`` = expert − simple;
- ``by_layer``: the mean logit difference per layer and side over pairs with a 95% t interval;
- ``figures/logit_diff.png``: that table drawn.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from store import BuildResult, BuildSpec, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, model_layer_count, progress

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

BUILDER = "builders.logit_lens"
CODE_VERSION = "1"
ROLES = ("clean", "corrupted")


@dataclass(frozen=True)
class LensOptions:
    """Settings; all enter the version id."""

    position: str = "prompt[-1]"
    layers: str = "all"
    top_k: int = 10
    track: tuple[str, str] | None = None
    limit_pairs: int | None = None

    def check(self) -> None:
        if self.top_k < 1:
            raise BuildError(f"--top-k {self.top_k}: must be at least 1")
        if self.limit_pairs is not None and self.limit_pairs < 1:
            raise BuildError(f"--limit-pairs {self.limit_pairs}: must be at least 1")
        if self.track is not None and len(self.track) != 2:
            raise BuildError("--track takes two tokens: the expert one, then the simple one")


@dataclass(frozen=True)
class LensInput:
    """One side of one pair, tokenized: ``span`` = the absolute ``[start, stop)`` read."""

    pair_id: str
    role: str  # clean | corrupted
    side: str  # the template's side (expert | child)
    register: str
    template_id: str
    question_id: str
    ids: list[int]
    span: tuple[int, int]
    tracked: tuple[str, str]
    tracked_ids: tuple[int, int]


def check_position(text: str) -> Any:
    """The parsed position; BuildError unless it is a valid expression inside the prompt."""
    from transforms.sequences import parse_position

    try:
        position = parse_position(text)
    except ValueError as err:
        raise BuildError(f"--position: {err}") from None
    if position.frame != "prompt":
        raise BuildError(f"--position {text}: the logit lens reads the prompt; use prompt[...]")
    return position


def lens_inputs(pairs: list[Any], tokenizer: Any, position: Any, track: tuple[str, str] | None) -> list[LensInput]:
    """Both sides of every pair, formatted and tokenized, the position resolved in each prompt
    and the tracked tokens checked to be single tokens. BuildError (one line) otherwise."""
    from transforms.prompts.persona import single_token_id
    from transforms.sequences import EmptySpanError, format_prompt

    fixed = None
    if track is not None:
        fixed = _tracked_ids(single_token_id, tokenizer, track, "--track")
    out = []
    for pair in pairs:
        for role, prompt in zip(ROLES, (pair.clean, pair.corrupted)):
            q = prompt.question
            tokens = track or (q.expert_token, q.simple_token)
            token_ids = fixed or _tracked_ids(single_token_id, tokenizer, tokens, f"question {q.id}")
            ids = list(format_prompt(tokenizer, prompt.text).ids)
            try:
                span = position.span(len(ids), len(ids))
            except EmptySpanError:
                raise BuildError(f"--position {position} is outside the {len(ids)}-token prompt of pair "
                                 f"{pair.pair_id} ({role})") from None
            out.append(LensInput(pair.pair_id, role, prompt.template.side, prompt.template.register,
                                 prompt.template.id, q.id, ids, span, tuple(tokens), token_ids))
    return out


def _tracked_ids(single_token_id: Any, tokenizer: Any, tokens: tuple[str, str], where: str) -> tuple[int, int]:
    try:
        return single_token_id(tokenizer, tokens[0], where), single_token_id(tokenizer, tokens[1], where)
    except ValueError as err:  # TrackedTokenError: a tracked token that is several tokens
        raise BuildError(str(err)) from None


def load_pairs(catalog: Catalog, prompt_set: str, limit: int | None) -> list[Any]:
    """The persona set's pairs in the set's order (the first ``limit``)."""
    from transforms.prompts.persona import is_persona_set, load_persona_set

    path = catalog.prompt_set(prompt_set).path
    if not is_persona_set(path):
        raise BuildError(f"prompt set {prompt_set!r} ({path}) is not a persona set")
    pairs = load_persona_set(path, name=prompt_set).pairs()
    if not pairs:
        raise BuildError(f"prompt set {prompt_set!r} has no pairs")
    return pairs[:limit] if limit else pairs


def inputs_digest(inputs: list[LensInput]) -> str:
    """What the lens reads, as token ids (the truth, whatever the text or the tokenizer)."""
    data = [[i.pair_id, i.role, i.side, i.template_id, i.question_id, i.ids, list(i.span), list(i.tracked_ids)]
            for i in inputs]
    return hashlib.sha256(json.dumps(data, separators=(",", ":")).encode()).hexdigest()[:16]


def build_logit_lens(store: Store, catalog: Catalog, variant: str, prompt_set: str, *, experiment: str | None = None,
                     options: LensOptions = LensOptions(), force: bool = False, quiet: bool = False) -> BuildResult:
    """Build (or find up to date) the logit lens of ``variant`` on a persona set (module docstring).
    Every input is checked before the version is started: a refused run publishes nothing."""
    from transforms.capture import parse_layers
    from transforms.models import ModelRef, load_tokenizer

    from builders.shared.variants import variant_model
    from builders.stages.responses import model_identity

    options.check()
    exp = catalog.experiment(experiment)
    entry = catalog.variant(exp.name, variant)
    position = check_position(options.position)
    try:
        layers = parse_layers(options.layers, model_layer_count(entry.model.id, entry.model.revision))
    except ValueError as err:
        raise BuildError(f"--layers: {err}") from None
    pairs = load_pairs(catalog, prompt_set, options.limit_pairs)
    identity = model_identity(catalog, exp.name, variant, store)
    # the tokenizer alone decides the inputs (and the version id): an up-to-date rebuild loads no weights
    tokenizer = load_tokenizer(ModelRef(entry.model.id, entry.model.revision))
    inputs = lens_inputs(pairs, tokenizer, position, options.track)
    params = {"experiment": exp.name, "variant": variant, "prompt_set": prompt_set, **asdict(options),
              "track": list(options.track) if options.track else None, "layers": layers,
              "inputs": inputs_digest(inputs)}
    spec = BuildSpec(name=names.logit_lens(exp.name, variant, prompt_set, position.slug), kind="logitlens",
                     builder=BUILDER, code_version=CODE_VERSION, params=params, parents={}, identity=identity)

    def produce(writer: Any) -> None:
        loaded = variant_model(store, entry)
        top, tracked = [], []
        bar = progress(len(inputs), "logit lens", quiet)
        for item in inputs:
            t, k = lens_rows(item, lens_logits(loaded.model, item, layers), layers, options.top_k, tokenizer)
            top += t
            tracked += k
            bar.update(1)
        bar.close()
        by_layer = layer_summary(tracked)
        writer.write_table(top, table="top_tokens")
        writer.write_table(tracked, table="tracked")
        writer.write_table(by_layer, table="by_layer")
        writer.write_bytes("figures/logit_diff.png", _figure(by_layer, spec.name))
        writer.summary.update({"pairs": len(pairs), "layers": layers, "position": str(position),
                               "tracked": list(options.track) if options.track else "per question",
                               "device": loaded.device, "dtype": loaded.dtype})

    return store.build(spec, produce, force=force)


def lens_logits(model: Any, item: LensInput, layers: list[int]) -> "np.ndarray":
    from transforms.circuits import span_logit_lens

    return span_logit_lens(model, item.ids, item.span[0], item.span[1], layers)


def lens_rows(item: LensInput, logits_LV: "np.ndarray", layers: list[int], top_k: int,
              tokenizer: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``top_tokens`` and ``tracked`` rows of one side of one pair (probabilities: softmax over
    the whole vocabulary, in float64)."""
    import numpy as np

    logits = logits_LV.astype(np.float64)
    peak = logits.max(axis=1, keepdims=True)
    log_z = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
    key = {"pair_id": item.pair_id, "role": item.role, "side": item.side, "register": item.register,
           "template_id": item.template_id, "question_id": item.question_id}
    top, tracked = [], []
    a, b = item.tracked_ids
    for row, layer in enumerate(layers):
        # stable order: logit descending, then token id
        order = np.lexsort((np.arange(logits.shape[1]), -logits[row]))[:top_k]
        for rank, tok in enumerate(order.tolist()):
            top.append({**key, "layer": layer, "rank": rank + 1, "token_id": tok, "token": tokenizer.decode([tok]),
                        "logit": float(logits[row, tok]), "prob": float(np.exp(logits[row, tok] - log_z[row]))})
        tracked.append({**key, "layer": layer, "expert_token": item.tracked[0], "simple_token": item.tracked[1],
                        "expert_id": a, "simple_id": b, "expert_logit": float(logits[row, a]),
                        "simple_logit": float(logits[row, b]),
                        "expert_prob": float(np.exp(logits[row, a] - log_z[row])),
                        "simple_prob": float(np.exp(logits[row, b] - log_z[row])),
                        "logit_diff": float(logits[row, a] - logits[row, b])})
    return top, tracked


def layer_summary(tracked: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ``logit_diff`` per (side, layer) over pairs with a 95% t interval (nan below 2 pairs)."""
    from transforms.stats import mean_t_interval

    groups: dict[tuple[str, int], list[float]] = {}
    for r in tracked:
        groups.setdefault((r["side"], r["layer"]), []).append(r["logit_diff"])
    out = []
    for (side, layer), values in sorted(groups.items()):
        mean, low, high = mean_t_interval(values)
        out.append({"side": side, "layer": layer, "n_pairs": len(values), "mean_logit_diff": mean,
                    "ci_low": low, "ci_high": high})
    return out


def _figure(by_layer: list[dict[str, Any]], title: str) -> bytes:
    from builders.shared.figures import png_bytes, subplots

    fig, ax = subplots(figsize=(6, 3.4))
    for i, side in enumerate(sorted({r["side"] for r in by_layer})):
        rows = [r for r in by_layer if r["side"] == side]
        x = [r["layer"] for r in rows]
        ax.plot(x, [r["mean_logit_diff"] for r in rows], marker="o", ms=3, color=f"C{i}", label=side)
        ax.fill_between(x, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], color=f"C{i}", alpha=0.2)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel("logit(expert) − logit(simple)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8, title="persona side (95% CI over pairs)", title_fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)
