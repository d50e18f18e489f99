"""Command line: ``python -m awm_jax.audit MODEL... | --list FILE | --suite NAME [--against BASE...]``.

Audits a set of models: the N x N matrix of AWM scores (or N x M with ``--against``), per-pair
detail, families and the lineage tree, written to ``--out`` (see :mod:`awm_jax.audit.outputs`).
An interrupted audit rerun with the same arguments resumes where it stopped. The work is done
by :func:`awm_jax.audit.core.audit`; this module only parses arguments and prints. JAX is
imported after parsing, so ``--help`` is instant. Errors caused by the input print one line and
exit with the codes of :mod:`awm_jax.errors`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from awm_jax.cli.common import (MODEL_HELP, add_cache_cap, add_download, add_pair_options, add_version,
                                apply_cache_cap, enforce_cache_cap, pair_options, start_engine)
from awm_jax.errors import OneLineArgumentParser
from awm_jax.options import DEFAULT_MEMORY_GB, DEVICES

__all__ = ["main", "build_parser", "read_model_list"]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="python -m awm_jax.audit",
        description="AWM lineage audit of many models: score matrix, per-pair detail, families, lineage tree.",
        epilog="Outputs in --out: audit.json, matrix_{mean,wq,wk,z,p,verdict}.csv, pairs.csv, heatmap.png (verdicts marked), "
               "lineage.png, summary.txt, report.html (all of it on one self-contained page), run.json, progress.jsonl "
               "(resume file). Exit codes: 0 ok, 2 usage, 3 checkpoint, "
               "4 layout, 5 vocabulary, 6 numerical, 7 cache, 1 internal, 130 interrupted. See docs/audit.md.",
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help=f"each {MODEL_HELP}")
    p.add_argument("--list", metavar="FILE", help="file with one model per line (FOLDER or hub id, or NAME<TAB>MODEL); "
                                                  "lines starting with # are comments")
    p.add_argument("--suite", metavar="NAME", help="the models of a suite (configs/NAME.toml, or a path to a .toml)")
    p.add_argument("--against", nargs="+", metavar="BASE", help="score the models against these references only (N x M)")
    p.add_argument("--against-list", metavar="FILE", help="references from a file, as --list")
    p.add_argument("--out", metavar="DIR", required=False, help="output folder (required; created if missing)")
    p.add_argument("--fresh", action="store_true", help="discard the progress of an earlier run in --out")
    p.add_argument("--family-rule", default="fwer", choices=("fwer", "verdict"),
                   help="pairs that join families: calibrated p-value significant over the whole audit (fwer, "
                        "default) or the per-pair verdict 'derived'")
    p.add_argument("--family-threshold", type=float, metavar="SCORE",
                   help="instead, families join pairs with mean score >= SCORE (for narrow or shallow models, "
                        "see docs/audit.md)")
    add_pair_options(p)
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="platform whose local devices (all of them) share the pairs (default: auto)")
    p.add_argument("--cosine", default="auto", choices=("auto", "host", "device"),
                   help="accepted for older scripts and ignored: every pair runs the engine's choice (host BLAS on "
                        "the CPU, the device's kernels elsewhere), as compare does")
    p.add_argument("--memory-gb", type=float, default=DEFAULT_MEMORY_GB,
                   help=f"memory for prepared models (embeddings, vocabularies) held at once (default: {DEFAULT_MEMORY_GB:g})")
    p.add_argument("--cache-dir", metavar="DIR", help="fingerprint cache folder (default: $AWM_JAX_CACHE or ~/.cache/awm_jax)")
    add_cache_cap(p)
    p.add_argument("--layout", metavar="NAME_OR_FILE", help="force the layout of every model")
    p.add_argument("--no-download", action="store_true", help="use hub ids only from the local hub cache")
    add_download(p)
    p.add_argument("--distributed", action="store_true",
                   help="join a multi-host run (jax.distributed.initialize; see docs/audit.md for the launch command)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load pickle weights of folders without safetensors, through torch.load(weights_only=True)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_version(p)
    return p


#: Largest model list read (a list of a million models is far smaller).
MAX_LIST_BYTES = 16 * 2**20


def read_model_list(path: str) -> dict[str, str] | list[str]:
    """Models of a list file: one per line, ``MODEL`` or ``NAME<TAB>MODEL``; ``#`` comments.

    The file must be a regular file of at most :data:`MAX_LIST_BYTES` (a FIFO or ``/dev/zero``
    would block or never end), UTF-8 with or without a byte-order mark."""
    from awm_jax.errors import UsageError
    from awm_jax.io.checkpoint import open_regular

    try:
        f = open_regular(path, UsageError)
    except UsageError as e:
        raise UsageError(f"--list {e}") from None
    with f:
        try:
            raw = f.read(MAX_LIST_BYTES + 1)
        except OSError as e:
            raise UsageError(f"--list {path}: cannot read ({e.strerror})") from None
    if len(raw) > MAX_LIST_BYTES:
        raise UsageError(f"--list {path}: more than {MAX_LIST_BYTES // 2**20} MiB, too large for a list of models; "
                         "give a file with one model per line")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"--list {path}: not a UTF-8 text file") from None
    named, plain = {}, []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            name, spec = (x.strip() for x in line.split("\t", 1))
            if not name or not spec:
                raise UsageError(f"--list {path} line {number}: expected NAME<TAB>MODEL")
            if name in named:
                raise UsageError(f"--list {path} line {number}: name {name!r} used twice")
            named[name] = spec
        else:
            plain.append(line)
    if named and plain:
        raise UsageError(f"--list {path}: name every model (NAME<TAB>MODEL) or none")
    if not named and not plain:
        raise UsageError(f"--list {path}: lists no model")
    return named or plain


def _models(args: argparse.Namespace):
    """The models, and a suite's labelled pairs (``(a, b, label)``; empty without ``--suite``)."""
    from awm_jax.errors import UsageError

    given = [bool(args.models), bool(args.list), bool(args.suite)]
    if sum(given) != 1:
        raise UsageError("give the models one way: MODEL..., --list FILE or --suite NAME; see --help")
    if args.models:
        return args.models, []
    if args.list:
        return read_model_list(args.list), []
    from awm_jax.io.suites import load_suite

    suite = load_suite(args.suite)
    return {key: m.spec for key, m in suite.models.items()}, [(p.a, p.b, p.label) for p in suite.pairs]


def _check_out(out: str) -> None:
    """``--out DIR`` before any work: a folder (or creatable in a folder) that may be written."""
    import os

    from awm_jax.errors import UsageError

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder; give a folder for the results")
    existing = path
    while not existing.exists():
        if existing.parent == existing or existing.is_symlink():
            raise UsageError(f"--out {out}: cannot be created ({existing} is a broken link or not reachable); "
                             "give a folder for the results")
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--out {out}: cannot be created ({existing} is not a folder); give a folder for the results")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: folder {existing} is not writable; give a folder you may write to")
    if path.is_dir():  # outputs of an earlier run are replaced: each must be a regular file (or a link to one)
        from awm_jax.audit.journal import JOURNAL_NAME
        from awm_jax.audit.outputs import OUTPUT_FILES
        from awm_jax.io.atomic import write_target

        for name in (*OUTPUT_FILES, "labels.csv", JOURNAL_NAME):
            if os.path.lexists(path / name):
                try:
                    write_target(path / name)
                except OSError as e:
                    raise UsageError(f"--out {out}: {name} {e.strerror}; remove it or choose another folder") from None


def _check_options(args: argparse.Namespace) -> None:
    """Options checked before any work, so a mistake is not found hours later."""
    import math

    from awm_jax.errors import UsageError

    if not args.out:
        raise UsageError("--out DIR is required: the audit writes its results and its progress file there")
    _check_out(args.out)
    if not (math.isfinite(args.memory_gb) and args.memory_gb > 0):
        raise UsageError(f"--memory-gb {args.memory_gb}: expected a positive number of GiB (e.g. 2); see --help")
    if args.family_threshold is not None and not math.isfinite(args.family_threshold):
        raise UsageError(f"--family-threshold {args.family_threshold}: expected a finite score; see --help")


def _run(args: argparse.Namespace) -> int:
    from awm_jax.io.checkpoint import pickle_loading
    from awm_jax.errors import UsageError

    _check_options(args)
    apply_cache_cap(args.cache_max_gb)
    if args.against and args.against_list:
        raise UsageError("give the references one way: --against or --against-list")
    if args.distributed:
        from awm_jax.audit.distributed import initialize_distributed

        initialize_distributed()
    models, labelled = _models(args)
    start_engine(args.cache_dir)
    against = args.against or (read_model_list(args.against_list) if args.against_list else None)
    from awm_jax.audit.core import audit
    from awm_jax.audit.outputs import render_summary, write_label_check

    say = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
    with pickle_loading(args.allow_pickle):
        result = audit(
            models, against=against, out_dir=args.out, device=args.device,
            cache_dir=args.cache_dir, layouts={"*": args.layout} if args.layout else None,
            family_rule=args.family_rule if args.family_threshold is None else args.family_threshold,
            memory_gb=args.memory_gb, fresh=args.fresh, **pair_options(args),
            progress=not (args.no_progress or args.quiet), download=not args.no_download, log=say,
            fetch=args.download,
        )
    enforce_cache_cap(args.cache_dir)
    import jax

    if jax.process_index() != 0:
        return 0
    check = write_label_check(result, labelled, args.out) if labelled and not against else ""
    if not args.quiet:
        print(render_summary(result), end="")
        if check:
            print(f"\n{check} (details in {args.out}/labels.csv)")
        t = result.timings
        print(f"\n{len(result.pairs)} pairs in {t['total_s']:.1f}s (fingerprints {t['fingerprint_s']:.1f}s, pairs "
              f"{t['pair_phase_s']:.1f}s); results in {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    from awm_jax.errors import run_cli

    return run_cli(lambda: _run(args), "interrupted; rerun the same command to resume")
