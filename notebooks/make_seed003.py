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
The experiment is declared in `catalog.yaml` (`experiments.seed003.stages`), sized small (a few
pairs, every few layers) so it runs in CI; raise the sizes there for a real run. The first code
cell runs the declaration (`python -m builders.run --experiment seed003`): it prints the plan,
builds what is missing and is a no-op on a finished store. Every later cell reads only the store
(`$TRAITSTORE_ROOT`, default `./artifacts`)."""),
    ("code", """# parameters (the stages' sizes live in the catalog declaration)
EXP = "seed003"
TOP_HEADS = 3  # heads listed from the head-patching table (the experiment ablates its top 3)"""),
    ("code", """import logging
import os

os.chdir(os.environ.get("TRAITSTORE_REPO", ".."))  # the repository root: catalog.yaml, datasets/
from IPython.display import Image, Markdown, display

from builders.run import cli
from builders.shared.catalog import load_catalog
from store import Store
from store.sql import query

logging.basicConfig(level=logging.WARNING)
status = cli(["--experiment", EXP, "-q"])
assert status == 0, f"the experiment failed (exit {status}): see the summary above"
store = Store()
catalog = load_catalog()
VARIANT, SET = "instruct", "persona"
records = query(store, f'''SELECT stage, output FROM stage_record WHERE dataset LIKE 'stage-{EXP}-%' ORDER BY stage, output''')
OUT = {}
for row in records.to_dicts():  # each stage's record names the versions it built or found
    OUT.setdefault(row["stage"], []).append(row["output"])


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
    ("code", """probe = store.resolve(OUT["probe"][0])
print(probe.ref)
show(probe, "figures/probe.png")
query(store, f'''SELECT layer, method, round(accuracy, 2) AS acc, round(auroc, 2) AS auroc,
                        round(auroc_ci_low, 2) AS auroc_lo, round(auroc_ci_high, 2) AS auroc_hi, n_test
                 FROM "{probe.ref}" ORDER BY method, layer''')"""),
    ("md", """## 2. Logit lens at the last prompt token

Each layer's residual through the model's own final norm and unembedding: the logit difference of
the tracked tokens, per side (expert persona vs child persona)."""),
    ("code", """lens = store.resolve(OUT["lens"][0])
print(lens.ref)
show(lens, "figures/logit_diff.png")"""),
    ("md", """## 3. Activation patching

Clean (expert) activations written into the corrupted (child) run, one target at a time, many
targets per forward. First the residual stream per layer × position, then every head over all
positions, then the top heads at each of the last positions."""),
    ("code", """residual = store.resolve(OUT["residual"][0])
print(residual.ref, residual.summary["used_pairs"], "of", residual.summary["pairs"], "pairs used")
for figure in sorted(f for f in residual.files if f.startswith("figures/"))[:2]:
    show(residual, figure)"""),
    ("code", """heads = store.resolve(OUT["heads"][0])
top = query(store, f'''SELECT layer, head, round(avg(normalised), 3) AS effect FROM "{heads.ref}"
                       WHERE normalised IS NOT NULL GROUP BY layer, head
                       ORDER BY abs(avg(normalised)) DESC, layer, head LIMIT {TOP_HEADS}''')
TOP = ",".join(f"L{r['layer']}H{r['head']}" for r in top.to_dicts())
print(heads.ref, "top heads:", TOP)
top"""),
    ("code", """by_position = store.resolve(OUT["heads_by_position"][0])
print(by_position.ref, "heads:", by_position.params.get("heads"))
query(store, f'''SELECT layer, head, from_end, any_value(clean_token) AS clean_token, any_value(token) AS token,
                        round(avg(normalised), 3) AS effect
                 FROM "{by_position.ref}" WHERE normalised IS NOT NULL
                 GROUP BY layer, head, from_end ORDER BY layer, head, from_end''')"""),
    ("md", """## 4. Head ablation: the top heads vs random heads

Zero and mean ablation (mean over every token of both sides of the pairs) of the top heads
together, next to random sets of as many other heads; short greedy answers judged for register
(the register judge is validated on its calibration set first)."""),
    ("code", """ablation = store.resolve(OUT["ablation"][0])
print(ablation.ref)
show(ablation, "figures/delta.png")
query(store, f'''SELECT heads, kind, mode, side, round(mean_delta, 3) AS mean_delta, round(ci_low, 3) AS ci_low,
                        round(ci_high, 3) AS ci_high FROM "{ablation.ref}__by_set" ORDER BY mode, side, kind, heads''')"""),
    ("md", """## 5. Direction patching with the probe direction

α × the probe's unit direction added at the probe's best layer over every prompt token; the
change of the logit difference per α, on both sides."""),
    ("code", """direction = store.resolve(OUT["direction"][0])
print(direction.ref, "layer", probe.summary["best_by_heldout_auroc"]["probe"]["layer"], "(the probe's best)")
show(direction, "figures/delta_by_alpha.png")"""),
    ("md", """## 6. The report

`analysis-circuits`: the seed's five sections, each number computed from the tables above, and a
`findings` table saying which claims the data support."""),
    ("code", """report = store.resolve(OUT["report"][0])
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
