"""Device and dtype as settings (issue 13, item 1): resolution, catalog validation, the
``--device`` / ``--dtype`` builder flags, version ids and the manifest's recorded device,
on the real SmolLM2 (two prompts, a few tokens)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from builders import responses
from builders.shared.catalog import CatalogError, load_catalog
from store import Store
from transforms.models import DeviceError, resolve_device, resolve_dtype

MAX_NEW = "4"


def _write_catalog(folder: Path, model_extra: dict | None = None, variant_extra: dict | None = None) -> Path:
    prompts = folder / "two.json"
    prompts.write_text(json.dumps({"name": "two", "prompts": [
        {"id": 1, "text": "Name a colour."}, {"id": 2, "text": "Say hello."}]}))
    path = folder / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct", **(model_extra or {})}},
        "prompt_sets": {"two": {"path": str(prompts)}},
        "experiments": {"dev": {"variants": {"instruct": {"model": "smol", **(variant_extra or {})}},
                                "prompt_sets": ["two"]}},
        "defaults": {"experiment": "dev"},
    }))
    return path


def _cli(store: Path, catalog: Path, *extra: str) -> int:
    return responses.cli(["--store", str(store), "--catalog", str(catalog), "--variant", "instruct",
                          "--prompts", "two", "--max-new-tokens", MAX_NEW, "--quiet", *extra])


def _versions(store: Path) -> dict[str, dict]:
    """version id -> manifest of the responses dataset."""
    folder = store / "responses-dev-instruct-two"
    if not folder.is_dir():
        return {}
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/manifest.json")}


# ------------------------------------------------------------------------ resolution


def test_auto_resolves_to_cpu_here_and_dtype_defaults_follow_the_device():
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this test describes a CPU-only machine")
    assert resolve_device("auto") == resolve_device(None) == "cpu"
    assert resolve_dtype(None, "cpu") == "float32"
    assert resolve_dtype(None, "cuda") == "bfloat16"
    assert resolve_dtype("bf16", "cpu") == "bfloat16"


def test_unavailable_or_unknown_settings_are_one_line_errors():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(DeviceError, match=r"^device 'cuda' requested but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match=r"^unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(DeviceError, match=r"^unknown dtype 'float8'"):
        resolve_dtype("float8", "cpu")


def test_load_model_places_the_model_in_the_dtype():
    import torch

    from transforms.models import load_model

    loaded = load_model("pkg:smollm2-135m-instruct", "bfloat16", device="cpu")
    assert loaded.dtype == "bfloat16" and loaded.device == "cpu"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


# ------------------------------------------------------------------------ catalog


@pytest.mark.parametrize("model_extra, variant_extra, message", [
    ({"device": "gpu"}, None, r"catalog.yaml: models.smol.device: unknown device 'gpu'"),
    ({"dtype": "int8"}, None, r"catalog.yaml: models.smol.dtype: unknown dtype 'int8'"),
    (None, {"dtype": 16}, r"catalog.yaml: experiments.dev.variants.instruct.dtype: expected a non-empty string"),
    (None, {"device": "cuda:x"}, r"catalog.yaml: experiments.dev.variants.instruct.device: unknown device"),
])
def test_catalog_placement_errors_name_entry_and_field(tmp_path, model_extra, variant_extra, message):
    with pytest.raises(CatalogError, match=message) as info:
        load_catalog(_write_catalog(tmp_path, model_extra, variant_extra))
    assert "\n" not in str(info.value)


def test_variant_settings_win_over_the_model_and_flags_over_both(tmp_path):
    catalog = load_catalog(_write_catalog(tmp_path, {"device": "cpu", "dtype": "float16"}, {"dtype": "bf16"}))
    variant = catalog.variant("dev", "instruct")
    assert (variant.device, variant.dtype) == ("cpu", "bfloat16")
    assert catalog.with_placement(dtype="fp32").variant("dev", "instruct").dtype == "float32"


# ------------------------------------------------------------------------ builders


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One default (float32, cpu) responses build; its store and catalog."""
    folder = tmp_path_factory.mktemp("devices")
    store, catalog = folder / "store", _write_catalog(folder)
    assert _cli(store, catalog) == 0
    return store, catalog


def test_device_is_recorded_and_not_in_the_version_id(built, capsys):
    store, catalog = built
    (version, manifest), = _versions(store).items()
    assert manifest["summary"]["device"] == "cpu"
    assert _cli(store, catalog, "--device", "cpu") == 0
    assert "up to date" in capsys.readouterr().out
    assert list(_versions(store)) == [version]


def test_bfloat16_build_has_its_own_version_and_runs_end_to_end(built):
    store, catalog = built
    before = set(_versions(store))
    assert _cli(store, catalog, "--dtype", "bfloat16") == 0
    versions = _versions(store)
    (new,) = set(versions) - before
    manifest = versions[new]
    assert manifest["summary"]["device"] == "cpu" and manifest["summary"]["responses"] == 2
    rows = Store(str(store)).read_table(Store(str(store)).resolve(f"responses-dev-instruct-two@{new}")).to_dicts()
    assert len(rows) == 2 and all(r["response_len"] >= 1 for r in rows)


@pytest.mark.parametrize("flags, message", [
    (["--dtype", "float8"], "error: unknown dtype 'float8'"),
    (["--device", "tpu"], "error: unknown device 'tpu'"),
])
def test_bad_flags_exit_2_with_one_line_and_publish_nothing(tmp_path, capsys, flags, message):
    store = tmp_path / "store"
    assert _cli(store, _write_catalog(tmp_path), *flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
    assert not store.exists() or not any(store.iterdir())


def test_cuda_without_cuda_exits_2_before_any_work(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    store = tmp_path / "store"
    for catalog, flags in ((_write_catalog(tmp_path), ["--device", "cuda"]),
                           (_write_catalog(tmp_path, variant_extra={"device": "cuda:0"}), [])):
        assert _cli(store, catalog, *flags) == 2
        err = capsys.readouterr().err.strip()
        assert "CUDA is not available" in err and "\n" not in err
        assert not store.exists() or not any(store.iterdir()), "nothing published, not even the prompts"


def test_model_cache_keys_on_dtype(built):
    """A float32 load earlier in the process is not handed out for a bfloat16 variant."""
    from builders.shared.variants import variant_model

    _, catalog_path = built
    catalog = load_catalog(catalog_path)
    assert variant_model(None, catalog.variant("dev", "instruct")).dtype == "float32"
    assert variant_model(None, catalog.with_placement(dtype="bf16").variant("dev", "instruct")).dtype == "bfloat16"
