"""``python -m store export``: a vectors version as a llama.cpp control vector, a repeng gguf and
plain tensors, read back with the ``gguf`` package / torch / safetensors; bad requests are one
line, exit 2, and write nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

from store import BuildSpec, Store
from store.cli import main

REPO = Path(__file__).resolve().parents[1]
LAYERS = [0, 1, 2, 3]
D = 8
CONVENTION = "layer k = output of decoder block k = hidden_states[k+1]"


def planted(seed: int) -> np.ndarray:
    """Row of layer k: random, plus k+1 at coordinate k, so a layer shifted by one shows."""
    vectors_LD = np.random.default_rng(seed).normal(size=(len(LAYERS), D)).astype(np.float32)
    for i, k in enumerate(LAYERS):
        vectors_LD[i, k] = 10.0 * (k + 1)
    return vectors_LD


def publish(store: Store, name: str, component: str, methods: dict[str, np.ndarray]) -> str:
    from safetensors.numpy import save

    def produce(writer):
        for method, vectors_LD in methods.items():
            meta = {"model_id": "org/tiny-model", "model_revision": "abc123", "layer_convention": CONVENTION,
                    "layers": json.dumps(LAYERS), "position": "response[:5]", "component": component,
                    "method": method, "norms": json.dumps(np.linalg.norm(vectors_LD, axis=-1).tolist())}
            writer.write_bytes(f"vectors/{method}.safetensors", save({"vectors": vectors_LD}, metadata=meta))
        writer.write_table([{"layer": k, "method": m} for m in methods for k in LAYERS])

    spec = BuildSpec(name, "vectors", "tests", "1", {"component": component}, {}, {"model_id": "org/tiny-model"})
    return store.build(spec, produce).manifest.ref


@pytest.fixture
def root(tmp_path) -> dict:
    store = Store(str(tmp_path / "root"))
    mean, probe = planted(0), planted(1)
    refs = {"residual": publish(store, "vectors-x-base-set-response-residual", "residual",
                                {"mean_diff": mean, "probe": probe}),
            "attn": publish(store, "vectors-x-base-set-response-attn_out", "attn_out", {"mean_diff": mean}),
            "prompts": store.build(BuildSpec("prompts-x", "prompts", "tests", "1", {}, {}, {}),
                                   lambda w: w.write_table([{"a": 1}])).manifest.ref}
    out = tmp_path / "out"
    out.mkdir()
    return {"root": str(tmp_path / "root"), "refs": refs, "mean": mean, "probe": probe, "out": out}


def export(root: dict, ref: str, *args: str) -> int:
    return main(["--store", root["root"], "export", ref, *args])


def field(reader: GGUFReader, key: str):
    f = reader.get_field(key)
    assert f is not None, key
    return f.contents()


def llama_cpp_layers(reader: GGUFReader, n_layer: int) -> dict[int, np.ndarray]:
    """What llama.cpp adds to block il's output, restated from its loader:
    common_control_vector_load_one puts direction.N at offset n_embd*(N-1) (N=0 rejected),
    llama_adapter_cvec::apply reads tensors[il] from offset n_embd*(il-1), il = 1..n_layer-1."""
    n_embd, buf = -1, np.zeros(0, np.float32)
    for t in reader.tensors:
        prefix, _, index = t.name.partition(".")
        assert prefix == "direction" and int(index) > 0
        n_embd = int(t.n_elements)
        n = int(index)
        if buf.size < n_embd * n:
            buf = np.concatenate([buf, np.zeros(n_embd * n - buf.size, np.float32)])
        buf[n_embd * (n - 1):n_embd * n] += np.asarray(t.data, np.float32)
    return {il: buf[n_embd * (il - 1):n_embd * il] for il in range(1, n_layer)
            if n_embd * il <= buf.size}


def test_gguf_matches_llama_cpp_layer_rule(root):
    path = root["out"] / "v.gguf"
    ref = root["refs"]["residual"]
    assert export(root, ref, "--format", "gguf", "--output", str(path)) == 0
    reader = GGUFReader(str(path))
    assert field(reader, "general.architecture") == "controlvector"
    assert field(reader, "controlvector.model_hint") == "org/tiny-model"
    assert field(reader, "controlvector.layer_count") == 3
    assert reader.get_field("controlvector.layer_count").types == [GGUFValueType.INT32]
    assert field(reader, "traitstore.layer_convention") == CONVENTION
    assert field(reader, "traitstore.source") == ref and ref.startswith("vectors-x-base-set-response-residual@")
    assert field(reader, "traitstore.method") == "mean_diff"
    assert field(reader, "traitstore.component") == "residual"
    assert json.loads(field(reader, "traitstore.layers")) == [1, 2, 3]
    # layer 0 has no llama.cpp slot: left out; every tensor float32, 1-D, exact
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.2", "direction.3"]
    for t in reader.tensors:
        assert t.tensor_type == 0 and list(t.shape) == [D]  # GGML_TYPE_F32
        k = int(t.name.split(".")[1])
        np.testing.assert_array_equal(np.asarray(t.data), root["mean"][LAYERS.index(k)])
    # block il's output receives our layer il (the planted coordinate il, value 10*(il+1))
    applied = llama_cpp_layers(reader, n_layer=len(LAYERS))
    assert sorted(applied) == [1, 2, 3]
    for il, vec in applied.items():
        np.testing.assert_array_equal(vec, root["mean"][il])
        assert int(np.argmax(vec)) == il and vec[il] == 10.0 * (il + 1)


def test_gguf_subset_scale_method(root):
    path = root["out"] / "v.gguf"
    assert export(root, root["refs"]["residual"], "--format", "gguf", "--method", "probe", "--layers", "3,2",
                  "--scale", "-0.5", "--model-hint", "llama", "--output", str(path)) == 0
    reader = GGUFReader(str(path))
    assert field(reader, "controlvector.model_hint") == "llama" and field(reader, "controlvector.layer_count") == 2
    assert field(reader, "traitstore.method") == "probe" and float(field(reader, "traitstore.scale")) == -0.5
    got = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert sorted(got) == ["direction.2", "direction.3"]
    for k in (2, 3):
        np.testing.assert_array_equal(got[f"direction.{k}"], root["probe"][k] * np.float32(-0.5))


def test_repeng_gguf_keeps_layer_0_and_reads_as_repeng_does(root):
    path = root["out"] / "r.gguf"
    assert export(root, root["refs"]["residual"], "--format", "repeng", "--output", str(path)) == 0
    reader = GGUFReader(str(path))
    assert field(reader, "general.architecture") == "controlvector"
    assert field(reader, "controlvector.layer_count") == 4
    assert reader.get_field("controlvector.layer_count").types == [GGUFValueType.UINT32]
    # repeng's import_gguf: directions[int(name.split(".")[1])] = tensor.data; its ControlModel
    # adds directions[i] to model.model.layers[i]'s output = our layer i
    directions = {int(t.name.split(".")[1]): np.asarray(t.data) for t in reader.tensors
                  if t.name.startswith("direction.")}
    assert sorted(directions) == LAYERS
    for k in LAYERS:
        np.testing.assert_array_equal(directions[k], root["mean"][k])


def test_pt_round_trips(root):
    import torch
    from safetensors.numpy import load_file, safe_open

    pt = root["out"] / "v.pt"
    assert export(root, root["refs"]["residual"], "--format", "pt", "--scale", "2", "--output", str(pt)) == 0
    loaded = torch.load(pt, weights_only=True)
    assert sorted(loaded) == LAYERS
    for k in LAYERS:
        assert loaded[k].dtype == torch.float32
        np.testing.assert_array_equal(loaded[k].numpy(), root["mean"][k] * 2)
    sidecar = json.loads((root["out"] / "v.pt.json").read_text())
    assert sidecar["traitstore.source"] == root["refs"]["residual"]
    assert sidecar["traitstore.layer_convention"] == CONVENTION and sidecar["traitstore.model_id"] == "org/tiny-model"

    st = root["out"] / "v.safetensors"
    assert export(root, root["refs"]["attn"], "--format", "pt", "--layers", "0,1", "--output", str(st)) == 0
    tensors = load_file(str(st))
    assert sorted(tensors) == ["layer_0", "layer_1"]
    for k in (0, 1):
        np.testing.assert_array_equal(tensors[f"layer_{k}"], root["mean"][k])
    with safe_open(str(st), "np") as handle:
        assert handle.metadata()["traitstore.component"] == "attn_out"
    assert not (root["out"] / "v.safetensors.json").exists()


@pytest.mark.parametrize("key,args,message", [
    ("residual", ["--format", "gguf", "--method", "pca"], "has no 'pca' vectors (methods: mean_diff, probe)"),
    ("attn", ["--format", "gguf"], "only residual vectors qualify"),
    ("attn", ["--format", "repeng"], "only residual vectors qualify"),
    ("residual", ["--format", "gguf", "--layers", "2,9"], "layer(s) 9 not in the vectors"),
    ("residual", ["--format", "gguf", "--layers", "0,1"], "layer 0 cannot be a llama.cpp control vector"),
    ("residual", ["--format", "pt", "--layers", "two"], "expected 'all' or a comma list"),
    ("residual", ["--format", "pt", "--scale", "nan"], "--scale must be a finite number"),
    ("prompts", ["--format", "pt"], "is a prompts dataset; export needs a vectors dataset"),
])
def test_bad_requests_are_one_line_and_write_nothing(root, capsys, key, args, message):
    out = root["out"] / "x.gguf"
    assert export(root, root["refs"][key], *args, "--output", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert os.listdir(root["out"]) == []


def test_existing_output_needs_force(root, capsys):
    path = root["out"] / "v.pt"
    (root["out"] / "v.pt.json").write_text("keep")
    assert export(root, root["refs"]["residual"], "--format", "pt", "--output", str(path)) == 2
    assert "v.pt.json exists (pass --force to overwrite)" in capsys.readouterr().err
    assert sorted(os.listdir(root["out"])) == ["v.pt.json"] and (root["out"] / "v.pt.json").read_text() == "keep"
    assert export(root, root["refs"]["residual"], "--format", "pt", "--force", "--output", str(path)) == 0
    assert sorted(os.listdir(root["out"])) == ["v.pt", "v.pt.json"]
    assert json.loads((root["out"] / "v.pt.json").read_text())["traitstore.method"] == "mean_diff"


def test_unknown_dataset_and_missing_folder(root, capsys):
    assert export(root, "vectors-nope", "--format", "gguf", "--output", str(root["out"] / "a.gguf")) == 2
    assert capsys.readouterr().err.count("\n") == 1
    missing = root["out"] / "no" / "a.gguf"
    assert export(root, root["refs"]["residual"], "--format", "gguf", "--output", str(missing)) == 2
    assert "does not exist" in capsys.readouterr().err and os.listdir(root["out"]) == []


def test_export_help_imports_no_numpy_or_torch():
    code = ("import sys\nfrom store.cli import main\ntry:\n    main(['export', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('numpy', 'torch', 'gguf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
