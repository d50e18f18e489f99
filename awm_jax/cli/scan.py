"""Command line: ``python -m awm_jax scan MODEL --catalogue DIR|REPO``.

Argument parsing and output only; the work is done by :mod:`awm_jax.catalogue.scan`.
"""

from __future__ import annotations

import argparse
import os
import sys

from awm_jax.cli.common import (FOUND_EXIT, add_fail_on, add_version, finding_exit, json_target, start_engine,
                                write_json)
from awm_jax.errors import OneLineArgumentParser
from awm_jax.options import ALIGNMENT_MODES, DEFAULT_ALIGNMENT, DEVICES, LAYER_MATCH_MODES

__all__ = ["FOUND_EXIT", "build_parser", "main"]



def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="python -m awm_jax scan",
        description="Which known base model is MODEL derived from, if any? Scores MODEL against every sketch of a "
                    "catalogue (docs/catalogue.md).",
        epilog=f"Exit codes: 0 ok, {FOUND_EXIT} a match at the --fail-on verdict was found, 2 usage, 3 checkpoint or "
               "hub, 4 layout, 5 vocabulary, 6 numerical, 7 damaged catalogue or cache, 1 internal, 130 interrupted.",
    )
    p.add_argument("model", help="model folder or hub id owner/name[@revision]")
    p.add_argument("--catalogue", metavar="DIR|REPO", default=os.environ.get("AWM_JAX_CATALOGUE"),
                   help="catalogue folder or hub dataset id (default: $AWM_JAX_CATALOGUE)")
    p.add_argument("--top-k", type=int, default=10, metavar="N", help="matches to show (default: 10)")
    p.add_argument("--json", metavar="PATH", help="write the scan as JSON to PATH ('-': to stdout, instead of the text)")
    add_fail_on(p, "an entry matches")
    p.add_argument("--alignment", default=DEFAULT_ALIGNMENT, choices=ALIGNMENT_MODES,
                   help=f"hidden-dimension alignment (default: {DEFAULT_ALIGNMENT})")
    p.add_argument("--layer-match", default="assignment", choices=LAYER_MATCH_MODES,
                   help="pairing of layers when depths differ (default: assignment)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="JAX device (default: auto)")
    p.add_argument("--layout", metavar="NAME_OR_FILE", help="force the model's layout")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the fingerprint cache")
    p.add_argument("--cache-dir", metavar="DIR", help="fingerprint cache folder")
    add_version(p)
    return p


def _run(args) -> int:
    start_engine(args.cache_dir, not args.no_cache)
    import jax

    from awm_jax.catalogue.scan import scan_model
    from awm_jax.catalogue.store import open_catalogue
    from awm_jax.engine.models import prepare_model
    from awm_jax.engine.pair import select_device
    from awm_jax.errors import UsageError
    from awm_jax.fingerprint import FingerprintCache
    from awm_jax.options import PairOptions

    if not args.catalogue:
        raise UsageError("no catalogue: pass --catalogue DIR|REPO or set AWM_JAX_CATALOGUE")
    if args.json:
        json_target(args.json)
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    options = PairOptions(layer_match=args.layer_match, alignment=args.alignment)
    catalogue = open_catalogue(args.catalogue)
    cache = None if args.no_cache else FingerprintCache(args.cache_dir)
    with jax.default_device(select_device(args.device)):
        model = prepare_model(args.model, layout=args.layout, cache=cache)
        result = scan_model(model, catalogue, options)
    payload = result.to_dict(args.top_k)
    if args.json != "-":
        print(result.render_text(args.top_k))
    if args.json:
        write_json(args.json, payload)
    return finding_exit(args.fail_on, [m.result.verdict for m in result.matches])


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    from awm_jax.errors import run_cli

    return run_cli(lambda: _run(args), "interrupted")


if __name__ == "__main__":
    sys.exit(main())
