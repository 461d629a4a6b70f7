"""The pipeline's stages on a CUDA GPU in bfloat16 against the CPU in float32.

    python scripts/gpu_check.py [--device cuda] [--dtype bfloat16] [--layers 8] [--width 512]

Needs torch, transformers and the project's light dependencies only (numpy; no network, no
model download): a tiny Llama with grouped-query attention is built from a config (seeded
weights), with a word-level tokenizer and a chat template written here. The same stages run
on both sides, each fed the same inputs (the CPU's responses), so every difference is the
device and precision's own:

  responses   greedy ``generate_batch``: share of identical tokens;
  activations ``capture_pooled`` response[:], every layer: max relative error per layer;
  vectors     ``mean_diff`` on those activations: min cosine over layers;
  steering    ``generate_steered``, 4 configurations: identical-token share, and the edit
              itself (steered minus unsteered residual at the edited layer) vs float32;
  judgments   ``LocalJudge`` exact 0-100 score on the tiny chat model: max |difference|;
  projections ``LiveProjector`` during generation: max relative error of the scores;
  circuits    ``patch_sweep`` (residual, every layer × the last 4 positions, and every head) on
              a clean/corrupted pair, and the ``logit_lens`` at the last token: max error
              relative to the largest reference value.

Then, on the device only: the ``auto`` batch size it picks for long sequences, a real
out-of-memory error under a capped memory fraction that ``with_backoff`` must survive with
the same activations as a run at the smaller batch from the start, and (when torchao is
installed) an int8 weight-only copy's capture against the unquantized one.

Prints a table, then the throughput ratio (capture and sweep on the device vs the CPU) and,
last, one JSON line. Exit 1 when a stage is outside its tolerance. Under a minute on a GPU.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("the a is was good bad great terrible happy sad day night answer question rate score "
         "hello world you I we it not very really . , ! ?").split()
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}")
# the largest differences a correct bf16 run shows on this model (bf16 keeps 8 bits of mantissa)
TOLERANCE = {"activations_max_rel_err": 0.08, "vectors_min_cos": 0.98, "steering_edit_rel_err": 0.02,
             "judge_max_abs_diff": 5.0, "projections_max_rel_err": 0.08, "int8_min_cos": 0.98,
             "patching_max_rel_err": 0.08, "lens_max_rel_err": 0.08}


def tiny_chat_model(layers: int, width: int):
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from transforms.models import LoadedModel

    vocab = ["<pad>", "<s>", "<|end|>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    vocab += WORDS + [str(n) for n in range(101)] + ["Score:"]
    backend = Tokenizer(WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="<|end|>",
                                  unk_token="<unk>", pad_token="<pad>")
    tok.chat_template = CHAT
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config).float().eval()
    return LoadedModel(model=model, tokenizer=tok, model_id="tiny-llama-gqa", revision=None,
                       tokenizer_fingerprint="tiny", n_layers=layers, d_model=width, has_chat_template=True,
                       checkpoint="", source="local", architecture="llama", dtype="float32")


def on(loaded, device: str, dtype: str):
    import dataclasses

    import torch

    model = copy.deepcopy(loaded.model).to(device=device, dtype=getattr(torch, dtype)).eval()
    return dataclasses.replace(loaded, model=model, dtype=dtype)


def run_stages(loaded, prompts, sequences, labels, sync) -> dict:
    """Every stage on one (model, device, dtype); ``sequences``: the shared responses."""
    import numpy as np
    import torch

    from transforms.capture import capture_pooled
    from transforms.sequences import GenerationConfig, generate_batch
    from transforms.judge import JudgeTemplate, LocalJudge
    from transforms.capture import LiveProjector, VectorStack
    from transforms.steering import Edit, SteeringConfig, generate_steered, steer
    from transforms.vectors import extract

    model, tok, out = loaded.model, loaded.tokenizer, {}
    gen = GenerationConfig(max_new_tokens=12, min_new_tokens=12, temperature=0.0)
    out["responses"] = [g.response_ids for g in generate_batch(model, tok, prompts, gen, 0)]
    layers = list(range(loaded.n_layers))
    sync()
    t0 = time.perf_counter()
    out["acts"] = capture_pooled(model, sequences, "response[:]", layers, "residual", 16)
    sync()
    out["capture_s"] = time.perf_counter() - t0
    out["vectors"] = np.asarray(extract("mean_diff", out["acts"], labels).vectors_LD, dtype=np.float32)
    mid = loaded.n_layers // 2
    vec = torch.from_numpy(out["vectors"][mid] / np.linalg.norm(out["vectors"][mid]))
    configs = [SteeringConfig(label="baseline")] + [SteeringConfig.single(mid, vec, c) for c in (2.0, 4.0, -4.0)]
    sync()
    t0 = time.perf_counter()
    steered = generate_steered(model, tok, prompts, configs, gen, max_batch=len(configs) * len(prompts))
    sync()
    out["sweep_s"] = time.perf_counter() - t0
    out["steered"] = [[g.response_ids for g in rows] for rows in steered]
    ids = torch.tensor([sequences[0]["ids"]], device=model.device)
    with torch.inference_mode():
        plain = model(input_ids=ids, output_hidden_states=True).hidden_states[mid + 1]
        with steer(model, [Edit(mid, vec, 4.0, "all")]):
            pushed = model(input_ids=ids, output_hidden_states=True).hidden_states[mid + 1]
    out["edit"] = (pushed.float() - plain.float())[0].cpu().numpy()  # [T, D]: should be 4·vec everywhere
    template = JudgeTemplate(name="gpu-check", text="rate the answer : {answer} . score is")
    judge = LocalJudge(loaded, batch_size=4, prefill="Score:", min_mass=0.01)  # a random model: little mass
    out["judge"] = judge.score_prompts([template.render(question="q", answer=tok.decode(s["ids"][s["prompt_len"]:]))
                                        for s in sequences[:4]])
    stack = VectorStack.build(mid, [("v", out["vectors"][mid], 0.0)])
    projector = LiveProjector([stack])
    with projector.attach(model):
        generate_batch(model, tok, prompts[:2], gen, 0)
    out["projections"] = projector.per_row(mid, 0)[0][:, 0]
    out.update(circuit_stages(model, sequences))
    return out


def circuit_stages(model, sequences) -> dict:
    """Seed 003's patching and logit lens on a clean/corrupted pair of equal length."""
    import numpy as np

    from transforms.circuits import PatchTarget, head_targets, logit_lens, patch_sweep

    clean = list(sequences[0]["ids"])
    corrupted = list(clean)
    corrupted[1:3] = sequences[1]["ids"][1:3] if sequences[1]["ids"][1:3] != clean[1:3] else clean[2:0:-1]
    layers = range(model.config.num_hidden_layers)
    targets = [PatchTarget("residual", layer, p) for layer in layers for p in range(-4, 0)]
    targets += head_targets(model, False, len(clean))
    sweep = patch_sweep(model, clean, corrupted, (5, 6), targets, batch_size=16)
    lens = logit_lens(model, clean, -1, list(layers))
    return {"patching": np.asarray(sweep.metric, np.float64), "lens": np.asarray(lens, np.float64)}


def compare(ref: dict, dev: dict) -> dict:
    import numpy as np

    def same_share(a, b):
        pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
        return sum(x == y for x, y in pairs) / max(1, len(pairs))

    rel = (np.linalg.norm(dev["acts"] - ref["acts"], axis=-1)
           / np.maximum(np.linalg.norm(ref["acts"], axis=-1), 1e-12)).max(axis=0)
    cos = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(ref["vectors"], dev["vectors"])]
    edit_err = float(np.abs(dev["edit"] - ref["edit"]).max() / np.abs(ref["edit"]).max())
    scores = [(a, b) for a, b in zip(ref["judge"], dev["judge"]) if a is not None and b is not None]
    proj = ref["projections"]
    n = min(len(proj), len(dev["projections"]))
    return {
        "responses_identical_share": round(same_share(ref["responses"], dev["responses"]), 3),
        "activations_max_rel_err": round(float(rel.max()), 4),
        "activations_rel_err_by_layer": [round(float(x), 4) for x in rel],
        "vectors_min_cos": round(min(cos), 5),
        "steering_identical_share": round(same_share([r for c in ref["steered"] for r in c],
                                                     [r for c in dev["steered"] for r in c]), 3),
        "steering_edit_rel_err": round(edit_err, 4),
        "judge_max_abs_diff": round(max((abs(a - b) for a, b in scores), default=float("nan")), 3),
        "judge_scored": [sum(s is not None for s in ref["judge"]), sum(s is not None for s in dev["judge"])],
        "projections_max_rel_err": round(float(np.abs(dev["projections"][:n] - proj[:n]).max()
                                               / max(np.abs(proj[:n]).max(), 1e-12)), 4),
        "patching_max_rel_err": round(float(np.abs(dev["patching"] - ref["patching"]).max()
                                            / max(np.abs(ref["patching"]).max(), 1e-12)), 4),
        "lens_max_rel_err": round(float(np.abs(dev["lens"] - ref["lens"]).max()
                                        / max(np.abs(ref["lens"]).max(), 1e-12)), 4),
        "throughput_capture_x": round(ref["capture_s"] / dev["capture_s"], 2),
        "throughput_sweep_x": round(ref["sweep_s"] / dev["sweep_s"], 2),
    }


def device_only_checks(loaded, sequences, device: str) -> dict:
    """``auto`` batch size, backoff from a real OOM, torchao int8 (see the module docstring)."""
    import numpy as np
    import torch

    from transforms.batching import auto_batch_size, with_backoff
    from transforms.capture import capture_pooled

    model, out = loaded.model, {}
    layers = list(range(loaded.n_layers))
    out["auto_batch_2048_tokens"] = auto_batch_size(model, 2048)
    if device.startswith("cuda"):
        long = [{"ids": (s["ids"] * 200)[:1500], "prompt_len": s["prompt_len"]} for s in sequences] * 8  # 64
        torch.cuda.empty_cache()
        used = torch.cuda.memory_allocated()
        # room for the weights and a few sequences, not for 64 of them at once
        torch.cuda.set_per_process_memory_fraction(
            min(1.0, (used + 512 * 2**20) / torch.cuda.get_device_properties(0).total_memory))
        try:
            acts, size = with_backoff(lambda b: capture_pooled(model, long, "response[:]", layers, "residual", b),
                                      64, what="gpu-check capture")
            again = capture_pooled(model, long, "response[:]", layers, "residual", size)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
            torch.cuda.empty_cache()
        out["oom_backoff_batch"] = size
        out["oom_backoff_identical"] = bool(np.array_equal(acts, again)) and size < 64
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        out["int8_min_cos"] = None  # torchao not installed: skipped
        return out
    quantized = copy.deepcopy(model)
    quantize_(quantized, Int8WeightOnlyConfig())
    a = capture_pooled(model, sequences, "response[:]", layers, "residual", 8)
    b = capture_pooled(quantized, sequences, "response[:]", layers, "residual", 8)
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    out["int8_min_cos"] = round(float(cos.min()), 5)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=512)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: CUDA is not available here (torch {torch.__version__})", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    loaded = tiny_chat_model(args.layers, args.width)
    tok = loaded.tokenizer
    texts = ["rate the day", "you are very happy", "it was a terrible night", "hello world",
             "the answer is good", "I was sad", "we are not happy", "rate the answer"]
    prompts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
               for t in texts]
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    cpu = on(loaded, "cpu", "float32")
    from transforms.sequences import GenerationConfig, generate_batch

    cut = generate_batch(cpu.model, tok, prompts, GenerationConfig(max_new_tokens=12, min_new_tokens=12), 0)
    sequences = [{"ids": p + g.response_ids, "prompt_len": len(p)} for p, g in zip(prompts, cut)]
    labels = np.array([i % 2 for i in range(len(sequences))])
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    run_stages(cpu, prompts, sequences, labels, lambda: None)  # warm-up, as on the device
    ref = run_stages(cpu, prompts, sequences, labels, lambda: None)
    device_model = on(loaded, args.device, args.dtype)
    run_stages(device_model, prompts, sequences, labels, sync)  # warm-up: kernels, allocator
    dev = run_stages(device_model, prompts, sequences, labels, sync)
    figures = {**compare(ref, dev), **device_only_checks(device_model, sequences, args.device)}
    failed = [k for k, limit in TOLERANCE.items() if figures.get(k) is not None
              and not (figures[k] >= limit if k.endswith("_cos") else figures[k] <= limit)]
    if figures.get("oom_backoff_identical") is False:
        failed.append("oom_backoff_identical")
    print(f"tiny llama (GQA, {args.layers} layers, width {args.width}): {args.device} {args.dtype} vs cpu float32")
    print(f"{'check':<30} {'value':>10} {'tolerance':>10}")
    for key, value in figures.items():
        if isinstance(value, list):
            continue
        limit = TOLERANCE.get(key)
        mark = "" if limit is None else ("  FAIL" if key in failed else "  ok")
        print(f"{key:<30} {value:>10} {'' if limit is None else limit:>10}{mark}")
    print(f"throughput {args.device} vs cpu: capture {figures['throughput_capture_x']}x, "
          f"sweep {figures['throughput_sweep_x']}x; {time.perf_counter() - t_start:.0f}s in all")
    print(json.dumps({"check": "gpu", "device": args.device, "dtype": args.dtype,
                      "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                      "failed": failed, **figures}))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
