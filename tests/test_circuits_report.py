"""analyses.circuits on hand-made tables published into a temporary store (no model): the report
states what the planted tables contain, positive and negative branches, with numbers checked
against plain numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analyses.circuits import CircuitsInputs, circuits_report, cli
from builders.shared import names
from store import BuildSpec, Store

EXP, VAR, SET = "demo", "instruct", "persona"
TOKENS = ["<s>", "You", " PhD", " are", "Q", "?"]  # position 2 is the persona token
CHILD = " kid"
N_TOK = len(TOKENS)
PAIRS = [f"pair{i}/q{i}" for i in range(6)]
TINY = PAIRS[5]  # its gap is below min_gap: no normalised number
LAYERS, HEADS = 4, 4


def publish(store: Store, name: str, tables: dict[str, list[dict]], kind: str = "patching",
            params: dict | None = None) -> str:
    spec = BuildSpec(name=name, kind=kind, builder="tests", code_version="1", params=params or {}, parents={},
                     identity={"model_id": "tiny/model"})

    def produce(writer):
        for table, rows in tables.items():
            writer.write_table(rows, table=table)

    return store.build(spec, produce).manifest.ref


def _row(pair, component, layer, position, value, head=None):
    used = pair != TINY
    return {"pair_id": pair, "component": component, "layer": layer, "head": head, "position": position,
            "from_end": None if position is None else position - N_TOK,
            "token": None if position is None else (CHILD if position == 2 else TOKENS[position]),
            "clean_token": None if position is None else TOKENS[position],
            "metric": value * 4.0 - 2.0, "normalised": value if used else None}


def baselines():
    return [{"pair_id": p, "n_tokens": N_TOK, "clean_metric": 2.0, "corrupted_metric": 2.0 - (0.01 if p == TINY else 4.0),
             "gap": 0.01 if p == TINY else 4.0, "used": p != TINY, "expert_token": " relativity",
             "simple_token": " fast"} for p in PAIRS]


def residual_rows(rng, planted: bool):
    """Planted: early layers carry the effect at the persona token, late layers at the last token."""
    rows = []
    for p in PAIRS:
        for layer in range(LAYERS):
            for pos in range(N_TOK):
                base = 0.0
                if planted and pos == 2 and layer < 2:
                    base = 0.9
                if planted and pos == N_TOK - 1 and layer >= 2:
                    base = 0.5 + 0.15 * layer
                rows.append(_row(p, "residual", layer, pos, base + rng.normal(0, 0.05)))
    return rows


def head_rows(rng, planted: bool, by_position: bool):
    strong = {(2, 1): 0.6, (3, 0): 0.3} if planted else {}
    rows = []
    for p in PAIRS:
        for layer in range(LAYERS):
            for head in range(HEADS):
                effect = strong.get((layer, head), 0.0)
                if not by_position:
                    rows.append(_row(p, "head", layer, None, effect + rng.normal(0, 0.03), head))
                    continue
                for pos in range(N_TOK):
                    where = N_TOK - 1 if (layer, head) == (2, 1) else 2
                    rows.append(_row(p, "head", layer, pos, (effect if pos == where else 0.0) + rng.normal(0, 0.01),
                                     head))
    return rows


def lens_tables(rng, planted: bool):
    tracked = []
    for p in PAIRS:
        for layer in range(LAYERS):
            for role, side, slope in (("clean", "expert", 1.0), ("corrupted", "child", -0.5)):
                tracked.append({"pair_id": p, "role": role, "side": side, "template_id": f"{side}-{p[:5]}",
                                "question_id": p.split("/")[1], "layer": layer,
                                "logit_diff": (slope * layer if planted else 0.0) + rng.normal(0, 0.3)})
    from builders.stages.logit_lens import layer_summary

    return {"tracked": tracked, "by_layer": layer_summary(tracked)}


def probe_rows():
    rows = []
    for layer, (auc, lo, hi) in enumerate([(0.52, 0.35, 0.70), (0.70, 0.55, 0.85), (0.96, 0.90, 1.0), (0.9, 0.8, 1.0)]):
        rows.append({"layer": layer, "method": "probe", "accuracy": auc - 0.02, "accuracy_ci_low": lo,
                     "accuracy_ci_high": hi, "auroc": auc, "auroc_ci_low": lo, "auroc_ci_high": hi, "n_test": 24})
    return rows


def ablation_tables(rng, chosen_strong: bool):
    data, generation = [], []
    sets = [("L2H1", "chosen", -2.0 if chosen_strong else -0.05), ("L3H0", "chosen", -0.05)]
    sets += [(f"random-{i}", "random", d) for i, d in enumerate([-0.3, 0.1, -0.1, 0.2])]
    for heads, kind, delta in sets:
        for mode in ("zero", "mean"):
            for p in PAIRS:
                data.append({"heads": heads, "kind": kind, "mode": mode, "pair_id": p, "side": "clean",
                             "metric": 2.0 + delta, "delta": delta + rng.normal(0, 0.02)})
            for i in range(4):
                generation.append({"heads": heads, "kind": kind, "mode": mode, "prompt_id": f"p{i}", "side": "expert",
                                   "response": "text", "register": 50.0, "delta_register": delta * 10 + rng.normal(0, 1)})
    top = [{"layer": 2, "head": 1, "patch_effect": 0.6, "zero_delta": -2.0, "mean_delta": -1.5, "rank": 1}]
    return {"data": data, "generation": generation, "top_heads": top}


def direction_rows(rng):
    rows = []
    for layer, curve in ((2, [0.0, 0.5, 1.0, 2.0]), (1, [0.0, 0.6, -0.4, 0.3])):
        for alpha, delta in zip([0.0, 2.0, 4.0, 8.0], curve):
            for p in PAIRS:
                rows.append({"pair_id": p, "layer": layer, "alpha": alpha, "side": "corrupted",
                             "metric": delta, "delta": delta + rng.normal(0, 0.01), "vectors": "v@1", "method": "probe"})
    return rows


def t_interval(x):
    x = np.asarray(x, float)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


@pytest.fixture()
def planted_store(tmp_path):
    rng = np.random.default_rng(0)
    store = Store(str(tmp_path / "store"))
    residual = residual_rows(rng, True)
    publish(store, names.patching(EXP, VAR, SET, "residual"), {"data": residual, "baselines": baselines()},
            params={"min_gap": 0.1})
    publish(store, names.patching(EXP, VAR, SET, "heads"), {"data": head_rows(rng, True, False),
                                                           "baselines": baselines()})
    publish(store, names.patching(EXP, VAR, SET, "heads_by_position"), {"data": head_rows(rng, True, True),
                                                                       "baselines": baselines()})
    publish(store, names.patching(EXP, VAR, SET, "direction"), {"data": direction_rows(rng)})
    publish(store, names.head_ablation(EXP, VAR, SET), ablation_tables(rng, True), kind="ablation")
    publish(store, names.logit_lens(EXP, VAR, SET, "prompt_-1"), lens_tables(rng, True), kind="logitlens")
    publish(store, names.persona_probe(EXP, VAR, SET, "prompt_-1"), {"data": probe_rows()}, kind="vectors")
    return store, residual


def test_planted_tables_give_the_planted_report(planted_store):
    store, residual = planted_store
    inputs = CircuitsInputs.latest(store, EXP, VAR, SET)
    manifest = circuits_report(store, EXP, VAR, SET, inputs).manifest
    assert manifest.name == names.circuits_report(EXP, VAR, SET)
    assert set(manifest.parents) == {"residual", "heads", "heads_by_position", "direction", "ablation", "logit_lens",
                                     "probe"}
    report = store.read_bytes(manifest, "report.md").decode()
    for section in ("## 1. Objective", "## 2. Model & dataset", "## 3. Key results", "## 4. Evidence of circuitry",
                    "## 5. Failures & negative results"):
        assert section in report
    assert "`tiny/model`" in report and "6 pairs, 12 templates, 6 questions" in report
    assert "(patched): 6; pairs used (|clean - corrupted| >= 0.1): 5" in report
    assert "figures/logit_diff.png" in manifest.files and "![logit difference" in report
    findings = {f["claim"]: f for f in store.read_table(manifest).to_dicts()}

    # the best last-token residual layer and its number, recomputed with numpy over the used pairs
    last = {layer: [r["normalised"] for r in residual if r["layer"] == layer and r["from_end"] == -1
                    and r["normalised"] is not None] for layer in range(LAYERS)}
    best = max(last, key=lambda k: np.mean(last[k]))
    f = findings[f"patching residual: clean into corrupted at the last token restores the expert answer (best layer "
                 f"L{best})"]
    assert best == 3 and f["supported"]
    assert (f["value"], f["ci_low"], f["ci_high"]) == pytest.approx(t_interval(last[best]))

    # heads: L2H1 moves the persona to the last position, L3H0 works at the persona tokens
    assert findings["head L2H1: its effect concentrated at the last position"]["supported"]
    assert not findings["head L3H0: its effect concentrated at the last position"]["supported"]
    assert "| L2H1 |" in report and "moves persona information to the last position" in report
    assert "acts at the persona tokens themselves" in report
    assert report.index("| L2H1 |") < report.index("| L3H0 |")  # ranked by effect
    assert "| -2.00 / -1.50 |" in report  # the ablation stage's per-head deltas (top_heads)

    # ablation: L2H1 beyond random heads, L3H0 within their range: a stated negative result
    assert findings["ablating L2H1 (zero, clean prompts) changes the logit diff beyond random heads"]["supported"]
    assert not findings["ablating L3H0 (zero, clean prompts) changes the logit diff beyond random heads"]["supported"]
    negatives = report.split("## 5. Failures & negative results")[1]
    assert "ablating L3H0 (zero, clean prompts) is within the random-head range" in negatives
    assert "L2H1" not in negatives

    # tiny-gap pair named; probe near chance at L0 only; L1's direction curve not monotone, L2's monotone
    assert f"{TINY} (0.010)" in negatives
    assert "probe near chance (AUROC interval contains 0.5) at layers L0\n" in negatives
    assert "direction patching at L1 (corrupted prompts) is not monotone" in negatives
    assert findings["direction patching at L2 (corrupted prompts): logit diff monotone in alpha"]["supported"]
    probe = findings["probe (probe): held-out-template auroc above chance at the best layer (L2)"]
    assert probe["supported"] and probe["value"] == pytest.approx(0.96)

    # logit lens: first layer from which every later layer separates, by numpy
    import polars as pl

    tracked = store.read_table(store.resolve(inputs.logit_lens), "tracked")
    lows = []
    for layer in range(LAYERS):
        rows = tracked.filter(pl.col("layer") == layer).sort("pair_id")
        d = (rows.filter(pl.col("role") == "clean")["logit_diff"].to_numpy()
             - rows.filter(pl.col("role") == "corrupted")["logit_diff"].to_numpy())
        lows.append(t_interval(d)[1])
    first = next(k for k in range(LAYERS) if all(lo > 0 for lo in lows[k:]))
    got = findings["logit lens: first layer from which the expert side stays above the child side"]
    assert got["value"] == first and got["supported"]


def test_null_tables_give_the_negative_branches(tmp_path):
    rng = np.random.default_rng(1)
    store = Store(str(tmp_path / "store"))
    publish(store, names.patching(EXP, VAR, SET, "residual"), {"data": residual_rows(rng, False),
                                                              "baselines": baselines()})
    publish(store, names.patching(EXP, VAR, SET, "heads"), {"data": head_rows(rng, False, False),
                                                           "baselines": baselines()})
    publish(store, names.head_ablation(EXP, VAR, SET), ablation_tables(rng, False), kind="ablation")
    publish(store, names.logit_lens(EXP, VAR, SET, "prompt_-1"), lens_tables(rng, False), kind="logitlens")
    manifest = circuits_report(store, EXP, VAR, SET, CircuitsInputs.latest(store, EXP, VAR, SET), top=2).manifest
    report = store.read_bytes(manifest, "report.md").decode()
    negatives = report.split("## 5. Failures & negative results")[1]
    assert "the expert side never stays above the child side" in report
    assert "patching residual at the last token restores nothing distinguishable from 0" in negatives
    assert "ablating L2H1 (zero, clean prompts) is within the random-head range" in negatives
    assert "not run: direction patching" in negatives and "not run: per-position head patching" in negatives
    assert "moves persona information" not in report  # no role claimed without per-position evidence
    findings = store.read_table(manifest).to_dicts()
    assert not any(f["supported"] for f in findings if f["section"] in ("patching", "ablation", "lens"))
    assert store.read_table(manifest, "heads").height == LAYERS * HEADS


def test_cli_without_patching_is_one_line_exit_2(tmp_path, capsys):
    assert cli(["--store", str(tmp_path / "empty"), "--experiment", EXP]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no residual and heads patching datasets") and "\n" not in err


def test_ablation_verdict_says_which_condition_failed():
    from analyses.circuits_tables import AblationEffect, Estimate, ablation_verdict

    def effect(mean, lo, hi, rng):
        return AblationEffect("L1H1", "chosen", "zero", "clean", Estimate(mean, lo, hi, 5), rng, None)

    assert ablation_verdict(effect(-2.0, -3.0, -1.0, (-0.3, 0.1))) == "beyond the random heads"
    assert ablation_verdict(effect(-0.1, -0.5, 0.3, (-0.3, 0.1))) == "within the random-head range"
    assert ablation_verdict(effect(-0.7, -4.6, 3.2, (-0.3, -0.05))) == ("outside the random-head range, "
                                                                       "but its interval includes 0")
    assert ablation_verdict(effect(-2.0, -3.0, -1.0, None)) == "without a random control"


def test_heads_ranked_by_size_of_effect_as_the_ablation_stage_picks_them():
    """A head pushing strongly towards the child answer outranks a weakly restoring one, in the
    same order head ablation's ``from_patching`` takes its top heads (so the report names the
    heads the experiment ablated)."""
    import polars as pl

    from analyses.circuits_tables import head_effects
    from builders.stages.head_ablation_tables import top_by_effect

    effects = {(23, 5): [0.3, 0.2, 0.25], (15, 4): [-0.2, -0.15, -0.15], (27, 2): [0.15, 0.1, 0.17], (3, 0): [0.0, 0.01, -0.01]}
    heads = pl.DataFrame([{"layer": layer, "head": head, "position": None, "normalised": v}
                          for (layer, head), values in effects.items() for v in values],
                         schema={"layer": pl.Int64, "head": pl.Int64, "position": pl.Int64, "normalised": pl.Float64})
    ranked = [(h.layer, h.head) for h in head_effects(heads)]
    assert ranked == [(23, 5), (15, 4), (27, 2), (3, 0)]
    means = {h: float(np.mean(v)) for h, v in effects.items()}
    assert set(top_by_effect(means, 2)) == set(ranked[:2])
