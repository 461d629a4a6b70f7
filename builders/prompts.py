"""``python -m builders.prompts``: import prompt sets (trait datasets and inference sets) into the store.

The command line only; the stage itself is :mod:`builders.stages.prompts`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from builders.shared.common import base_parser, open_store_and_catalog, report, run
from builders.stages.prompts import import_prompt_set


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.prompts", "Import prompt sets into the store.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--set", action="append", dest="sets", metavar="NAME", help="prompt set named in the catalog (repeatable)")
    which.add_argument("--all", action="store_true", help="every prompt set in the catalog")
    which.add_argument("--path", type=Path, help="a trait folder or inference JSON file not in the catalog")
    parser.add_argument("--name", help="dataset name for --path (default: the folder or file name)")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    if args.path:
        name = args.name or args.path.stem
        report(import_prompt_set(store, args.path, name, force=args.force))
        return 0
    names = list(catalog.prompt_sets) if args.all else args.sets
    for set_name in names:
        entry = catalog.prompt_set(set_name)
        report(import_prompt_set(store, entry.path, entry.name, entry.trait, force=args.force))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
