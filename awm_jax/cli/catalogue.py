"""Command line: ``python -m awm_jax catalogue {build,verify,publish,fetch}``.

Argument parsing and output only; the work is done by :mod:`awm_jax.catalogue.store`.
"""

from __future__ import annotations

import argparse
import sys

from awm_jax.cli.common import add_version
from awm_jax.errors import OneLineArgumentParser
from awm_jax.options import DEVICES

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="python -m awm_jax catalogue",
        description="Catalogues of known base models as compact AWM sketches (docs/catalogue.md).",
        epilog="Exit codes: 0 ok, 2 usage, 3 checkpoint or hub, 4 layout, 5 vocabulary, 6 numerical, "
               "7 damaged catalogue or cache, 1 internal, 130 interrupted.",
    )
    sub = p.add_subparsers(dest="action", required=True, parser_class=OneLineArgumentParser)
    b = sub.add_parser("build", help="sketch models into a catalogue folder (entries of the same id are replaced)")
    b.add_argument("folder", help="catalogue folder (created)")
    b.add_argument("models", nargs="*", metavar="MODEL", help="model folders or hub ids owner/name[@revision]")
    b.add_argument("--list", metavar="FILE", help="a text file of models, one per line: SPEC or ID SPEC")
    b.add_argument("--suite", metavar="NAME", help="every model of a suite (a name or a .toml file)")
    b.add_argument("--layout", metavar="NAME_OR_FILE", help="force the layout of every model")
    b.add_argument("--device", default="auto", choices=DEVICES, help="JAX device for the Grams (default: auto)")
    b.add_argument("--no-cache", action="store_true", help="do not read or write the fingerprint cache")
    b.add_argument("--cache-dir", metavar="DIR", help="fingerprint cache folder")
    v = sub.add_parser("verify", help="check every entry's hash and contents")
    v.add_argument("catalogue", help="catalogue folder or hub dataset id")
    pub = sub.add_parser("publish", help="upload a catalogue folder as a hub dataset repository")
    pub.add_argument("folder")
    pub.add_argument("repo", help="dataset repository id owner/name")
    pub.add_argument("--token", help="hub token (default: the huggingface_hub login or HF_TOKEN)")
    pub.add_argument("--private", action="store_true", help="create the repository private")
    f = sub.add_parser("fetch", help="download a catalogue from a hub dataset repository and print its folder")
    f.add_argument("repo", help="dataset repository id owner/name[@revision]")
    add_version(p)
    return p


def _build(args) -> int:
    import jax

    from awm_jax.catalogue.store import build_catalogue, read_list, source_of, suite_sources
    from awm_jax.engine.pair import select_device
    from awm_jax.errors import UsageError
    from awm_jax.fingerprint import FingerprintCache

    sources = [source_of(m) for m in args.models]
    if args.list:
        sources += read_list(args.list)
    if args.suite:
        sources += suite_sources(args.suite)
    if not sources:
        raise UsageError("no models: give MODEL folders or hub ids, --list FILE or --suite NAME")
    cache = None if args.no_cache else FingerprintCache(args.cache_dir)

    def progress(entry):
        print(f"{entry.id}\t{entry.hidden_size}x{entry.num_layers}\tK={entry.sketch_tokens} m={entry.sketch_dims}\t"
              f"{entry.bytes} bytes ({100 * entry.fraction:.2f}% of E+Q/K)", flush=True)

    with jax.default_device(select_device(args.device)):
        catalogue = build_catalogue(sources, args.folder, cache=cache, layout=args.layout, progress=progress)
    print(f"catalogue {catalogue.folder}: {len(catalogue.entries)} entries")
    return 0


def _run(args) -> int:
    from awm_jax.catalogue import store

    if args.action == "build":
        return _build(args)
    if args.action == "verify":
        catalogue = store.open_catalogue(args.catalogue)
        for entry in catalogue.entries:
            catalogue.sketch(entry)
        print(f"{catalogue.origin}: {len(catalogue.entries)} entries verified")
        return 0
    if args.action == "publish":
        commit = store.publish_catalogue(args.folder, args.repo, token=args.token, private=args.private)
        print(f"published {args.folder} as dataset {args.repo} at commit {commit}")
        return 0
    catalogue = store.fetch_catalogue(args.repo)
    print(catalogue.folder)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    from awm_jax.errors import run_cli

    return run_cli(lambda: _run(args), "interrupted")


if __name__ == "__main__":
    sys.exit(main())
