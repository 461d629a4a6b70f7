"""LLM judges scoring answers 0-100 (pure transforms: no store).

One interface, two backends:

* :class:`OpenAIJudge` -- any OpenAI-compatible endpoint. ``single-token`` mode (OpenAI
  models, whose tokenizers hold 0-100 as single tokens): one ``max_tokens=1`` completion
  with the top-20 logprobs per prompt. ``digits`` mode (vLLM / llama.cpp serving Gemma,
  Qwen, Llama, SmolLM2, whose tokenizers split numbers): the answer is prefilled with
  ``"Score: "`` (``continue_final_message``) and the digit tree is walked with one request
  per likely prefix, as the local judge does;
* :class:`LocalJudge` -- a Hugging Face chat model in-process, the exact probability of
  every integer 0-100 from a batched walk of the digit tree with the KV cache.

Both return, per prompt, the probability-weighted mean of the integers 0-100 renormalized
over them, or ``None`` when less than 25% of the probability is on those integers
(canonical numbers only: "05" is not a number). Prompt templates are data
(``datasets/judge/*.txt``, :func:`load_templates`), identified by the sha256 of their
text. :func:`score_responses` renders a template for ``(question, answer)`` pairs and asks
a :class:`ScoreCache` first, keyed by ``(judge model id, template hash, question, answer)``.

Example::

    from transforms.judge import LocalJudge, InMemoryScoreCache, load_templates, score_responses
    templates = load_templates()
    judge = LocalJudge()  # SmolLM2-135M-Instruct, offline
    scores = score_responses(judge, templates["coherence"], [("Hi?", "Hello!")], InMemoryScoreCache())

Heavy imports (torch, transformers, openai) happen inside the backends' functions.
"""

from transforms.judge.base import (
    MIN_NUMBER_MASS,
    RELEVANCE_CAP,
    RELEVANCE_THRESHOLD,
    InMemoryScoreCache,
    Judge,
    JudgeError,
    Key,
    ScoreCache,
    aggregate_top_logprobs,
    apply_relevance_cap,
    number_value,
    score_coherence,
    score_from_probs,
    score_responses,
)
from transforms.judge.local import DEFAULT_LOCAL_JUDGE, LocalJudge
from transforms.judge.openai_judge import OpenAIJudge
from transforms.judge.templates import (
    DEFAULT_TEMPLATE_DIR,
    JudgeTemplate,
    TemplateError,
    load_templates,
    trait_template,
)

from transforms.judge.perplexity import CoherenceCalibration, FEATURES, LEN_CAP, PMI_CAP, PerplexityFeaturizer, PerplexityScorer, degeneracy_features
from transforms.judge.local import DEFAULT_PREFILL, brute_logprobs
from transforms.judge.scorers import LLMScorer, ResponseScorer, identity_hash, score_cached
from transforms.judge.sentiment import SentimentScorer
from transforms.judge.lexicon import Lexicon, LexiconError, LexiconScorer
from transforms.judge.number_tree import number_probs
from transforms.judge.observable import (
    OBSERVABLE_FEATURES,
    ObservableDetector,
    ObservableLexicons,
    PairContext,
    observable_features,
)
from transforms.judge.openai_judge import splits_numbers
from transforms.judge.register import (
    DEFAULT_REGISTER_CONSTANTS,
    MIN_REGISTER_AUROC,
    REGISTER_FEATURES,
    FeatureScale,
    RegisterConstants,
    RegisterExample,
    RegisterFeatures,
    RegisterJudge,
    RegisterValidation,
    count_syllables,
    fit_register_constants,
    generated_register,
    is_common_word,
    load_common_words,
    load_register_set,
    rank_auroc,
    register_features,
    register_score,
    validate_register,
)

__all__ = [
    "CoherenceCalibration",
    "DEFAULT_LOCAL_JUDGE",
    "DEFAULT_PREFILL",
    "DEFAULT_REGISTER_CONSTANTS",
    "DEFAULT_TEMPLATE_DIR",
    "FEATURES",
    "FeatureScale",
    "InMemoryScoreCache",
    "Judge",
    "JudgeError",
    "JudgeTemplate",
    "Key",
    "LEN_CAP",
    "LLMScorer",
    "Lexicon",
    "LexiconError",
    "LexiconScorer",
    "LocalJudge",
    "MIN_NUMBER_MASS",
    "MIN_REGISTER_AUROC",
    "OBSERVABLE_FEATURES",
    "ObservableDetector",
    "ObservableLexicons",
    "OpenAIJudge",
    "PMI_CAP",
    "PairContext",
    "PerplexityFeaturizer",
    "PerplexityScorer",
    "REGISTER_FEATURES",
    "RELEVANCE_CAP",
    "RELEVANCE_THRESHOLD",
    "RegisterConstants",
    "RegisterExample",
    "RegisterFeatures",
    "RegisterJudge",
    "RegisterValidation",
    "ResponseScorer",
    "ScoreCache",
    "SentimentScorer",
    "TemplateError",
    "aggregate_top_logprobs",
    "apply_relevance_cap",
    "brute_logprobs",
    "count_syllables",
    "degeneracy_features",
    "fit_register_constants",
    "generated_register",
    "identity_hash",
    "is_common_word",
    "load_common_words",
    "load_register_set",
    "load_templates",
    "number_probs",
    "number_value",
    "observable_features",
    "rank_auroc",
    "register_features",
    "register_score",
    "score_cached",
    "score_coherence",
    "score_from_probs",
    "score_responses",
    "splits_numbers",
    "trait_template",
    "validate_register",
]
