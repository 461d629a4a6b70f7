"""Replaying variant A's responses through variant B: the token-for-token pairing that
:mod:`builders.stages.similarity` and :mod:`builders.stages.compare` both measure on (and
``builders.activations --replay-from``). :func:`response_sequence` is the one way a stored
response becomes a token sequence, for its own model or for the one replaying it.

Replay needs the two tokenizers to share a vocabulary (the same token -> id mapping,
added tokens included), nothing more: a base/instruct pair such as Llama-3.1-8B and
-Instruct differs in eos token and chat template, and B formats the prompt its own way
anyway. A different vocabulary is refused in one line before anything is built; the
differences of a shared-vocabulary pair (special tokens, chat template hash) go into the
version's identity as ``replay_tokenizers`` (absent when the tokenizers agree on
everything, so such versions keep their ids).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from store import Manifest, Store
from transforms.sequences import PromptResponse

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError
from builders.shared.variants import variant_model
from builders.stages.responses import format_row, generate_responses, model_identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplaySource:
    """A's responses (built if missing) and what both variants' versions depend on."""

    experiment: str
    variant_a: str
    variant_b: str
    responses: Manifest
    identity: dict[str, Any]  # {"a": model identity, "b": model identity}

    def load(self, store: Store, catalog: Catalog) -> tuple[Any, Any, list[ReplayPair]]:
        """Both variants' models and the replayed sequences (see :func:`replay_sequences`)."""
        a = catalog.variant(self.experiment, self.variant_a)
        b = catalog.variant(self.experiment, self.variant_b)
        loaded_a, loaded_b = variant_model(store, a), variant_model(store, b)
        prompts = store.resolve(self.responses.parents["prompts"])
        style = json.loads(store.read_bytes(prompts, "prompt_set.json"))["style"]
        return loaded_a, loaded_b, replay_sequences(store, self.responses, loaded_a, loaded_b, style)


def variant_tokenizer(entry: Any) -> Any:
    """The variant's tokenizer (pad set), without weights; an adapter keeps its base's."""
    from transforms.models import ModelRef, load_tokenizer

    return load_tokenizer(ModelRef(entry.model.id, entry.model.revision))


def replay_record(a: dict[str, Any], b: dict[str, Any], who_a: str, who_b: str) -> dict[str, Any] | None:
    """Check two tokenizers' traits (:func:`transforms.models.tokenizer_traits`)
    for replay: a different vocabulary is a :class:`BuildError` (one line); otherwise what
    differs, to record (None when nothing does)."""
    from transforms.models import tokenizer_differences

    va, vb = a["vocabulary_fingerprint"], b["vocabulary_fingerprint"]
    if va != vb:
        raise BuildError(f"{who_b} does not share the tokenizer vocabulary of {who_a} (token -> id mapping {vb} vs "
                         f"{va}): replaying token ids needs the same ids")
    differences = tokenizer_differences(a, b)
    if not differences:
        return None
    log.info("replay: %s and %s share a vocabulary; they differ in %s", who_a, who_b, differences)
    return {"vocabulary": va, "differences": differences}


def responses_tokenizer(store: Store, catalog: Catalog, responses: Manifest, experiment: str,
                        variant: str) -> dict[str, Any]:
    """The traits of the tokenizer that made ``responses``: recorded in its summary, or
    (versions built before builders.responses code 3) those of the variant's tokenizer,
    provided it is still the one whose fingerprint the rows recorded."""
    from transforms.models import tokenizer_fingerprint, tokenizer_traits

    recorded = responses.summary.get("tokenizer")
    if recorded:
        return dict(recorded)
    tokenizer = variant_tokenizer(catalog.variant(experiment, variant))
    made_by = set(store.read_table(responses)["tokenizer_fingerprint"].unique().to_list())
    current = tokenizer_fingerprint(tokenizer)
    if made_by != {current}:
        raise BuildError(f"{responses.ref} was generated with tokenizer {sorted(map(str, made_by))} but variant "
                         f"{variant!r} now has {current}; rebuild it (python -m builders.responses --variant {variant} "
                         f"--prompts {responses.params.get('prompt_set')} --force)")
    return tokenizer_traits(tokenizer)


def replay_source(store: Store, catalog: Catalog, experiment: str, variant_a: str, variant_b: str,
                  prompt_set: str, generation: dict[str, Any] | None = None, quiet: bool = False) -> ReplaySource:
    """A's responses (built if missing) for B to replay; refused before any work unless
    both tokenizers share a vocabulary."""
    from transforms.models import tokenizer_traits

    entry_a, entry_b = catalog.variant(experiment, variant_a), catalog.variant(experiment, variant_b)
    traits_a = tokenizer_traits(variant_tokenizer(entry_a))
    same_model = (entry_a.model.id, entry_a.model.revision) == (entry_b.model.id, entry_b.model.revision)
    traits_b = traits_a if same_model else tokenizer_traits(variant_tokenizer(entry_b))  # e.g. an adapter variant
    record = replay_record(traits_a, traits_b, f"variant {variant_a!r} ({entry_a.model.id})",
                           f"variant {variant_b!r} ({entry_b.model.id})")
    generate_responses(store, catalog, variant_a, prompt_set, experiment, generation, quiet=quiet)
    responses = store.resolve(names.responses(experiment, variant_a, prompt_set))
    identity: dict[str, Any] = {"a": model_identity(catalog, experiment, variant_a, store),
                                "b": model_identity(catalog, experiment, variant_b, store)}
    if record is not None:
        identity["replay_tokenizers"] = record
    return ReplaySource(experiment, variant_a, variant_b, responses, identity)


@dataclass(frozen=True)
class ResponseSequence(PromptResponse):
    """A stored response's token sequence as one model sees it: the prompt formatted for that
    model (``formatted_prompt``, ``used_chat_template``) followed by the response ids. Any
    :mod:`transforms.capture` call takes it as a sequence (``ids``, ``prompt_len``)."""

    formatted_prompt: str
    used_chat_template: bool


def response_sequence(row: Mapping[str, Any], tokenizer: Any = None, style: str | None = None) -> ResponseSequence:
    """The token sequence of a responses row: as stored (``tokenizer`` None), or replayed --
    ``tokenizer``'s own formatting of the row's prompt (in ``style``, default the row's
    ``prompt_style``) followed by the row's response ids, unchanged."""
    if tokenizer is None:
        return ResponseSequence(ids=list(row["token_ids"]), prompt_len=row["prompt_len"],
                                formatted_prompt=row["formatted_prompt"],
                                used_chat_template=row["used_chat_template"])
    prompt = format_row(tokenizer, row["prompt"], row.get("system_prompt"), style or row["prompt_style"])
    return ResponseSequence(ids=list(prompt.ids) + list(row["token_ids"][row["prompt_len"]:]),
                            prompt_len=len(prompt.ids), formatted_prompt=prompt.text,
                            used_chat_template=prompt.used_chat_template)


@dataclass(frozen=True)
class ReplayPair:
    """One of A's responses as A generated it (``a``) and as B replays it (``b``: B's prompt
    formatting, A's response ids)."""

    prompt_id: str
    rollout: int
    a: ResponseSequence
    b: ResponseSequence

    @property
    def same_prompt_ids(self) -> bool:
        """Whether B formats the prompt to the very ids A did."""
        return self.a.prompt_ids == self.b.prompt_ids

    def side(self, name: str) -> ResponseSequence:
        """``a`` or ``b`` by name (loops over both variants)."""
        if name not in ("a", "b"):
            raise ValueError(f"side must be 'a' or 'b', got {name!r}")
        return self.a if name == "a" else self.b


def replay_sequences(store: Store, responses: Manifest, loaded_a: Any, loaded_b: Any, style: str) -> list[ReplayPair]:
    """Per response of A (in prompt id, rollout order): its sequence and B's replay of it."""
    replay_record(_loaded_traits(loaded_a), _loaded_traits(loaded_b), loaded_a.model_id, loaded_b.model_id)
    return [ReplayPair(prompt_id=row["prompt_id"], rollout=row["rollout"], a=response_sequence(row),
                       b=response_sequence(row, loaded_b.tokenizer, style))
            for row in store.read_table(responses).sort(["prompt_id", "rollout"]).to_dicts()]


def replay_batch_size(request: int | str, loaded_a: Any, loaded_b: Any, sequences: list[ReplayPair]) -> int:
    """``request`` (an int or ``auto``) as the batch size of a pass of :func:`replay_sequences`'
    sequences through both models: ``auto`` is 8 (what CPU builds always used) off CUDA,
    else what the free memory holds of the longest sequence on either model (both are loaded)."""
    from transforms.batching import CPU_BATCH, resolve_batch_size

    longest = max((len(seq.ids) for pair in sequences for seq in (pair.a, pair.b)), default=1)
    return min(resolve_batch_size(request, loaded.model, longest, cpu_batch=CPU_BATCH) for loaded in (loaded_a, loaded_b))


def _loaded_traits(loaded: Any) -> dict[str, Any]:
    from transforms.models import tokenizer_traits

    return tokenizer_traits(loaded.tokenizer, getattr(loaded, "vocabulary_fingerprint", None))
