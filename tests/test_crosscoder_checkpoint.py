"""Crosscoder checkpoints in the crosscoder_learning / dictionary_learning layouts, written by hand
here (``.pt`` state dict, Hub-mixin folder, Hub cache snapshot), loaded and checked against numpy."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy

from tests.test_crosscoder_model import B, D, F, M, np_decode, np_pre, np_scale, numpy_weights
from transforms.dictionaries import CheckpointError, CrossCoder, check_width, load_crosscoder, save_crosscoder


def public_state(kind: str, seed: int = 0, k: int = 3, threshold: float = -1.0) -> dict[str, torch.Tensor]:
    """A state dict exactly as dictionary_learning's CrossCoder / BatchTopKCrossCoder saves it."""
    state = {key: torch.from_numpy(value) for key, value in numpy_weights(seed).items()}
    state["code_normalization_id"] = torch.tensor(1)  # CodeNormalization.CROSSCODER.value, int64
    if kind == "batch_topk":
        state["k"] = torch.tensor(k, dtype=torch.int)
        state["threshold"] = torch.tensor(threshold, dtype=torch.float32)
    return state


def mixin_config(kind: str, k: int = 3) -> dict:
    """config.json as PyTorchModelHubMixin writes it from CrossCoder's init arguments."""
    config = {"activation_dim": D, "dict_size": F, "num_encoder_layers": M, "decoder_type": "linear",
              "same_init_for_all_layers": False, "norm_init_scale": None, "init_with_transpose": True,
              "encoder_layers_indices": None, "num_decoder_output_layers": None,
              "code_normalization": "CROSSCODER", "code_normalization_alpha_sae": 1.0,
              "code_normalization_alpha_cc": 0.1}
    if kind == "batch_topk":
        config.update({"k": k, "norm_init_scale": 1.0})
    return config


def write_mixin_folder(folder, state: dict[str, torch.Tensor], config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_numpy({key: value.numpy() for key, value in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((B, M, D)).astype(np.float32)


def assert_matches_numpy(model: CrossCoder, x: np.ndarray, seed: int = 0) -> None:
    w = numpy_weights(seed)
    pre = np_pre(x, w)
    if model.kind == "batch_topk" and float(model.threshold) >= 0:
        pre = np.where(pre * np_scale(w) > float(model.threshold), pre, 0)
    f = model.encode(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(f, pre, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.decode(torch.from_numpy(f)).detach().numpy(), np_decode(pre, w), rtol=1e-4, atol=1e-4)


def test_pt_state_dict_with_hub_mixin_entry_loads(tmp_path, x):
    path = tmp_path / "ae.pt"
    torch.save({**public_state("l1"), "_hub_mixin_config": mixin_config("l1")}, path)
    model = load_crosscoder(path)
    assert (model.kind, model.n_models, model.d_model, model.dict_size) == ("l1", M, D, F)
    assert torch.equal(model.input_scale, torch.ones(M))
    assert_matches_numpy(model, x)


def test_batch_topk_pt_with_threshold_uses_it(tmp_path, x):
    pre = np_pre(x, numpy_weights(0)) * np_scale(numpy_weights(0))
    threshold = float(np.quantile(pre, 0.8))
    path = tmp_path / "ae.pt"
    torch.save(public_state("batch_topk", k=5, threshold=threshold), path)
    model = load_crosscoder(path)
    assert (model.kind, model.k, float(model.threshold)) == ("batch_topk", 5, pytest.approx(threshold))
    assert not model.training
    assert_matches_numpy(model, x)


@pytest.mark.parametrize("kind", ["l1", "batch_topk"])
def test_hub_mixin_folder_loads(tmp_path, x, kind):
    write_mixin_folder(tmp_path / "cc", public_state(kind, threshold=0.5), mixin_config(kind))
    model = load_crosscoder(tmp_path / "cc")
    assert model.kind == kind
    assert_matches_numpy(model, x)
    assert_matches_numpy(load_crosscoder(tmp_path / "cc" / "model.safetensors"), x)


def test_hub_repo_id_from_the_cache_offline(tmp_path, x, monkeypatch):
    """The layout snapshot_download leaves in the HF cache; offline-first, no network touched."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--cc-l13"
    write_mixin_folder(repo / "snapshots" / sha, public_state("batch_topk", threshold=0.5), mixin_config("batch_topk"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_crosscoder("someone/cc-l13")
    assert_matches_numpy(model, x)
    assert load_crosscoder("someone/cc-l13", revision=sha).k == 3
    with pytest.raises(CheckpointError) as error:
        load_crosscoder("someone/absent")
    assert "someone/absent" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["l1", "batch_topk"])
def test_save_load_round_trip(tmp_path, x, kind):
    model = CrossCoder(M, D, F, kind=kind, k=4, seed=3)
    model.load_state_dict({**model.state_dict(), **public_state(kind, k=4, threshold=0.25)})
    model.set_input_scale([0.5, 3.0])
    folder = save_crosscoder(model, tmp_path / "out", {"layer": 3, "variants": ["a", "b"]})
    config = json.loads((folder / "config.json").read_text())
    assert {key: config[key] for key in ("activation_dim", "dict_size", "num_encoder_layers", "code_normalization",
                                         "decoder_type")} == {"activation_dim": D, "dict_size": F, "num_encoder_layers": M,
                                                              "code_normalization": "CROSSCODER", "decoder_type": "linear"}
    assert config.get("k") == (4 if kind == "batch_topk" else None)
    assert config["traitstore"] == {"kind": kind, "input_scale": [0.5, 3.0], "layer": 3, "variants": ["a", "b"]}
    loaded = load_crosscoder(folder)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(loaded.input_scale, torch.tensor([0.5, 3.0]))
    assert_matches_numpy(loaded, x)


def test_our_checkpoint_loads_in_the_public_module_layout(tmp_path):
    """The other way: what we save loads strictly into a module shaped like dictionary_learning's."""
    from safetensors.torch import load_file

    model = CrossCoder(M, D, F, kind="batch_topk", k=2)
    state = load_file(str(save_crosscoder(model, tmp_path / "cc") / "model.safetensors"))
    public = torch.nn.Module()
    public.encoder, public.decoder = torch.nn.Module(), torch.nn.Module()
    public.encoder.weight = torch.nn.Parameter(torch.empty(M, D, F))
    public.encoder.bias = torch.nn.Parameter(torch.empty(F))
    public.decoder.weight = torch.nn.Parameter(torch.empty(M, F, D))
    public.decoder.bias = torch.nn.Parameter(torch.empty(M, D))
    public.register_buffer("code_normalization_id", torch.tensor(0))
    public.register_buffer("k", torch.tensor(0, dtype=torch.int))
    public.register_buffer("threshold", torch.tensor(0.0))
    public.load_state_dict(state, strict=True)
    assert int(public.code_normalization_id) == 1 and int(public.k) == 2


def one_line_error(path, state, config=None) -> str:
    write_mixin_folder(path, state, config or mixin_config("l1"))
    with pytest.raises(CheckpointError) as error:
        load_crosscoder(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_key_is_one_line(tmp_path):
    state = public_state("l1")
    del state["decoder.bias"]
    assert "'decoder.bias'" in one_line_error(tmp_path / "a", state)
    pt = tmp_path / "b.pt"
    state = public_state("batch_topk")
    del state["k"]
    torch.save(state, pt)
    with pytest.raises(CheckpointError, match=r"b\.pt: missing key 'k'"):
        load_crosscoder(pt)


def test_wrong_shape_is_one_line(tmp_path):
    state = public_state("l1")
    state["decoder.weight"] = state["decoder.weight"][:, :-1]
    message = one_line_error(tmp_path / "a", state)
    assert "decoder.weight" in message and str([M, F - 1, D]) in message and str([M, F, D]) in message


def test_unknown_code_normalization_is_refused(tmp_path):
    state = public_state("l1")
    state["code_normalization_id"] = torch.tensor(2)
    assert "code_normalization_id 2 (SAE)" in one_line_error(tmp_path / "a", state)
    config = {**mixin_config("l1"), "code_normalization": "MIXED"}
    assert "MIXED" in one_line_error(tmp_path / "b", public_state("l1"), config)
    assert "activation_dim" in one_line_error(tmp_path / "c", public_state("l1"), {**mixin_config("l1"), "activation_dim": 8})


def test_check_width():
    from transforms.dictionaries import DictionaryError

    assert issubclass(CheckpointError, DictionaryError) and issubclass(CheckpointError, ValueError)
    model = CrossCoder(M, D, F)
    check_width(model, D, "gemma layer 13")
    with pytest.raises(CheckpointError, match=f"gemma layer 13: .* width {D}, the model's width is 2304"):
        check_width(model, 2304, "gemma layer 13")
