"""Out-of-memory backoff in steering, the local and perplexity judges, similarity and live projections.

An out-of-memory error is simulated by wrapping the decoder's ``forward`` (SmolLM2's
``LlamaModel``, real weights) so that a batch of more than ``limit`` rows raises
``torch.OutOfMemoryError`` as CUDA does. Each stage run under it with a batch of ``2 *
limit`` must give exactly what it gives at ``limit`` from the start; at a batch of one it
is a one-line error (the CLI's exit 2).
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml

pytestmark = pytest.mark.slow

QUESTIONS = ["Name a fruit.", "What is the capital of Italy?", "Say something about the sea.",
             "Why is the sky blue?", "Give me a word that rhymes with cat.", "What do bees make?"]


def _oom_above(monkeypatch: pytest.MonkeyPatch, limit: int, target: object | None = None) -> list[int]:
    """Make ``target``'s forward (default: every ``LlamaModel``) raise CUDA's out-of-memory
    error for more than ``limit`` rows; returns the batch sizes seen (OOM ones included)."""
    from transformers.models.llama.modeling_llama import LlamaModel

    seen: list[int] = []
    owner = target if target is not None else LlamaModel
    real = owner.forward

    def forward(*args, **kwargs):
        if target is None:  # class attribute: args[0] is the module
            x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
            if x is None:
                x = args[1]
        else:
            x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
            if x is None:
                x = args[0]
        seen.append(int(x.shape[0]))
        if x.shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, "forward", forward)
    return seen


# ---- (a) steering evaluation -------------------------------------------------------------------

def _steering_generations(tmp_path, name: str, loaded, max_batch: int) -> tuple[dict, object]:
    """The stored generations of 4 steering configurations x 4 questions (sampled, seeded)."""
    from builders.stages.steering_eval import Planned, Question, SteeringSetup, _generate_missing, config_key
    from store import Store
    from transforms.sequences import GenerationConfig
    from transforms.steering import SteeringConfig
    from transforms.sequences import format_prompt

    store = Store(str(tmp_path / name))
    questions = [Question(f"q{i}", q, tuple(format_prompt(loaded.tokenizer, q).ids)) for i, q in enumerate(QUESTIONS[:4])]
    gen = GenerationConfig(max_new_tokens=5, temperature=0.9, seed=3)
    setup = SteeringSetup(store, None, loaded, {"model": "smollm2"}, questions, "q", gen, None, "e", "v", {},
                          max_batch=max_batch, quiet=True)
    vec = torch.randn(loaded.d_model, generator=torch.Generator().manual_seed(0))
    planned = [Planned(SteeringConfig.single(12, vec, coef), {}) for coef in (0.0, 4.0, 8.0, -8.0)]
    keys = [config_key(setup, p.config) for p in planned]
    _generate_missing(setup, planned, keys)
    from store.kvcache import KeyedCache

    stored = KeyedCache(store, "steering", ["generations"]).get_many(set(keys))
    return {keys.index(k): json.loads(v["generations"]) for k, v in stored.items()}, setup


def test_steering_generations_under_oom_equal_the_smaller_batch(tmp_path, smollm2, monkeypatch):
    reference, _ = _steering_generations(tmp_path, "small", smollm2, max_batch=8)
    seen = _oom_above(monkeypatch, 8, smollm2.model.model)
    retried, setup = _steering_generations(tmp_path, "oom", smollm2, max_batch=16)
    assert max(seen) == 16  # the first call did run out of memory
    assert retried == reference and len(retried) == 4
    assert setup.max_batch == 8 and setup.batch_sizes == {8}  # later calls keep the reduced size


# ---- (b) the local judge, (c) the perplexity judge -----------------------------------------------

def test_local_judge_under_oom_equals_the_smaller_batch(smollm2, monkeypatch):
    from transforms.judge import LocalJudge

    prompts = [f"Rate from 0 to 100 how sure you are: {q}" for q in QUESTIONS]
    reference = LocalJudge(smollm2, batch_size=2).number_probs(prompts)
    seen = _oom_above(monkeypatch, 2, smollm2.model.model)
    judge = LocalJudge(smollm2, batch_size=4)
    retried = judge.number_probs(prompts)
    assert max(seen) == 4
    assert np.array_equal(retried, reference)
    assert judge.batch_sizes == {2}


def test_perplexity_judge_under_oom_equals_the_smaller_batch(smollm2, monkeypatch):
    from transforms.judge import PerplexityFeaturizer

    items = [(q, a) for q, a in zip(QUESTIONS, ["An apple.", "Rome.", "It is big and blue and wet.", "Scattering.",
                                                 "Hat hat hat hat hat hat", "Honey, mostly."])]
    reference = PerplexityFeaturizer(smollm2, {}, batch_size=2).features(items)
    seen = _oom_above(monkeypatch, 2, smollm2.model.model)
    featurizer = PerplexityFeaturizer(smollm2, {}, batch_size=4)
    retried = featurizer.features(items)
    assert max(seen) == 4
    assert retried == reference
    assert featurizer.batch_sizes == {2}


def test_judges_auto_batch_on_cpu_is_the_old_default(smollm2):
    from transforms.judge import LocalJudge
    from transforms.judge import PerplexityFeaturizer

    judge, featurizer = LocalJudge(smollm2), PerplexityFeaturizer(smollm2, {})
    assert judge.batch_size == featurizer.batch_size == "auto"
    judge.number_probs(QUESTIONS[:2])
    featurizer.features([(QUESTIONS[0], "An apple.")])
    assert judge.batch_sizes == {8} and featurizer.batch_sizes == {16}


def test_judge_oom_at_batch_one_is_one_line(smollm2, monkeypatch):
    from transforms.batching import OutOfMemory
    from transforms.judge import LocalJudge

    _oom_above(monkeypatch, 0, smollm2.model.model)
    with pytest.raises(OutOfMemory) as err:
        LocalJudge(smollm2, batch_size=4).number_probs(QUESTIONS[:3])
    assert "local judge" in str(err.value) and "batch of 1" in str(err.value) and "\n" not in str(err.value)


# ---- (d) similarity and live projections, (e) the CLI's one line --------------------------------

@pytest.fixture(scope="module")
def pair(tmp_path_factory, smollm2):
    """A store and catalog: variant a = SmolLM2, b = SmolLM2 + a random LoRA adapter, 6 prompts."""
    from peft import LoraConfig, get_peft_model

    from builders.shared.catalog import load_catalog
    from store import Store

    root = tmp_path_factory.mktemp("oom")
    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(smollm2.model), LoraConfig(r=4, lora_alpha=4, target_modules=["o_proj"],
                                                                   init_lora_weights=False))
    lora.save_pretrained(root / "adapter")
    (root / "general.json").write_text(json.dumps({"prompts": [{"id": i, "text": t} for i, t in enumerate(QUESTIONS)]}))
    path = root / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
        "prompt_sets": {"general": {"path": str(root / "general.json")}},
        "experiments": {"s": {"variants": {"a": {"model": "smol"}, "b": {"model": "smol", "adapter": str(root / "adapter")}},
                              "prompt_sets": ["general"]}},
        "defaults": {"experiment": "s", "responses": {"max_new_tokens": 5, "batch_size": 8}},
    }))
    store = Store(str(root / "store"))
    catalog = load_catalog(path)
    from builders.stages.responses import generate_responses

    generate_responses(store, catalog, "a", "general", "s", None, quiet=True)  # before any simulated OOM
    return store, catalog, path, str(root / "store")


def test_similarity_under_oom_equals_the_smaller_batch(pair, monkeypatch):
    from builders.stages.similarity import activation_similarity

    store, catalog, _, _ = pair
    small = activation_similarity(store, catalog, "a", "b", "general", layers="3,20", batch_size=2, quiet=True).manifest
    tables = {t: store.read_table(small, *([t] if t else [])) for t in (None, "positions", "prompts")}
    seen = _oom_above(monkeypatch, 2)
    again = activation_similarity(store, catalog, "a", "b", "general", layers="3,20", batch_size=4, force=True,
                                  quiet=True).manifest
    assert max(seen) == 4 and again.version == small.version  # the batch size is not in the version id
    for t, frame in tables.items():
        assert store.read_table(again, *([t] if t else [])).equals(frame), t
    assert again.summary["batch_sizes"] == [2]


def test_live_projections_under_oom_equal_the_smaller_batch(smollm2, monkeypatch):
    from builders.stages.projections import _live_rows
    from transforms.sequences import GenerationConfig
    from transforms.capture import VectorStack

    rng = np.random.default_rng(0)
    stacks = [VectorStack.build(k, [("t:mean_diff", rng.standard_normal(smollm2.d_model), 0.5)]) for k in (4, 20)]
    rows = [{"prompt_id": str(i), "prompt": q} for i, q in enumerate(QUESTIONS)]

    def live(batch_size: int) -> tuple[list, list]:
        gen = GenerationConfig(max_new_tokens=4, temperature=0.9, seed=1, batch_size=batch_size)
        return _live_rows(smollm2, rows, "instruction", stacks, gen, True)

    reference, used = live(2)
    assert used == [2]
    seen = _oom_above(monkeypatch, 2, smollm2.model.model)
    retried, used = live(4)
    assert max(seen) == 4 and used == [2]
    assert retried == reference


def test_cli_oom_at_batch_one_is_one_line_exit_2(pair, monkeypatch, capsys):
    from builders.similarity import cli

    store, _, path, root = pair
    before = {m.ref for m in store.all_manifests()}
    _oom_above(monkeypatch, 0)
    code = cli(["--store", root, "--catalog", str(path),
                "--a", "a", "--b", "b", "--prompts", "general", "--layers", "5", "--batch-size", "2", "--force", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "out of memory with a batch of 1" in err and "similarity" in err
    assert {m.ref for m in store.all_manifests()} == before
