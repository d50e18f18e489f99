"""Command line: ``python -m awm_jax.compare MODEL_A MODEL_B``.

Thin by design: parses arguments, calls :func:`awm_jax.compare`, prints the report, writes the
JSON record. JAX is imported only after the arguments are parsed, so ``--help`` is instant.
Errors caused by the input print one line to stderr and exit with the code listed in
:mod:`awm_jax.errors`; anything else is a bug and shows its traceback (exit 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from awm_jax.cli.common import (FOUND_EXIT, MODEL_HELP, add_cache_cap, add_download, add_fail_on, add_pair_options,
                                apply_cache_cap, enforce_cache_cap, finding_exit, json_target, pair_options,
                                plot_target, start_engine, write_json, write_plot)
from awm_jax.errors import OneLineArgumentParser
from awm_jax.options import DEVICES

__all__ = ["main", "build_parser"]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="python -m awm_jax.compare",
        description="AWM lineage test: is model B derived from model A (or vice versa), from weights alone?",
        epilog=f"Exit codes: 0 ok, {FOUND_EXIT} a pair at the --fail-on verdict, 2 usage, 3 checkpoint, 4 layout, "
               "5 vocabulary, 6 numerical, 7 cache, 1 internal, 130 interrupted. Model folders are never executed or "
               "written to; see docs/errors.md.",
    )
    p.add_argument("model_a", nargs="?", help=f"model A: {MODEL_HELP}")
    p.add_argument("model_b", nargs="?", help="model B, likewise")
    p.add_argument("--example", action="store_true",
                   help="compare the example checkpoints shipped with the package (base vs derived, base vs independent)")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="JAX device; a device that is not there is an error (default: auto)")
    add_pair_options(p)
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON to PATH ('-': to stdout, instead of "
                                                  "the text report)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw the per-layer Wq and Wk scores against the band of the pair's mismatched layers (the "
                        "null behind the verdict), with the verdict: .png, .svg or .pdf (one panel per pair)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the fingerprint cache")
    p.add_argument("--cache-dir", metavar="DIR", help="fingerprint cache folder (default: $AWM_JAX_CACHE or ~/.cache/awm_jax)")
    add_cache_cap(p)
    p.add_argument("--layout", metavar="NAME_OR_FILE",
                   help="force the layout of both models (a registry name or a TOML layout file)")
    p.add_argument("--layout-a", metavar="NAME_OR_FILE", help="force the layout of model A")
    p.add_argument("--layout-b", metavar="NAME_OR_FILE", help="force the layout of model B")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load pickle weights (pytorch_model.bin, *.pt) of folders without safetensors, through "
                        "torch.load(weights_only=True); needs torch. Off by default: unpickling can run code")
    p.add_argument("--adapter-base", metavar="MODEL",
                   help="base model (folder, .gguf or hub id) of LoRA adapter folders given as models (default: the "
                        "adapter's base_model_name_or_path)")
    add_download(p)
    add_fail_on(p, "a compared pair is")
    p.add_argument("--quiet", action="store_true",
                   help="print one line per pair: the verdict, the mean score and the calibrated p-value (no progress)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress on stderr (shown only when stderr is a terminal)")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def _run(args: argparse.Namespace) -> int:
    from awm_jax.io.adapters import adapter_base
    from awm_jax.io.checkpoint import pickle_loading
    from awm_jax.errors import UsageError
    from awm_jax.engine import compare
    from awm_jax.progress import shown

    apply_cache_cap(args.cache_max_gb)
    if args.example:
        if args.model_a or args.model_b:
            raise UsageError("--example takes no model folders")
        pairs = [(EXAMPLES / "base", EXAMPLES / "derived"), (EXAMPLES / "base", EXAMPLES / "independent")]
    elif args.model_a and args.model_b:
        pairs = [(Path(args.model_a), Path(args.model_b))]
    else:
        raise UsageError("give two model folders (MODEL_A MODEL_B), or --example; see --help")
    to_stdout = args.json == "-"  # the JSON record on stdout, instead of the text report
    if args.json:
        json_target(args.json)
    if args.plot:
        plot_target(args.plot)
    start_engine(args.cache_dir, not args.no_cache)
    results = []
    for a, b in pairs:
        with pickle_loading(args.allow_pickle), adapter_base(args.adapter_base), \
                shown(not (args.quiet or args.no_progress)):
            r = compare(
                a, b, device=args.device, cache=not args.no_cache, cache_dir=args.cache_dir,
                layout_a=args.layout_a or args.layout, layout_b=args.layout_b or args.layout, fetch=args.download,
                **pair_options(args),
            )
        results.append(r)
        if to_stdout:
            continue
        if args.quiet:
            p = "n/a" if r.p_value != r.p_value else f"{r.p_value:.3g}"
            print(f"{r.verdict}\tmean {r.mean:.6f}\tp {p}\t{a}\t{b}")
        else:
            print(r.render_text())
            print()
    if args.plot:
        write_plot(args.plot, [(f"A {Path(a).name} vs B {Path(b).name}", r) for (a, b), r in zip(pairs, results)])
    if args.json:
        write_json(args.json, results[0].to_dict() if len(results) == 1 else {"pairs": [r.to_dict() for r in results]})
    if not args.no_cache:
        enforce_cache_cap(args.cache_dir)
    return finding_exit(args.fail_on, [r.verdict for r in results])


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.version:
        from awm_jax._version import __version__

        print(f"awm_jax {__version__}")
        return 0
    from awm_jax.errors import run_cli

    return run_cli(lambda: _run(args), "interrupted")
