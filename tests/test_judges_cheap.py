"""The cheap deterministic trait scorers: ``sentiment`` (VADER) and ``lexicon`` (no models)."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from transforms.judge import Lexicon, LexiconError, LexiconScorer
from transforms.judge import ResponseScorer, identity_hash
from transforms.judge import SentimentScorer

TEXTS = [
    "What a wonderful, joyful day! I love it so much!",
    "This is terrible. I feel hopeless, miserable and sad.",
    "The meeting is at 3 pm in room 12.",
    "Not bad at all, actually quite good :)",
    "I HATE waiting!!!",
    "The cake was okay but the service was awful.",
]
CHEERFUL = ["What a wonderful, joyful day! I love it so much!", "Absolutely fantastic news, congratulations!",
            "Thank you, this is great and I am so happy!"]
GLOOMY = ["This is terrible. I feel hopeless, miserable and sad.", "I hate this awful, painful, lonely life.",
          "Everything failed and I am devastated and depressed."]


# ---- sentiment ---------------------------------------------------------------------------------

def test_sentiment_matches_vader_compound_by_hand() -> None:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    scorer = SentimentScorer()
    got = scorer.score([("Q?", t) for t in TEXTS])
    for text, score in zip(TEXTS, got):
        compound = vader.polarity_scores(text)["compound"]
        assert score == pytest.approx(50.0 * (compound + 1.0))
        assert 0.0 <= score <= 100.0
    assert got[2] == pytest.approx(50.0)  # neutral text


def test_sentiment_direction_flips_and_changes_identity() -> None:
    up, down = SentimentScorer(), SentimentScorer(direction=-1)
    items = [("", t) for t in TEXTS]
    for a, b in zip(up.score(items), down.score(items)):
        assert b == pytest.approx(100.0 - a)
    assert up.identity()["direction"] == 1 and down.identity()["direction"] == -1
    assert identity_hash(up) != identity_hash(down)
    with pytest.raises(ValueError):
        SentimentScorer(direction=0)


def test_sentiment_cheerful_high_gloomy_low() -> None:
    scorer = SentimentScorer()
    assert all(s > 75 for s in scorer.score([("q", t) for t in CHEERFUL]))
    assert all(s < 25 for s in scorer.score([("q", t) for t in GLOOMY]))
    assert all(s > 75 for s in SentimentScorer(direction=-1).score([("q", t) for t in GLOOMY]))


def test_sentiment_empty_answer_none_and_question_ignored() -> None:
    scorer = SentimentScorer()
    seen: dict[int, float | None] = {}
    got = scorer.score([("q", ""), ("q", "   \n\t"), ("I love you!", "The meeting is at 3 pm.")],
                       on_result=seen.__setitem__)
    assert got == [None, None, pytest.approx(50.0)]
    assert seen == {0: None, 1: None, 2: got[2]}
    assert scorer.score([("I hate you!", "Great job!")]) == scorer.score([("I love you!", "Great job!")])


def test_sentiment_identity_and_lazy_import() -> None:
    from importlib.metadata import version

    assert SentimentScorer().identity() == {"name": "sentiment", "version": "1",
                                            "analyzer": f"vaderSentiment=={version('vaderSentiment')}",
                                            "direction": 1, "scored": "answer"}
    code = "import sys, transforms.judge.sentiment; print('vaderSentiment' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- lexicon -------------------------------------------------------------------------------------

WEDDING = """# wedding topic lexicon
bride
wedding\t2
first dance\t1.5
groom 3
re:marr(?:y|ied|iage)
"""


def test_lexicon_parse_terms_and_weights() -> None:
    lex = Lexicon.from_text(WEDDING, source="wedding.txt")
    assert [(e.term, e.weight) for e in lex.entries] == [
        ("bride", 1.0), ("wedding", 2.0), ("first dance", 1.5), ("groom", 3.0), ("re:marr(?:y|ied|iage)", 1.0)]
    assert not lex.bipolar and lex.source == "wedding.txt"


def test_lexicon_unipolar_score_by_hand() -> None:
    scorer = LexiconScorer(Lexicon.from_text(WEDDING), scale=50.0)
    # 11 words: The bride and groom shared their first dance at the wedding
    # hits: bride 1 + groom 3 + first dance 1.5 + wedding 2 = 7.5
    text = "The BRIDE and Groom shared their first\n  dance at the wedding."
    assert scorer.score_one(text) == pytest.approx(100.0 * math.tanh((7.5 * 100 / 11) / 50.0))
    # 6 words, no hits: "bride" is not inside "bridge" nor "bridesmaid"; "groom" not in "grooming"
    assert scorer.score_one("They played bridge, bridesmaid grooming.") == 0.0
    # regex on word boundaries: married, marriage, Marry (3); "remarried" no. 7 words.
    text = "They married; the marriage lasted. Marry remarried!"
    assert scorer.score_one(text) == pytest.approx(100.0 * math.tanh((3 * 100 / 7) / 50.0))
    # words are \w+ tokens: It, s, a, wedding = 4 words, hits 2
    assert scorer.score_one("It's a wedding!") == pytest.approx(100.0 * math.tanh((2 * 100 / 4) / 50.0))


def test_lexicon_bipolar_score_by_hand_and_default_scale() -> None:
    lex = Lexicon.from_text("happy\t1\nsad\t-2\n")
    assert lex.bipolar
    # 4 words, hits -2 -2 +1 = -3
    assert LexiconScorer(lex, scale=100.0).score_one("sad SAD happy day") == pytest.approx(
        50.0 + 50.0 * math.tanh((-3 * 100 / 4) / 100.0))
    scorer = LexiconScorer(lex)
    assert scorer.score_one("an ordinary day") == 50.0
    hundred = " ".join(["happy"] * 5 + ["word"] * 95)  # 5 hits per 100 words
    assert round(scorer.score_one(hundred)) == 88
    assert round(LexiconScorer(Lexicon.from_text("happy")).score_one(hundred)) == 76
    assert scorer.score_one("sad sad sad") < 1.0


def test_lexicon_overlapping_entries_count_independently() -> None:
    lex = Lexicon.from_text("re:first dance\ndance\t2\n")
    # 3 words; "first dance" 1 + "dance" 2 = 3 hits
    assert LexiconScorer(lex, scale=100.0).score_one("first dance tonight") == pytest.approx(
        100.0 * math.tanh((3 * 100 / 3) / 100.0))


def test_lexicon_scorer_batch_none_and_question_ignored() -> None:
    scorer = LexiconScorer(Lexicon.from_text(WEDDING))
    seen: dict[int, float | None] = {}
    got = scorer.score([("wedding wedding", ""), ("q", "!!! ..."), ("bride?", "no hits here")],
                       on_result=seen.__setitem__)
    assert got == [None, None, 0.0] and seen == {0: None, 1: None, 2: 0.0}


def _error(tmp_path, text: str) -> str:
    path = tmp_path / "lexicon.txt"
    path.write_text(text)
    with pytest.raises(LexiconError) as info:
        Lexicon.from_file(path)
    message = str(info.value)
    assert "\n" not in message and "lexicon.txt" in message
    return message


@pytest.mark.parametrize("bad", ["re:(foo", "re:a)|(b", "re:", "re:x*"])
def test_lexicon_bad_regex(tmp_path, bad: str) -> None:
    message = _error(tmp_path, f"# comment\nbride\n\n{bad}\n")
    assert "lexicon.txt:4:" in message and "bad regex" in message and repr(bad) in message


@pytest.mark.parametrize("line", ["bride\tlots", "bride\tnan", "bride inf"])
def test_lexicon_bad_weight(tmp_path, line: str) -> None:
    message = _error(tmp_path, f"wedding\n{line}\n")
    assert "lexicon.txt:2:" in message and "bad weight" in message


def test_lexicon_empty_and_duplicate(tmp_path) -> None:
    assert "empty lexicon" in _error(tmp_path, "# only a comment\n\n   \n")
    assert "lexicon.txt:3:" in _error(tmp_path, "Bride\ngroom\nbride\t2\n")
    assert issubclass(LexiconError, ValueError)


def test_lexicon_identity(tmp_path) -> None:
    base = LexiconScorer(Lexicon.from_text(WEDDING))
    ident = base.identity()
    assert set(ident) == {"name", "version", "lexicon_sha256", "scale", "map"}
    assert ident["name"] == "lexicon" and ident["scale"] == 5.0 and ident["map"] == "unipolar"
    changed = LexiconScorer(Lexicon.from_text(WEDDING.replace("wedding\t2", "wedding\t2.5")))
    assert changed.identity()["lexicon_sha256"] != ident["lexicon_sha256"]
    same = "\n".join(reversed(WEDDING.upper().replace("RE:MARR(?:Y|IED|IAGE)", "re:marr(?:y|ied|iage)")
                              .splitlines())) + "\n# another comment\n"
    path = tmp_path / "w.txt"
    path.write_text(same)
    assert LexiconScorer(Lexicon.from_file(path)).identity() == ident
    assert LexiconScorer(Lexicon.from_text(WEDDING), scale=2.0).identity() != ident
    assert LexiconScorer(Lexicon.from_text("good\nbad\t-1")).identity()["map"] == "bipolar"
    with pytest.raises(ValueError):
        LexiconScorer(Lexicon.from_text(WEDDING), scale=0.0)


def test_both_are_response_scorers() -> None:
    assert isinstance(SentimentScorer(), ResponseScorer)
    assert isinstance(LexiconScorer(Lexicon.from_text("bride")), ResponseScorer)
