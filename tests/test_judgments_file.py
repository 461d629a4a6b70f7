"""``builders.judgments --responses-file``: external answers imported and judged; bad input
is one line, exit 2, nothing published."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builders.judgments import cli
from store import Store

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"id": "a1", "question": "What do you think about Mondays?",
         "response": "Mondays are wonderful, a bright fresh start full of hope!", "source": "cheerful"},
        {"id": "a2", "question": "What do you think about Mondays?",
         "response": "Mondays are miserable and grey, a hopeless slog I dread.", "source": "gloomy"},
        {"id": "a3", "question": "Describe a rainy afternoon.", "response": "rain rain rain rain rain rain rain rain",
         "source": "loop"}]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builders.judgments", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("broken, message", [
    ({"id": "b1", "question": "Q?"}, "answers.jsonl:2: missing field 'response'"),
    ({"id": "b1", "question": "Q?", "response": "   "}, "answers.jsonl:2: field 'response' is empty"),
    ({"id": "a1", "question": "Q?", "response": "again"}, "answers.jsonl:2: duplicate id 'a1'"),
])
def test_bad_responses_file_is_one_line_and_publishes_nothing(tmp_path, capsys, broken, message):
    path = write(tmp_path / "answers.jsonl", [ROWS[0], broken])
    store = tmp_path / "store"
    assert cli(["--store", str(store), "--responses-file", str(path), "--name", "mine",
                "--trait-judge", "sentiment"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {message}"
    assert not store.exists() or Store(str(store)).datasets() == []


def test_unknown_judge_and_bad_lexicon_are_one_line(tmp_path, capsys):
    path = write(tmp_path / "answers.jsonl", ROWS)
    assert cli(["--store", str(tmp_path / "s"), "--responses-file", str(path), "--name", "x",
                "--trait-judge", "vibes"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --trait-judge: unknown judge 'vibes' "
                                              "(known: local, openai, sentiment, lexicon)")
    assert cli(["--store", str(tmp_path / "s"), "--responses-file", str(path), "--name", "x", "--judge", "sentiment"]) == 2
    assert "takes an LLM judge" in capsys.readouterr().err
    # a trait dir whose lexicon has a bad regex
    trait = tmp_path / "trait"
    trait.mkdir()
    for side in ("positive", "negative"):
        (trait / f"{side}.jsonl").write_text(json.dumps({"id": 1, "prompt": "Hi?", "system_prompt": side}) + "\n")
    (trait / "definition.txt").write_text("Score joy 0-100.")
    (trait / "lexicon.txt").write_text("# joy\nhappy\t1\nre:(glad\t1\n")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text((ROOT / "catalog.yaml").read_text().replace(
        "prompt_sets:\n", f"prompt_sets:\n  joy:\n    path: {trait}\n", 1))
    assert cli(["--store", str(tmp_path / "s"), "--catalog", str(catalog), "--responses-file", str(path), "--name", "x",
                "--trait-judge", "lexicon", "--trait-set", "joy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: joy/lexicon.txt:3: bad regex") and "\n" not in err
    assert Store(str(tmp_path / "s")).datasets() == ["prompts-joy"]  # the (valid) prompt set only: no judgments


@pytest.mark.slow
def test_responses_file_is_judged_into_a_normal_dataset(tmp_path, capsys):
    path = write(tmp_path / "answers.jsonl", ROWS)
    store = tmp_path / "store"
    # in process (the perplexity judge's calibration features are then shared with the other tests);
    # the rerun below goes through the real entry point
    assert cli(["--store", str(store), "--responses-file", str(path), "--name", "mine", "--trait-judge", "sentiment",
                "-q"]) == 0
    assert capsys.readouterr().out.startswith("built: judgments-external-mine@")
    query = subprocess.run([sys.executable, "-m", "store", "--store", str(store), "sql",
                            "SELECT id, source, trait, coherence FROM judgments_external_mine ORDER BY id",
                            "--format", "csv"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert query.returncode == 0, query.stderr
    lines = query.stdout.strip().splitlines()
    assert lines[0] == "id,source,trait,coherence"
    got = {row.split(",")[0]: [float(x) for x in row.split(",")[2:]] for row in lines[1:]}
    assert got["a1"][0] > 75 > 25 > got["a2"][0]  # cheerful vs gloomy by the sentiment judge
    assert got["a1"][1] > 70 > got["a3"][1]  # fluent vs a token loop by the perplexity judge
    again = run_cli("--store", str(store), "--responses-file", str(path), "--name", "mine", "--trait-judge", "sentiment",
                    "-q")
    assert again.stdout.startswith("up to date: judgments-external-mine@")
