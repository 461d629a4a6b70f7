"""What every builder's command line shares: store/catalog options, errors, reporting."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from store import BuildResult, Store, StoreError
from store.errors import storage_errors, storage_message

from builders.shared.catalog import Catalog, CatalogError, load_catalog

log = logging.getLogger(__name__)


class BuildError(Exception):
    """Bad input to a builder; the message is one line naming what and where."""


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("store and catalog")
    group.add_argument("--store", help="store root, a folder or fsspec URL (default $TRAITSTORE_ROOT or ./artifacts)")
    group.add_argument("--catalog", help="catalog file (default $TRAITSTORE_CATALOG or the repository's catalog.yaml)")
    group.add_argument("--force", action="store_true", help="rebuild even when the version already exists")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", help="log what each stage does")
    placement = parser.add_argument_group("model placement (overrides catalog.yaml device/dtype)")
    placement.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, mps, cuda or cuda:N")
    placement.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on an accelerator, "
                                           "float32 on the CPU); part of the version id unless float32")
    return parser


def add_experiment_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", help="experiment in the catalog (default: defaults.experiment)")


def add_experiment_args(parser: argparse.ArgumentParser, variant_required: bool = True) -> None:
    add_experiment_arg(parser)
    parser.add_argument("--variant", required=variant_required, help="variant of the experiment, e.g. base, instruct")


def add_variant_pair_args(parser: argparse.ArgumentParser, a_help: str, b_help: str) -> None:
    """``--experiment``, ``--a`` and ``--b``: the builders that compare two variants."""
    add_experiment_arg(parser)
    parser.add_argument("--a", required=True, help=a_help)
    parser.add_argument("--b", required=True, help=b_help)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: reported as one line, exit code 2."""
    errors: list[type[BaseException]] = [BuildError, CatalogError, StoreError]
    from transforms.batching import OutOfMemory
    from transforms.prompts import PromptSetError

    errors.extend([PromptSetError, OutOfMemory])  # OOM even at a batch of 1: a setting to change, not a bug
    try:
        from transforms.judge import JudgeError
        from transforms.judge import TemplateError

        errors.extend([JudgeError, TemplateError])
    except ImportError:  # pragma: no cover
        pass
    from transforms.dictionaries import DictionaryError

    errors.append(DictionaryError)  # a checkpoint or SAE file that does not fit: named in one line
    try:
        from transforms.models import ModelLoadError

        errors.append(ModelLoadError)
    except ImportError:  # pragma: no cover - models module is optional for store-only use
        pass
    return tuple(errors)


def run(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> int:
    """Parse, set up logging, run ``main``; turn known input errors into one line + exit 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    previous = dict(_PLACEMENT)  # a command's --device/--dtype last as long as the command
    try:
        _set_placement(getattr(args, "device", None), getattr(args, "dtype", None))
        return int(main(args) or 0)
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except storage_errors() as err:
        print(f"error: {storage_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun to resume", file=sys.stderr)
        return 130
    finally:
        _PLACEMENT.update(previous)


def read_jsonl_rows(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """The objects of a JSONL file, each with non-empty string ``required`` fields and a
    unique ``id``; bad input raises :class:`BuildError` naming ``file:line``."""
    if not path.is_file():
        raise BuildError(f"{path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BuildError(f"{path.name}: not UTF-8 (byte {err.start})") from None
    rows, seen = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BuildError(f"{path.name}:{n}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise BuildError(f"{path.name}:{n}: expected a JSON object")
        for key in required:
            if key not in row:
                raise BuildError(f"{path.name}:{n}: missing field {key!r}")
            if not isinstance(row[key], str):
                raise BuildError(f"{path.name}:{n}: field {key!r} must be a string")
            if not row[key].strip():
                raise BuildError(f"{path.name}:{n}: field {key!r} is empty")
        if row.get("id") in seen:
            raise BuildError(f"{path.name}:{n}: duplicate id {row['id']!r}")
        seen.add(row.get("id"))
        rows.append(row)
    return rows


def open_store_and_catalog(args: argparse.Namespace) -> tuple[Store, Catalog]:
    """The store (checked writable before any model loads, without creating it: a refused
    command leaves no folder behind) and the catalog, with ``--device`` / ``--dtype``
    applied to every variant."""
    store = Store(args.store)
    store.location.require_writable(create=False)
    catalog = load_catalog(args.catalog)
    return store, catalog.with_placement(getattr(args, "device", None), getattr(args, "dtype", None))


#: ``--device`` / ``--dtype`` of this process, for models loaded outside a catalog variant
#: (judges); set by :func:`run` (None = auto)
_PLACEMENT: dict[str, str | None] = {"device": None, "dtype": None}


def _set_placement(device: str | None, dtype: str | None) -> None:
    """Check ``--device`` / ``--dtype`` before any work (a device this machine lacks is an
    error now, not after the inputs were built) and keep them for :func:`cached_model`."""
    from transforms.models import check_device_name, check_dtype_name, resolve_device

    if device is not None:
        device = check_device_name(device)
        resolve_device(device)
    _PLACEMENT.update(device=device, dtype=None if dtype is None else check_dtype_name(dtype))


def report(result: BuildResult) -> None:
    """One line a person reads: built or up to date, with the exact reference."""
    m = result.manifest
    state = "built" if result.built else "up to date"
    print(f"{state}: {m.ref} ({m.rows} rows)")


def placement(device: str | None = None, dtype: str | None = None) -> tuple[str, str]:
    """``(device, dtype)`` resolved on this machine: the given settings, else this process's
    ``--device`` / ``--dtype``, else auto and the device's default dtype."""
    from transforms.models import resolve_device, resolve_dtype

    where = resolve_device(device or _PLACEMENT["device"])
    return where, resolve_dtype(dtype or _PLACEMENT["dtype"], where)


def cached_model(model_id: str, revision: str | None = None, *, device: str | None = None,
                 dtype: str | None = None, device_map: str | None = None, quantization: Any = None) -> Any:
    """Load a model once per process (per device, dtype and quantization, a
    :class:`transforms.models.QuantizationSpec` or None), in the process's one model cache
    (:data:`transforms.models.MODEL_CACHE`, two models at most): the demo and tests build
    several stages in a row. Settings left None follow :func:`placement`."""
    from transforms.models import MODEL_CACHE, ModelKey, ModelRef, load_model

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weights load in a second; our own bars say more
    where, precision = placement(device, dtype)
    key = ModelKey(model_id, revision, where, precision, device_map, None if quantization is None else quantization.label)
    return MODEL_CACHE.get(key, lambda: load_model(ModelRef(model_id, revision), precision, device=where,
                                                   device_map=device_map, quantization=quantization))


def model_layer_count(model_id: str, revision: str | None = None) -> int:
    """The number of decoder blocks from the checkpoint's config at ``revision``, without loading weights."""
    return model_config_dims(model_id, revision)[0]


def model_config_dims(model_id: str, revision: str | None = None) -> tuple[int, int]:
    """``(decoder blocks, d_model)`` from the checkpoint's config at ``revision``, without loading weights."""
    from transforms.models import ModelRef, config_dims

    dims = config_dims(ModelRef(model_id, revision))
    return dims.n_layers, dims.d_model


def progress(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=quiet, unit="seq", leave=False, file=sys.stderr)
