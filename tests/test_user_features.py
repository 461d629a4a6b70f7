"""builders.user_features: published statistics against numpy, the held-out direction, a planted
effect, and bad inputs (SmolLM2 + a random LoRA, a tiny paired set, 2 new tokens)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from builders.shared.catalog import load_catalog
from builders.stages.user_features import (category_stats, find_user_features, held_out_direction,
                                           screen_permutations, select_candidates)
from store import Store

LAYER = 3
PAIRS = {  # category -> (pos side, neg side, [(pos text, neg text)]) ; fewer pairs than real, same format
    "mood": ("sad", "calm", [("I'm so upset today. How do I boil an egg?", "How do I boil an egg?"),
                             ("I'm crying and scared. What is a noun?", "What is a noun?"),
                             ("Everything is awful. How tall is a giraffe?", "How tall is a giraffe?"),
                             ("I'm panicking. What color is the sky?", "What color is the sky?"),
                             ("I feel terrible. How do I tie a knot?", "How do I tie a knot?")]),
    "quiz": ("biased", "neutral", [("I think 2+2 is 5. What is 2+2?", "What is 2+2?", "4", "5"),
                                   ("I believe the capital of France is Lyon. What is the capital of France?",
                                    "What is the capital of France?", "Paris", "Lyon"),
                                   ("My friend says water boils at 50 C. At what temperature does water boil?",
                                    "At what temperature does water boil?", "100", "50"),
                                   ("I'm sure the sun orbits the earth. What orbits what?", "What orbits what?",
                                    "earth", "sun")]),
}


def write_pairs(folder: Path, pairs: dict = PAIRS, drop_side: bool = False) -> Path:
    """A paired set folder (transforms/prompts/paired.py format); ``drop_side`` breaks one line."""
    folder.mkdir(parents=True, exist_ok=True)
    cats = {}
    for cat, (pos, neg, items) in pairs.items():
        answers = len(items[0]) == 4
        cats[cat] = {"file": f"{cat}.jsonl", "pos": pos, "neg": neg, **({"answers": True} if answers else {})}
        lines = []
        for i, item in enumerate(items):
            row = {"pair_id": f"{cat}-{i:02d}", pos: item[0], neg: item[1]}
            if answers:
                row.update(correct_answer=item[2], user_answer=item[3])
            lines.append(row)
        if drop_side:
            del lines[-1][neg]
        (folder / f"{cat}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (folder / "categories.json").write_text(json.dumps({"name": folder.name, "categories": cats}))
    return folder


def make_env(root: Path, smollm2, max_new_tokens: int = 2):
    """Store + catalog: variant a = SmolLM2, b = SmolLM2 + a random LoRA; sets ``pairs`` and ``broken``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(smollm2.model), LoraConfig(r=4, lora_alpha=8, target_modules=["o_proj"],
                                                                   init_lora_weights=False))
    lora.save_pretrained(root / "adapter")
    write_pairs(root / "pairs")
    write_pairs(root / "broken", drop_side=True)
    path = root / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
        "prompt_sets": {"pairs": {"path": str(root / "pairs")}, "broken": {"path": str(root / "broken")}},
        "experiments": {"s": {"variants": {"a": {"model": "smol"},
                                           "b": {"model": "smol", "adapter": str(root / "adapter")}},
                              "prompt_sets": ["pairs", "broken"]}},
        "defaults": {"experiment": "s", "responses": {"max_new_tokens": max_new_tokens}},
    }))
    return Store(str(root / "store")), load_catalog(path), path


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2):
    return make_env(tmp_path_factory.mktemp("uf"), smollm2)


def numpy_paired(diff: np.ndarray, n_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """d_z, sign consistency, sign-flip p (same draws: default_rng(seed) integers), BH q — a loop."""
    mean = diff.mean(0)
    sd = diff.std(0, ddof=1)
    dz = mean / sd
    cons = np.array([(np.sign(diff[:, k]) == np.sign(mean[k])).mean() for k in range(diff.shape[1])])
    signs = np.random.default_rng(seed).integers(0, 2, size=(n_perm, diff.shape[0]), dtype=np.int8) * 2 - 1
    p = np.empty(diff.shape[1])
    for k in range(diff.shape[1]):
        obs = abs(diff[:, k].sum())
        null = np.abs(signs @ diff[:, k])
        p[k] = ((null >= obs - 1e-9 * np.abs(diff[:, k]).sum()).sum() + 1) / (n_perm + 1)
    m = len(p)
    order = np.argsort(p)
    q = np.empty(m)
    running = 1.0
    for rank in range(m, 0, -1):  # BH from the largest p down
        running = min(running, p[order[rank - 1]] * m / rank)
        q[order[rank - 1]] = running
    return dz, cons, p, q


@pytest.mark.slow
def test_published_stats_equal_numpy(env):
    from builders.stages.crosscoder import CrosscoderOptions, build_crosscoder
    from builders.stages.responses import generate_responses

    store, catalog, _ = env
    generate_responses(store, catalog, "a", "pairs", "s", quiet=True)
    cc = build_crosscoder(store, catalog, "a", "b", "pairs", LAYER,
                          CrosscoderOptions(dict_size=24, epochs=2, batch_size=32, resample_every=0),
                          position="prompt[:]", activation_batch_size=4, quiet=True).manifest
    m = find_user_features(store, catalog, "b", "pairs", LAYER, dictionary=cc.name, batch_size=4, quiet=True).manifest
    data = store.read_table(m).to_dicts()
    samples = store.read_table(m, "samples").to_dicts()
    latents = np.asarray(store.open_array(m, "latent_means")[:], dtype=np.float64)
    assert len(samples) == len(latents) == 2 * 9
    for cat in PAIRS:
        rows = [r for r in data if r["category"] == cat and r["kind"] == "latent"]
        pos = latents[[s["sample"] for s in samples if s["category"] == cat and s["polarity"] == "pos"]]
        neg = latents[[s["sample"] for s in samples if s["category"] == cat and s["polarity"] == "neg"]]
        active = np.flatnonzero((pos != 0).any(0) | (neg != 0).any(0))
        assert [r["feature"] for r in rows] == active.tolist() and len(active) > 0
        n_perm = rows[0]["n_permutations"]
        assert n_perm == max(10_000, 40 * len(active))
        dz, cons, p, q = numpy_paired((pos - neg)[:, active], n_perm, 0)
        np.testing.assert_allclose([r["effect_size"] for r in rows], dz, rtol=1e-4)
        np.testing.assert_allclose([r["sign_consistency"] for r in rows], cons)
        np.testing.assert_allclose([r["p_value"] for r in rows], p)
        np.testing.assert_allclose([r["q_value"] for r in rows], q, rtol=1e-9)
    # the latent means are per-token codes averaged over the prompt: check one sample from scratch
    from builders.stages.crosscoder import load_crosscoder_version
    from builders.stages.paired_activations import pair_manifests, token_index

    model = load_crosscoder_version(store, cc).eval()
    paired = pair_manifests(store, store.resolve(cc.parents["activations_a"]),
                            store.resolve(cc.parents["activations_b"]), LAYER)
    row = next(r for r in token_index(store, paired) if r["prompt_id"] == samples[0]["prompt_id"])
    x = paired.read(store, row["token_start"], row["token_end"])
    with torch.no_grad():
        codes = model.encode(model.normalize(torch.from_numpy(x))).double().numpy()
    np.testing.assert_allclose(latents[0], codes.mean(0), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_direction_is_held_out(env):
    store, catalog, _ = env
    m = find_user_features(store, catalog, "a", "pairs", LAYER, batch_size=4, quiet=True).manifest
    assert store.read_table(m).filter(__import__("polars").col("kind") == "latent").height == 0
    acts = store.resolve(m.parents["activations"])
    pooled = np.asarray(store.open_array(acts, "acts")[:, 0, :], dtype=np.float64)
    index = {r["prompt_id"]: i for i, r in enumerate(store.read_table(acts).to_dicts())}
    directions = store.open_array(m, "directions")
    cats = directions.attrs["categories"]
    proj = store.read_table(m, "projections").to_dicts()
    stats = {r["category"]: r for r in store.read_table(m).to_dicts()}
    for c, cat in enumerate(cats):
        rows = [r for r in proj if r["category"] == cat]
        train = sorted({r["pair_id"] for r in rows if r["split"] == "train"})
        held = sorted({r["pair_id"] for r in rows if r["split"] == "eval"})
        assert train and held and not set(train) & set(held)
        side = {(r["pair_id"], r["polarity"]): r for r in rows}
        pid = {(s["pair_id"], s["polarity"]): s["prompt_id"] for s in store.read_table(m, "samples").to_dicts()}
        diff = np.mean([pooled[index[pid[(p, "pos")]]] - pooled[index[pid[(p, "neg")]]] for p in train], axis=0)
        np.testing.assert_allclose(directions[c], diff / np.linalg.norm(diff), rtol=1e-4, atol=1e-6)
        d_eval = np.array([side[(p, "pos")]["projection"] - side[(p, "neg")]["projection"] for p in held])
        assert stats[cat]["n_pairs"] == len(held)
        assert stats[cat]["effect_size"] == pytest.approx(d_eval.mean() / d_eval.std(ddof=1), rel=1e-6)


def test_held_out_direction_never_sees_eval_pairs():
    rng = np.random.default_rng(1)
    ids = [f"p{i}" for i in range(10)]
    pos, neg = rng.normal(size=(10, 8)), rng.normal(size=(10, 8))
    first = held_out_direction(ids, pos, neg, seed=3, category="x")
    ev = [ids.index(p) for p in first.eval]
    pos2, neg2 = pos.copy(), neg.copy()
    pos2[ev] += 100 * rng.normal(size=(len(ev), 8))  # anything at all on the eval pairs
    second = held_out_direction(ids, pos2, neg2, seed=3, category="x")
    np.testing.assert_array_equal(first.direction_D, second.direction_D)
    assert first.train == second.train and not set(first.train) & set(first.eval)
    assert sorted(first.train + first.eval) == ids and len(first.train) == 5


def test_planted_effect_is_recovered():
    rng = np.random.default_rng(0)
    P, D, K = 20, 16, 60
    neg = rng.normal(size=(P, D))
    pos = neg + rng.normal(scale=0.3, size=(P, D))
    pos[:, 3] += 1.5  # the cue shifts one axis
    ids = [f"q{i:02d}" for i in range(P)]
    held = held_out_direction(ids, pos, neg, seed=0, category="planted")
    assert abs(held.direction_D[3]) > 0.8
    ev = [ids.index(p) for p in held.eval]
    [row] = category_stats("planted", "direction", [0], held.pos_proj_P[ev, None], held.neg_proj_P[ev, None], 2000, 0)
    assert row["effect_size"] > 2 and row["p_value"] < 0.01 and row["sign_consistency"] == 1.0
    lat_neg = np.abs(rng.normal(size=(P, K)))
    lat_pos = np.abs(lat_neg + rng.normal(scale=0.5, size=(P, K)))
    lat_pos[:, 7] += 2.0  # one planted latent
    n_perm = screen_permutations(K, 1000)
    rows = category_stats("planted", "latent", list(range(K)), lat_pos, lat_neg, n_perm, 0)
    picked = select_candidates(rows, 0.05, 0.8, 5)
    assert [r["feature"] for r in picked][:1] == [7]
    assert all(r["q_value"] < 0.05 for r in picked)


@pytest.mark.slow
def test_bad_inputs_exit_2_one_line(env, capsys):
    from builders.user_features import cli

    store, _, catalog_path = env
    base = ["--store", store.location.url, "--catalog", str(catalog_path), "-q", "--variant", "a"]
    for extra, needle in ((["--prompts", "pairs", "--layer", "99"], "--layer 99"),
                          (["--prompts", "pairs", "--layer", "3", "--dictionary", "nothing-here"], "--dictionary"),
                          (["--prompts", "pairs", "--layer", "3", "--dictionary", "sae-s-a-pairs-L3-x"],
                           "no such dataset"),
                          (["--prompts", "broken", "--layer", "3"], "has no")):
        before = set(store.datasets()) if Path(store.location.url).exists() else set()
        assert cli(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err, err
        after = set(store.datasets()) if Path(store.location.url).exists() else set()
        assert not any(n.startswith("userfeatures-") for n in after - before)


def _crosscoder_on_three_tokens(tmp_path, smollm2):
    """(store, catalog, crosscoder manifest): a crosscoder of a and b on the pairs, A answering 3
    new tokens (the catalog's default here is 2)."""
    from builders.stages.crosscoder import CrosscoderOptions, build_crosscoder

    store, catalog, _ = make_env(tmp_path, smollm2, max_new_tokens=2)
    cc = build_crosscoder(store, catalog, "a", "b", "pairs", LAYER,
                          CrosscoderOptions(dict_size=24, epochs=1, batch_size=32, resample_every=0),
                          position="all[1:]", activation_batch_size=4, generation={"max_new_tokens": 3},
                          quiet=True).manifest
    return store, catalog, cc


@pytest.mark.slow
@pytest.mark.parametrize("callers_tokens", [3, 5])
def test_latents_read_the_crosscoders_tokens_not_new_responses(tmp_path, smollm2, callers_tokens):
    """Generation settings that differ from the catalog's defaults (seed 000's crosscoder reads 8
    new tokens), and a caller whose own ``--max-new-tokens`` differs again (the command line's
    default is 4): the latents are encoded over the crosscoder's own activations, and the set is
    answered once (it was answered again with the defaults, 2.5x longer, and latest moved; then
    with the caller's settings, other tokens than the crosscoder learnt from)."""
    from builders.stages.user_features import UserFeatureOptions
    from builders.shared import names

    store, catalog, cc = _crosscoder_on_three_tokens(tmp_path, smollm2)
    m = find_user_features(store, catalog, "a", "pairs", LAYER, dictionary=cc.name, batch_size=4, quiet=True,
                           options=UserFeatureOptions(position="all[1:]", max_new_tokens=callers_tokens)).manifest
    assert len(store.versions(names.responses("s", "a", "pairs"))) == 1
    assert m.parents["latents_activations_a"] == cc.parents["activations_a"]
    assert m.parents["latents_activations_b"] == cc.parents["activations_b"]
    pooled = store.resolve(m.parents["activations"])  # the pooled directions read the same answers
    assert pooled.parents["responses"] == store.resolve(cc.parents["activations_a"]).parents["responses"]


@pytest.mark.slow
def test_latents_follow_newer_answers_the_pooled_directions_read(tmp_path, smollm2):
    """A's answers answered anew after the crosscoder (latest moved): the pooled directions read
    those, so the latents are encoded on them too, not on the crosscoder's older tokens."""
    from builders.stages.responses import generate_responses
    from builders.stages.user_features import UserFeatureOptions

    store, catalog, cc = _crosscoder_on_three_tokens(tmp_path, smollm2)
    newer = generate_responses(store, catalog, "a", "pairs", "s", {"max_new_tokens": 5}, quiet=True).manifest
    m = find_user_features(store, catalog, "a", "pairs", LAYER, dictionary=cc.name, batch_size=4, quiet=True,
                           options=UserFeatureOptions(position="all[1:]", max_new_tokens=5)).manifest
    assert m.parents["latents_activations_a"] != cc.parents["activations_a"]
    for key in ("activations", "latents_activations_a"):
        assert store.resolve(m.parents[key]).parents["responses"] == newer.ref
