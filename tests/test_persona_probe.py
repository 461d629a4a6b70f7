"""Persona probes with template holdout: the folds never put a template on both sides, held-out
scores against numpy, a planted direction recovered on unseen templates and chance on shuffled
labels, and the builder end to end on SmolLM2 (its vectors load through steering's loader)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from transforms.circuits.holdout import TemplateFold, holdout_fold, holdout_scores, template_folds, wilson_interval


def synthetic(n_pairs: int = 6, n_questions: int = 12, d: int = 24, seed: int = 0, signal: float = 5.0):
    """Rows of template pairs x questions x sides, two layers: layer 0 carries only template
    offsets (each template its own, so a memorising probe could separate sides on SEEN templates)
    and noise, layer 1 adds ``signal`` * side along a planted unit direction."""
    rng = np.random.default_rng(seed)
    planted = rng.normal(size=d)
    planted /= np.linalg.norm(planted)
    rows, labels, pairs = [], [], []
    offsets = {(p, s): rng.normal(scale=1.0, size=d) for p in range(n_pairs) for s in (0, 1)}
    for p, _q, side in itertools.product(range(n_pairs), range(n_questions), (1, 0)):
        base = offsets[(p, side)] + rng.normal(size=d)
        rows.append([base, base + signal * (1 if side else -1) * planted])
        labels.append(side)
        pairs.append(f"pair{p}")
    return np.asarray(rows, dtype=np.float32), np.asarray(labels), pairs, planted


@pytest.mark.parametrize("n_pairs, n_folds, seed", [(6, 2, 0), (6, 3, 1), (7, 4, 2), (8, 8, 3), (9, 5, 4)])
def test_template_folds_never_share_a_template(n_pairs, n_folds, seed):
    pair_of = {f"p{k}.{side}": f"p{k}" for k in range(n_pairs) for side in ("expert", "child")}
    folds = template_folds(list(pair_of.values()), n_folds, seed)
    assert len(folds) == n_folds
    tested = [p for f in folds for p in f.test_pairs]
    assert sorted(tested) == sorted(set(pair_of.values()))  # every pair held out exactly once
    assert max(len(f.test_pairs) for f in folds) - min(len(f.test_pairs) for f in folds) <= 1
    row_templates = [t for t in pair_of for _ in range(3)]  # 3 questions per template
    row_pairs = [pair_of[t] for t in row_templates]
    for fold in folds:
        train, test = fold.rows(row_pairs)
        assert len(train) + len(test) == len(row_pairs)
        seen, held = {row_templates[i] for i in train}, {row_templates[i] for i in test}
        assert not seen & held and held  # no template on both sides, ever
        # both sides of a held-out pair are held out together
        assert {pair_of[t] for t in held} == set(fold.test_pairs)
        assert all(f"{p}.expert" in held and f"{p}.child" in held for p in fold.test_pairs)
    assert template_folds(list(pair_of.values()), n_folds, seed) == folds  # seeded


def test_explicit_holdout_and_bad_folds():
    pair_of = {"a.expert": "a", "a.child": "a", "b.expert": "b", "b.child": "b", "c.expert": "c", "c.child": "c"}
    fold = holdout_fold(pair_of, ["a.child", "c"])  # a template id takes its pair out
    assert fold.test_pairs == ("a", "c") and fold.train_pairs == ("b",)
    with pytest.raises(ValueError, match="unknown template"):
        holdout_fold(pair_of, ["z.expert"])
    with pytest.raises(ValueError, match="none left to train on"):
        holdout_fold(pair_of, ["a", "b", "c"])
    for n in (1, 4):
        with pytest.raises(ValueError, match="folds need 2 to 3"):
            template_folds(list(pair_of.values()), n)
    with pytest.raises(ValueError, match="both sides"):
        TemplateFold(0, ("a", "b"), ("b",))


def test_wilson_interval_against_the_quadratic():
    for k, n in ((0, 10), (3, 10), (10, 10), (47, 80)):
        z = 1.959963984540054
        p_hat = k / n
        # the Wilson bounds are the roots in p of (p_hat - p)^2 = z^2 p (1 - p) / n
        roots = np.sort(np.roots([1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat]).real)
        assert wilson_interval(k, n) == pytest.approx(tuple(np.clip(roots, 0, 1)), abs=1e-9)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_heldout_scores_match_numpy_mean_difference():
    acts, labels, pairs, _ = synthetic()
    folds = template_folds(pairs, 3, seed=0)
    held = holdout_scores(acts, labels, pairs, folds, "mean_diff")
    for fold in folds:
        tr = np.array([i for i, p in enumerate(pairs) if p in fold.train_pairs])
        te = np.array([i for i, p in enumerate(pairs) if p in fold.test_pairs])
        for layer in range(acts.shape[1]):
            x = acts[:, layer].astype(np.float64)
            mu_pos, mu_neg = x[tr][labels[tr] == 1].mean(0), x[tr][labels[tr] == 0].mean(0)
            u = (mu_pos - mu_neg) / np.linalg.norm(mu_pos - mu_neg)
            expected = x[te] @ u - (mu_pos + mu_neg) / 2 @ u
            got = held.scores_NL[held.fold_N == fold.index, layer]
            assert np.array_equal(held.rows[held.fold_N == fold.index], te)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert held.n_train == tuple(sum(p in f.train_pairs for p in pairs) for f in folds)


@pytest.mark.parametrize("method", ["probe", "mean_diff"])
def test_planted_direction_recovered_on_unseen_templates(method):
    acts, labels, pairs, planted = synthetic()
    held = holdout_scores(acts, labels, pairs, template_folds(pairs, 3, seed=1), method)
    acc0, acc1 = held.accuracy(0)[0], held.accuracy(1)[0]
    assert acc1 > 0.95, acc1  # the planted side direction generalises to unseen templates
    assert 0.25 < acc0 < 0.75, acc0  # template offsets alone: nothing to carry over
    acc, lo, hi = held.accuracy(1)
    assert lo <= acc <= hi


def test_shuffled_labels_give_chance():
    from sklearn.metrics import roc_auc_score

    acts, labels, pairs, _ = synthetic(n_pairs=8, n_questions=16, seed=5)
    shuffled = np.random.default_rng(0).permutation(labels)
    held = holdout_scores(acts, shuffled, pairs, template_folds(pairs, 4, seed=0), "probe")
    auc = roc_auc_score(held.labels_N, held.scores_NL[:, 1])
    assert 0.35 < auc < 0.65 and 0.35 < held.accuracy(1)[0] < 0.65, auc


# ----------------------------------------------------------------------------- the builder

TEMPLATE_PAIRS = ("physicist", "scientist", "journal", "doctor")
QUESTIONS = ("sun_shine", "heredity", "search", "bank", "coin", "egg")


@pytest.fixture(scope="module")
def built(tmp_path_factory, smollm2):
    from builders.shared.catalog import load_catalog
    from builders.stages.persona_probe import ProbeOptions, persona_probe
    from store import Store

    del smollm2  # the session model fixture warms the converted checkpoint cache
    store, catalog = Store(str(tmp_path_factory.mktemp("probe") / "store")), load_catalog()
    options = ProbeOptions(layers="2,15", template_holdout="2", templates=TEMPLATE_PAIRS, questions=QUESTIONS,
                           n_bootstrap=200)
    result = persona_probe(store, catalog, "instruct", "persona", options, "demo")
    return store, catalog, options, result


@pytest.mark.slow
def test_builder_publishes_a_vectors_dataset(built):
    from builders.shared import names
    from builders.stages.persona_probe import persona_probe

    store, catalog, options, result = built
    m = result.manifest
    assert result.built and m.kind == "vectors"
    assert m.name == names.persona_probe("demo", "instruct", "persona", "prompt_m1")
    data = store.read_table(m).to_dicts()
    assert sorted((r["method"], r["layer"]) for r in data) == [(meth, k) for meth in ("mean_diff", "probe")
                                                                for k in (2, 15)]
    n_prompts = 2 * len(TEMPLATE_PAIRS) * len(QUESTIONS)
    for r in data:
        assert r["n_test"] == n_prompts and r["folds"] == 2 and r["n_train"] == n_prompts // 2
        assert r["accuracy_ci_low"] <= r["accuracy"] <= r["accuracy_ci_high"]
        assert 0 <= r["auroc"] <= 1
    folds = store.read_table(m, "folds").to_dicts()
    for fold in {r["fold"] for r in folds}:
        sides = {}
        for r in folds:
            if r["fold"] == fold:
                sides.setdefault(r["template"], set()).add(r["split"])
        assert all(len(s) == 1 for s in sides.values())  # no template on both sides
    assert "figures/probe.png" in m.files
    # a rebuild is a no-op
    again = persona_probe(store, catalog, "instruct", "persona", options, "demo")
    assert not again.built and again.manifest.ref == m.ref


@pytest.mark.slow
def test_published_vectors_load_through_steering_and_projections(built):
    from builders.stages.projections import build_stacks
    from builders.stages.steering import layer_vectors, vector_columns
    from builders.stages.vectors import load_vectors

    store, _, _, result = built
    m = result.manifest
    by_layer = layer_vectors(store, m, "probe", 576, 30, "instruct")
    assert sorted(by_layer) == [2, 15]
    for vec in by_layer.values():
        assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
    vecs, meta = load_vectors(store, m, "mean_diff")
    assert vecs.shape == (2, 576) and meta["position"] == "prompt[-1]" and meta["component"] == "residual"
    columns = vector_columns(store, m, "probe")
    assert columns["source_set"] == "persona" and columns["extraction_variant"] == "instruct"
    stacks = build_stacks(store, [(m, "probe")], {(m.ref, "probe"): [15]}, 576)
    assert [s.layer for s in stacks] == [15]


@pytest.mark.slow
def test_bad_inputs_exit_2_nothing_published(tmp_path, capsys, smollm2):
    from builders.persona_probe import cli
    from store import Store

    del smollm2
    root = tmp_path / "store"
    base = ["--store", str(root), "-q", "--experiment", "demo", "--templates", "physicist,doctor",
            "--questions", "sun_shine,bank", "--template-holdout", "2"]
    for extra, needle in ((["--variant", "nope"], "nope"),
                          (["--variant", "instruct", "--position", "prompt[x]"], "--position"),
                          (["--variant", "instruct", "--position", "response[0]"], "selects no token"),
                          (["--variant", "instruct", "--position", "prompt[99]"], "selects no token"),
                          (["--variant", "instruct", "--layers", "99"], "--layers"),
                          (["--variant", "instruct", "--template-holdout", "5"], "folds need 2 to 2"),
                          (["--variant", "instruct", "--template-holdout", "ghost.expert"], "unknown template"),
                          (["--variant", "instruct", "--methods", "pca"], "--methods")):
        assert cli(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err, err
        assert not root.exists() or not [n for n in Store(str(root)).datasets() if n.startswith("vectors-")]
