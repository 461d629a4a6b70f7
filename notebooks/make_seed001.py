"""Generate notebooks/seed001.ipynb: seed 001 (model diff: which trait vectors steer best, what the
weights changed) on the offline SmolLM2, run through its catalog declaration (experiment
``seed001_offline``); every cell after the first reads only the store. The notebook is generated
so its source stays reviewable as Python.
Run: python notebooks/make_seed001.py"""
from pathlib import Path

CELLS = [
    ("md", """# Seed 001 offline: instruction vs natural trait vectors, and what finetuning changed

Seed 001 compares trait vectors from two sources (instruction-elicited: system prompts on the
instruct model; natural: the model continuing first-person narratives) at several extraction
positions and two methods, finds each one's best steering layer and coefficient, tests whether
combining sources beats the best single vector, and asks where in the weights a finetune changed
the model and whether that change points along the trait directions.

This is the **offline twin** (`experiments.seed001_offline` in `catalog.yaml`): SmolLM2-135M-Instruct
on a CPU, cut sizes, and the SmolLM2 judge, which cannot score these traits: the twin checks that
every phase runs end to end and that the numbers are read correctly; its trait deltas are not
findings. Phase 3's pair is SmolLM2 and a LoRA organism trained on its own gloomy answers, so the
optimism vectors are a **planted** direction the weight diff should align with: the positive control.

The first code cell runs the declaration (`python -m builders.run --experiment seed001_offline`,
about ten minutes on two idle cores from an empty store; a no-op on a finished one). Every later
cell reads only the store (`$TRAITSTORE_ROOT`, default `./artifacts`)."""),
    ("code", """# parameters
EXP = "seed001_offline"
HIGH, LOW = 80, 70  # coherence floors of the phase 1 tables (the steering_tables stage's high / low)
GOOD_AUROC = 0.7  # a vector set whose best validation AUROC is below this is called weak"""),
    ("code", """import logging
import os

os.chdir(os.environ.get("TRAITSTORE_REPO", ".."))  # the repository root: catalog.yaml, datasets/
from IPython.display import Image, Markdown, display

from builders.run import cli
from store import Store
from store.sql import query

logging.basicConfig(level=logging.WARNING)
status = cli(["--experiment", EXP, "-q"])
assert status == 0, f"the experiment failed (exit {status}): see the summary above"
store = Store()
print(store)"""),
    ("md", """## What each stage produced

Each finished stage leaves a record `stage-<experiment>-<stage>` naming the versions it built or
found, and how long it took; everything below reads exactly those versions."""),
    ("code", """import polars as pl

records = query(store, f'''SELECT stage, kind, output, built FROM stage_record
                           WHERE dataset LIKE 'stage-{EXP}-%' ORDER BY stage, output''')
OUT = {}
for row in records.to_dicts():
    OUT.setdefault(row["stage"], []).append(row["output"])


def refs(prefix):
    \"\"\"Outputs of every stage named ``prefix`` or ``prefix.<matrix cell>``.\"\"\"
    return [r for stage, rs in sorted(OUT.items()) if stage == prefix or stage.startswith(prefix + ".") for r in rs]


with pl.Config(tbl_rows=100, fmt_str_lengths=90):
    display(records.select("stage", "kind", "output", "built"))"""),
    ("md", """## Phase 0: the extraction matrix

Per trait: instruction vectors (instruct model, whole response) and natural vectors (the model
continuing narratives, first 5 / 10 / 15 response tokens), each by mean difference and by probe.
Validation AUROC of each vector set per layer, on held-out prompts."""),
    ("code", """import matplotlib.pyplot as plt

parts = []
for ref in refs("vec_inst") + refs("vec_nat"):
    p = store.resolve(ref).params
    parts.append(f'''SELECT '{p["prompt_set"]}' AS prompt_set, '{p["variant"]}' AS variant, '{p["position"]}' AS position,
                            method, layer, val_auroc, n_val FROM "{ref}"''')
matrix = query(store, " UNION ALL ".join(parts))
matrix = matrix.with_columns(vector_set=pl.concat_str(["prompt_set", "variant", "position", "method"], separator=" / "))
grid = matrix.pivot(on="layer", index="vector_set", values="val_auroc", sort_columns=True).sort("vector_set")
fig, ax = plt.subplots(figsize=(12, 0.32 * grid.height + 1.5))
image = ax.imshow(grid.drop("vector_set").to_numpy(), aspect="auto", cmap="viridis", vmin=0.5, vmax=1.0)
ax.set_yticks(range(grid.height), grid["vector_set"].to_list(), fontsize=7)
ax.set_xticks(range(grid.width - 1), grid.columns[1:], fontsize=7)
ax.set_xlabel("layer")
fig.colorbar(image, ax=ax, label="validation AUROC")
fig.tight_layout()
plt.show()
best = (matrix.sort("val_auroc", descending=True, nulls_last=True).group_by("vector_set", maintain_order=True)
        .agg(pl.first("layer").alias("best_layer"), pl.first("val_auroc").round(3).alias("best_val_auroc"),
             pl.first("n_val")).sort("vector_set"))
with pl.Config(tbl_rows=100, fmt_str_lengths=80):
    display(best)"""),
    ("code", """weak = best.filter(pl.col("best_val_auroc") < GOOD_AUROC)
text = (f"{best.height} vector sets; validation on {best['n_val'].min()}-{best['n_val'].max()} held-out responses each. "
        f"Best validation AUROC ranges {best['best_val_auroc'].min():.2f}-{best['best_val_auroc'].max():.2f}. ")
text += (f"**Weak sets** (best AUROC < {GOOD_AUROC}): " + "; ".join(weak["vector_set"].to_list()) + "."
         if weak.height else f"Every set separates its held-out responses at AUROC >= {GOOD_AUROC} at some layer.")
display(Markdown(text))"""),
    ("md", """## Phase 1a: best layer per vector

`analyses.steering` over the searches (two layers, adaptive coefficients): per vector config, the
largest trait delta (in the run's direction) at coherence >= 80 and >= 70, the best layer, and the
seed's checkpoint reflection: where coherence first drops below 80 at the best layer, as a
perturbation ratio |coef|·‖v‖/‖h‖."""),
    ("code", """tables = store.resolve(OUT["steering_tables"][0])
phase1 = query(store, f'SELECT * FROM "{tables.ref}"').with_columns(
    trait=pl.col("vector_config").str.split("_").list.first())
cols = ["trait", "vector_config", "application", "best_layer", "best_coef", "max_delta_high", "max_delta_low", "best_coherence",
        "coherence_drop_ratio"]
with pl.Config(tbl_rows=100, fmt_str_lengths=60):
    display(phase1.select(cols).with_columns(pl.col(pl.Float64).round(2)).sort("trait", "vector_config"))"""),
    ("code", """lines = []
for (trait,), rows in phase1.sort("trait").group_by("trait", maintain_order=True):
    high = rows.filter(pl.col("max_delta_high") > 0)
    low = rows.filter(pl.col("max_delta_low") > 0)
    if high.height:
        top = high.sort("max_delta_high", descending=True).row(0, named=True)
        lines.append(f"- **{trait}**: best at coherence >= {HIGH}: {top['vector_config']}, layer {top['layer_high']}, "
                     f"Δ {top['max_delta_high']:+.1f}.")
    elif low.height:
        top = low.sort("max_delta_low", descending=True).row(0, named=True)
        lines.append(f"- **{trait}**: no vector raised the trait at coherence >= {HIGH}; at >= {LOW} the best is "
                     f"{top['vector_config']}, layer {top['best_layer']}, Δ {top['max_delta_low']:+.1f}.")
    else:
        lines.append(f"- **{trait}**: no vector raised the trait score at coherence >= {LOW}: a negative result "
                     f"(and, with this judge, not evidence either way).")
    drops = rows["coherence_drop_ratio"].drop_nulls()
    lines.append(f"  Coherence fell below {HIGH} at the best layer in {drops.len()} of {rows.height} configs"
                 + (f", first at perturbation ratio {drops.min():.2g}." if drops.len() else "."))
display(Markdown("\\n".join(lines)))"""),
    ("md", """Method comparison per source: each method's best delta at coherence >= 70 and its layer."""),
    ("code", """query(store, f'SELECT * FROM "{tables.ref}__methods"').with_columns(pl.col(pl.Float64).round(2))"""),
    ("md", """## Phase 1b: fine grids around the best

Per trait and source, the search's best configuration refined by coefficient ratios
(0.75-1.5 × the best coefficient): trait delta and coherence per layer × perturbation ratio
(`analyses.steering.heatmap`)."""),
    ("code", """from analyses.steering import heatmap

for ref in refs("fine_inst") + refs("fine_nat"):
    runs = query(store, f'''SELECT * FROM "{ref}" WHERE kind = 'add' AND layer IS NOT NULL AND delta IS NOT NULL
                            AND perturbation_ratio IS NOT NULL''')
    if runs.height:
        display(Image(heatmap(runs, f"{ref}: {runs['vector_config'][0]}")))
    else:
        print(ref, ": no scored steered runs")"""),
    ("md", """## Phase 2: combinations vs the best single vectors

Per trait, the instruction (A) and natural (B) vectors' best configurations combined by each
strategy (at 0.75 / 1 / 1.25 × their coefficients); each strategy's best at coherence >= 70 beside
the singles."""),
    ("code", """has_phase2 = any(f.startswith("tables/phase2/") for f in tables.files)  # published only when it has rows
phase2 = query(store, f'SELECT * FROM "{tables.ref}__phase2"') if has_phase2 else pl.DataFrame(
    schema={"combination": pl.Utf8, "strategy": pl.Utf8, "trait_delta": pl.Float64})
if not has_phase2:
    display(Markdown("**No combination run has a scored configuration**: phase 2 has nothing to compare."))
with pl.Config(tbl_rows=100, fmt_str_lengths=50):
    display(phase2.with_columns(pl.col(pl.Float64).round(2)))
lines = []
for (combination,), rows in phase2.group_by("combination", maintain_order=True):
    single = rows.filter(pl.col("strategy").str.starts_with("single:"))["trait_delta"].max()
    mixed = rows.filter(~pl.col("strategy").str.starts_with("single:")).sort("trait_delta", descending=True, nulls_last=True)
    if not mixed.height or mixed["trait_delta"][0] is None:
        lines.append(f"- {combination}: no combination kept coherence >= {LOW}.")
        continue
    top = mixed.row(0, named=True)
    beats = single is None or top["trait_delta"] > single
    lines.append(f"- {combination}: best combination {top['strategy']} Δ {top['trait_delta']:+.1f} vs best single "
                 + (f"Δ {single:+.1f}" if single is not None else "none") + ": "
                 + ("**beats** the singles." if beats else "does **not** beat the best single vector."))
display(Markdown("\\n".join(lines)))"""),
    ("md", """## Phase 3: the weight diff and the trait directions

Δθ = θ_organism − θ_instruct (the LoRA update, `ΔW = (α/r)·B·A` per module): its norm per layer,
and the cosine of each layer's residual-facing direction (the mean column of ΔW_o_proj + ΔW_down_proj)
with each trait's vectors, beside the 95th percentile of |cos| for random directions. The
organism was trained on gloomy answers, so the **optimism** vectors are the positive control: their
alignment should stand out; the other traits are the comparison."""),
    ("code", """weights = store.resolve(OUT["weights"][0])
layers = query(store, f'SELECT layer, diff_norm, residual_direction_norm FROM "{weights.ref}__layers" ORDER BY layer')
align = query(store, f'''SELECT a.layer, v.prompt_set, a.method, abs(a.cosine) AS abs_cos, a.random_abs_cos_p95,
                                a.p_random
                         FROM "{weights.ref}__alignment" a
                         JOIN (SELECT dataset || '@' || version AS vectors, params->>'prompt_set' AS prompt_set
                               FROM catalog) v USING (vectors)
                         ORDER BY v.prompt_set, a.method, a.layer''')
fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
top.plot(layers["layer"], layers["diff_norm"], marker="o", markersize=3, label="‖Δθ‖ per layer")
top.plot(layers["layer"], layers["residual_direction_norm"], marker="o", markersize=3, label="residual-facing direction")
top.set_ylabel("norm")
top.legend(fontsize=8)
for (prompt_set, method), part in align.group_by(["prompt_set", "method"], maintain_order=True):
    bottom.plot(part["layer"], part["abs_cos"], label=f"{prompt_set} / {method}",
                linewidth=2.5 if prompt_set.startswith("optimism") else 1)
chance = align.group_by("layer").agg(pl.col("random_abs_cos_p95").first()).sort("layer")
bottom.plot(chance["layer"], chance["random_abs_cos_p95"], color="black", linestyle="--", label="random p95")
bottom.set_ylabel("|cos| with Δθ direction")
bottom.set_xlabel("layer")
bottom.legend(fontsize=7, ncol=2)
fig.tight_layout()
plt.show()
peak = (align.sort("abs_cos", descending=True).group_by(["prompt_set", "method"], maintain_order=True)
        .agg(pl.first("layer"), pl.first("abs_cos"), pl.first("random_abs_cos_p95"), pl.first("p_random"))
        .sort("prompt_set", "method"))
peak.with_columns(pl.col(pl.Float64).round(3))"""),
    ("code", """top3 = layers.sort("diff_norm", descending=True).head(3)
control = peak.filter(pl.col("prompt_set").str.starts_with("optimism")).sort("abs_cos", descending=True).row(0, named=True)
others = peak.filter(~pl.col("prompt_set").str.starts_with("optimism"))
beats_chance = control["abs_cos"] > control["random_abs_cos_p95"]
beats_others = others.height == 0 or control["abs_cos"] > others["abs_cos"].max()
text = (f"The weight diff is largest at layers {', '.join(map(str, top3['layer'].to_list()))}. "
        f"Positive control: the optimism vectors ({control['method']}) align with Δθ's residual direction at most "
        f"|cos| {control['abs_cos']:.3f} (layer {control['layer']}), random p95 {control['random_abs_cos_p95']:.3f}, "
        f"p_random {control['p_random']:.3f}"
        + (f"; the other traits peak at |cos| {others['abs_cos'].max():.3f}. " if others.height else ". "))
if beats_chance and beats_others:
    text += "The planted direction is recovered: the control **passes**."
elif beats_chance:
    text += "It beats chance but not the unrelated traits: the control passes only **weakly**."
else:
    text += "It does **not** beat random directions: the control **fails**, and no alignment here should be trusted."
display(Markdown(text))"""),
    ("md", """## Phase 4: activation similarity per layer

The organism replays the instruct model's answers to the steering questions; per layer, the mean
cosine between the two models' activations (1 = unchanged). Then `analyses.model_diff`'s report:
the checkpoint questions answered from the same tables."""),
    ("code", """similarity = store.resolve(OUT["similarity"][0])
sim = query(store, f'SELECT layer, mean_cosine FROM "{similarity.ref}" ORDER BY layer')
fig, ax = plt.subplots(figsize=(10, 2.8))
ax.plot(sim["layer"], sim["mean_cosine"], marker="o", markersize=3)
ax.set_xlabel("layer")
ax.set_ylabel("mean cosine (organism vs instruct)")
fig.tight_layout()
plt.show()
low = sim.sort("mean_cosine").row(0, named=True)
display(Markdown(f"Activations diverge most at layer {low['layer']} (mean cosine {low['mean_cosine']:.4f}); "
                 f"the weight diff is largest at layer {top3['layer'][0]}."))"""),
    ("code", """diff = store.resolve(OUT["model_diff"][0])
display(Markdown(store.read_bytes(diff, "report.md").decode()))"""),
]


def main() -> None:
    from notebook_writer import write_notebook  # a sibling file (notebooks/ is not a package)

    print(f"wrote {write_notebook(CELLS, Path(__file__).with_name('seed001.ipynb'))}")


if __name__ == "__main__":
    main()
