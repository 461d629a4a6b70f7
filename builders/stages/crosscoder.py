"""Crosscoders between two variants at one layer (seed 000; Lindsey et al. 2024, Minder et al. 2025).

    python -m builders.crosscoder --a instruct --b finetuned --prompts general --layer 12
    python -m builders.crosscoder --a base --b chat --prompts general --layer 13 \\
        --checkpoint Butanium/gemma-2-2b-crosscoder-l13-mu4.1e-02-lr1e-04

Trains an L1 or BatchTopK crosscoder on A's and B's per-token activations over the same
tokens (B replays A's responses; both built if missing), streamed from the store chunk by
chunk, or imports a public checkpoint in the ``dictionary_learning`` layout (a folder, a
``.pt`` file or a Hub repo id). Either way the weights are published in that layout
(``crosscoder/model.safetensors`` + ``config.json``) and analysed on the same tokens:

- ``data``: one row per latent (decoder norms, ``dec_norm_diff``, tag, encoder norms,
  decoder cosine, activation frequency and means, Latent Scaling betas and ratios);
- ``top_examples``: the tokens each latent fires most on, with prompt id and context;
- ``training``: the training log (loss, MSE, sparsity, explained variance per model, L0, dead);
- ``figures/dec_norm_diff.png``: the histogram researchers look at first.

Output dataset: ``crosscoder-<experiment>-<A>-<B>-<set>-L<layer>-<l1|batch_topk|imported>``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store import BuildResult, BuildSpec, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError
from builders.stages.paired_activations import PairedActivations, StreamedActivations, paired_activations

if TYPE_CHECKING:
    from transforms.dictionaries import CrossCoder

log = logging.getLogger(__name__)

BUILDER = "builders.crosscoder"
CODE_VERSION = "2"  # 2: input scale from a bounded chunk sample
KINDS = ("l1", "batch_topk")
WEIGHTS = "crosscoder"  # folder of the version holding model.safetensors + config.json


@dataclass(frozen=True)
class CrosscoderOptions:
    """Training settings; all of them are part of the version id."""

    kind: str = "l1"
    dict_size: int = 1024
    l1_coefficient: float = 2.0
    k: int = 32
    lr: float = 1e-3
    batch_size: int = 256
    epochs: int = 8
    seed: int = 0
    target_rms: float = 1.0
    resample_every: int = 200
    dead_after: int = 20_000
    auxk_alpha: float = 0.0  # batch_topk auxiliary-k loss weight (1/32 in dictionary_learning); 0 = off

    def params(self) -> dict[str, Any]:
        """The version-id params: ``auxk_alpha`` only when set, so versions trained before it
        existed (and every run without it) keep their ids."""
        values = asdict(self)
        if not values["auxk_alpha"]:
            del values["auxk_alpha"]
        return values

    def check(self) -> None:
        if self.kind not in KINDS:
            raise BuildError(f"--kind: unknown crosscoder kind {self.kind!r} (known: {', '.join(KINDS)})")
        for field, value in (("--dict-size", self.dict_size), ("--batch-size", self.batch_size),
                             ("--epochs", self.epochs), ("--k", self.k)):
            if value < 1:
                raise BuildError(f"{field} must be at least 1, got {value}")
        if self.l1_coefficient < 0 or self.lr <= 0 or self.target_rms <= 0:
            raise BuildError("--l1, --lr and --target-rms must be positive")
        if self.auxk_alpha < 0 or (self.auxk_alpha > 0 and self.kind != "batch_topk"):
            raise BuildError(f"--auxk-alpha {self.auxk_alpha}: must be >= 0, and is for --kind batch_topk only")

    def train_config(self) -> Any:
        from transforms.dictionaries import TrainConfig

        # no final pass: the stage's latent tables measure explained variance on every token anyway
        return TrainConfig(**asdict(self), final_pass=False)


def build_crosscoder(
    store: Store,
    catalog: Catalog,
    variant_a: str,
    variant_b: str,
    prompt_set: str,
    layer: int,
    options: CrosscoderOptions = CrosscoderOptions(),
    *,
    experiment: str | None = None,
    position: str = "response[:]",
    checkpoint: str | None = None,
    revision: str | None = None,
    top_k: int = 10,
    activation_batch_size: int | str = "auto",
    generation: dict[str, Any] | None = None,
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    """Train (or import) a crosscoder of ``variant_a`` / ``variant_b`` at ``layer`` and
    publish it with its latent table. ``generation``: settings for A's responses when they
    are built on the way (e.g. ``{"max_new_tokens": 8}``; the catalog's defaults otherwise)."""
    exp = catalog.experiment(experiment)
    options.check()
    imported = load_checkpoint(checkpoint, revision) if checkpoint else None
    paired = paired_activations(store, catalog, exp.name, variant_a, variant_b, prompt_set, layer,
                                position=position, batch_size=activation_batch_size, generation=generation,
                                quiet=quiet)
    if imported is not None:
        check_imported(imported, paired, checkpoint or "")
    params: dict[str, Any] = {"experiment": exp.name, "a": variant_a, "b": variant_b, "prompt_set": prompt_set,
                              "layer": layer, "position": position, "top_k": top_k}
    identity: dict[str, Any] = {}
    if imported is None:
        params["training"] = options.params()
    else:
        params["checkpoint"] = checkpoint
        identity["checkpoint_digest"] = state_digest(imported)
    spec = BuildSpec(name=names.crosscoder(exp.name, variant_a, variant_b, prompt_set, layer,
                                           "imported" if imported is not None else options.kind),
                     kind="crosscoder", builder=BUILDER, code_version=CODE_VERSION, params=params,
                     parents=paired.parents, identity=identity)

    def produce(writer: Any) -> None:
        from builders.stages.crosscoder_latents import write_latent_tables
        from builders.stages.replay import variant_tokenizer

        if imported is None:
            model, log_rows, train_summary = train_dictionary(store, paired, options, quiet)
        else:
            model, log_rows, train_summary = imported, [], {"checkpoint": checkpoint}
        write_weights(writer, model, {"variants": [variant_a, variant_b], "layer": layer,
                                      "layer_convention": "layer k = output of decoder block k = hidden_states[k+1]"})
        if log_rows:
            writer.write_table(log_rows, table="training")
        writer.summary.update(train_summary)
        tokenizer = variant_tokenizer(catalog.variant(exp.name, variant_a))
        write_latent_tables(writer, store, paired, model, top_k=top_k, tokenizer=tokenizer, quiet=quiet)

    return store.build(spec, produce, force=force)


def train_dictionary(store: Store, paired: StreamedActivations, options: CrosscoderOptions,
                     quiet: bool) -> tuple["CrossCoder", list[dict[str, Any]], dict[str, Any]]:
    """Train on the source's tokens, one model per source (2: a crosscoder, 1: an SAE); returns
    the model, the training log rows and the summary entries."""
    from transforms.dictionaries import train_crosscoder

    # input scale from a bounded seeded sample of chunks (paired_activations.SCALE_SAMPLE_TOKENS)
    result = train_crosscoder(paired.shuffled(store, options.batch_size, options.seed), paired.n_models, paired.d_model,
                              options.train_config(), progress=not quiet,
                              scale_sample=paired.scale_sample(store, seed=options.seed), n_tokens=paired.n_tokens)
    rows = [asdict(r) for r in result.log]
    summary = {"tokens": paired.n_tokens, "tokens_seen": result.tokens_seen,
               "last_batch_explained_variance": [float(v) for v in result.explained_variance],
               "dead_latents": result.dead, "resampled": result.resampled}
    return result.model, rows, summary


def load_checkpoint(checkpoint: str, revision: str | None) -> "CrossCoder":
    from transforms.dictionaries import CheckpointError, load_crosscoder

    try:
        return load_crosscoder(checkpoint, revision=revision)
    except CheckpointError:
        raise
    except (OSError, ValueError) as err:  # not found locally / offline: one line, the path named
        raise BuildError(f"--checkpoint {checkpoint}: {str(err).splitlines()[0]}") from None


def check_imported(model: "CrossCoder", paired: PairedActivations, checkpoint: str) -> None:
    from transforms.dictionaries import check_width

    if model.n_models != 2:
        raise BuildError(f"--checkpoint {checkpoint}: {model.n_models} models in the crosscoder, a pair needs 2")
    check_width(model, paired.d_model, f"--checkpoint {checkpoint}")


def state_digest(model: "CrossCoder") -> str:
    """sha256 over the weights (not the file bytes): the same weights in a ``.pt`` or a
    safetensors file give the same version."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps([float(s) for s in model.input_scale]).encode())
    return digest.hexdigest()


def write_weights(writer: Any, model: "CrossCoder", extra: dict[str, Any]) -> None:
    from transforms.dictionaries import save_crosscoder

    with tempfile.TemporaryDirectory() as tmp:
        save_crosscoder(model, tmp, extra=extra)
        for path in sorted(Path(tmp).iterdir()):
            writer.write_bytes(f"{WEIGHTS}/{path.name}", path.read_bytes())


def load_crosscoder_version(store: Store, ref: str | Any) -> "CrossCoder":
    """The crosscoder of a published ``crosscoder-...`` version (the public-checkpoint loader
    on the version's folder)."""
    from transforms.dictionaries import load_crosscoder

    return load_crosscoder(str(store.local_dir(ref, WEIGHTS)))
