"""The head-ablation builder (builders/head_ablation.py): published deltas against direct
forwards under ``ablated_heads`` (head means computed here from hooks, independently), generations
against one-prompt greedy ``generate`` calls and the register judge, top heads from a planted
patching dataset, the random control never touching a chosen head, no-op rebuilds and one-line
refusals. Model tests use SmolLM2 (30 layers x 9 query heads) on 2 pairs."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from builders.shared.common import BuildError
from builders.stages.head_ablation_tables import head_effects, parse_heads, random_head_sets, top_by_effect

CHOSEN = "L3H4,L5H1"
N_PAIRS, N_GEN, N_NEW = 2, 2, 8


# ------------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_sets_never_include_chosen_heads(seed):
    chosen = [(0, 0), (0, 1), (1, 2)]
    sets = random_head_sets(chosen, 3, 3, 20, seed)  # 6 heads left: many possible draws
    assert len(sets) == 20 and [s.label for s in sets[:2]] == ["random-1", "random-2"]
    for s in sets:
        assert len(s.heads) == 3 and len(set(s.heads)) == 3 and not set(s.heads) & set(chosen)
        assert all(0 <= layer < 3 and 0 <= head < 3 for layer, head in s.heads)
    assert [s.heads for s in random_head_sets(chosen, 3, 3, 20, seed)] == [s.heads for s in sets]  # seeded
    assert len({s.heads for s in sets}) > 1  # draws differ
    with pytest.raises(BuildError, match="fewer than"):
        random_head_sets([(0, h) for h in range(3)] + [(1, 0)], 2, 3, 1, seed)  # 2 left, 4 needed


def test_parse_heads():
    assert parse_heads("L5H1, l3h4") == [(3, 4), (5, 1)]
    for bad, needle in (("3.4", "not a head"), ("L3H4,L3H4", "twice"), ("", "not a head")):
        with pytest.raises(BuildError, match=needle):
            parse_heads(bad)


def test_head_effects_against_numpy_and_wrong_kinds():
    rng = np.random.default_rng(0)
    rows, want = [], {}
    for layer in range(3):
        for head in range(4):
            values = rng.normal(size=5)
            used = [v for i, v in enumerate(values) if i != 2]  # pair 2 is below min_gap: null
            want[(layer, head)] = float(np.mean(used))
            rows += [{"component": "head", "layer": layer, "head": head, "position": None,
                      "normalised": None if i == 2 else float(v)} for i, v in enumerate(values)]
    got = head_effects(rows, "x")
    assert set(got) == set(want)
    np.testing.assert_allclose([got[h] for h in sorted(want)], [want[h] for h in sorted(want)], rtol=1e-12)
    top = sorted(want, key=lambda h: -abs(want[h]))[:3]
    assert top_by_effect(got, 3) == sorted(top)
    for bad, needle in (({"component": "residual", "layer": 0, "head": None, "position": 3}, "a residual"),
                        ({"component": "head", "layer": 0, "head": 1, "position": 3}, "heads_by_position")):
        with pytest.raises(BuildError, match=needle):
            head_effects(rows + [dict(bad, normalised=0.1)], "x")


def test_help_imports_no_torch():
    code = "import sys; from builders.head_ablation import build_parser; build_parser(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ------------------------------------------------------------------------------ SmolLM2 builds


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2):
    from builders.shared.catalog import load_catalog
    from store import Store

    root = tmp_path_factory.mktemp("ablation")
    return Store(str(root / "store")), load_catalog(), smollm2


def _base(store) -> list[str]:
    return ["--store", store.location.url, "-q", "--experiment", "demo", "--variant", "instruct",
            "--prompt-set", "persona", "--limit-pairs", str(N_PAIRS)]


def _inputs(tokenizer):
    from builders.stages.head_ablation import pair_inputs
    from builders.stages.logit_lens import load_pairs
    from builders.shared.catalog import load_catalog

    return pair_inputs(load_pairs(load_catalog(), "persona", N_PAIRS), tokenizer)


def _o_proj_means(model, seqs, layers):
    """Mean of each head's o_proj input over every token, by a plain hook (not head_means)."""
    import torch

    got = {k: [] for k in layers}
    handles = [model.model.layers[k].self_attn.o_proj.register_forward_pre_hook(
        lambda m, args, k=k: got[k].append(args[0][0].double().numpy())) for k in layers]
    try:
        with torch.no_grad():
            for ids in seqs:
                model(input_ids=torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    n_heads = model.config.num_attention_heads
    return {k: torch.tensor(np.concatenate(v).mean(0).reshape(n_heads, -1), dtype=torch.float32) for k, v in got.items()}


def _direct_metric(model, ids, answer):
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double().numpy()
    return logits[answer[0]] - logits[answer[1]]


@pytest.mark.slow
def test_published_deltas_equal_direct_ablation(env):
    import torch

    from builders.head_ablation import cli
    from builders.shared import names
    from transforms.circuits import ablated_heads
    from transforms.judge.register import RegisterJudge

    store, _, loaded = env
    model, tok = loaded.model, loaded.tokenizer
    argv = _base(store) + ["--heads", CHOSEN, "--random-draws", "1", "--generate", str(N_GEN),
                           "--max-new-tokens", str(N_NEW)]
    assert cli(argv) == 0
    name = names.head_ablation("demo", "instruct", "persona")
    manifest = store.resolve(name)
    data = store.read_table(manifest).to_pandas()
    assert len(data) == 2 * 2 * N_PAIRS * 2  # (chosen + 1 random) x modes x pairs x sides
    sets = manifest.params["head_sets"]
    assert sets[CHOSEN] == CHOSEN and "mean_reference" in manifest.params
    for label in ("random-1",):  # the control: as many heads, none of the chosen ones
        members = set(parse_heads(sets[label]))
        assert len(members) == 2 and not members & set(parse_heads(CHOSEN))

    inputs = _inputs(tok)
    layers = sorted({layer for members in sets.values() for layer, _ in parse_heads(members)})
    means = _o_proj_means(model, [ids for p in inputs for ids in (p.clean_ids, p.corrupted_ids)], layers)
    base = {(p.pair_id, side): _direct_metric(model, ids, p.answer_ids)
            for p in inputs for side, ids in (("clean", p.clean_ids), ("corrupted", p.corrupted_ids))}
    moved = 0.0
    for label, members in sets.items():
        for mode in ("zero", "mean"):
            with ablated_heads(model, parse_heads(members), mode, means):
                for p in inputs:
                    for side, ids in (("clean", p.clean_ids), ("corrupted", p.corrupted_ids)):
                        want = _direct_metric(model, ids, p.answer_ids)
                        row = data[(data.heads == label) & (data["mode"] == mode) & (data.pair_id == p.pair_id)
                                   & (data.side == side)]
                        assert row.kind.item() == ("chosen" if label == CHOSEN else "random")
                        np.testing.assert_allclose(row.metric.item(), want, atol=2e-4)
                        np.testing.assert_allclose(row.delta.item(), want - base[(p.pair_id, side)], atol=2e-4)
                        moved = max(moved, abs(want - base[(p.pair_id, side)]))
    assert moved > 1e-3  # the ablations change the metric: the comparison is not vacuous

    by_set = store.read_table(manifest, "by_set").to_pandas()
    for (label, mode, side), group in data.groupby(["heads", "mode", "side"]):
        r = by_set[(by_set.heads == label) & (by_set["mode"] == mode) & (by_set.side == side)]
        np.testing.assert_allclose(r.mean_delta.item(), group.delta.mean(), rtol=1e-9)

    top = store.read_table(manifest, "top_heads").to_pandas()
    assert sorted(zip(top.layer, top["head"])) == parse_heads(CHOSEN) and top.patch_effect.isna().all()
    layer, head = 5, 1
    with ablated_heads(model, [(layer, head)], "zero"):
        alone = np.mean([_direct_metric(model, p.clean_ids, p.answer_ids) - base[(p.pair_id, "clean")] for p in inputs])
    np.testing.assert_allclose(top[(top.layer == layer) & (top["head"] == head)].zero_delta.item(), alone, atol=2e-4)
    assert sorted(top["rank"]) == [1, 2]

    gen, gen0 = store.read_table(manifest, "generation").to_pandas(), store.read_table(manifest, "generation_baseline").to_pandas()
    assert len(gen) == 2 * 2 * N_GEN and len(gen0) == N_GEN and set(gen.side) == {"clean"}
    judge = RegisterJudge()
    assert manifest.params["register_judge"] == judge.identity() and manifest.params["register_auroc_main"] >= 0.9

    def greedy(prompt_ids):
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens=N_NEW, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
        new = out[0, len(prompt_ids):].tolist()
        eos = tok.eos_token_id
        return tok.decode(new[:new.index(eos)] if eos in new else new, skip_special_tokens=True)

    for p in inputs[:N_GEN]:
        plain = greedy(p.clean_ids)
        b = gen0[gen0.prompt_id == p.prompt_id]
        assert b.response.item() == plain
        with ablated_heads(model, parse_heads(CHOSEN), "zero"):
            ablated = greedy(p.clean_ids)
        r = gen[(gen.prompt_id == p.prompt_id) & (gen.heads == CHOSEN) & (gen["mode"] == "zero")]
        assert r.response.item() == ablated
        want = judge.score_one(ablated)
        want = math.nan if want is None else want
        np.testing.assert_allclose([r.register.item(), r.delta_register.item()],
                                   [want, want - b.register.item()], rtol=1e-9)
    assert any(f.endswith("figures/delta.png") for f in manifest.files)

    before = {m.version for m in store.versions(name)}
    assert cli(argv) == 0  # a rebuild is a no-op
    assert {m.version for m in store.versions(name)} == before


def _planted_patching(store, catalog, kind: str, effects: dict[tuple[int, int], float]) -> str:
    """A patching dataset as the patching builder publishes it (data table per the contract),
    with known per-head effects; pair p1 is below min_gap (null normalised, a huge raw value)."""
    from builders.shared import names
    from builders.stages.responses import model_identity
    from store import BuildSpec

    rows = []
    for (layer, head), effect in effects.items():
        for pair, value in (("a", effect + 0.1), ("b", effect - 0.1), ("p1", None)):
            rows.append({"pair_id": pair, "component": "head", "layer": layer, "head": head,
                         "position": None if kind == "heads" else 5, "offset": None if kind == "heads" else -3,
                         "token": None, "clean_token": None, "metric": 1.0, "normalised": value})
    spec = BuildSpec(name=names.patching("demo", "instruct", "persona", kind), kind="patching", builder="tests",
                     code_version="1", params={"kind": kind, "planted": sorted(map(list, effects))}, parents={},
                     identity=model_identity(catalog, "demo", "instruct", store))
    return store.build(spec, lambda w: w.write_table(rows)).manifest.ref


@pytest.mark.slow
def test_top_heads_from_a_patching_dataset(env):
    from builders.shared import names
    from builders.stages.head_ablation import AblationOptions, build_head_ablation

    store, catalog, _ = env
    planted = {(l, h): 0.01 * (l + h) for l in range(0, 30, 6) for h in range(9)}
    planted[(7, 2)], planted[(12, 8)], planted[(20, 0)] = 0.9, -0.8, 0.5
    ref = _planted_patching(store, catalog, "heads", planted)
    options = AblationOptions(from_patching=ref.split("@")[0], top_k=3, modes=("zero",), random_draws=1,
                              limit_pairs=N_PAIRS)
    result = build_head_ablation(store, catalog, "instruct", "persona", experiment="demo", options=options, quiet=True)
    m = result.manifest
    assert result.built and m.name == names.head_ablation("demo", "instruct", "persona")
    assert m.parents == {"patching": ref} and m.params["chosen"] == "L7H2,L12H8,L20H0"
    top = store.read_table(m, "top_heads").to_pandas().sort_values("rank")
    assert list(zip(top.layer, top["head"])) == [(7, 2), (12, 8), (20, 0)]  # by |effect|
    np.testing.assert_allclose(top.patch_effect.to_numpy(), [0.9, -0.8, 0.5], atol=1e-12)
    assert top.mean_delta.isna().all() and top.zero_delta.notna().all()
    random = store.read_table(m).to_pandas().query("kind == 'random'")
    assert not set(parse_heads(random.members.iloc[0])) & {(7, 2), (12, 8), (20, 0)}
    again = build_head_ablation(store, catalog, "instruct", "persona", experiment="demo", options=options, quiet=True)
    assert not again.built


@pytest.mark.slow
@pytest.mark.parametrize("extra, needle", [
    (["--heads", "L30H0"], "layer 30 out of range"),
    (["--heads", "L3H9"], "head 9 out of range"),
    (["--heads", "3.4"], "not a head"),
    (["--heads", "L3H4", "--modes", "zero,resample"], "--modes"),
    (["--heads", "L3H4", "--generate", "3"], "--generate 3"),
    (["--from-patching", "WRONG_KIND"], "heads_by_position patching dataset"),
    (["--from-patching", "patching-nope"], "patching-nope"),
])
def test_bad_inputs_exit_2_nothing_published(env, capsys, extra, needle):
    from builders.head_ablation import cli
    from builders.shared import names

    store, catalog, _ = env
    if "WRONG_KIND" in extra:
        extra = ["--from-patching", _planted_patching(store, catalog, "heads_by_position", {(3, 4): 0.5})]
    name = names.head_ablation("demo", "instruct", "persona")
    before = {m.version for m in store.versions(name)} if name in store.datasets() else set()
    assert cli(_base(store) + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    after = {m.version for m in store.versions(name)} if name in store.datasets() else set()
    assert after == before
