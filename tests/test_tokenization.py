"""transforms.sequences.tokenization: one formatting path, never a second BOS, ids are the truth."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from transforms.sequences import (DoubleBOSError, FormattedPrompt, PromptFormatError, assert_no_double_bos, format_prompt, response_boundary, split_generated, supports_system_prompt, tokenizer_adds_bos)

# A ChatML-ish template that writes BOS itself (like Llama 3's), one that relies on the
# tokenizer for BOS, one that refuses a system role (like Gemma 2's), one that drops it.
TEMPLATE_WITH_BOS = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
TEMPLATE_WITHOUT_BOS = TEMPLATE_WITH_BOS.removeprefix("{{ bos_token }}")
TEMPLATE_REFUSES_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    + TEMPLATE_WITH_BOS
)
TEMPLATE_DROPS_SYSTEM = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] != 'system' %}<start_of_turn>{{ m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@contextlib.contextmanager
def chat_template(tokenizer: Any, template: str | None) -> Iterator[Any]:
    """Temporarily give a (session-shared) tokenizer another chat template."""
    old = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        yield tokenizer
    finally:
        tokenizer.chat_template = old


def _bos_count_at_start(ids: list[int], bos: int) -> int:
    n = 0
    while n < len(ids) and ids[n] == bos:
        n += 1
    return n


# ------------------------------------------------------------------- SmolLM2


def test_smollm2_uses_chat_template_with_one_bos(smollm2):
    tok = smollm2.tokenizer
    fp = format_prompt(tok, "What is the capital of France?")
    assert isinstance(fp, FormattedPrompt)
    assert fp.used_chat_template and fp.system_mode == "none"
    assert fp.text.startswith("<|im_start|>") and fp.text.endswith("<|im_start|>assistant\n")
    assert "What is the capital of France?" in fp.text
    # SmolLM2's BOS is <|im_start|>: once at the start (it also opens every later turn)
    assert fp.ids[0] == tok.bos_token_id
    assert _bos_count_at_start(fp.ids, tok.bos_token_id) == 1
    # the rendered template already has its BOS: tokenized without adding another
    assert fp.ids == tok(fp.text, add_special_tokens=False)["input_ids"]
    assert fp.prompt_len == len(fp.ids)


def test_smollm2_accepts_system_prompts(smollm2):
    tok = smollm2.tokenizer
    assert supports_system_prompt(tok) is True
    fp = format_prompt(tok, "Hi", system="You are a pirate.")
    assert fp.system_mode == "system_role"
    assert fp.text.startswith("<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nHi")
    assert "SmolLM" not in fp.text  # its default system prompt is replaced, not added
    assert _bos_count_at_start(fp.ids, tok.bos_token_id) == 1
    # without a system prompt the template inserts its own default one
    assert "named SmolLM" in format_prompt(tok, "Hi").text


def test_smollm2_plain_text_when_asked(smollm2):
    tok = smollm2.tokenizer
    assert not tokenizer_adds_bos(tok)
    fp = format_prompt(tok, "Once upon a time", chat=False)
    assert not fp.used_chat_template and fp.system_mode == "none"
    assert fp.text == "Once upon a time"
    assert fp.ids == tok("Once upon a time")["input_ids"]
    assert tok.bos_token_id not in fp.ids  # SmolLM2 adds no BOS to plain text
    fp = format_prompt(tok, "Once upon a time", system="A story.", chat=False)
    assert fp.system_mode == "plain_prefix" and fp.text == "A story.\n\nOnce upon a time"


def test_prompt_ids_are_a_prefix_of_generated_ids(smollm2):
    import torch

    tok, model = smollm2.tokenizer, smollm2.model
    fp = format_prompt(tok, "Name a color.")
    with torch.no_grad():
        out = model.generate(
            torch.tensor([fp.ids]), attention_mask=torch.ones(1, len(fp.ids), dtype=torch.long),
            max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
        )[0]
    assert out[: fp.prompt_len].tolist() == fp.ids
    seq = split_generated(fp.ids, out)
    assert seq.prompt_len == len(fp.ids) and seq.prompt_ids == fp.ids
    assert seq.ids == out.tolist() and 0 < seq.response_len <= 6
    joined = response_boundary(fp.ids, seq.response_ids)
    assert joined == seq


# --------------------------------------------------------------------- Gemma 3


def test_gemma3_base_plain_text_with_exactly_one_bos(gemma3):
    tok = gemma3.tokenizer
    assert not gemma3.has_chat_template and tokenizer_adds_bos(tok)
    assert supports_system_prompt(tok) is False
    fp = format_prompt(tok, "The capital of France is")
    assert not fp.used_chat_template and fp.system_mode == "none"
    assert fp.text == "The capital of France is"
    assert fp.ids[0] == tok.bos_token_id == 2
    assert fp.ids.count(tok.bos_token_id) == 1
    fp = format_prompt(tok, "Paris is", system="Facts about Europe.")
    assert fp.system_mode == "plain_prefix" and fp.text == "Facts about Europe.\n\nParis is"
    assert fp.ids.count(tok.bos_token_id) == 1


def test_gemma3_chat_true_without_template_is_an_error(gemma3):
    with pytest.raises(PromptFormatError, match="no chat template"):
        format_prompt(gemma3.tokenizer, "Hi", chat=True)


def test_text_that_already_has_bos_raises(gemma3):
    tok = gemma3.tokenizer
    with pytest.raises(DoubleBOSError):
        format_prompt(tok, tok.bos_token + "Hello", chat=False)


# ------------------------------------------ templates with and without a BOS


@pytest.mark.parametrize("template", [TEMPLATE_WITH_BOS, TEMPLATE_WITHOUT_BOS])
def test_template_bos_is_never_doubled(gemma3, template):
    """Gemma's tokenizer adds <bos> itself: whether the template writes one or not, one BOS."""
    tok = gemma3.tokenizer
    with chat_template(tok, template):
        fp = format_prompt(tok, "Hi")
        assert fp.used_chat_template
        assert fp.ids[0] == tok.bos_token_id
        assert fp.ids.count(tok.bos_token_id) == 1
        assert fp.text.endswith("<start_of_turn>model\n")
        # the naive path (tokenizer adds special tokens to a rendered template) doubles BOS
        naive = tok(fp.text)["input_ids"]
        if template is TEMPLATE_WITH_BOS:
            with pytest.raises(DoubleBOSError):
                assert_no_double_bos(naive, tok)


def test_template_refusing_system_role_folds_it_into_user(gemma3):
    tok = gemma3.tokenizer
    with chat_template(tok, TEMPLATE_REFUSES_SYSTEM):
        assert supports_system_prompt(tok) is False
        fp = format_prompt(tok, "Hi", system="Be brief.")
        assert fp.system_mode == "folded_into_user"
        assert "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>" in fp.text
        assert fp.ids.count(tok.bos_token_id) == 1
    with chat_template(tok, TEMPLATE_DROPS_SYSTEM):
        assert supports_system_prompt(tok) is False  # renders, but the text is lost
        assert "Be brief." in format_prompt(tok, "Hi", system="Be brief.").text
    with chat_template(tok, TEMPLATE_WITH_BOS):
        assert supports_system_prompt(tok) is True
        assert format_prompt(tok, "Hi", system="Be brief.").system_mode == "system_role"


# ------------------------------------------------------------------- helpers


def test_assert_no_double_bos(smollm2):
    import numpy as np
    import torch

    tok = smollm2.tokenizer
    bos = tok.bos_token_id
    assert_no_double_bos([], tok)
    assert_no_double_bos([bos], tok)
    assert_no_double_bos([bos, 5, bos, bos], tok)  # only the start matters
    for ids in ([bos, bos, 5], torch.tensor([bos, bos, 5]), np.array([bos, bos])):
        with pytest.raises(DoubleBOSError):
            assert_no_double_bos(ids, tok)


def test_response_boundary_and_split():
    import torch

    seq = response_boundary([1, 2, 3], torch.tensor([7, 8]))
    assert seq.ids == [1, 2, 3, 7, 8] and seq.prompt_len == 3
    assert seq.prompt_ids == [1, 2, 3] and seq.response_ids == [7, 8] and seq.response_len == 2
    # a left-padded generate() row
    assert split_generated([1, 2, 3], [0, 0, 1, 2, 3, 9], pad_token_id=0).response_ids == [9]
    assert split_generated([1, 2], [1, 2]).response_len == 0
    with pytest.raises(ValueError, match="prompt ids"):
        split_generated([1, 2, 3], [1, 2, 4, 9])
