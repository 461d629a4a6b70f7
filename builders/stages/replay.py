"""Replaying variant A's responses through variant B: the token-for-token pairing that
:mod:`builders.similarity` and :mod:`builders.compare` both measure on (and
``builders.activations --replay-from``).

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
from typing import Any

from store import Manifest, Store

from builders.shared.catalog import Catalog
from builders.shared.common import BuildError
from builders.stages.responses import dataset_name as responses_name
from builders.stages.responses import format_row, generate_responses, model_identity
from builders.shared.variants import variant_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplaySource:
    """A's responses (built if missing) and what both variants' versions depend on."""

    experiment: str
    variant_a: str
    variant_b: str
    responses: Manifest
    identity: dict[str, Any]  # {"a": model identity, "b": model identity}

    def load(self, store: Store, catalog: Catalog) -> tuple[Any, Any, list[dict[str, Any]]]:
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
    """Check two tokenizers' traits (:func:`transforms.tokenizer_identity.tokenizer_traits`)
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
    responses = store.resolve(responses_name(experiment, variant_a, prompt_set))
    identity: dict[str, Any] = {"a": model_identity(catalog, experiment, variant_a, store),
                                "b": model_identity(catalog, experiment, variant_b, store)}
    if record is not None:
        identity["replay_tokenizers"] = record
    return ReplaySource(experiment, variant_a, variant_b, responses, identity)


def replay_sequences(store: Store, responses: Any, loaded_a: Any, loaded_b: Any, style: str) -> list[dict[str, Any]]:
    """Per response: A's ids, B's ids (B's own prompt formatting + A's response ids) and how
    each formatted the prompt."""
    replay_record(_loaded_traits(loaded_a), _loaded_traits(loaded_b), loaded_a.model_id, loaded_b.model_id)
    out = []
    for row in store.read_table(responses).sort(["prompt_id", "rollout"]).to_dicts():
        response_ids = list(row["token_ids"][row["prompt_len"]:])
        b_prompt = format_row(loaded_b.tokenizer, row["prompt"], row.get("system_prompt"), style)
        b_ids = list(b_prompt.ids) + response_ids
        if b_ids[len(b_prompt.ids):] != list(row["token_ids"][row["prompt_len"]:]):
            raise BuildError(f"prompt {row['prompt_id']}: B's replayed response ids differ from A's")
        out.append({"prompt_id": row["prompt_id"], "rollout": row["rollout"],
                    "a": {"ids": row["token_ids"], "prompt_len": row["prompt_len"]},
                    "b": {"ids": b_ids, "prompt_len": len(b_prompt.ids)},
                    "a_formatted": row["formatted_prompt"], "b_formatted": b_prompt.text,
                    "a_chat": row["used_chat_template"], "b_chat": b_prompt.used_chat_template,
                    "same_prompt_ids": list(b_prompt.ids) == list(row["token_ids"][:row["prompt_len"]])})
    return out


def replay_batch_size(request: int | str, loaded_a: Any, loaded_b: Any, sequences: list[dict[str, Any]]) -> int:
    """``request`` (an int or ``auto``) as the batch size of a pass of :func:`replay_sequences`'
    sequences through both models: ``auto`` is 8 (what CPU builds always used) off CUDA,
    else what the free memory holds of the longest sequence on either model (both are loaded)."""
    from transforms.batching import CPU_BATCH, resolve_batch_size

    longest = max((len(s[side]["ids"]) for s in sequences for side in "ab"), default=1)
    return min(resolve_batch_size(request, loaded.model, longest, cpu_batch=CPU_BATCH) for loaded in (loaded_a, loaded_b))


def _loaded_traits(loaded: Any) -> dict[str, Any]:
    from transforms.models import tokenizer_traits

    return tokenizer_traits(loaded.tokenizer, getattr(loaded, "vocabulary_fingerprint", None))
