"""Command line: ``python -m awm_jax cache list|size|prune [--max-gb N]``.

Argument parsing and output only; the work is done by :mod:`awm_jax.fingerprint.manage`. No
JAX is imported.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys

from awm_jax.cli.common import add_cache_dir, add_version, json_target, write_json
from awm_jax.errors import OneLineArgumentParser

__all__ = ["build_parser", "human_bytes", "main"]

GB = 1e9


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="python -m awm_jax cache",
        description="The fingerprint cache: list its entries, show its size, or evict least-recently-used entries "
                    "down to a size cap.",
        epilog="The cache folder is --cache-dir, else $AWM_JAX_CACHE, else $XDG_CACHE_HOME/awm_jax, else "
               "~/.cache/awm_jax; $AWM_JAX_CACHE_MAX_GB caps its size for every run (entries are evicted after each "
               "new fingerprint). Entries in use by a running comparison are never removed. Exit codes: 0 ok, 2 usage, "
               "7 cache (a link or unreadable folder in the cache), 1 internal, 130 interrupted.",
    )
    add_version(p)
    sub = p.add_subparsers(dest="action", required=True, parser_class=OneLineArgumentParser)
    actions = {
        "list": "one line per fingerprint: content key, kind, shape, size, last use, model it was made from",
        "size": "total size of the cache, and its cap",
        "prune": "evict least-recently-used fingerprints until the cache fits --max-gb (default: "
                 "$AWM_JAX_CACHE_MAX_GB); always removes what no run can use (other formats, damaged entries, "
                 "leftovers of killed runs)",
    }
    for name, text in actions.items():
        s = sub.add_parser(name, help=text, description=text)
        add_cache_dir(s)
        s.add_argument("--json", metavar="PATH", help="write the result as JSON to PATH ('-': to stdout, instead of "
                                                      "the text)")
        if name == "prune":
            s.add_argument("--max-gb", type=float, metavar="N",
                           help="size cap in gigabytes (10^9 bytes); 0 evicts every entry not in use")
            s.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    return p


def human_bytes(n: int | float) -> str:
    """``n`` bytes in B, kB, MB or GB (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _printable(text: str | None) -> str:
    """A recorded string as one printable field (what a damaged meta.json says is not trusted)."""
    if text is None:
        return "-"
    return "".join(c if c.isprintable() and c != "\t" else repr(c)[1:-1] for c in text)


def _local(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M")


def _cap(args) -> int | None:
    """The size cap: ``--max-gb``, else ``$AWM_JAX_CACHE_MAX_GB``, else none."""
    from awm_jax.errors import UsageError
    from awm_jax.fingerprint.cache import cap_from_env

    max_gb = getattr(args, "max_gb", None)
    if max_gb is None:
        return cap_from_env()
    if not (math.isfinite(max_gb) and max_gb >= 0):
        raise UsageError(f"--max-gb must be a number of gigabytes >= 0, got {max_gb:g}")
    return int(max_gb * GB)


def _run(args: argparse.Namespace) -> int:
    from awm_jax.fingerprint.cache import default_cache_dir
    from awm_jax.fingerprint.manage import prune, scan_cache

    root = args.cache_dir or default_cache_dir()
    cap = _cap(args)
    if args.json:
        json_target(args.json)
    if args.action == "prune":
        report = prune(root, cap, dry_run=args.dry_run)
        payload = report.to_dict()
        evict, remove = ("would evict", "would remove") if report.dry_run else ("evicted", "removed")
        lines = [f"{evict} {len(report.evicted)} fingerprint(s), {remove} {len(report.removed_temporary)} leftover "
                 f"folder(s) and {report.removed_index} index file(s): "
                 f"{human_bytes(report.bytes_before)} -> {human_bytes(report.bytes_after)}"
                 + (f" (cap {human_bytes(cap)})" if cap is not None else " (no cap: only what no run can use)")]
        if report.in_use:
            lines.append(f"{len(report.in_use)} fingerprint(s) in use were kept: {', '.join(k[:16] for k in report.in_use)}")
    else:
        listing = scan_cache(root)
        payload = listing.to_dict()
        payload["cap_bytes"] = cap
        cap_text = f", cap {human_bytes(cap)}" if cap is not None else ", no cap"
        summary = (f"{listing.root}: {human_bytes(listing.total_bytes)} in {len(listing.entries)} fingerprint(s)"
                   f"{cap_text}")
        if args.action == "size":
            payload = {k: payload[k] for k in ("root", "total_bytes", "cap_bytes")}
            payload.update(entries=len(listing.entries), temporary_bytes=sum(t.bytes for t in listing.temporary),
                           index_bytes=listing.index_bytes)
            lines = [summary]
        else:
            rows = [["key", "state", "kind", "norm", "layout", "layers x n", "size", "last use", "source"]]
            for e in listing.entries:
                shape = f"{e.num_layers} x {e.hidden_size}" if e.num_layers is not None else "-"
                rows.append([e.key[:16], e.state, _printable(e.kind), _printable(e.norm_gains), _printable(e.layout),
                             shape, human_bytes(e.bytes), _local(e.last_use), _printable(e.source)])
            for t in listing.temporary:
                rows.append([_printable(t.name)[:16], "temporary", "-", "-", "-", "-", human_bytes(t.bytes),
                             _local(t.modified), "-"])
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
            lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows] + [summary]
    if args.json:
        write_json(args.json, payload)
    if args.json != "-":
        print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    from awm_jax.errors import run_cli

    return run_cli(lambda: _run(args), "interrupted")


if __name__ == "__main__":
    sys.exit(main())
