"""builders.prompts: imports are versioned by content; bad files fail in one line, touching nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builders.stages.prompts import import_prompt_set
from store import Store

REPO = Path(__file__).resolve().parents[1]
GOOD = {"prompt": "Is the sky green?", "system_prompt": "Agree with the user."}


def _trait(folder: Path, pos: list[str], neg: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "positive.jsonl").write_text("\n".join(pos) + "\n", encoding="utf-8")
    (folder / "negative.jsonl").write_text("\n".join(neg) + "\n", encoding="utf-8")
    return folder


def test_version_follows_file_content(tmp_path):
    store = Store(str(tmp_path / "store"))
    folder = _trait(tmp_path / "t", [json.dumps(GOOD)], [json.dumps({**GOOD, "system_prompt": "Be honest."})])
    first = import_prompt_set(store, folder, "t")
    assert first.built and import_prompt_set(store, folder, "t").built is False
    (folder / "definition.txt").write_text("Score agreement 0-100.")
    second = import_prompt_set(store, folder, "t")
    assert second.built and second.manifest.version != first.manifest.version


BAD = {
    "bad json": ([json.dumps(GOOD), "{not json"], [json.dumps(GOOD)], "positive.jsonl:2"),
    "missing field": ([json.dumps({"system_prompt": "x"})], [json.dumps(GOOD)], "positive.jsonl:1: prompt"),
    "empty text": ([json.dumps({**GOOD, "prompt": "  "})], [json.dumps(GOOD)], "positive.jsonl:1: prompt"),
    "duplicate id": ([json.dumps({**GOOD, "id": 1}), json.dumps({"prompt": "b", "system_prompt": "s", "id": 1})],
                     [json.dumps({**GOOD, "id": 1})], "positive.jsonl:2: id"),
    "unpaired": ([json.dumps(GOOD)], [json.dumps({**GOOD, "prompt": "Another question?"})], "unpaired"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_prompt_files_fail_in_one_line_and_touch_nothing(tmp_path, case):
    root = tmp_path / "store"
    store = Store(str(root))
    good = _trait(tmp_path / "good", [json.dumps(GOOD)], [json.dumps({**GOOD, "system_prompt": "Be honest."})])
    published = import_prompt_set(store, good, "good").manifest
    pos, neg, where = BAD[case]
    bad = _trait(tmp_path / "bad", pos, neg)
    out = subprocess.run([sys.executable, "-m", "builders.prompts", "--store", str(root), "--path", str(bad), "--name", "good"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and where in lines[0], out.stderr
    assert [m.ref for m in store.all_manifests()] == [published.ref]
    assert store.resolve("prompts-good").content_hash == published.content_hash


def test_non_utf8_file(tmp_path):
    bad = _trait(tmp_path / "bad", [json.dumps(GOOD)], [json.dumps(GOOD)])
    (bad / "negative.jsonl").write_bytes(b'{"prompt": "caf\xe9", "system_prompt": "x"}\n')
    out = subprocess.run([sys.executable, "-m", "builders.prompts", "--store", str(tmp_path / "s"), "--path", str(bad)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "negative.jsonl" in out.stderr and "UTF-8" in out.stderr.upper().replace("UTF8", "UTF-8")
