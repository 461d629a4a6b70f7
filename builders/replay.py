"""Replaying variant A's responses through variant B: the token-for-token pairing that
:mod:`builders.similarity` and :mod:`builders.compare` both measure on."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from store import Manifest, Store

from .catalog import Catalog
from .common import BuildError
from .responses import dataset_name as responses_name
from .responses import format_row, generate_responses, model_identity
from .variants import variant_model


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


def replay_source(store: Store, catalog: Catalog, experiment: str, variant_a: str, variant_b: str,
                  prompt_set: str, generation: dict[str, Any] | None = None, quiet: bool = False) -> ReplaySource:
    generate_responses(store, catalog, variant_a, prompt_set, experiment, generation, quiet=quiet)
    responses = store.resolve(responses_name(experiment, variant_a, prompt_set))
    identity = {"a": model_identity(catalog, experiment, variant_a, store),
                "b": model_identity(catalog, experiment, variant_b, store)}
    return ReplaySource(experiment, variant_a, variant_b, responses, identity)


def replay_sequences(store: Store, responses: Any, loaded_a: Any, loaded_b: Any, style: str) -> list[dict[str, Any]]:
    """Per response: A's ids, B's ids (B's own prompt formatting + A's response ids) and how
    each formatted the prompt."""
    if loaded_a.tokenizer_fingerprint != loaded_b.tokenizer_fingerprint:
        raise BuildError(f"{loaded_b.model_id} does not share the tokenizer of {loaded_a.model_id}: "
                         f"replaying A's response ids through B needs identical token ids")
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
