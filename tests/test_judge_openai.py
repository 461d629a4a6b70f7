"""The OpenAI-compatible judge against a real HTTP server on loopback, through the real
``openai`` client (nothing patched); plus the backend-independent judge API (score rule,
templates, cache, relevance cap).

The server implements ``POST /v1/chat/completions`` in the OpenAI response shape with
``logprobs``; per prompt it follows a script (status codes, delays, a top-logprobs
table), counts requests and tracks the maximum number of requests in flight.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from transforms.judge import (
    InMemoryScoreCache,
    JudgeError,
    JudgeTemplate,
    OpenAIJudge,
    TemplateError,
    aggregate_top_logprobs,
    apply_relevance_cap,
    load_templates,
    number_value,
    score_coherence,
    score_from_probs,
    score_responses,
    trait_template,
)

# A known distribution (probabilities), with whitespace variants, an invalid leading zero,
# an out-of-range number and words.
KNOWN = {"80": 0.5, "90": 0.2, " 70": 0.1, "70": 0.05, "Eighty": 0.07, "05": 0.03, "101": 0.02, "\n": 0.03}
KNOWN_SCORE = (80 * 0.5 + 90 * 0.2 + 70 * (0.1 + 0.05)) / (0.5 + 0.2 + 0.1 + 0.05)
LOW_MASS = {"The": 0.6, "I": 0.2, "50": 0.2}  # 20% on numbers: below the 25% threshold


class FakeOpenAI:
    """Loopback server; ``script[prompt]`` is a list of actions, the last one repeating:
    ``("ok", {token: prob})``, ``("status", code)``, ``("sleep", seconds, {token: prob})``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.script: dict[str, list[tuple]] = {}
        self.default: tuple = ("ok", KNOWN)
        self.delay = delay
        self.counts: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    fake.handle(self, body)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def handle(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        if handler.path != "/v1/chat/completions":
            return self.send(handler, 404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        prompt = body["messages"][-1]["content"]
        with self.lock:
            n = self.counts[prompt]
            self.counts[prompt] += 1
            self.bodies.append(body)
        actions = self.script.get(prompt, [self.default])
        action = actions[min(n, len(actions) - 1)]
        if self.delay:
            time.sleep(self.delay)
        if action[0] == "status":
            code = action[1]
            # a short Retry-After keeps the openai client's own backoff (0.5-8 s) out of the tests
            return self.send(handler, code, {"error": {"message": f"scripted {code}", "type": "server_error",
                                                       "param": None, "code": None}}, {"retry-after-ms": "5"})
        if action[0] == "sleep":
            time.sleep(action[1])
            action = ("ok", action[2])
        self.send(handler, 200, completion(body["model"], action[1]))

    @staticmethod
    def send(handler: BaseHTTPRequestHandler, code: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            handler.send_response(code)
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def completion(model: str, probs: dict[str, float]) -> dict:
    """A chat completion in the real OpenAI shape, logprobs included."""
    top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())}
           for t, p in sorted(probs.items(), key=lambda kv: -kv[1])]
    first = top[0]
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": first["token"], "refusal": None, "annotations": []},
            "logprobs": {"content": [{**first, "top_logprobs": top}], "refusal": None},
            "finish_reason": "length",
        }],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        "service_tier": "default", "system_fingerprint": "fp_test",
    }


@pytest.fixture
def server():
    fake = FakeOpenAI()
    yield fake
    fake.close()


def make_judge(server: FakeOpenAI, **kwargs) -> OpenAIJudge:
    kwargs = {"api_key": "sk-test", **kwargs}
    return OpenAIJudge("judge-model", base_url=server.url, **kwargs)


# ----------------------------------------------------------------- HTTP judge


def test_known_distribution_scores_by_hand(server):
    server.script["low"] = [("ok", LOW_MASS)]
    judge = make_judge(server)
    scores = judge.score_prompts(["known", "low"])
    assert scores[0] == pytest.approx(KNOWN_SCORE, abs=1e-9)
    assert scores[1] is None
    body = server.bodies[0]
    assert body["model"] == "judge-model" and body["max_tokens"] == 1 and body["temperature"] == 0
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["messages"] == [{"role": "user", "content": body["messages"][0]["content"]}]


def test_429_is_retried(server):
    server.script["p"] = [("status", 429), ("status", 429), ("ok", KNOWN)]
    judge = make_judge(server)
    assert judge.score_prompts(["p"]) == [pytest.approx(KNOWN_SCORE)]
    assert server.counts["p"] == 3  # the openai client's own retries, honouring Retry-After


def test_timeouts_are_retried(server):
    server.script["slow"] = [("sleep", 1.0, KNOWN), ("ok", KNOWN)]
    judge = make_judge(server, timeout=0.25)
    assert judge.score_prompts(["slow"]) == [pytest.approx(KNOWN_SCORE)]
    assert server.counts["slow"] == 2


def test_persistent_500_keeps_scores_obtained(server):
    server.script["bad"] = [("status", 500)]
    prompts = ["a", "b", "bad", "c", "d"]
    seen: dict[int, float | None] = {}
    judge = make_judge(server, concurrency=1, max_retries=2)
    with pytest.raises(JudgeError) as err:
        judge.score_prompts(prompts, on_result=seen.__setitem__)
    exc = err.value
    assert exc.completed == {0: pytest.approx(KNOWN_SCORE), 1: pytest.approx(KNOWN_SCORE)}
    assert seen == exc.completed and list(exc.failed) == [2]
    assert server.counts["bad"] == 3  # 1 + max_retries
    assert "\n" not in str(exc) and "500" in str(exc)
    assert server.counts["c"] == server.counts["d"] == 0  # not sent after the failure


def test_failure_through_score_responses_is_cached_and_resumable(server):
    server.script["Q: q3 A: a3"] = [("status", 503)]
    template = JudgeTemplate("t", "Q: {question} A: {answer}")
    items = [(f"q{i}", f"a{i}") for i in range(6)]
    cache = InMemoryScoreCache()
    judge = make_judge(server, concurrency=1, max_retries=1)
    with pytest.raises(JudgeError) as err:
        score_responses(judge, template, items, cache, flush_every=100)
    assert sorted(err.value.completed) == [0, 1, 2] and list(err.value.failed) == [3]
    assert len(cache) == 3  # flushed on failure although flush_every was not reached
    server.script.clear()
    before = server.total
    scores = score_responses(judge, template, items, cache)
    assert scores == [pytest.approx(KNOWN_SCORE)] * 6
    assert server.total - before == 3  # only the three missing items were requested


def test_non_retryable_error_is_not_retried(server):
    server.script["p"] = [("status", 400)]
    with pytest.raises(JudgeError, match="not retryable"):
        make_judge(server).score_prompts(["p"])
    assert server.counts["p"] == 1


def test_no_key_is_a_clear_error(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(JudgeError) as err:
        OpenAIJudge("judge-model", base_url=server.url)
    assert "OPENAI_API_KEY" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    assert OpenAIJudge("judge-model").score_prompts(["x"]) == [pytest.approx(KNOWN_SCORE)]


def test_cache_hit_makes_no_http_call(server):
    template = JudgeTemplate("t", "Q: {question} A: {answer}")
    items = [("q1", "a1"), ("q2", "a2"), ("q1", "a1")]  # a duplicate is scored once
    cache = InMemoryScoreCache()
    judge = make_judge(server)
    first = score_responses(judge, template, items, cache)
    assert server.total == 2 and first == [pytest.approx(KNOWN_SCORE)] * 3
    assert (judge.model_id, template.hash, "q1", "a1") in cache
    assert score_responses(judge, template, items, cache) == first
    assert server.total == 2


def test_concurrency_limit_is_respected():
    fake = FakeOpenAI(delay=0.05)
    try:
        judge = make_judge(fake, concurrency=3)
        scores = judge.score_prompts([f"p{i}" for i in range(12)])
        assert scores == [pytest.approx(KNOWN_SCORE)] * 12
        assert 2 <= fake.max_in_flight <= 3
    finally:
        fake.close()


# ------------------------------------------------------------- score rule


def test_aggregate_rules():
    top = {t: math.log(p) for t, p in KNOWN.items()}
    assert aggregate_top_logprobs(top) == pytest.approx(KNOWN_SCORE)
    # pairs keep two tokens that print alike
    assert aggregate_top_logprobs([("10", math.log(0.3)), ("10", math.log(0.3))]) == pytest.approx(10)
    assert aggregate_top_logprobs({"100": math.log(0.25), "x": math.log(0.75)}) == 100
    assert aggregate_top_logprobs({"100": math.log(0.24), "x": math.log(0.76)}) is None
    assert aggregate_top_logprobs({}) is None
    assert [number_value(t) for t in ("0", " 7\n", "05", "00", "101", "4.5", "-3", "４２", "")] == \
        [0, 7, None, None, None, None, None, None, None]
    assert score_from_probs([0.0] * 100 + [0.5]) == 100.0


def test_relevance_cap():
    assert apply_relevance_cap(90.0, 40.0) == 50.0
    assert apply_relevance_cap(30.0, 10.0) == 30.0
    assert apply_relevance_cap(90.0, 50.0) == 90.0
    assert apply_relevance_cap(90.0, None) == 90.0
    assert apply_relevance_cap(None, 10.0) is None


class ScriptedJudge:
    """A judge answering from the rendered prompt's first word (no network)."""

    model_id = "scripted"

    def score_prompts(self, prompts, on_result=None):
        scores = [90.0 if p.startswith("You are grading how coherent") else 20.0 for p in prompts]
        for i, s in enumerate(scores):
            if on_result:
                on_result(i, s)
        return scores


def test_score_coherence_applies_the_cap():
    cache = InMemoryScoreCache()
    assert score_coherence(ScriptedJudge(), [("q", "off-topic answer")], cache) == [50.0]
    assert len(cache) == 2


# -------------------------------------------------------------- templates


def test_templates_are_data_with_content_hashes(tmp_path):
    templates = load_templates()
    assert {"trait_score", "coherence", "relevance", "refusal"} <= set(templates)
    for t in templates.values():
        assert {"question", "answer"} <= t.fields
    evil = trait_template(templates, definition="Evil: 0-100.", trait="evil")
    syco = trait_template(templates, definition="Sycophancy: 0-100.", trait="syco")
    assert evil.hash != syco.hash != templates["trait_score"].hash  # definitions never share cache keys
    text = evil.render(question="Q?", answer="says {question}")
    assert "Evil: 0-100." in text and "says {question}" in text and "{" not in text.replace("{question}", "")
    own = trait_template(templates, eval_prompt="Rate {answer} to {question} 0-100 {not a field}", trait="x")
    assert own.render(question="q", answer="a") == "Rate a to q 0-100 {not a field}"
    (tmp_path / "a.txt").write_text("Score {answer}\n")
    loaded = load_templates(tmp_path)["a"]
    assert loaded.text == "Score {answer}"
    import hashlib
    assert loaded.hash == hashlib.sha256(b"Score {answer}").hexdigest()
    with pytest.raises(TemplateError, match="definition"):
        score_responses(ScriptedJudge(), templates["trait_score"], [("q", "a")])
    (tmp_path / "b.txt").write_text("no placeholder")
    with pytest.raises(TemplateError, match="answer"):
        load_templates(tmp_path)


def test_splitting_detection_needs_a_leading_digit_and_enough_alternatives():
    """A sure single-digit score from an OpenAI model, or a stray digit behind a text token,
    is not a digit-splitting tokenizer (the whole run would stop on it)."""
    import math

    from transforms.judge import splits_numbers

    def top(tokens):
        return [(t, math.log(0.5 ** (i + 1))) for i, t in enumerate(tokens)]

    filler = [" the", " a", " I", "Score", ":", " is", " of", " and"]
    assert splits_numbers(top(["4", "7", "1", "8"] + filler), scored=True)   # digits lead, no "42"-like token
    assert not splits_numbers(top(["4", "7", "42"] + filler), scored=True)   # multi-digit numbers are tokens
    assert not splits_numbers(top([" I", "1"] + filler), scored=True)        # text leads, a score anyway
    assert splits_numbers(top([" I", "1"] + filler), scored=False)           # unscored, digits 1-9 only
    assert not splits_numbers(top([" I", "the"] + filler), scored=False)     # unscored, no digit at all
    assert not splits_numbers(top(["7", "8"]), scored=True)                  # too few alternatives to tell
    assert not splits_numbers(top(["0", "The"] + filler), scored=True)       # 0 starts no longer number
