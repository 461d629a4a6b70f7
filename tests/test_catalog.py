"""catalog.yaml: the repository's catalog loads; every invalid one names the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builders.shared.catalog import CatalogError, load_catalog

REPO = Path(__file__).resolve().parents[1]


def test_repository_catalog_loads():
    catalog = load_catalog(REPO / "catalog.yaml")
    demo = catalog.experiment("demo")
    assert demo.variants["instruct"].model.id == "pkg:smollm2-135m-instruct"
    assert demo.variants["base"].model.id == "pkg:gemma3-270m"
    for name in demo.prompt_sets:
        assert catalog.prompt_set(name).path.exists(), name
    assert catalog.experiment().name == "demo"  # the default


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


BASE = {
    "models": {"m": {"id": "pkg:smollm2-135m-instruct"}},
    "traits": {"t": {"definition": "d.txt"}},
    "prompt_sets": {"p": {"path": "p", "trait": "t"}},
    "experiments": {"e": {"variants": {"v": {"model": "m"}}, "prompt_sets": ["p"]}},
    "defaults": {"experiment": "e"},
}


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["experiments"]["e"]["variants"]["v"].update(model="nope"), "experiments.e.variants.v.model"),
    (lambda c: c["models"]["m"].pop("id"), "models.m.id"),
    (lambda c: c["prompt_sets"]["p"].update(trait="nope"), "prompt_sets.p.trait"),
    (lambda c: c["experiments"]["e"].update(prompt_sets=["nope"]), "experiments.e.prompt_sets"),
    (lambda c: c["models"]["m"].update(colour="red"), "models.m"),
    (lambda c: c.update(defaults={"experiment": "nope"}), "defaults.experiment"),
    (lambda c: c["experiments"]["e"].update(variants={}), "experiments.e.variants"),
    (lambda c: c.update(models=[1, 2]), "models"),
])
def test_invalid_catalog_names_the_key(tmp_path, mutate, key):
    import copy

    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(CatalogError) as err:
        load_catalog(_write(tmp_path, data))
    message = str(err.value)
    assert "catalog.yaml" in message and key in message and "\n" not in message


def test_bad_yaml_names_line(tmp_path):
    with pytest.raises(CatalogError, match=r"catalog.yaml:\d+:\d+: invalid YAML"):
        load_catalog(_write(tmp_path, "models:\n  m: {id: [x\n  n: 2\n"))


def test_unknown_variant_and_experiment(tmp_path):
    catalog = load_catalog(_write(tmp_path, BASE))
    with pytest.raises(CatalogError, match="unknown variant 'x'"):
        catalog.variant("e", "x")
    with pytest.raises(CatalogError, match="unknown experiment 'x'"):
        catalog.experiment("x")
