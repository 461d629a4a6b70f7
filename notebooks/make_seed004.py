"""Generate notebooks/seed004.ipynb: seed 004 (per-token trait monitoring) on the offline SmolLM2,
run through its catalog declaration (experiment ``seed004``); every cell after the first reads
only the store. The notebook is generated so its source stays reviewable as Python.
Run: python notebooks/make_seed004.py"""
from pathlib import Path

CELLS = [
    ("md", """# Seed 004 on SmolLM2: watching traits token by token

Seed 004 monitors how persona traits emerge *while* a model writes: a vector per trait, then
every token of new answers projected onto all of them as it is generated. The experiment is
declared in `catalog.yaml` (`experiments.seed004.stages`): four trait vectors (optimism vetted
by its sentiment judge, sycophancy, evil, hallucination), live projections of answers to
everyday questions (`general`) at the middle layer, and the trait-dynamics viewer.

The first code cell runs the declaration (`python -m builders.run --experiment seed004`): it prints
the plan with cost estimates, builds what is missing and is a no-op on a finished store. Every later
cell reads only the store (`$TRAITSTORE_ROOT`, default `./artifacts`)."""),
    ("code", """# parameters
EXP = "seed004"
N_TRACES = 3  # responses whose per-token traces are plotted
TOP_TOKENS = 5  # tokens listed per trait and direction
WEAK_AUROC = 0.7  # a vector whose validation AUROC at the monitored layer is below this is a weak monitor"""),
    ("code", """import logging
import os

os.chdir(os.environ.get("TRAITSTORE_REPO", ".."))  # the repository root: catalog.yaml, datasets/
from IPython.display import Markdown, display

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
found; everything below reads exactly those versions."""),
    ("code", """records = query(store, f'''SELECT stage, kind, output, built FROM stage_record
                           WHERE dataset LIKE 'stage-{EXP}-%' ORDER BY stage, output''')
OUT = {}
for row in records.to_dicts():
    OUT.setdefault(row["stage"], []).append(row["output"])
records"""),
    ("md", """## The four trait vectors

Mean-difference vectors of the residual stream over the whole response, positive vs negative
system prompts. Optimism's were kept only when its sentiment judge agreed with the polarity (the
vetting line below); the others are not vetted (the offline judge cannot score them)."""),
    ("code", """monitor = store.resolve(OUT["monitor"][0])
LAYER = monitor.summary["layers"][0]
monitored = [spec.rsplit(":", 1) for spec in monitor.params["vectors"]]  # the exact vector sets it scored
vetting = store.resolve(OUT["vec_optimism"][0]).summary.get("vetting")
print("monitored layer:", LAYER, "| optimism vetting:", vetting)
per_set = [f'''SELECT '{store.resolve(ref).params["prompt_set"]}' AS prompt_set, '{ref}' AS vectors,
                   max(val_auroc) FILTER (WHERE layer = {LAYER}) AS val_auroc_at_layer,
                   arg_max(layer, val_auroc) AS best_layer, max(val_auroc) AS best_val_auroc,
                   any_value(n_val) AS n_val, bool_or(small_sample) AS small_sample
            FROM "{ref}" WHERE method = '{method}' ''' for ref, method in monitored]
quality = query(store, " UNION ALL ".join(per_set) + " ORDER BY prompt_set")
quality"""),
    ("code", """weak = quality.filter(quality["val_auroc_at_layer"] < WEAK_AUROC)
lines = [f"- **{r['prompt_set']}**: validation AUROC {r['val_auroc_at_layer']:.2f} at layer {LAYER} "
         f"(best {r['best_val_auroc']:.2f} at layer {r['best_layer']}, {r['n_val']} held-out responses)."
         for r in quality.to_dicts()]
verdict = (f"**Weak monitors** (AUROC < {WEAK_AUROC} at the monitored layer): "
           + ", ".join(weak["prompt_set"].to_list()) + ": their traces below are not evidence of the trait."
           if weak.height else f"Every vector separates its held-out responses at AUROC >= {WEAK_AUROC} at layer {LAYER}.")
display(Markdown("\\n".join(lines) + "\\n\\n" + verdict))"""),
    ("md", """## Per-token traces

Each response token's projection onto the four unit vectors, centred on the midpoint of the
vectors' training classes (`centered`: above 0 leans to the trait's positive side). Response tokens
only: the prompt's first token (the attention sink) projects two orders of magnitude larger and
would flatten every trace."""),
    ("code", """import matplotlib.pyplot as plt
import polars as pl

trace = store.read_table(monitor).filter(pl.col("layer") == LAYER)
samples = sorted(trace["sample"].unique().to_list())[:N_TRACES]
prompts = store.read_table(store.resolve(monitor.parents["prompts"]))
prompt_of = dict(zip(prompts["prompt_id"].cast(str), prompts["prompt"]))
fig, axes = plt.subplots(len(samples), 1, figsize=(11, 2.8 * len(samples)), squeeze=False)
for ax, sample in zip(axes[:, 0], samples):
    rows = trace.filter((pl.col("sample") == sample) & pl.col("is_response")).sort("token_index")
    for (vector,), part in rows.group_by("vector", maintain_order=True):
        ax.plot(part["token_index"] - part["token_index"].min(), part["centered"],
                label=vector.split(":")[0].replace("_instruction", ""))
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title(f"{sample}: {prompt_of.get(sample.split(':')[0], '')[:90]}", fontsize=9)
    ax.set_ylabel("centred projection")
axes[0, 0].legend(loc="upper right", fontsize=8)
axes[-1, 0].set_xlabel("response token")
fig.tight_layout()
plt.show()"""),
    ("md", """## Which tokens move each trait

The change of a trait's projection from one response token to the next, credited to the token
that caused it; the largest rises and falls over every monitored response."""),
    ("code", """moves = query(store, f'''
WITH r AS (SELECT sample, vector, token_index, token,
                  centered - lag(centered) OVER (PARTITION BY sample, vector ORDER BY token_index) AS step
           FROM "{monitor.ref}" WHERE layer = {LAYER} AND is_response),
ranked AS (SELECT *, row_number() OVER (PARTITION BY vector ORDER BY step DESC) AS up,
                     row_number() OVER (PARTITION BY vector ORDER BY step ASC) AS down
           FROM r WHERE step IS NOT NULL)
SELECT split_part(vector, ':', 1) AS trait, CASE WHEN up <= {TOP_TOKENS} THEN 'rise' ELSE 'fall' END AS move,
       token, round(step, 3) AS step, sample, token_index
FROM ranked WHERE up <= {TOP_TOKENS} OR down <= {TOP_TOKENS}
ORDER BY trait, move DESC, abs(step) DESC''')
with pl.Config(tbl_rows=200):
    display(moves)"""),
    ("md", """## Do the traits move together?

Pearson r between two traits' per-token scores over the response tokens (lag 0: the same token;
lag k: the second trait k tokens later), `analyses.projections.lag_correlation_sql`. Vectors that
are nearly parallel give high r on every answer whatever the answer says."""),
    ("code", """from analyses.projections import lag_correlation_sql

lags = query(store, lag_correlation_sql(f'"{monitor.ref}"', 2))
pairs = lags.filter((pl.col("lag") == 0) & (pl.col("vector_a") != pl.col("vector_b")))
top = pairs.sort(pl.col("pearson_r").abs(), descending=True).row(0, named=True) if pairs.height else None
if top:
    display(Markdown(f"Most correlated pair at layer {top['layer']}: {top['vector_a']} and {top['vector_b']}, "
                     f"r = {top['pearson_r']:+.2f} over {top['tokens']} tokens."))
lags.with_columns(pl.col("pearson_r").round(3))"""),
    ("md", """## The viewer

`analyses.viewer` renders every monitored response with its per-token scores (layer, vector and
score mode selectable) into one self-contained page; open it in a browser."""),
    ("code", """viewer = store.resolve(OUT["viewer"][0])
print(viewer.ref, viewer.summary)
print("open:", store.path(viewer, "index.html"))"""),
]


def main() -> None:
    from notebook_writer import write_notebook  # a sibling file (notebooks/ is not a package)

    print(f"wrote {write_notebook(CELLS, Path(__file__).with_name('seed004.ipynb'))}")


if __name__ == "__main__":
    main()
