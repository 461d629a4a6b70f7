"""One way a stored response becomes a token sequence, for the model that made it or for
another one replaying it (builders.activations --replay-from, similarity, compare)."""
from __future__ import annotations

import pytest

from builders.stages.replay import ReplayPair, ResponseSequence, response_sequence
from builders.stages.responses import format_row
from transforms.sequences import PromptResponse

RESPONSE_IDS = [504, 1789, 30, 2]


def _row(tokenizer) -> dict:
    prompt = format_row(tokenizer, "Is this a good plan?", "Be honest.", "instruction")
    return {"prompt_id": "pos-1", "rollout": 0, "prompt": "Is this a good plan?", "system_prompt": "Be honest.",
            "prompt_style": "instruction", "formatted_prompt": prompt.text,
            "used_chat_template": prompt.used_chat_template, "token_ids": prompt.ids + RESPONSE_IDS,
            "prompt_len": len(prompt.ids)}


def test_stored_sequence_is_the_rows_ids(smollm2):
    row = _row(smollm2.tokenizer)
    seq = response_sequence(row)
    assert isinstance(seq, ResponseSequence) and isinstance(seq, PromptResponse)
    assert seq.ids == row["token_ids"] and seq.prompt_len == row["prompt_len"]
    assert seq.response_ids == RESPONSE_IDS and seq.formatted_prompt == row["formatted_prompt"]
    assert seq.used_chat_template is True


def test_replayed_sequence_is_own_formatting_plus_the_same_response_ids(smollm2):
    row = _row(smollm2.tokenizer)
    same = response_sequence(row, smollm2.tokenizer)
    assert same == response_sequence(row)  # the same tokenizer formats the prompt to the same ids
    plain = response_sequence(row, smollm2.tokenizer, style="natural")  # continued as plain text
    prompt = format_row(smollm2.tokenizer, row["prompt"], row["system_prompt"], "natural")
    assert plain.prompt_ids == prompt.ids and plain.response_ids == RESPONSE_IDS
    assert plain.formatted_prompt == prompt.text and plain.used_chat_template is False
    pair = ReplayPair("pos-1", 0, a=response_sequence(row), b=plain)
    assert not pair.same_prompt_ids and pair.side("a") is pair.a and pair.side("b") is pair.b
    assert ReplayPair("pos-1", 0, a=same, b=same).same_prompt_ids
    with pytest.raises(ValueError, match="'a' or 'b'"):
        pair.side("c")
