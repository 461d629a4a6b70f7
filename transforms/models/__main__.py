"""``python -m transforms.models``: convert packaged models ahead of time, or describe a model."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from transforms.models.loading import load_model
from transforms.models.packaged import PACKAGED_MODELS, ensure_pkg_checkpoint, packaged_model
from transforms.models.refs import PKG_PREFIX, ModelLoadError, ModelRef, ref_kind
from transforms.models.sources import resolve_checkpoint


def _prepare(model_id: str) -> str:
    """Make ``model_id`` loadable offline; one line saying what was done and where."""
    ref = ModelRef(model_id)
    if ref_kind(ref) != "pkg":
        return f"{model_id}: not packaged, used as is: {resolve_checkpoint(ref)}"
    path, converted = ensure_pkg_checkpoint(packaged_model(model_id))
    return f"{model_id}: {'converted' if converted else 'already cached'}: {path}"


def _info_placement(args: argparse.Namespace) -> tuple[str, str]:
    """``(device, dtype)`` for ``--info``, checked before anything loads (a DeviceError,
    which is a ModelLoadError, for a bad name or a device this machine lacks)."""
    from transforms.models.devices import DeviceError, resolve_device, resolve_dtype

    if args.info is None:
        if args.device or args.dtype:
            raise DeviceError("--device and --dtype go with --info (--prepare converts files, it places nothing)")
        return "cpu", "float32"  # unused: --prepare loads nothing
    where = resolve_device(args.device)
    return where, resolve_dtype(args.dtype, where)


def main(argv: list[str] | None = None) -> int:
    """Prepare (convert) packaged models ahead of time, or describe a model.

    ``python -m transforms.models --prepare [ID ...]`` (default: every packaged model)
    prints ``ID: converted|already cached: CHECKPOINT`` per model;
    ``python -m transforms.models --info ID [--revision REV] [--device D] [--dtype T]`` loads
    the model there (default auto: an accelerator in bfloat16 when there is one, else the
    CPU in float32) and prints describe() plus ``device`` as JSON. Bad input: one line on
    stderr, exit 2; a model that fails to load: exit 1.
    """
    parser = argparse.ArgumentParser(
        prog="python -m transforms.models",
        description="Convert packaged GGUF models into the checkpoint cache, or describe a model.",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--prepare", nargs="*", metavar="ID",
                       help="convert these pkg: models (default: all); print whether each was "
                            "converted or already cached, and its checkpoint dir")
    group.add_argument("--info", metavar="ID", help="load a model and print its description as JSON")
    parser.add_argument("--revision", help="revision for --info")
    parser.add_argument("--device", help="for --info: auto (cuda, then mps, then cpu), cpu, mps, cuda or cuda:N")
    parser.add_argument("--dtype", help="for --info: float32, bfloat16 or float16 (default: bfloat16 on an "
                                        "accelerator, float32 on the CPU)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        where, precision = _info_placement(args)
    except ModelLoadError as exc:  # a misspelled or missing device / dtype: bad input
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.prepare is not None:
            for model_id in args.prepare or [PKG_PREFIX + n for n in PACKAGED_MODELS]:
                print(_prepare(model_id), flush=True)
        else:
            loaded = load_model(ModelRef(args.info, args.revision), precision, device=where)
            print(json.dumps({**loaded.describe(), "device": loaded.device}, indent=2))
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

