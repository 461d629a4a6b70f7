"""Write notebooks/walkthrough.ipynb from the cells below (the notebook is generated so
its source stays reviewable as Python). Run: python notebooks/make_walkthrough.py"""
from pathlib import Path

CELLS = [
    ("md", """# traitstore walkthrough

The catalog, the store, lineage, a SQL query and a plot of per-layer activation norms.
The store is `$TRAITSTORE_ROOT` (default `./artifacts`, where `python -m builders.demo` writes).
If it holds no activations yet, the next cells build a small set with SmolLM2 (about a minute)."""),
    ("code", """import os
os.chdir(os.environ.get("TRAITSTORE_REPO", ".."))  # the repository root: catalog.yaml, datasets/
from builders.shared.catalog import load_catalog
from store import Store
from store.sql import query

store = Store()
catalog = load_catalog()
demo = catalog.experiment("demo")
print(store)
for name, variant in demo.variants.items():
    print(f"{name:>9}: {variant.model.id}")
print("prompt sets:", ", ".join(demo.prompt_sets))"""),
    ("code", """from builders.stages.activations import capture_activations
from builders.stages.responses import generate_responses

if not any(name.startswith("activations-demo-instruct-general") for name in store.datasets()):
    generate_responses(store, catalog, "instruct", "general", "demo", {"max_new_tokens": 12}, quiet=True)
    capture_activations(store, catalog, "instruct", "general", "response[:]", quiet=True)
acts_name = next(n for n in store.datasets() if n.startswith("activations-demo-instruct-general"))
acts = store.resolve(acts_name)
print(acts.ref, acts.arrays["acts"]["dimension_names"], acts.arrays["acts"]["shape"])"""),
    ("md", "Every version records the exact versions it was built from; lineage goes both ways."),
    ("code", """def upstream(manifest, depth=0):
    print("  " * depth + manifest.ref, f"[{manifest.kind}]")
    for parent in store.parents(manifest):
        upstream(parent, depth + 1)

upstream(acts)
prompts = store.resolve("prompts-general")
print("built from prompts-general:", [m.ref for m in store.children(prompts)])"""),
    ("md", "Every dataset's latest version is a DuckDB view; `catalog` lists all versions."),
    ("code", """query(store, "SELECT kind, count(*) AS versions, sum(rows) AS rows FROM catalog GROUP BY kind ORDER BY kind")"""),
    ("code", """responses = query(store, '''
    SELECT prompt_id, prompt, response, response_len
    FROM responses WHERE variant = 'instruct' AND prompt_set = 'general'
    ORDER BY prompt_id LIMIT 5''')
responses"""),
    ("md", "Per-layer activation norms: the residual stream grows through the network."),
    ("code", """import matplotlib.pyplot as plt
import numpy as np

array = store.open_array(acts, "acts")  # [sample, layer, d_model], one chunk per layer
layers = array.attrs["layers"]
norms = np.linalg.norm(array[:], axis=-1)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.errorbar(layers, norms.mean(0), yerr=norms.std(0), marker="o", capsize=2)
ax.set_xlabel("layer k (output of block k = hidden_states[k+1])")
ax.set_ylabel("mean ‖h‖ over response tokens")
ax.set_title(acts.name)
fig.tight_layout()
plt.show()
assert norms.shape == (array.shape[0], len(layers))
print(f"norm grows from {norms.mean(0)[0]:.1f} at layer {layers[0]} to {norms.mean(0)[-1]:.1f} at layer {layers[-1]}")"""),
    ("code", """query(store, f"SELECT layer, round(mean_norm, 2) AS mean_norm FROM {acts_name.replace('-', '_').replace('.', '_')}__layer_stats ORDER BY layer LIMIT 5")"""),
]


def main() -> None:
    from notebook_writer import write_notebook  # a sibling file (notebooks/ is not a package)

    print(f"wrote {write_notebook(CELLS, Path(__file__).with_name('walkthrough.ipynb'))}")


if __name__ == "__main__":
    main()
