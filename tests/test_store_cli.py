"""``python -m store``: ls, show, lineage, sql with output formats, errors as one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from store import BuildSpec, Store
from store.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def root(tmp_path) -> str:
    store = Store(str(tmp_path / "root"))
    p = store.build(BuildSpec("prompts-a", "prompts", "b", "1", {}, {}, {}),
                    lambda w: w.write_table([{"prompt_id": "x", "polarity": "pos"}, {"prompt_id": "y", "polarity": "neg"}])).manifest

    def acts(w):
        w.write_table([{"sample": 0}])
        w.create_array("acts", (1, 2, 3), (1, 1, 3), ("sample", "layer", "d_model"))[:] = np.ones((1, 2, 3), np.float32)

    store.build(BuildSpec("activations-a", "activations", "b", "1", {"layers": "all"}, {"prompts": p.ref}, {}), acts)
    return str(tmp_path / "root")


def test_ls_show_lineage(root, capsys):
    assert main(["--store", root, "ls"]) == 0
    out = capsys.readouterr().out
    assert "prompts-a" in out and "activations-a" in out
    assert main(["--store", root, "show", "activations-a"]) == 0
    out = capsys.readouterr().out
    assert "array     acts: sample=1 x layer=2 x d_model=3 float32" in out and "parent    prompts: prompts-a@" in out
    assert main(["--store", root, "lineage", "prompts-a"]) == 0
    out = capsys.readouterr().out
    assert out.index("downstream") < out.index("activations-a@")


def test_sql_formats(root, tmp_path, capsys):
    assert main(["--store", root, "sql", "SELECT polarity, count(*) AS n FROM prompts_a GROUP BY 1 ORDER BY 1"]) == 0
    assert "neg" in capsys.readouterr().out
    target = tmp_path / "q.parquet"
    assert main(["--store", root, "sql", "SELECT * FROM catalog", "--format", "parquet", "--output", str(target)]) == 0
    assert pl.read_parquet(target)["dataset"].sort().to_list() == ["activations-a", "prompts-a"]
    assert main(["--store", root, "sql", "SELECT * FROM prompts", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["prompt_id"] for r in rows} == {"x", "y"} and rows[0]["dataset"] == "prompts-a"
    assert main(["--store", root, "sql", "SELECT prompt_id FROM prompts_a ORDER BY 1", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["prompt_id", "x", "y"]


def test_errors_are_one_line(root, capsys):
    assert main(["--store", root, "show", "nothing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no published version of dataset 'nothing'") and err.count("\n") == 1
    assert main(["--store", root, "sql", "SELECT * FROM missing_table"]) == 2
    err = capsys.readouterr().err
    assert "missing_table" in err and err.count("\n") == 1


def test_module_entry_point(root):
    out = subprocess.run([sys.executable, "-m", "store", "--store", root, "ls"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "activations-a" in out


def test_unknown_store_protocol_and_bad_gc_settings_are_one_line(tmp_path, capsys):
    assert main(["--store", "nosuchproto://x", "ls"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: store URL 'nosuchproto://x'")
    for bad in ("-5", "nan", "soon"):
        with pytest.raises(SystemExit) as exit_:
            main(["--store", str(tmp_path), "gc", "--min-idle", bad])
        assert exit_.value.code == 2 and "expected seconds >= 0" in capsys.readouterr().err


def test_missing_store_root_is_one_line_for_read_commands(tmp_path, capsys):
    missing = str(tmp_path / "no-such-root")
    for command in (["ls"], ["sql", "SELECT 1"], ["show", "x"], ["lineage", "x"], ["gc"]):
        assert main(["--store", missing, *command]) == 2, command
        err = capsys.readouterr().err.splitlines()
        assert err == [f"error: store root {missing!r} does not exist"], command
    (tmp_path / "a-file").write_text("not a store")
    assert main(["--store", str(tmp_path / "a-file"), "ls"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: store root {str(tmp_path / 'a-file')!r} is not a folder"]
    assert not (tmp_path / "no-such-root").exists()  # reading created nothing


def test_empty_store_root_still_lists_nothing(tmp_path, capsys):
    assert main(["--store", str(tmp_path), "ls"]) == 0
    assert "no datasets" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["a-file", "a-file/store"])
def test_unwritable_store_root_fails_builders_in_one_line(tmp_path, where):
    # a regular file where the root (or a folder above it) should be: unwritable even for root,
    # which ignores permission bits
    (tmp_path / "a-file").write_text("not a store")
    root = str(tmp_path / where)
    run = subprocess.run([sys.executable, "-m", "builders.prompts", "--store", root, "--set", "general"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: store root {root!r} is not writable"), run.stderr
    assert (tmp_path / "a-file").read_text() == "not a store"


def test_pull_into_an_unwritable_root_is_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    assert main(["--store", str(tmp_path / "a-file"), "pull", "you/traits", "--endpoint", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: store root {str(tmp_path / 'a-file')!r} is not writable: it is a file, not a folder"]
    below = str(tmp_path / "a-file" / "store")
    assert main(["--store", below, "pull", "you/traits", "--endpoint", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: store root {below!r} is not writable: {tmp_path / 'a-file'} is a file, not a folder"]


def test_unwritable_store_root_fails_a_build_with_a_store_error(tmp_path):
    from store import StoreError

    (tmp_path / "a-file").write_text("x")
    store = Store(str(tmp_path / "a-file" / "root"))
    with pytest.raises(StoreError, match="is not writable"):
        store.build(BuildSpec("prompts-a", "prompts", "b", "1", {}, {}, {}), lambda w: w.write_table([{"a": 1}]))
