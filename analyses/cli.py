"""What every ``python -m analyses.<name>`` shares: the parser's store options and the
one-line error contract (bad input: ``error: ...`` on stderr, exit code 2)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence


def analysis_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--store", help="store root, a folder or fsspec URL (default $TRAITSTORE_ROOT or ./artifacts)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the version already exists")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the analysis does")
    return parser


def run(body: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> int:
    """Parse, set up logging, run ``body``; a ValueError, StoreError or BuildError (a stage it
    reuses) is one line + exit 2."""
    from store import StoreError
    from store.errors import storage_errors, storage_message

    from builders.shared.common import BuildError

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(body(args) or 0)
    except (ValueError, StoreError, BuildError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except storage_errors() as err:
        print(f"error: {storage_message(err)}", file=sys.stderr)
        return 2
