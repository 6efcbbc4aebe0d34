"""The ``dropkit`` command."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dropkit.sites import describe


def _load_factory(spec: str):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(
            f"dropkit sites: expected MODULE:FACTORY (e.g. mypkg.models:build), got {spec!r}"
        )
    if os.getcwd() not in sys.path:  # like `python -m`: modules of the current project import
        sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"dropkit sites: cannot load {spec!r}: {err}") from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dropkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="short built-in example of early dropout")
    demo.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    sites = commands.add_parser("sites", help="print the dropout sites of a model")
    sites.add_argument("factory", help="MODULE:FACTORY, a callable returning an nn.Module")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from dropkit.experiments import quickstart

        quickstart.main(seeds=args.seeds)
    else:
        print(describe(_load_factory(args.factory)()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
