"""The local judge's exact 0-100 probabilities against brute force.

Brute force here is independent code: one full forward pass per candidate token sequence
(no KV cache, no tree mask), P(n) = product of the token probabilities along the digits
of n times the terminator mass (1 - probability of any token that continues the digits).

* SmolLM2 (one digit per token), real weights, 2 short prompts;
* tiny random models (llama sdpa/eager, qwen2, gemma3 with a sliding window shorter than
  the prompt, gpt2) with a word-level tokenizer that has multi-digit tokens, a leading-zero
  token, tokens mixing digits and letters, first-position tokens with a leading space and
  a sentencepiece byte-digit token.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch

from transforms.judge import JudgeTemplate, LocalJudge, score_from_probs
from transforms.models import LoadedModel

# ------------------------------------------------------------------ SmolLM2

SMOL_PROMPTS = [
    "Rate 0-100 how polite this is: 'Thanks so much!'",
    "Rate 0-100 how coherent this is: 'fish the the of run blue'",
]
SYSTEM = "You grade answers."


def brute_force_single_digit(model, tokenizer, prompt_ids: list[int]) -> np.ndarray:
    """P(n), n = 0..100, spelled out one number string at a time: the prompt is read once (plain
    incremental decoding, one unpadded row) and each number's digits continue a copy of its cache,
    one number per forward call; no tree, no 4D mask, no padding, no cache repeated across rows
    (the judge's own shared-prefix mechanism)."""
    import copy

    digit_ids = tokenizer.convert_tokens_to_ids(list("0123456789"))
    probs = np.zeros(101)
    with torch.inference_mode():
        prompt = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
        first = prompt.logits[0, -1:].double().log_softmax(-1)  # [1, V]: the first digit
        for n in range(101):
            number = tokenizer(str(n), add_special_tokens=False)["input_ids"]
            assert len(number) == len(str(n))  # one token per digit
            cache = copy.deepcopy(prompt.past_key_values)
            rest = model(input_ids=torch.tensor([number]), past_key_values=cache, use_cache=True).logits
            logp = torch.cat([first, rest[0].double().log_softmax(-1)])  # [k+1, V]
            p = 1.0
            for j, tid in enumerate(number):
                p *= float(logp[j, tid].exp())
            probs[n] = p * (1.0 - float(logp[len(number), digit_ids].exp().sum()))
    return probs


@pytest.fixture(scope="module")
def smol_judge(smollm2):
    return LocalJudge(smollm2, batch_size=4, system=SYSTEM)


@pytest.fixture(scope="module")
def smol_probs(smol_judge):
    return smol_judge.number_probs(SMOL_PROMPTS)


@pytest.mark.slow
def test_smollm2_tree_equals_brute_force(smol_judge, smol_probs):
    tok = smol_judge.loaded.tokenizer
    assert smol_judge.tree.n_nodes == 101  # 10 + 90 + 1: digits are single tokens
    assert sorted(smol_judge.tree.digit_start_ids) == sorted(tok.convert_tokens_to_ids(list("0123456789")))
    for prompt, got in zip(smol_judge.encode(SMOL_PROMPTS), smol_probs):
        expected = brute_force_single_digit(smol_judge.loaded.model, tok, prompt)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        assert expected.sum() > 0.5  # the prefill makes the model answer with a number


@pytest.mark.slow
def test_smollm2_batched_equals_unbatched_and_scores(smollm2, smol_probs):
    template = JudgeTemplate("short", "Rate 0-100 how relevant the answer is.\nQ: {question}\nA: {answer}\n"
                                      "Reply with the number only.")
    longer = template.render(question="What is the capital of France?", answer="Paris is the capital.")
    prompts = SMOL_PROMPTS + [longer]  # three lengths: left padding differs per row
    one = LocalJudge(smollm2, batch_size=1, system=SYSTEM)
    unbatched = one.number_probs(prompts)
    np.testing.assert_allclose(smol_probs, unbatched[:2], atol=1e-5, rtol=0)  # padded batch of 2 vs alone
    batched = LocalJudge(smollm2, batch_size=3, system=SYSTEM)
    seen: dict[int, float | None] = {}
    scores = batched.score_prompts(prompts, on_result=seen.__setitem__)
    assert seen == dict(enumerate(scores))
    for score, row in zip(scores, unbatched):
        assert score is not None and 0.0 <= score <= 100.0
        assert score == pytest.approx(float(np.arange(101) @ row / row.sum()), abs=1e-3)
    assert one.model_id.startswith("local:pkg:smollm2-135m-instruct@")


# ------------------------------------------------------------ tiny models

WORDS = ["rate", "the", "answer", "hello", "world", "score", "is", "good", "bad", ".", ","]
NUMBER_TOKENS = ([str(d) for d in range(10)] + [str(n) for n in range(10, 100)]
                 + ["00", "05", "100", "1000", "4th", "2nd", "7,", "10%", " 7", " 42", " 4th", "<0x35>"])
VOCAB = ["<pad>", "<s>", "</s>", "<unk>"] + WORDS + NUMBER_TOKENS
TINY_PROMPTS = ["rate the answer hello world .", "score is good , bad", "hello"]


@functools.cache
def tiny_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


@functools.cache
def tiny_model(family: str):
    import transformers as tf

    common = dict(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    if family in ("llama", "llama_eager"):
        impl = "eager" if family == "llama_eager" else "sdpa"
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common, attn_implementation=impl))
    elif family == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))
    elif family == "gemma3":  # window 4 < prompt length: the sliding masks matter
        model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
            **common, head_dim=8, sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"]))
    elif family == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=len(VOCAB), n_embd=32, n_layer=3, n_head=4,
                                                 n_positions=128, bos_token_id=1, eos_token_id=2))
    else:
        raise ValueError(family)
    head = model.get_output_embeddings()  # sharper logits than the 0.02-std init (untied if tied)
    head.weight = torch.nn.Parameter(head.weight.detach().clone() * 20)
    return model.float().eval()


def tiny_loaded(family: str) -> LoadedModel:
    return LoadedModel(model=tiny_model(family), tokenizer=tiny_tokenizer(), model_id=f"tiny-{family}",
                       revision=None, tokenizer_fingerprint="tiny", n_layers=3, d_model=32,
                       has_chat_template=False, checkpoint="", source="local", architecture=family,
                       dtype="float32")


def _digits_of(text: str, first: bool) -> tuple[str, bool]:
    """(leading digits, whole token is digits) under the judge's token rules."""
    if text == "<0x35>":
        return "5", True
    if first:
        text = text.lstrip(" ")
    m = re.match(r"[0-9]*", text)
    return m.group(0), m.group(0) == text


def brute_force_multi(model, prompt: list[int]) -> np.ndarray:
    """Walk every token sequence that spells a number, one full forward pass per sequence."""
    texts = VOCAB
    specials = {0, 1, 2, 3}

    @functools.cache
    def logp(seq: tuple[int, ...]) -> np.ndarray:
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([prompt + list(seq)])).logits[0, -1]
        return out.double().log_softmax(-1).exp().numpy()

    def terminator(seq: tuple[int, ...]) -> float:
        p = logp(seq)
        return 1.0 - sum(p[i] for i, t in enumerate(texts) if i not in specials and _digits_of(t, False)[0])

    probs = np.zeros(101)
    for n in range(101):
        target = str(n)

        def walk(seq: tuple[int, ...], spelled: str, reach: float) -> None:
            p = logp(seq)
            for i, t in enumerate(texts):
                digits, pure = _digits_of(t, not seq)
                if i in specials or not digits or not target.startswith(spelled + digits):
                    continue
                done = spelled + digits == target
                if pure and done:
                    probs[n] += reach * p[i] * terminator(seq + (i,))
                elif pure:
                    walk(seq + (i,), spelled + digits, reach * p[i])
                elif done:  # digits then non-digits in one token: ends the number
                    probs[n] += reach * p[i]

        walk((), "", 1.0)
    return probs


FAMILIES = ["llama", "llama_eager", "qwen2", "gemma3", "gpt2"]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_multi_digit_tree_equals_brute_force(family):
    def judge_with(batch_size: int, method: str) -> LocalJudge:
        return LocalJudge(tiny_loaded(family), batch_size, prefill="", method=method, byte_digits=True)

    judge = judge_with(3, "tree")
    got = judge.number_probs(TINY_PROMPTS)
    for k in (0, 2):  # the longest prompt and a one-token one (most padding)
        prompt, row = judge.encode(TINY_PROMPTS)[k], got[k]
        expected = brute_force_multi(judge.loaded.model, prompt)
        np.testing.assert_allclose(row, expected, rtol=2e-5, atol=1e-10)
        assert expected.sum() < 1.0 and (expected > 1e-10).sum() >= 90  # the tolerance means something
    unbatched = judge_with(1, "tree").number_probs(TINY_PROMPTS)
    np.testing.assert_allclose(got, unbatched, rtol=1e-5, atol=1e-9)
    brute = judge_with(2, "brute").number_probs(TINY_PROMPTS)
    np.testing.assert_allclose(got, brute, rtol=1e-5, atol=1e-9)


@pytest.mark.usefixtures("one_thread")
def test_tiny_tree_shape_and_leading_zero_rule():
    judge = LocalJudge(tiny_loaded("llama"), prefill="", byte_digits=True)
    tree = judge.tree
    default = LocalJudge(tiny_loaded("llama"), prefill="").tree  # byte digits: continuations, not nodes
    assert default.n_nodes < tree.n_nodes and default.digit_start_ids == tree.digit_start_ids
    assert VOCAB.index("<0x35>") in tree.token_N and VOCAB.index("<0x35>") not in default.token_N
    texts = dict(zip(range(tree.n_nodes), tree.text_N))
    assert "05" not in texts.values() and "00" not in texts.values()
    assert set(tree.value_N) == set(range(101))
    # "42" is spelled as "42", "4"+"2" and " 42"; "100" as "100", "10"+"0", "1"+"00", "1"+"0"+"0"
    assert tree.value_N.count(42) == 3 and tree.value_N.count(100) == 4
    mixed = {(node, n) for node, n, _ in tree.mixed}
    assert (-1, 4) in mixed and (-1, 7) in mixed and (-1, 10) in mixed  # "4th", " 4th", "7,", "10%"
    score = judge.score_prompts(["hello"])[0]
    probs = judge.number_probs(["hello"])[0]
    assert score == score_from_probs(probs)
    assert score is None or 0.0 <= score <= 100.0


SHARED_PROMPTS = ["rate the answer hello world . score is good", "rate the answer hello world . bad , hello",
                  "rate the answer hello world . the"]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_shared_prefix_equals_separate_prompts(family):
    """The batch's shared prefix computed once gives what each prompt gives on its own
    (gemma3, window 4: sharing is off for sliding-window models, results must still agree)."""
    from transforms.judge.local import common_prefix, tree_logprobs
    from transforms.judge import number_probs

    judge = LocalJudge(tiny_loaded(family), 3, prefill="", byte_digits=True)
    ids = judge.encode(SHARED_PROMPTS)
    assert common_prefix(ids) >= 5
    with torch.inference_mode():
        shared = number_probs(judge.tree, *tree_logprobs(judge.loaded.model, judge.tree, ids, 0, min_shared=2)).numpy()
        alone = np.concatenate([number_probs(judge.tree, *tree_logprobs(judge.loaded.model, judge.tree, [p], 0)).numpy()
                                for p in ids])
    np.testing.assert_allclose(shared, alone, rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(shared[1], brute_force_multi(judge.loaded.model, ids[1]), rtol=2e-5, atol=1e-10)


@pytest.mark.slow
def test_smollm2_shared_template_prefix_equals_brute_force(smollm2):
    """Real judge prompts: a template's instructions are shared by the batch."""
    from transforms.judge import load_templates
    from transforms.judge.local import common_prefix

    template = load_templates()["coherence"]
    prompts = [template.render(question="Is the sky green?", answer=a)
               for a in ("No, it is blue.", "sky sky sky the the", "Yes, definitely, a lovely green every day.")]
    judge = LocalJudge(smollm2, batch_size=3)
    ids = judge.encode(prompts)
    assert common_prefix(ids) > 60
    got = judge.number_probs(prompts)
    expected = brute_force_single_digit(smollm2.model, smollm2.tokenizer, ids[1])  # a shorter row: padded
    np.testing.assert_allclose(got[1], expected, atol=1e-4, rtol=0)
