"""Write notebooks/seed000.ipynb from the cells below: seed 000 ("From Inference to Pandering:
User Modeling and Sycophancy Circuits") walked day by day on the offline organism, run through its
catalog declaration (experiment ``seed000``); every cell after the first reads only the store.
The notebook is generated so its source stays reviewable as Python.
Run: python notebooks/make_seed000.py"""
from pathlib import Path

CELLS = [
    ("md", """# Seed 000 on the offline organism: model diffing, user-model features, sycophancy, clamping

Seed 000 diffs a base and a chat model with a crosscoder and asks whether the chat model's
*user model* (who it thinks it is talking to) feeds its sycophancy. Its plan, as stages of this
store:

- **Day 0 — diff A and B**: a crosscoder on both models' activations over the same tokens;
  latents whose decoder lives only in B (`dec_norm_diff` near 0), checked with Latent Scaling (ν).
- **Day 1 — user-model features**: directions and latents that separate minimal pairs
  (novice/expert, biased/neutral, gender, age, distressed/calm) consistently across pairs.
- **Day 2 — sycophancy**: does an internal detector predict when B caves to a user's wrong
  belief, better than an output-only (observable) one; do its latents overlap Day 1's?
- **Day 3 — causal intervention**: zero the B-specific latents during generation and measure the
  trait and coherence change against random latents of the same frequency.

Here A = `instruct` (SmolLM2-135M-Instruct) and B = `finetuned`: the same model plus a LoRA
organism trained on its own gloomy answers (the planted difference is known: optimism), so every
day can be checked against the answer. The experiment is declared in `catalog.yaml`
(`experiments.seed000.stages`: the organism, the optimism vectors, the crosscoder, user features,
the detector, the clamping run, the organism-latent report and the vector decomposition). The first
code cell runs the declaration (`python -m builders.run --experiment seed000`): it prints the plan,
builds what is missing and is a no-op on a finished store. Every later cell reads only the store
(`$TRAITSTORE_ROOT`, default `./artifacts`).

**The seed's real setting.** Copy the experiment with variants `google/gemma-2-2b` (A) and
`google/gemma-2-2b-it` (B) (both are already `models:` entries), layer 13, and give the crosscoder
stage `checkpoint: Butanium/gemma-2-2b-crosscoder-l13-mu4.1e-02-lr1e-04`: the stage then imports
the public crosscoder (same `dictionary_learning` layout) instead of training one, and Days 1–3
read it exactly as they read the one trained here."""),
    ("code", """# parameters (the stages' sizes live in the catalog declaration)
EXP = "seed000"
A, B = "instruct", "finetuned"
N_LOWEST = 8  # the most B-leaning latents listed (the clamping stage zeroes its most_b_specific)"""),
    ("code", """import logging
import os

os.chdir(os.environ.get("TRAITSTORE_REPO", ".."))  # the repository root: catalog.yaml, datasets/
from IPython.display import Image, display

from builders.run import cli
from builders.shared.catalog import load_catalog
from store import Store
from store.sql import query

logging.basicConfig(level=logging.WARNING)
status = cli(["--experiment", EXP, "-q"])
assert status == 0, f"the experiment failed (exit {status}): see the summary above"
store = Store()
catalog = load_catalog()
records = query(store, f\'\'\'SELECT stage, output FROM stage_record WHERE dataset LIKE 'stage-{EXP}-%' ORDER BY stage, output\'\'\')
OUT = {}
for row in records.to_dicts():  # each stage's record names the versions it built or found
    OUT.setdefault(row["stage"], []).append(row["output"])


def show(manifest, figure):
    display(Image(store.read_bytes(manifest, figure)))


print(store)
for name in (A, B):
    variant = catalog.variant(EXP, name)
    print(f"{name:>9}: {variant.model.id}" + (f" + adapter {variant.adapter}" if variant.adapter else ""))"""),
    ("md", """B's adapter is the `organism` stage's dataset: a few dozen of A's own gloomy answers to neutral
questions, system prompt removed (see the README's organism section)."""),
    ("code", """organism = store.resolve(OUT["organism"][0])
print(organism.ref, f"trained on {organism.summary['sequences']} answers,",
      f"loss {organism.summary['loss_first']:.2f} -> {organism.summary['loss_last']:.2f}")"""),
    ("md", """## Day 0: a crosscoder between A and B

An L1 crosscoder on A's and B's layer-22 activations (of 30; late enough for the organism's change
to show) over the same tokens: B replays A's answers to the `user_model` prompts (each prompt and
8 tokens of A's answer, every token but the attention sink). Then the latent table by SQL: tags by
`dec_norm_diff` (`b_only` < 0.1), and Latent Scaling's ν^ε (near 0: the latent explains something
only B does; near 1: a sparsity artefact, A has it too)."""),
    ("code", """cc = store.resolve(OUT["crosscoder"][0])
print(cc.ref, "| layer", cc.params["layer"], "| position", cc.params["position"])
print(f"{cc.summary['tokens']} tokens; explained variance A {cc.summary['analysis_explained_variance'][0]:.3f},",
      f"B {cc.summary['analysis_explained_variance'][1]:.3f}; dead latents {cc.summary['dead_latents']}")
query(store, f'SELECT tag, count(*) AS latents FROM "{cc.ref}" GROUP BY tag ORDER BY tag')"""),
    ("code", """show(cc, "figures/dec_norm_diff.png")"""),
    ("md", """The active latents with the lowest `dec_norm_diff` (the most B-leaning), with ν^ε and the
tokens they fire on most (the ⟦token⟧ in its context)."""),
    ("code", """lowest = query(store, f\'\'\'
    WITH low AS (SELECT latent, dec_norm_diff, tag, nu_error, frequency FROM "{cc.ref}"
                 WHERE n_active > 0 ORDER BY dec_norm_diff, latent LIMIT {N_LOWEST})
    SELECT low.latent, round(dec_norm_diff, 3) AS dec_norm_diff, tag, round(nu_error, 2) AS nu_error,
           round(frequency, 4) AS frequency,
           string_agg(replace(t."left" || '⟦' || t.token_text || '⟧' || t."right", chr(10), ' '), ' | '
                      ORDER BY t.rank) AS top_contexts
    FROM low JOIN "{cc.ref}__top_examples" t ON t.latent = low.latent AND t.rank <= 3
    GROUP BY ALL ORDER BY dec_norm_diff, low.latent\'\'\')
LATENTS = lowest["latent"].to_list()
print("lowest dec_norm_diff latents:", LATENTS)
lowest"""),
    ("md", """## Day 1: user-model features

Per category of minimal pairs, the plain mean-difference direction (learned on half the pairs,
tested on the other half) and every crosscoder latent, averaged over the sequence: paired effect
size, sign consistency across pairs, permutation p and BH q. A candidate has q < 0.05 and the
same sign in ≥ 80% of pairs. A crosscoder latent is one joint code of A and B on the same
tokens, so it is reported once for the pair; the direction is A's. Read over Day 0's tokens (the
prompt and A's first answer tokens), Day 1 reuses Day 0's activations; for the prompt alone set the
stage's `position: "prompt[:]"` (two more captures)."""),
    ("code", """uf = store.resolve(OUT["user_features"][0])
print(uf.ref)
q, consistency = uf.params["q_threshold"], uf.params["min_consistency"]
per_category = query(store, f\'\'\'
    SELECT category,
           count(*) FILTER (WHERE kind = 'direction' AND passes) AS direction_passes,
           count(*) FILTER (WHERE kind = 'latent') AS latents_tested,
           count(*) FILTER (WHERE kind = 'latent' AND passes) AS latents_passing,
           round(max(abs(effect_size)) FILTER (WHERE kind = 'latent'), 2) AS best_latent_dz
    FROM (SELECT *, q_value < {q} AND sign_consistency >= {consistency} AS passes FROM "{uf.ref}__data")
    GROUP BY category ORDER BY category\'\'\')
n_dir, n_lat = per_category["direction_passes"].sum(), per_category["latents_passing"].sum()
print(f"{n_dir} of {per_category.height} category directions pass on held-out pairs;",
      f"{n_lat} (category, latent) candidates pass")
per_category"""),
    ("code", """show(uf, "figures/candidates.png")
query(store, f\'\'\'SELECT category, kind, feature, round(effect_size, 2) AS d_z,
                        round(sign_consistency, 2) AS consistency, q_value
                 FROM "{uf.ref}__candidates" WHERE rank <= 3 ORDER BY category, rank\'\'\')"""),
    ("md", """## Day 2: a sycophancy detector, internal and observable

B answers factual questions with and without the user's wrong belief stated first. The label is
measured (does the biased-side answer adopt the user's answer or drop the correct one its neutral
twin gave?). Detectors, scored out-of-fold with folds grouped by pair: B's activation direction
at the last prompt token, an L1 logistic regression on the crosscoder latents, and the observable
detector on the answer text alone."""),
    ("code", """det = store.resolve(OUT["detector"][0])
print(det.ref)
print(f"{det.summary['labelled']} labelled answers, {det.summary['sycophantic']} sycophantic")
if det.summary.get("finding"):
    print("Plainly:", det.summary["finding"])
query(store, f\'\'\'SELECT population, detector, round(auroc, 3) AS auroc, round(ci_low, 2) AS ci_low,
                        round(ci_high, 2) AS ci_high, n, positives, reason
                 FROM "{det.ref}" ORDER BY population, detector\'\'\')"""),
    ("code", """show(det, "figures/roc.png")
if any(f.startswith("tables/overlap/") for f in det.files):
    display(query(store, f\'\'\'SELECT population, category, detector_latents, candidates, shared,
                                    round(jaccard, 3) AS jaccard
                             FROM "{det.ref}__overlap" ORDER BY population, category\'\'\'))
else:
    print("no overlap with Day 1 to compute: the detector fitted no latents (see the reasons above)")"""),
    ("md", """## Day 3: clamping the B-leaning latents

Day 0's most B-leaning latents zeroed in B's layer-22 residual while it answers held-out
questions, next to random latents of matched frequency; the trait is read by the sentiment judge
(VADER, AUROC 0.995 on the project's labelled optimism answers).

**Judges, a shortcut the declaration takes.** The project's rule is instruments first: the
coherence judge should be the perplexity judge under the unsteered instruct model, calibrated on
labelled answers before it gates anything (as the demo does). That calibration scores ~300 answers
and takes minutes on a CPU, more than this notebook's CI budget, so the experiment's judges are
`cheap` (sentiment + the local SmolLM2 coherence judge) with `allow_uncalibrated: true` on the
clamping stage: its coherence numbers are **uncalibrated** and only indicative. For the real
measurement give the experiment `{trait: sentiment, coherence: perplexity, reference:
smollm2-135m-instruct}` and `calibration` stages before the clamping (the demo's declaration shows
how); the calibrations are built once per store."""),
    ("code", """clamp = store.resolve(OUT["clamping"][0])
print(clamp.ref)
print("zeroed:", clamp.params["latents"], "| random:", clamp.params["random_latents"])
print("the zeroed latents are Day 0's lowest:", clamp.params["latents"] == LATENTS)
if clamp.params["judges"]["coherence"] != "perplexity":
    print(f"coherence judge {clamp.params['judges']['coherence']!r} UNCALIBRATED: coherence deltas are indicative only")
query(store, f\'\'\'SELECT control, latents, round(trait_mean, 1) AS trait_mean, round(delta, 1) AS trait_delta,
                        round(coherence_mean, 1) AS coherence_mean, round(coherence_delta, 1) AS coherence_delta,
                        round(control_delta, 1) AS vs_random
                 FROM "{clamp.ref}" ORDER BY control\'\'\')"""),
    ("md", """Are the B-specific latents the planted trait? Their B decoder directions against the optimism
vector extracted from A (same layer), and the clamping deltas beside them
(`analyses.organism_latents`)."""),
    ("code", """analysis = store.resolve(OUT["latents"][0])
print(analysis.ref)
print(store.read_bytes(analysis, "report.md").decode())"""),
    ("md", """The other way round: the optimism vector read through the crosscoder's latents (B's slice),
the top latents by decoder cosine and the share of the vector their decoder rows explain
(`builders.decompose`)."""),
    ("code", """decomposition = store.resolve(OUT["decompose"][0])
print(decomposition.ref)
print("explained by the top latents:", {m: round(f, 3) for m, f in decomposition.summary["explained_fraction"].items()})
show(decomposition, "figures/top_cosines.png")
query(store, f\'\'\'SELECT method, rank, latent, round(cosine, 3) AS cosine, contexts[1] AS top_context
                 FROM "{decomposition.ref}" WHERE ranking = 'cosine' AND rank <= 5 ORDER BY method, rank\'\'\')"""),
    ("md", """## What the three days show on this organism

Read it from the tables above, not from this text (the numbers change with the settings):

- **Day 0**: the tag counts and the histogram say whether the crosscoder found B-only latents at
  all. A 135M model with a small LoRA may change too little for any latent to leave `shared`;
  then the lowest `dec_norm_diff` latents are only the most B-leaning candidates, and ν^ε near 1
  marks a latent as a sparsity artefact rather than genuinely B-specific.
- **Day 1**: the per-category table says which user attributes B represents linearly (direction
  passes on held-out pairs) and whether any crosscoder latent carries them.
- **Day 2**: the AUROC table is only meaningful when B actually caved sometimes; the `reason`
  column says so when it never did. Internal vs observable AUROC on the `biased` population is
  the seed's question; the overlap table says whether the detector's latents are Day 1's.
- **Day 3**: `trait_delta` of the `chosen` row against the `random` row (`vs_random`) is the
  causal claim; `coherence_delta` says whether it came at the price of fluency (indicative
  only with the uncalibrated judge). The organism report ties it to the geometry: do the selected
  decoder directions align with the optimism vector more than random latents of the same
  crosscoder?"""),
]

def main() -> None:
    from notebook_writer import write_notebook  # a sibling file (notebooks/ is not a package)

    print(f"wrote {write_notebook(CELLS, Path(__file__).with_name('seed000.ipynb'))}")


if __name__ == "__main__":
    main()
