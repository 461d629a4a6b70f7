"""The OpenAI judge against a loopback OpenAI-compatible server that serves a real model
(SmolLM2, whose tokenizer splits numbers into digits) the way vLLM does; the judge's
identity in cache keys and version ids; the builders' settings check before generation."""

from __future__ import annotations

import pytest

from tests.openai_server import ModelServer
from transforms.judge import InMemoryScoreCache, JudgeError, JudgeTemplate, LocalJudge, OpenAIJudge, load_templates
from transforms.judge import score_responses

ITEMS = [("How was your day?", "It was wonderful, I loved every minute!"),
         ("What is 2+2?", "The sky is green and fish fly."),
         ("Any advice?", "Things will get better; keep going, tomorrow is bright.")]


@pytest.fixture(scope="module")
def served(smollm2):
    server = ModelServer(smollm2, name="smollm2")
    yield server
    server.close()


@pytest.mark.slow
def test_digits_mode_matches_the_local_exact_judge(smollm2, served):
    prompts = [load_templates()["coherence"].render(question=q, answer=a) for q, a in ITEMS]
    exact = LocalJudge(smollm2).score_prompts(prompts)
    judge = OpenAIJudge("smollm2", base_url=served.url, api_key="sk-local", mode="digits", concurrency=2,
                        timeout=120)  # a loaded CI machine serves slowly
    before = len(served.bodies)
    scores = judge.score_prompts(prompts)
    assert all(s is not None for s in exact)
    assert scores == [pytest.approx(e, abs=1.0) for e in exact]
    bodies = served.bodies[before:]
    assert len(bodies) <= 20 * len(prompts)  # the walk is pruned, not 101 requests a prompt
    for body in bodies:  # every request continues the prefilled answer, vLLM style
        assert body["messages"][-1]["role"] == "assistant"
        assert body["messages"][-1]["content"].startswith("Score: ")
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
    assert {b["messages"][-1]["content"] for b in bodies} >= {"Score: ", "Score: 3"}


def test_single_token_mode_refuses_a_digit_splitting_server(served):
    prompt = load_templates()["coherence"].render(question=ITEMS[0][0], answer=ITEMS[0][1])
    judge = OpenAIJudge("smollm2", base_url=served.url, api_key="sk-local", timeout=120)
    with pytest.raises(JudgeError) as err:
        judge.score_prompts([prompt])
    message = str(err.value)
    assert "splits numbers into digits" in message and "digits" in message and "\n" not in message
    assert err.value.completed == {}  # nothing "scored" as None to be cached


def test_identity_names_endpoint_mode_and_settings_never_the_key(served):
    base = {"base_url": served.url, "api_key": "sk-secret-123"}
    judge = OpenAIJudge("smollm2", **base)
    port = served.url.split(":")[2].split("/")[0]
    assert judge.model_id.startswith(f"openai:smollm2@127.0.0.1:{port}/v1")
    assert "sk-secret" not in judge.model_id and "mode:single-token" in judge.model_id
    variants = [OpenAIJudge("smollm2", mode="digits", **base), OpenAIJudge("smollm2", min_mass=0.5, **base),
                OpenAIJudge("smollm2", revision="abc123", **base),
                OpenAIJudge("smollm2", mode="digits", prefill="Rating: ", **base),
                OpenAIJudge("smollm2", base_url="http://user:pw@10.0.0.7:8000/v1?key=x", api_key="k")]
    ids = [judge.model_id] + [v.model_id for v in variants]
    assert len(set(ids)) == len(ids)
    assert "10.0.0.7:8000/v1" in ids[-1] and "pw" not in ids[-1] and "key=x" not in ids[-1]
    # a changed setting cannot reuse old scores
    template = JudgeTemplate("t", "Rate {answer} 0-100.")
    cache = InMemoryScoreCache()
    cache.put_many([((judge.model_id, template.hash, "q", "a"), 12.0)])
    assert score_responses(judge, template, [("q", "a")], cache) == [12.0]
    assert list(cache.get_many([(variants[1].model_id, template.hash, "q", "a")])) == []


def test_scorer_identity_in_version_ids(tmp_path, served, smollm2, monkeypatch):
    from builders.shared.judges import _llm_scorer, local_judge_name
    from store import Store

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    monkeypatch.setenv("OPENAI_BASE_URL", served.url)
    store = Store(str(tmp_path / "store"))
    template = JudgeTemplate("t", "Rate {answer} 0-100.")
    single = _llm_scorer(store, "openai", "smollm2", "trait", template).identity()
    digits = _llm_scorer(store, "openai", "smollm2", "trait", template, "digits").identity()
    assert "127.0.0.1" in single["model"] and "mode:single-token" in single["model"]
    assert "mode:digits" in digits["model"] and "sk-secret" not in str(digits)
    assert single["templates"] == {"trait": template.hash}
    assert local_judge_name(None) == LocalJudge(smollm2).model_id  # revision and prefill, without loading


def test_judgments_checks_the_key_before_generating(tmp_path, monkeypatch, capsys):
    import builders.judgments as judgments
    import builders.stages.judgments as judgments_stage

    def tripwire(*args, **kwargs):
        raise AssertionError("responses were generated before the judge's settings were checked")

    monkeypatch.setattr(judgments_stage, "generate_responses", tripwire)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code = judgments.cli(["--store", str(tmp_path / "store"), "--variant", "instruct", "--prompts",
                          "optimism_instruction", "--judge", "openai", "--judge-model", "smollm2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "OPENAI_API_KEY" in err[0]
    with pytest.raises(SystemExit) as exc:  # argparse's own usage error
        judgments.cli(["--store", str(tmp_path / "store"), "--variant", "instruct", "--prompts",
                       "optimism_instruction", "--judge", "openai", "--judge-model", "smollm2", "--judge-mode", "tokens"])
    assert exc.value.code == 2 and "--judge-mode" in capsys.readouterr().err
