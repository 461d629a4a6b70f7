"""Write notebooks/seed003.ipynb from the cells below: seed 003 ("Persona-Reasoning Bottleneck")
on the offline SmolLM2: persona probes with template holdout, logit lens, activation and head
patching, head ablation, direction patching, and the circuits report.
The notebook is generated so its source stays reviewable as Python.
Run: python notebooks/make_seed003.py"""
from pathlib import Path

CELLS = [
    ("md", """# Seed 003 on SmolLM2: does the persona set the answer before generation begins?

Seed 003 asks whether a persona sentence ("You are a physics professor" vs "You are a little child")
fixes the answer's complexity *before* the model writes anything, and which attention heads move
the persona to where the answer is decided. Its plan, as stages of this store:

1. a **linear probe** for the persona per layer, tested on persona templates it never saw;
2. the **logit lens** at the last prompt token: when does the expert answer token pull ahead?
3. **activation patching** (clean = expert persona into corrupted = child persona; metric:
   logit(expert token) − logit(simple token), normalised clean = 1, corrupted = 0): residual
   stream per layer × position, then every attention head, then the top heads per position;
4. **head ablation** of the top heads against random heads of the same count (metric and the
   judged register of short generations);
5. **direction patching**: α × the probe's direction added over the prompt;
6. the **report** (`analysis-circuits`): objective, model & data, key results, evidence of
   circuitry, failures and negative results, every number read from the tables above.

Everything runs offline on a CPU (SmolLM2-135M-Instruct: 30 layers, 9 query heads, 3 KV heads).
The parameters cell keeps it small (a few pairs, every few layers) so it runs in CI; raise them
for a real run. The store is `$TRAITSTORE_ROOT` (default `./artifacts`); rerunning a cell whose
dataset is up to date is a no-op."""),
    ("code", """# parameters
# Sized to run in a few minutes on 2 CPU cores; on a GPU raise N_PAIRS, use every layer and question.
N_PAIRS = 3  # persona pairs patched / lensed / ablated (the probe uses every prompt of QUESTIONS)
QUESTIONS = ("sun_shine", "lightning", "rainbow", "snow", "plants", "sugar")  # probe questions
PROBE_LAYERS = "0,10,20,29"
LENS_LAYERS = "all"
PATCH_LAYERS = "0,10,20,29"
HEAD_LAYERS = "14-29"  # heads patched at all positions
POSITIONS = "-6:"  # per-position patching: the last 6 prompt tokens
TOP_HEADS = 3
RANDOM_DRAWS = 2
GENERATE = 2  # expert-side prompts answered under each ablation (0: metric only)
MAX_NEW_TOKENS = 8
ALPHAS = (-8.0, -4.0, 0.0, 4.0, 8.0)"""),
    ("code", """import logging
import os

os.chdir(os.environ.get("TRAITSTORE_REPO", ".."))  # the repository root: catalog.yaml, datasets/
from IPython.display import Image, Markdown, display

from builders.shared.catalog import load_catalog
from store import Store
from store.sql import query

logging.basicConfig(level=logging.WARNING)
store = Store()
catalog = load_catalog()
EXP, VARIANT, SET = "demo", "instruct", "persona"


def show(manifest, figure):
    display(Image(store.read_bytes(manifest, figure)))


print(store)
print(VARIANT, "=", catalog.variant(EXP, VARIANT).model.id)"""),
    ("md", """## The persona set

Template pairs (an expert and a child persona with the same token count) × questions with two
tracked first answer tokens; a pair shares its id `<template pair>/<question>`."""),
    ("code", """from transforms.prompts.persona import load_persona_set

persona = load_persona_set(catalog.prompt_set(SET).path, SET)
print(f"{len(persona.templates)} templates, {len(persona.questions)} questions, {len(persona.pairs())} pairs")
pair = persona.pairs()[0]
print(pair.pair_id, "| clean:", pair.clean.text, "| corrupted:", pair.corrupted.text)
print("tracked tokens:", repr(pair.clean.question.expert_token), "vs", repr(pair.clean.question.simple_token))"""),
    ("md", """## 1. Probe with template holdout

Residual at the last prompt token; folds hold out whole template pairs, so a probe cannot win by
memorising a template's words. Accuracy (Wilson interval) and AUROC (bootstrap over pairs)."""),
    ("code", """from builders.stages.persona_probe import ProbeOptions, persona_probe

probe = persona_probe(store, catalog, VARIANT, SET, ProbeOptions(layers=PROBE_LAYERS, template_holdout="2",
                                                                  questions=QUESTIONS, n_bootstrap=200),
                      experiment=EXP, quiet=True).manifest
print(probe.ref)
show(probe, "figures/probe.png")
query(store, f'''SELECT layer, method, round(accuracy, 2) AS acc, round(auroc, 2) AS auroc,
                        round(auroc_ci_low, 2) AS auroc_lo, round(auroc_ci_high, 2) AS auroc_hi, n_test
                 FROM "{probe.ref}" ORDER BY method, layer''')"""),
    ("md", """## 2. Logit lens at the last prompt token

Each layer's residual through the model's own final norm and unembedding: the logit difference of
the tracked tokens, per side (expert persona vs child persona)."""),
    ("code", """from builders.stages.logit_lens import LensOptions, build_logit_lens

lens = build_logit_lens(store, catalog, VARIANT, SET, experiment=EXP,
                        options=LensOptions(layers=LENS_LAYERS, limit_pairs=N_PAIRS), quiet=True).manifest
print(lens.ref)
show(lens, "figures/logit_diff.png")"""),
    ("md", """## 3. Activation patching

Clean (expert) activations written into the corrupted (child) run, one target at a time, many
targets per forward. First the residual stream per layer × position, then every head over all
positions, then the top heads at each of the last positions."""),
    ("code", """from builders.stages.patching import PatchOptions, build_patching

residual = build_patching(store, catalog, VARIANT, SET, experiment=EXP, quiet=True,
                          options=PatchOptions(kind="residual", layers=PATCH_LAYERS, limit_pairs=N_PAIRS)).manifest
print(residual.ref, residual.summary["used_pairs"], "of", residual.summary["pairs"], "pairs used")
for figure in sorted(f for f in residual.files if f.startswith("figures/"))[:2]:
    show(residual, figure)"""),
    ("code", """heads = build_patching(store, catalog, VARIANT, SET, experiment=EXP, quiet=True,
                       options=PatchOptions(kind="heads", layers=HEAD_LAYERS, limit_pairs=N_PAIRS)).manifest
top = query(store, f'''SELECT layer, head, round(avg(normalised), 3) AS effect FROM "{heads.ref}"
                       WHERE normalised IS NOT NULL GROUP BY layer, head
                       ORDER BY avg(normalised) DESC, layer, head LIMIT {TOP_HEADS}''')
TOP = ",".join(f"L{r['layer']}H{r['head']}" for r in top.to_dicts())
print(heads.ref, "top heads:", TOP)
top"""),
    ("code", """by_position = build_patching(store, catalog, VARIANT, SET, experiment=EXP, quiet=True,
                             options=PatchOptions(kind="heads_by_position", heads=TOP, positions=POSITIONS,
                                                  limit_pairs=N_PAIRS)).manifest
print(by_position.ref)
query(store, f'''SELECT layer, head, from_end, any_value(clean_token) AS clean_token, any_value(token) AS token,
                        round(avg(normalised), 3) AS effect
                 FROM "{by_position.ref}" WHERE normalised IS NOT NULL
                 GROUP BY layer, head, from_end ORDER BY layer, head, from_end''')"""),
    ("md", """## 4. Head ablation: the top heads vs random heads

Zero and mean ablation (mean over every token of both sides of the pairs) of the top heads
together, next to random sets of as many other heads; short greedy answers judged for register
(the register judge is validated on its calibration set first)."""),
    ("code", """from builders.stages.head_ablation import AblationOptions, build_head_ablation

ablation = build_head_ablation(store, catalog, VARIANT, SET, experiment=EXP, quiet=True,
                               options=AblationOptions(heads=TOP, random_draws=RANDOM_DRAWS, limit_pairs=N_PAIRS,
                                                       generate=GENERATE, max_new_tokens=MAX_NEW_TOKENS)).manifest
print(ablation.ref)
show(ablation, "figures/delta.png")
query(store, f'''SELECT heads, kind, mode, side, round(mean_delta, 3) AS mean_delta, round(ci_low, 3) AS ci_low,
                        round(ci_high, 3) AS ci_high FROM "{ablation.ref}__by_set" ORDER BY mode, side, kind, heads''')"""),
    ("md", """## 5. Direction patching with the probe direction

α × the probe's unit direction added at the probe's best layer over every prompt token; the
change of the logit difference per α, on both sides."""),
    ("code", """from builders.stages.direction_patching import DirectionOptions, build_direction_patching

BEST = probe.summary["best_by_heldout_auroc"]["probe"]["layer"]
direction = build_direction_patching(store, catalog, probe.ref, variant=VARIANT, prompt_set=SET, experiment=EXP,
                                     options=DirectionOptions(layer=BEST, alphas=ALPHAS, limit_pairs=N_PAIRS),
                                     quiet=True).manifest
print(direction.ref, "layer", BEST)
show(direction, "figures/delta_by_alpha.png")"""),
    ("md", """## 6. The report

`analysis-circuits`: the seed's five sections, each number computed from the tables above, and a
`findings` table saying which claims the data support."""),
    ("code", """from analyses.circuits import CircuitsInputs, circuits_report

inputs = CircuitsInputs(residual=residual.ref, heads=heads.ref, heads_by_position=by_position.ref, probe=probe.ref,
                        logit_lens=lens.ref, ablation=ablation.ref, direction=direction.ref)
report = circuits_report(store, EXP, VARIANT, SET, inputs, top=TOP_HEADS).manifest
print(report.ref)
text = store.read_bytes(report, "report.md").decode()
print(text.splitlines()[0])
display(Markdown(text.replace("](figures/", "](#figures/")))  # figures shown below
for figure in ("figures/logit_diff.png", "figures/patching.png", "figures/heads.png"):
    if figure in report.files:
        show(report, figure)
query(store, f'SELECT claim, round(value, 3) AS value, round(ci_low, 3) AS lo, round(ci_high, 3) AS hi, '
             f'supported FROM "{report.ref}" ORDER BY section, claim')"""),
]


def main() -> None:
    from notebook_writer import write_notebook  # a sibling file (notebooks/ is not a package)

    print(f"wrote {write_notebook(CELLS, Path(__file__).with_name('seed003.ipynb'))}")


if __name__ == "__main__":
    main()
