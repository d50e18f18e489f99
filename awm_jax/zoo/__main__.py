"""Command line: ``python -m awm_jax.zoo {build,examples,status}``.

* ``build [--cache DIR] [--micro]``: builds the full zoo (or the micro zoo) into the cache
  directory, resuming an interrupted build; prints a JSON report.
* ``examples [--out DIR]``: builds the three shipped example checkpoints and writes them to
  ``awm_jax/examples/{base,derived,independent}``.
* ``status [--cache DIR] [--micro]``: summarises a built zoo's manifest.

Heavy imports (JAX) happen only once a command runs, so ``--help`` is instant. Without the zoo
extra (flax, optax, tokenizers, pillow, safetensors) every command says in one line on stderr what
to install and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main"]

_EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m awm_jax.zoo",
        description="Build the lineage zoo: tiny language models with known lineage.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the zoo into a cache directory (resumable)")
    b.add_argument("--cache", type=Path, default=None,
                   help="zoo directory (default: $AWM_ZOO_DIR, $XDG_CACHE_HOME/awm_jax/zoo or "
                        "~/.cache/awm_jax/zoo; '-micro' appended with --micro)")
    b.add_argument("--micro", action="store_true",
                   help="build the four-model micro zoo used by the tests")
    b.add_argument("--deep", action="store_true",
                   help="build the deep zoo (bases of 8-16 layers with spread norm gains; hours on 2 cores)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = sub.add_parser("examples", help="write the shipped example checkpoints")
    e.add_argument("--out", type=Path, default=_EXAMPLES_DIR,
                   help=f"destination folder (default: {_EXAMPLES_DIR})")
    e.add_argument("--cache", type=Path, default=None, help="build directory")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    s = sub.add_parser("status", help="summarise a built zoo's manifest")
    s.add_argument("--cache", type=Path, default=None, help="zoo directory")
    s.add_argument("--micro", action="store_true", help="the micro zoo's default directory")
    s.add_argument("--deep", action="store_true", help="the deep zoo's default directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    from awm_jax.zoo import missing_extra

    missing = missing_extra()
    if missing:
        print('awm_jax: error: the lineage zoo needs the zoo extra: pip install "awm_jax[zoo]" '
              f"(not installed: {', '.join(missing)})", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    if args.command == "status":
        from awm_jax.zoo.build import default_cache_dir

        cache = args.cache or default_cache_dir("micro" if args.micro else "deep" if args.deep else "full")
        path = cache / "MANIFEST.json"
        if not path.is_file():
            print(f"error: no zoo manifest at {path}; run 'python -m awm_jax.zoo build'",
                  file=sys.stderr)
            return 2
        m = json.loads(path.read_text())
        print(json.dumps({"cache": str(cache), "plan": m["plan"], "complete": m["complete"],
                          "models": len(m["models"]), "counts": m["counts"]}, indent=1))
        return 0

    from awm_jax.zoo.build import build_plan, write_examples
    from awm_jax.zoo.plans import deep_plan, full_plan, micro_plan

    try:
        if args.command == "build":
            plan = micro_plan() if args.micro else deep_plan() if args.deep else full_plan()
            report = build_plan(plan, args.cache, progress=not args.no_progress)
        else:
            report = write_examples(args.out, args.cache, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
