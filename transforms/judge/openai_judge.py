"""A judge behind any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama).

Two modes, because servers differ in how a number is tokenized and what they accept:

* ``"single-token"`` (OpenAI models, whose tokenizers spell 0-100 as single tokens): one
  chat completion per prompt, the prompt as the single user message, ``max_tokens=1``,
  ``temperature=0``, ``logprobs=True``, ``top_logprobs=20``; the score comes from the top
  tokens of that one position (:func:`transforms.judge.base.aggregate_top_logprobs`).
  When those tokens show a tokenizer that splits numbers into digits (single digits that
  start longer numbers, no multi-digit number among 20 tokens), the prompt fails with an
  error naming the ``"digits"`` mode instead of scoring "4" for "42".
* ``"digits"`` (vLLM, llama.cpp, Ollama serving Gemma, Qwen, Llama, SmolLM2, ...): the
  answer is prefilled with ``prefill`` (default ``"Score: "``, as the local judge does;
  small models do not start a reply with a bare number) as a final assistant message that
  the server continues (vLLM: ``continue_final_message: true``, ``add_generation_prompt:
  false``, sent as extra body fields; llama.cpp continues a final assistant message by
  itself and ignores the fields), and the digit trie is walked with one such request per
  prefix (:func:`transforms.judge.number_tree.walk_number_probs`): the distribution over
  0-100 the local judge computes exactly, from the top-20 tokens, pruned at
  ``min_branch``. About 10-15 requests per prompt; a server with prefix caching computes
  the shared prompt once.

Identity (:attr:`OpenAIJudge.model_id`, part of every score-cache key and version id):
model name, the endpoint (host, port and path; never the key or a query string), the
model revision when given, mode, prefill hash, ``min_branch``, ``min_mass`` and
``top_logprobs``: changing any of them never reuses old scores.

Credentials and endpoint: ``api_key`` / ``base_url`` arguments, else ``OPENAI_API_KEY`` /
``OPENAI_BASE_URL``; checked when the judge is built, before any request. Local servers
usually accept any non-empty key.

Failures: HTTP retries are the ``openai`` client's own (``max_retries``): 408, 409, 429,
5xx, timeouts and connection errors, exponential backoff 0.5-8 s with jitter,
``Retry-After`` honoured up to 60 s. Other errors (400, 401, 404, a response without
logprobs) fail the prompt at once. Once ``max_failures`` prompts (default 1) have failed
for good, no new prompt is started; the run finishes what is in flight and raises
:class:`JudgeError` with every score obtained in ``completed``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit

from transforms.judge.base import MIN_NUMBER_MASS, JudgeError, OnResult, Score, aggregate_top_logprobs, score_from_probs
from transforms.judge.number_tree import TopTokens, spelled_digits, walk_number_probs

logger = logging.getLogger(__name__)

MODES = ("single-token", "digits")
DEFAULT_PREFILL = "Score: "  # the local judge's (transforms.judge.local.DEFAULT_PREFILL)
DEFAULT_MIN_BRANCH = 0.05  # SmolLM2: ~13 requests per prompt, within 0.2 of the exact local judge
# vLLM's way to continue a final assistant message instead of opening a new turn.
CONTINUE_FINAL = {"add_generation_prompt": False, "continue_final_message": True}
_RETRIED_STATUS = frozenset({408, 409, 429})  # plus every 5xx: what the openai client retries


class _Permanent(Exception):
    """An error retrying will not fix."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


def endpoint_identity(base_url: str) -> str:
    """``host[:port][/path]`` of an endpoint URL: no scheme, credentials or query (keys
    sometimes travel there)."""
    parts = urlsplit(str(base_url))
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return host + parts.path.rstrip("/")


def splits_numbers(top: TopTokens, scored: bool) -> bool:
    """Whether one position's top tokens show a tokenizer that spells numbers digit by digit:
    among at least 10 alternatives, no token spells a multi-digit number, and either the most
    likely token is a bare digit 1-9 (which starts longer numbers on such a tokenizer) or the
    position gave no score (``scored`` False) while single digits 1-9 are there. OpenAI
    tokenizers show "42"-like tokens among the top 10 whenever a number is likely, and a
    sure single-digit score from them scores."""
    if len(top) < 10:
        return False
    spelled = [spelled_digits(t, first=True) for t, _ in top]
    digits = [d for d, pure in (s for s in spelled if s is not None) if pure]
    if any(len(d) > 1 for d in digits):
        return False
    best = spelled[max(range(len(top)), key=lambda i: top[i][1])]
    leads = best is not None and best[1] and best[0] in "123456789"
    return leads or (not scored and any(d in "123456789" for d in digits))


class OpenAIJudge:
    """Judge through the ``openai`` client (see the module docstring).

    ``model_id`` names the model in the identity (default ``model``; pass another when one
    name means different models on different servers: llama.cpp ignores the name);
    ``revision``: the served model's revision, when known.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 30.0,
        *,
        model_id: str | None = None,
        revision: str | None = None,
        mode: str = "single-token",
        prefill: str = DEFAULT_PREFILL,
        min_branch: float = DEFAULT_MIN_BRANCH,
        max_failures: int = 1,
        min_mass: float = MIN_NUMBER_MASS,
        top_logprobs: int = 20,
    ) -> None:
        if concurrency < 1 or max_retries < 0 or max_failures < 1:
            raise ValueError("concurrency and max_failures must be >= 1, max_retries >= 0")
        if mode not in MODES:
            raise JudgeError(f"OpenAI judge mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0 < min_branch < 1 or not 1 <= top_logprobs <= 20:
            raise ValueError("min_branch must be in (0, 1) and top_logprobs in 1..20")
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not key:
            raise JudgeError("no API key for the OpenAI judge: set OPENAI_API_KEY (any non-empty value for "
                             "local servers such as vLLM, llama.cpp or Ollama) or pass api_key=")
        import openai

        self.model = model
        self._name = model_id or model
        self.revision = revision
        self.mode = mode
        self.prefill = prefill
        self.min_branch = min_branch
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.max_failures = max_failures
        self.min_mass = min_mass
        self.top_logprobs = top_logprobs
        self.client = openai.OpenAI(api_key=key, base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None,
                                    timeout=timeout, max_retries=max_retries)
        self.base_url = str(self.client.base_url)

    def identity(self) -> dict[str, Any]:
        """Everything that changes a score (no secrets)."""
        ident: dict[str, Any] = {"model": self._name, "endpoint": endpoint_identity(self.base_url),
                                 "revision": self.revision, "mode": self.mode, "min_mass": self.min_mass,
                                 "top_logprobs": self.top_logprobs}
        if self.mode == "digits":
            ident.update(prefill=hashlib.sha256(self.prefill.encode()).hexdigest()[:12], min_branch=self.min_branch)
        return ident

    @property
    def model_id(self) -> str:
        """``openai:<model>@<endpoint>`` plus the rest of :meth:`identity` (the cache key)."""
        ident = self.identity()
        head = f"openai:{ident.pop('model')}@{ident.pop('endpoint')}"
        return head + "".join(f"+{k}:{v}" for k, v in sorted(ident.items()) if v is not None)

    # ----------------------------------------------------------------- requests

    def _top(self, prompt: str, answer: str) -> TopTokens:
        """Top tokens of the next position after ``answer`` (the prefilled reply so far)."""
        messages = [{"role": "user", "content": prompt}]
        extra: dict[str, Any] = {}
        if answer:
            messages.append({"role": "assistant", "content": answer})
            extra = CONTINUE_FINAL
        completion = self.client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=1, temperature=0, logprobs=True,
            top_logprobs=self.top_logprobs, extra_body=extra or None)  # type: ignore[arg-type]
        choice = completion.choices[0] if completion.choices else None
        logprobs = choice.logprobs if choice is not None else None
        if logprobs is None:
            raise _Permanent("the endpoint returned no logprobs (does it support logprobs=True?)")
        if not logprobs.content:  # no token generated (immediate end of turn)
            return []
        first = logprobs.content[0]
        return [(t.token, t.logprob) for t in first.top_logprobs] or [(first.token, first.logprob)]

    def _score(self, prompt: str) -> Score:
        if self.mode == "digits":
            probs, _ = walk_number_probs(lambda digits: self._top(prompt, self.prefill + digits), self.min_branch)
            return score_from_probs(probs, self.min_mass)
        top = self._top(prompt, "")
        score = aggregate_top_logprobs(top, self.min_mass)
        if splits_numbers(top, scored=score is not None):
            raise _Permanent("the served model's tokenizer splits numbers into digits (its top tokens hold single "
                             "digits and no multi-digit number), so one token cannot give the score: use mode "
                             "'digits' (--judge-mode digits) with a server that continues a prefilled answer (vLLM, "
                             "llama.cpp)")
        return score

    def score_one(self, prompt: str) -> Score:
        """Score one prompt (the client retries what is retryable); raises :class:`JudgeError`."""
        import openai

        try:
            return self._score(prompt)
        except _Permanent as exc:
            raise JudgeError(str(exc)) from None
        except openai.APIStatusError as exc:
            if exc.status_code in _RETRIED_STATUS or exc.status_code >= 500:
                raise JudgeError(f"{_one_line(exc)} after {self.max_retries + 1} attempts") from None
            hint = ""
            if exc.status_code == 400 and self.mode == "digits":
                hint = (" (mode 'digits' needs a server that continues a final assistant message, e.g. vLLM with "
                        "continue_final_message, or llama.cpp; OpenAI models need mode 'single-token')")
            raise JudgeError(f"{_one_line(exc)} (not retryable){hint}") from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise JudgeError(f"{_one_line(exc)} after {self.max_retries + 1} attempts") from None

    # ---------------------------------------------------------------------- batch

    def score_prompts(self, prompts: list[str], on_result: OnResult | None = None) -> list[Score]:
        """Score prompts with at most ``concurrency`` prompts in flight.

        ``on_result(index, score)`` is called in this thread as each finishes. Raises
        :class:`JudgeError` (``completed`` / ``failed`` by index) once ``max_failures``
        prompts failed for good; prompts not yet started are then not sent.
        """
        scores: list[Score] = [None] * len(prompts)
        completed: dict[int, Score] = {}
        failed: dict[int, str] = {}
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge") as pool:
            queue = iter(range(len(prompts)))
            running: dict[Future[Score], int] = {}

            def submit_next() -> bool:
                i = next(queue, None)
                if i is None:
                    return False
                running[pool.submit(self.score_one, prompts[i])] = i
                return True

            for _ in range(self.concurrency):
                if not submit_next():
                    break
            while running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    i = running.pop(future)
                    try:
                        scores[i] = completed[i] = future.result()
                    except JudgeError as exc:
                        failed[i] = str(exc)
                        logger.warning("judge %s: prompt %d failed: %s", self.model_id, i, exc)
                        continue
                    except Exception as exc:  # a bug or an unexpected client error: keep the rest
                        failed[i] = _one_line(exc)
                        logger.exception("judge %s: prompt %d failed unexpectedly", self.model_id, i)
                        continue
                    if on_result is not None:
                        on_result(i, scores[i])
                while len(failed) < self.max_failures and len(running) < self.concurrency and submit_next():
                    pass
        logger.info("judge %s: %d of %d prompts scored in %.2fs, %d failed", self.model_id, len(completed),
                    len(prompts), time.perf_counter() - t0, len(failed))
        if completed and all(s is None for s in completed.values()):
            logger.warning("judge %s: no prompt got a number (%d unscored); if the model does not start its reply "
                           "with one, use mode 'digits' with a server that continues a prefilled answer",
                           self.model_id, len(completed))
        if failed:
            first = failed[min(failed)]
            raise JudgeError(
                f"judge {self.model_id}: {len(failed)} prompt(s) failed ({first}); "
                f"{len(completed)} of {len(prompts)} scored, {len(prompts) - len(completed) - len(failed)} not sent",
                completed, failed)
        return scores
