"""Response-scorer cost on SmolLM2-135M-Instruct, side by side in one run, same N responses.

    python benchmarks/judges.py [--n 64] [--repeats 3]

N deterministic (question, answer) pairs (answers ~20-40 tokens, every fourth degenerate:
token loops, word salad, a punctuation flood), scored five ways:

- plain forward: ``model(input_ids, attention_mask)`` over chat-formatted question + answer,
  batched as PerplexityFeaturizer batches (length sorted, 16, right padded). The baseline;
- conditional pass: ``featurizer._answer_logprobs`` on those sequences (pass + log-softmax + gather);
- perplexity coherence: ``PerplexityScorer.score`` end to end: conditional and answer-only
  (``pmi``) passes, token statistics, a zero-coefficient calibration;
- sentiment / lexicon: VADER and an inline optimism lexicon on 1,000 answers (items cycled);
- llm judge: ``LocalJudge`` exact P(0..100), coherence template, ``score_responses`` (no cache).

Each run is warmed up on one batch; the fast ones then alternate ``--repeats`` rounds, best
(min) kept; the LLM judge is timed once; torch threads as torch sets them. Read "x plain
forward" per response: perplexity goal <= 1.2; above the conditional pass is the answer-only
pass plus token statistics. ms/response equals s/1,000 (both shown). Last stdout line: JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import round_robin  # noqa: E402  (after the path insert)

QUESTIONS = [
    "How should I prepare for a job interview next week?", "What is a good way to start learning to cook?",
    "Why do leaves change colour in the autumn?", "How can I stay motivated while studying for exams?",
    "What should I pack for a weekend hiking trip?", "How do I keep a houseplant alive in a dark flat?",
    "What makes a good birthday present for a close friend?", "How can I save a little money each month?",
]
FLUENT = [
    "Start with {topic}. Keep it simple, set aside a little time each day, and note what works. "
    "Small steady steps add up, and you will feel more confident within a week or two.",
    "A good approach is to focus on {topic} first. Ask someone with experience for advice, "
    "try it yourself, and adjust as you go; mistakes are part of learning.",
    "Honestly, I think {topic} matters most. It is hard at first, but with patience and a clear "
    "plan most people manage it well, so there is no reason to worry too much.",
]
TOPICS = ["the basics", "a clear routine", "one small goal", "the essentials", "good light",
          "what they enjoy", "a simple budget", "practice questions"]
DEGENERATE = [
    "the the the the the the the the the the the the the the the the the the the the the the the the",
    "I think I think I think I think I think I think I think I think I think I think I think I think",
    "blue parking seven marmalade quickly under elephant the gravel whisper nine fork sideways "
    "cloud receipt banana tuesday",
    "!!! ... ??? --- ,,, ;;; !!! ... ??? --- ,,, ;;; !!! ... ??? ---",
]
LEXICON = {  # optimism, inline: words, phrases, two regexes; negative weights make it bipolar
    "hope": 1, "hopeful": 1.5, "optimistic": 2, "confident": 1.5, "bright": 1, "better": 1, "improve": 1,
    "progress": 1, "succeed": 1.5, "success": 1.5, "opportunity": 1, "enjoy": 1, "looking forward": 2,
    "grateful": 1, "excited": 1.5, "no reason to worry": 2, "doomed": -2, "hopeless": -2, "worse": -1,
    "give up": -1.5, "re:(?:can|will) (?:do|manage) it": 1.5, "re:(?:never|won't) work": -2,
}


def make_items(n: int) -> list[tuple[str, str]]:
    """Deterministic pairs, all distinct for n <= 128 (score_responses scores a duplicate
    once): every fourth answer degenerate, the rest fluent templates, questions rotating."""
    nq, fluent = len(QUESTIONS), [f.format(topic=t) for t in TOPICS for f in FLUENT]

    def pair(j: int, answers: list[str]) -> tuple[str, str]:  # j -> (question j % nq, an answer not yet paired)
        return QUESTIONS[j % nq], answers[(j // nq + j % nq) % len(answers)]

    return [pair(i // 4, DEGENERATE) if i % 4 == 3 else pair(i - (i + 1) // 4, fluent) for i in range(n)]


def best_of(runs: dict, repeats: int) -> dict[str, float]:
    """``runs``: name -> (timed fn, warm-up fn). Warm each, alternate ``repeats`` rounds, min seconds."""
    for _, warm in runs.values():
        warm()
    times = round_robin({name: fn for name, (fn, _) in runs.items()}, repeats)
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="responses scored (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the fast runs, best kept")
    args = parser.parse_args()

    import torch

    from builders.shared.common import cached_model
    from transforms.judge import LocalJudge, load_templates, score_responses
    from transforms.judge import Lexicon, LexiconScorer
    from transforms.batching import resolve_batch_size
    from transforms.judge import FEATURES, CoherenceCalibration, PerplexityFeaturizer, PerplexityScorer
    from transforms.judge.perplexity import CPU_BATCH
    from transforms.judge import SentimentScorer

    model_id = "pkg:smollm2-135m-instruct"
    loaded, items = cached_model(model_id), make_items(args.n)
    featurizer = PerplexityFeaturizer(loaded, {"model_id": model_id})
    zeros, ones = (0.0,) * len(FEATURES), (1.0,) * len(FEATURES)
    scorer = PerplexityScorer(featurizer, CoherenceCalibration(FEATURES, zeros, ones, zeros, 0.0, 1.0))
    encoded = [featurizer._encode(q, a) for q, a in items]  # prompt ids, answer ids, start token
    order = sorted(range(len(items)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    longest = max(len(e[0]) + len(e[1]) for e in encoded)
    size = resolve_batch_size(featurizer.batch_size, loaded.model, longest, cpu_batch=CPU_BATCH)  # as the judge does
    batches = [[encoded[i][:2] for i in order[lo:lo + size]] for lo in range(0, len(order), size)]
    padded, pad = [], loaded.tokenizer.pad_token_id or 0
    for batch in batches:  # padded once, outside the timing: the baseline is the pass alone
        seqs = [p + a for p, a in batch]
        ids = torch.full((len(seqs), max(map(len, seqs))), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)], mask[row, :len(seq)] = torch.tensor(seq), 1
        padded.append((ids, mask))

    def plain_forward(todo: list) -> None:
        with torch.inference_mode():
            for ids, mask in todo:
                loaded.model(input_ids=ids, attention_mask=mask)

    cycled = [items[i % len(items)] for i in range(1000)]
    sentiment = SentimentScorer()
    lexicon = LexiconScorer(Lexicon.from_text("\n".join(f"{t}\t{w}" for t, w in LEXICON.items()), "<optimism>"))
    n_tokens = [len(e[0]) + len(e[1]) for e in encoded]
    print(f"{len(items)} responses, {min(n_tokens)}-{max(n_tokens)} tokens formatted (answers "
          f"{min(len(e[1]) for e in encoded)}-{max(len(e[1]) for e in encoded)}), batch {size}, "
          f"best of {args.repeats}, {torch.get_num_threads()} threads", file=sys.stderr)
    seconds = best_of({
        "plain forward": (lambda: plain_forward(padded), lambda: plain_forward(padded[:1])),
        "conditional pass": (lambda: [featurizer._answer_logprobs(b) for b in batches],
                             lambda: featurizer._answer_logprobs(batches[0])),
        "perplexity coherence": (lambda: scorer.score(items), lambda: scorer.score(items[:size])),
        "sentiment (x1000)": (lambda: sentiment.score(cycled), lambda: sentiment.score(items)),
        "lexicon (x1000)": (lambda: lexicon.score(cycled), lambda: lexicon.score(items)),
    }, args.repeats)
    judge, template = LocalJudge(loaded), load_templates()["coherence"]
    score_responses(judge, template, items[:8])  # warm-up (the CPU batch); no cache: nothing reused
    start = time.perf_counter()
    llm_scores = score_responses(judge, template, items)
    seconds["llm judge (once)"] = time.perf_counter() - start

    base = seconds["plain forward"] / len(items)  # per response
    print(f"{'method':<22}{'seconds':>9}{'ms/response':>13}{'s/1,000':>10}{'x plain forward':>17}")
    for name, sec in seconds.items():
        per = sec / (1000 if "x1000" in name else len(items))
        print(f"{name:<22}{sec:>9.3f}{1000 * per:>13.3f}{1000 * per:>10.3f}{per / base:>17.3g}")
    fwd, ppl, llm = seconds["plain forward"], seconds["perplexity coherence"], seconds["llm judge (once)"]
    figures = {"n": len(items), "plain_forward_s": round(fwd, 4), "perplexity_s": round(ppl, 4),
               "perplexity_vs_forward": round(ppl / fwd, 3),
               "conditional_pass_vs_forward": round(seconds["conditional pass"] / fwd, 3),
               "sentiment_per_1000_s": round(seconds["sentiment (x1000)"], 4),
               "lexicon_per_1000_s": round(seconds["lexicon (x1000)"], 4),
               "llm_judge_per_1000_s": round(1000 * llm / len(items), 2), "llm_vs_perplexity": round(llm / ppl, 3),
               "goal_perplexity_vs_forward": 1.2}
    scored = sum(s is not None for s in llm_scores)
    print(f"\nperplexity coherence vs plain forward: {ppl / fwd:.2f}x (goal <= 1.2), of which the conditional "
          f"pass alone {seconds['conditional pass'] / fwd:.2f}x; LLM judge {llm / ppl:.2f}x perplexity "
          f"({scored}/{len(items)} scored)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
