"""Write notebooks/seed000.ipynb from the cells below: seed 000 ("From Inference to Pandering:
User Modeling and Sycophancy Circuits") walked day by day on the demo's offline organism.
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
day can be checked against the answer. Everything runs offline on a CPU; the store is
`$TRAITSTORE_ROOT` (default `./artifacts`), and rerunning a cell whose dataset is up to date is a
no-op.

**The seed's real setting, with the same cells.** Add a catalog experiment whose variants are
`google/gemma-2-2b` (A) and `google/gemma-2-2b-it` (B) (both are already `models:` entries),
set `LAYER = 13`, and give the Day 0 call
`checkpoint="Butanium/gemma-2-2b-crosscoder-l13-mu4.1e-02-lr1e-04"`: `build_crosscoder` then
imports the public crosscoder (same `dictionary_learning` layout, same loader) instead of training
one, and Days 1–3 read it exactly as they read the one trained here."""),
    ("code", """import logging
import os

os.chdir(os.environ.get("TRAITSTORE_REPO", ".."))  # the repository root: catalog.yaml, datasets/
from IPython.display import Image, display

from builders.shared.catalog import load_catalog
from store import Store
from store.sql import query

logging.basicConfig(level=logging.WARNING)
store = Store()
catalog = load_catalog()
demo = catalog.experiment("demo")
A, B = "instruct", "finetuned"
LAYER = 22  # of 30: late enough for the organism's change to show (layer k = hidden_states[k+1])
POSITION = "all[1:]"  # skip the attention-sink first token, whose norm dominates input normalisation
GEN = {"max_new_tokens": 8}  # the crosscoder's tokens: each prompt and 8 tokens of A's answer


def show(manifest, figure):
    display(Image(store.read_bytes(manifest, figure)))


print(store)
for name in (A, B):
    variant = demo.variants[name]
    print(f"{name:>9}: {variant.model.id}" + (f" + adapter {variant.adapter}" if variant.adapter else ""))"""),
    ("md", """B's adapter is a store dataset: built here when missing (a few dozen of A's own gloomy answers
to neutral questions, system prompt removed; see the README's organism section)."""),
    ("code", """from builders.stages.finetune import finetune

if demo.variants[B].adapter not in store.datasets():
    finetune(store, catalog, A, "optimism_instruction", experiment="demo", polarity="neg", quiet=True)
organism = store.latest(demo.variants[B].adapter)
print(organism.ref, f"trained on {organism.summary['sequences']} answers,",
      f"loss {organism.summary['loss_first']:.2f} -> {organism.summary['loss_last']:.2f}")"""),
    ("md", """## Day 0: a crosscoder between A and B

An L1 crosscoder on A's and B's layer-22 activations over the same tokens (B replays A's
answers to the `user_model` prompts). Then the latent table by SQL: tags by `dec_norm_diff`
(`b_only` < 0.1), and Latent Scaling's ν^ε (near 0: the latent explains something only B
does; near 1: a sparsity artefact, A has it too)."""),
    ("code", """from builders.stages.crosscoder import CrosscoderOptions, build_crosscoder

cc = build_crosscoder(store, catalog, A, B, "user_model", LAYER, CrosscoderOptions(dict_size=256, epochs=4),
                      experiment="demo", position=POSITION, generation=GEN, quiet=True).manifest
print(cc.ref)
print(f"{cc.summary['tokens']} tokens; explained variance A {cc.summary['analysis_explained_variance'][0]:.3f},",
      f"B {cc.summary['analysis_explained_variance'][1]:.3f}; dead latents {cc.summary['dead_latents']}")
query(store, f'SELECT tag, count(*) AS latents FROM "{cc.ref}" GROUP BY tag ORDER BY tag')"""),
    ("code", """show(cc, "figures/dec_norm_diff.png")"""),
    ("md", """The 8 active latents with the lowest `dec_norm_diff` (the most B-leaning), with ν^ε and the
tokens they fire on most (the ⟦token⟧ in its context)."""),
    ("code", """lowest = query(store, f'''
    WITH low AS (SELECT latent, dec_norm_diff, tag, nu_error, frequency FROM "{cc.ref}"
                 WHERE n_active > 0 ORDER BY dec_norm_diff LIMIT 8)
    SELECT low.latent, round(dec_norm_diff, 3) AS dec_norm_diff, tag, round(nu_error, 2) AS nu_error,
           round(frequency, 4) AS frequency,
           string_agg(replace(t."left" || '⟦' || t.token_text || '⟧' || t."right", chr(10), ' '), ' | '
                      ORDER BY t.rank) AS top_contexts
    FROM low JOIN "{cc.ref}__top_examples" t ON t.latent = low.latent AND t.rank <= 3
    GROUP BY ALL ORDER BY dec_norm_diff''')
LATENTS = lowest["latent"].to_list()
print("lowest dec_norm_diff latents:", LATENTS)
lowest"""),
    ("md", """## Day 1: user-model features

Per category of minimal pairs, the plain mean-difference direction (learned on half the pairs,
tested on the other half) and every crosscoder latent, averaged over the sequence: paired effect
size, sign consistency across pairs, permutation p and BH q. A candidate has q < 0.05 and the
same sign in ≥ 80% of pairs. A crosscoder latent is one joint code of A and B on the same
tokens, so it is reported once for the pair; the direction is A's. Read over Day 0's tokens
(`POSITION`, the prompt and A's first answer tokens), Day 1 reuses Day 0's activations; for the
prompt alone pass `UserFeatureOptions(position="prompt[:]")` (two more captures)."""),
    ("code", """from builders.stages.user_features import UserFeatureOptions, find_user_features

uf = find_user_features(store, catalog, A, "user_model", LAYER, experiment="demo", dictionary=cc.ref,
                        options=UserFeatureOptions(position=POSITION, max_new_tokens=GEN["max_new_tokens"]),
                        quiet=True).manifest
print(uf.ref)
q, consistency = uf.params["q_threshold"], uf.params["min_consistency"]
per_category = query(store, f'''
    SELECT category,
           count(*) FILTER (WHERE kind = 'direction' AND passes) AS direction_passes,
           count(*) FILTER (WHERE kind = 'latent') AS latents_tested,
           count(*) FILTER (WHERE kind = 'latent' AND passes) AS latents_passing,
           round(max(abs(effect_size)) FILTER (WHERE kind = 'latent'), 2) AS best_latent_dz
    FROM (SELECT *, q_value < {q} AND sign_consistency >= {consistency} AS passes FROM "{uf.ref}__data")
    GROUP BY category ORDER BY category''')
n_dir, n_lat = per_category["direction_passes"].sum(), per_category["latents_passing"].sum()
print(f"{n_dir} of {per_category.height} category directions pass on held-out pairs;",
      f"{n_lat} (category, latent) candidates pass")
per_category"""),
    ("code", """show(uf, "figures/candidates.png")
query(store, f'''SELECT category, kind, feature, round(effect_size, 2) AS d_z,
                        round(sign_consistency, 2) AS consistency, q_value
                 FROM "{uf.ref}__candidates" WHERE rank <= 3 ORDER BY category, rank''')"""),
    ("md", """## Day 2: a sycophancy detector, internal and observable

B answers factual questions with and without the user's wrong belief stated first. The label is
measured (does the biased-side answer adopt the user's answer or drop the correct one its neutral
twin gave?). Detectors, scored out-of-fold with folds grouped by pair: B's activation direction
at the last prompt token, an L1 logistic regression on the crosscoder latents, and the observable
detector on the answer text alone."""),
    ("code", """from builders.stages.detector import DetectorOptions, build_detector

det = build_detector(store, catalog, B, "observable_pairs", LAYER, experiment="demo", dictionary=cc.ref,
                     options=DetectorOptions(category="factual"), max_new_tokens=16, quiet=True).manifest
print(det.ref)
print(f"{det.summary['labelled']} labelled answers, {det.summary['sycophantic']} sycophantic")
if det.summary.get("finding"):
    print("Plainly:", det.summary["finding"])
query(store, f'''SELECT population, detector, round(auroc, 3) AS auroc, round(ci_low, 2) AS ci_low,
                        round(ci_high, 2) AS ci_high, n, positives, reason
                 FROM "{det.ref}" ORDER BY population, detector''')"""),
    ("code", """show(det, "figures/roc.png")
if any(f.startswith("tables/overlap/") for f in det.files):
    display(query(store, f'''SELECT population, category, detector_latents, candidates, shared,
                                    round(jaccard, 3) AS jaccard
                             FROM "{det.ref}__overlap" ORDER BY population, category'''))
else:
    print("no overlap with Day 1 to compute: the detector fitted no latents (see the reasons above)")"""),
    ("md", """## Day 3: clamping the B-leaning latents

Zero Day 0's 8 lowest-`dec_norm_diff` latents in B's layer-22 residual while it answers held-out
questions, next to 8 random latents of matched frequency; the trait is read by the sentiment
judge (VADER).

**Judges, a shortcut taken here.** The project's rule is instruments first: the coherence judge
is the perplexity judge under the unsteered instruct model, calibrated on labelled answers
before it gates anything (as `python -m builders.demo` does). That calibration scores ~300
answers and takes minutes on a CPU (4 min 44 s measured for one perplexity calibration), more
than this notebook's CI budget, so with `CALIBRATED = False` the cell uses the cheap judges with
`allow_uncalibrated=True` (sentiment + the local SmolLM2 coherence judge, as
`tests/test_clamping.py` does): its coherence numbers are **uncalibrated** and only indicative.
Set `CALIBRATED = True` for the real measurement; the calibrations are built once and reused."""),
    ("code", """from builders.shared.judges import JudgeChoice
from builders.stages.calibration import calibrate
from builders.stages.clamping import ClampingOptions, clamp_run

CALIBRATED = False  # True: calibrated perplexity coherence (minutes on a CPU, once per store)
if CALIBRATED:
    JUDGES = JudgeChoice(trait="sentiment", coherence="perplexity", reference="smollm2-135m-instruct")
    for judge in ("perplexity", "sentiment"):  # instruments first
        calibrate(store, catalog, judge, experiment="demo", choice=JUDGES, quiet=True)
else:
    JUDGES = JudgeChoice(trait="sentiment", coherence="local", allow_uncalibrated=True)
    print("coherence judge UNCALIBRATED (CALIBRATED = False): coherence deltas are indicative only")
clamp = clamp_run(store, catalog, cc.ref, B, "optimism_heldout", latents=LATENTS,
                  options=ClampingOptions(mode="zero"), experiment="demo", subset=8, judges=JUDGES,
                  quiet=True).manifest
print(clamp.ref)
query(store, f'''SELECT control, latents, round(trait_mean, 1) AS trait_mean, round(delta, 1) AS trait_delta,
                        round(coherence_mean, 1) AS coherence_mean, round(coherence_delta, 1) AS coherence_delta,
                        round(control_delta, 1) AS vs_random
                 FROM "{clamp.ref}" ORDER BY control''')"""),
    ("md", """Are the B-specific latents the planted trait? Their B decoder directions against the optimism
vector extracted from A (same layer), and the clamping deltas beside them
(`analyses.organism_latents`)."""),
    ("code", """from analyses.organism_latents import organism_latents
from builders.stages.vectors import extract_vectors

config = next(c for c in demo.extraction
              if (c.prompt_set, c.variant, c.position) == ("optimism_instruction", A, "response[:]"))
vectors = extract_vectors(store, catalog, config, "demo", quiet=True).manifest
analysis = organism_latents(store, cc.ref, vectors.ref, clamping=clamp.ref).manifest
print(analysis.ref)
print(store.read_bytes(analysis, "report.md").decode())"""),
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
  only unless `CALIBRATED = True`). The organism
  report ties it to the geometry: do the selected decoder directions align with the optimism
  vector more than random latents of the same crosscoder?"""),
]


def main() -> None:
    from notebook_writer import write_notebook  # a sibling file (notebooks/ is not a package)

    print(f"wrote {write_notebook(CELLS, Path(__file__).with_name('seed000.ipynb'))}")


if __name__ == "__main__":
    main()
