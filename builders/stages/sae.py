"""Sparse autoencoders on one variant's per-token activations at one layer (seed 000, issue 15).

    python -m builders.sae --variant instruct --prompts general --layer 12
    python -m builders.sae --variant base --prompts general --layer 12 \\
        --checkpoint google/gemma-scope-2b-pt-res --subfolder layer_12/width_16k/average_l0_82

An SAE is a crosscoder of one model, so it is trained by the crosscoder trainer
(``train_crosscoder`` with ``n_models=1``) on the variant's per-token activations streamed from
the store chunk by chunk (built if missing), and published in the crosscoder layout
(``crosscoder/model.safetensors`` + ``config.json``; ``sae_from_crosscoder`` turns it into a
:class:`~transforms.dictionaries.SparseAutoencoder`). ``--checkpoint`` imports a pretrained
SAE instead (Gemma Scope ``params.npz`` or SAELens ``cfg.json`` + ``sae_weights.safetensors``, a
folder or a Hub repo in the local cache): its width must be the model's and its layer, when the
hook name or folder tells it, the one asked; its files are published as they came under ``sae/``.

Either way the SAE is then analysed on the same tokens (:mod:`builders.stages.sae_features`):
``data`` (one row per feature), ``top_examples``, ``training`` (trained only) and the summary.
Output dataset: ``sae-<experiment>-<variant>-<set>-L<layer>-<l1|batch_topk|imported>``.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store import BuildResult, BuildSpec, Manifest, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, model_config_dims
from builders.stages.crosscoder import WEIGHTS, CrosscoderOptions, train_dictionary, write_weights
from builders.stages.paired_activations import variant_activations

if TYPE_CHECKING:
    from transforms.dictionaries import SparseAutoencoder

log = logging.getLogger(__name__)

BUILDER = "builders.sae"
CODE_VERSION = "2"  # 2: input scale from a bounded chunk sample
IMPORTED = "sae"  # folder of an imported SAE's files, byte for byte as they came
CAPTURED_COMPONENT = "residual"  # what variant_activations captures
LAYER_CONVENTION = "layer k = output of decoder block k = hidden_states[k+1]"


@dataclass(frozen=True)
class ImportedSAE:
    """A pretrained SAE and the files it was read from (published unchanged)."""

    sae: "SparseAutoencoder"
    folder: Path
    files: tuple[str, ...]
    digest: str  # sha256 over the files' names and bytes


def build_sae(
    store: Store,
    catalog: Catalog,
    variant: str,
    prompt_set: str,
    layer: int,
    options: CrosscoderOptions = CrosscoderOptions(),
    *,
    experiment: str | None = None,
    position: str = "response[:]",
    checkpoint: str | None = None,
    subfolder: str | None = None,
    revision: str | None = None,
    norm_scaling_factor: float | None = None,
    top_k: int = 10,
    activation_batch_size: int | str = "auto",
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    """Train (or import) an SAE of ``variant`` at ``layer`` and publish it with its feature tables."""
    exp = catalog.experiment(experiment)
    entry = catalog.variant(exp.name, variant)
    options.check()
    imported = None
    if checkpoint:  # refused before any activation is built
        imported = import_sae(checkpoint, subfolder, revision, norm_scaling_factor)
        _, d_model = model_config_dims(entry.model.id, entry.model.revision)
        check_imported(imported.sae, d_model, layer, checkpoint)
    acts = variant_activations(store, catalog, exp.name, variant, prompt_set, layer, position=position,
                               batch_size=activation_batch_size, quiet=quiet)
    params: dict[str, Any] = {"experiment": exp.name, "variant": variant, "prompt_set": prompt_set, "layer": layer,
                              "position": position, "top_k": top_k}
    identity: dict[str, Any] = {}
    if imported is None:
        params["training"] = options.params()
    else:
        params.update(checkpoint=checkpoint, subfolder=subfolder, revision=revision,
                      norm_scaling_factor=norm_scaling_factor)
        identity["checkpoint_digest"] = imported.digest
    spec = BuildSpec(name=names.sae(exp.name, variant, prompt_set, layer, "imported" if imported else options.kind),
                     kind="sae", builder=BUILDER, code_version=CODE_VERSION, params=params,
                     parents=acts.parents, identity=identity)

    def produce(writer: Any) -> None:
        from transforms.dictionaries import sae_from_crosscoder

        from builders.stages.replay import variant_tokenizer
        from builders.stages.sae_features import write_feature_tables

        if imported is None:
            model, log_rows, train_summary = train_dictionary(store, acts, options, quiet)
            write_weights(writer, model, {"variants": [variant], "layer": layer, "layer_convention": LAYER_CONVENTION})
            writer.write_table(log_rows, table="training")
            writer.summary.update(train_summary)
            sae = sae_from_crosscoder(model)
        else:
            for name in imported.files:
                writer.write_bytes(f"{IMPORTED}/{name}", (imported.folder / name).read_bytes())
            sae = imported.sae
            writer.summary.update({"checkpoint": checkpoint, "subfolder": subfolder, "activation": sae.activation,
                                   "hook_name": sae.hook.hook_name, "hook_layer": sae.hook.layer})
        write_feature_tables(writer, store, acts, sae, top_k=top_k,
                             tokenizer=variant_tokenizer(entry), quiet=quiet)

    return store.build(spec, produce, force=force)


def import_sae(checkpoint: str, subfolder: str | None, revision: str | None,
               norm_scaling_factor: float | None) -> ImportedSAE:
    """Read a Gemma Scope / SAELens SAE (offline-first) and the files to publish with it."""
    from transforms.dictionaries import SAE_FILES, load_sae, resolve_sae_folder

    sae = load_sae(checkpoint, subfolder, revision, norm_scaling_factor=norm_scaling_factor)
    folder, _ = resolve_sae_folder(checkpoint, subfolder, revision)
    files = tuple(name for name in SAE_FILES if (folder / name).is_file())
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode())
        digest.update((folder / name).read_bytes())
    return ImportedSAE(sae, folder, files, digest.hexdigest())


def check_imported(sae: "SparseAutoencoder", d_model: int, layer: int, checkpoint: str) -> None:
    """One line when the SAE cannot read this model's activations at ``layer``."""
    from transforms.dictionaries import check_sae_width

    check_sae_width(sae, d_model, f"--checkpoint {checkpoint}")
    if sae.layer is not None and sae.layer != layer:
        raise BuildError(f"--checkpoint {checkpoint}: the SAE reads layer {sae.layer} "
                         f"(hook {sae.hook.hook_name or 'from its folder name'}), not --layer {layer}")
    if sae.hook.component not in (None, CAPTURED_COMPONENT):
        raise BuildError(f"--checkpoint {checkpoint}: the SAE reads {sae.hook.component}, "
                         f"this stage captures the {CAPTURED_COMPONENT} stream")


def load_sae_version(store: Store, ref: str | Manifest) -> "SparseAutoencoder":
    """The SAE of a published ``sae-...`` version, trained (crosscoder layout) or imported."""
    from transforms.dictionaries import HookInfo, load_crosscoder, load_sae, sae_from_crosscoder

    manifest = store.resolve(ref) if isinstance(ref, str) else ref
    if f"{WEIGHTS}/config.json" in manifest.files:
        sae = sae_from_crosscoder(load_crosscoder(str(store.local_dir(manifest, WEIGHTS))))
    else:
        sae = load_sae(store.local_dir(manifest, IMPORTED),
                       norm_scaling_factor=manifest.params.get("norm_scaling_factor"))
    sae.hook = HookInfo(int(manifest.params["layer"]), CAPTURED_COMPONENT, sae.hook.hook_name, sae.hook.model_name)
    return sae
