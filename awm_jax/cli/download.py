"""Fetch hub models into the Hugging Face cache: ``python -m awm_jax.download SUITE|REPO_ID...``.

Each target is a suite name (a file in ``configs/``, e.g. ``sft_pairs``), ``all`` (every suite),
a path to a suite ``.toml`` file, or a hub id ``owner/name[@revision]``. Suites expand to their
models; every distinct model is fetched with :func:`awm_jax.io.hub.resolve_model` into the hub
cache, resumable. ``--download partial`` (the default) fetches the config and tokenizer files,
each shard's header and then only the byte ranges of the tensors awm_jax reads (embedding, Q/K,
norm gains; the MLP inputs with ``--mlp``) into a partial snapshot
(:mod:`awm_jax.io.hub_partial`); ``--download full`` fetches whole weight files into the
standard snapshot. Models already in the cache are skipped without network access. ``--dry-run`` only reports what is
cached. One line per model, a summary at the end; a failed model does not stop the others, and
the exit code is that of the first failure (see :mod:`awm_jax.errors`).
"""

from __future__ import annotations

import argparse

import sys
from pathlib import Path

from awm_jax.cli.common import add_download, add_version
from awm_jax.errors import AWMError, OneLineArgumentParser, UsageError

__all__ = ["build_parser", "expand_targets", "hub_cache_of", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    from awm_jax.io.suites import CONFIG_DIR, suite_names

    parser = OneLineArgumentParser(
        prog="python -m awm_jax.download",
        description="Fetch the files awm_jax reads (config, tokenizer, safetensors weights) of hub models into the "
        "Hugging Face cache (HF_HUB_CACHE / HF_HOME). Interrupted downloads resume when run again.",
        epilog=f"suites in {CONFIG_DIR}: {', '.join(suite_names()) or 'none'}, or 'all'. Gated repositories need their "
        "terms accepted on the hub and a token (`hf auth login` or HF_TOKEN). HF_ENDPOINT selects a mirror.",
    )
    parser.add_argument("targets", nargs="+", metavar="SUITE|REPO_ID",
                        help="suite name, 'all', suite .toml file, or hub id owner/name[@revision]")
    parser.add_argument("--hub-cache", type=Path, default=None, metavar="DIR",
                        help="hub file cache folder (default: HF_HUB_CACHE, else HF_HOME/hub, else "
                             "~/.cache/huggingface/hub)")
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                        help="deprecated here: the hub file cache, as --hub-cache, until the next release (in every "
                             "other command --cache-dir is the fingerprint cache)")
    parser.add_argument("--dry-run", action="store_true", help="list the models and whether they are cached; fetch nothing")
    add_download(parser)
    parser.add_argument("--mlp", action="store_true", help="with --download partial: also fetch the MLP input matrices "
                                                           "(what compare --mlp reads)")
    add_version(parser)
    return parser


def expand_targets(targets: list[str]) -> list[tuple[str, str]]:
    """Expands suites into their models.

    Args:
      targets: suite names, ``all``, suite files or hub ids.

    Returns:
      ``(spec, remark)`` per distinct model, in first-seen order: the ``owner/name[@revision]``
      to resolve and a note for the user (gated, unconfirmed id) or ``""``.

    Raises:
      UsageError: a target is neither a suite nor a hub id, or a suite file is invalid.
    """
    from awm_jax.io.hub import parse_hub_id
    from awm_jax.io.suites import load_suite, suite_names

    entries: dict[str, str] = {}
    for target in targets:
        if target == "all":
            names = suite_names()
            if not names:
                raise UsageError("'all': no suite files found next to the package (configs/*.toml)")
            suites = [load_suite(name) for name in names]
        elif "/" in target and not target.endswith(".toml") and not Path(target).is_file():
            hub_id = parse_hub_id(target)
            if hub_id is None:
                raise UsageError(f"{target}: not a suite name, suite file or hub id owner/name[@revision][:QUANT]")
            entries.setdefault(str(hub_id), "")
            continue
        else:
            suites = [load_suite(target)]
        for suite in suites:
            for model in suite.models.values():
                remarks = []
                if model.gated:
                    remarks.append("gated: accept its terms on the hub and log in")
                if not model.confirmed:
                    remarks.append("id/weights not confirmed, see the suite's note")
                entries.setdefault(str(parse_hub_id(model.spec)), "; ".join(remarks))
    return list(entries.items())


def _size(folder: Path) -> str:
    from awm_jax.io.sparse import SparseFile

    total = 0
    for p in folder.iterdir() if folder.is_dir() else [folder]:  # a GGUF model: its (first) file
        if p.is_file():
            sparse = SparseFile.load(p) if p.suffix in (".safetensors", ".gguf") else None
            total += sparse.present_bytes() if sparse is not None else p.stat().st_size
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if total >= scale:
            return f"{total / scale:.1f} {unit}"
    return f"{total} B"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _partial(spec: str, args: argparse.Namespace, hub_cache: Path | None, fetch: bool):
    """The partial snapshot of ``spec`` with the tensors awm_jax reads: ``(folder, stats)``, or
    ``(None, None)`` when ``fetch`` is false and they are not all in the cache already."""
    from awm_jax.engine.models import fetch_needed, needed_tensors, open_checkpoint
    from awm_jax.errors import CheckpointError
    from awm_jax.io.hub import resolve_model
    from awm_jax.layouts import detect

    try:
        folder = resolve_model(spec, cache_dir=hub_cache, fetch="partial", download=fetch)
    except CheckpointError:
        if fetch:
            raise
        return None, None
    resolved = detect(open_checkpoint(folder), None)  # a GGUF file, an adapter over its base, or a folder
    if not fetch:
        ckpt = getattr(resolved.ckpt, "base", resolved.ckpt)
        names = needed_tensors(resolved, args.mlp, "fold") & ckpt.tensors.keys()
        missing = any(ckpt.sparse[i.file].missing(i.start, i.start + i.nbytes)
                      for i in map(ckpt.info, names) if i.file in ckpt.sparse)
        return (None, None) if missing else (folder, None)
    return folder, fetch_needed(resolved, args.mlp, "fold")


def hub_cache_of(args: argparse.Namespace) -> Path | None:
    """The hub file cache folder: ``--hub-cache``, or the deprecated ``--cache-dir`` (one warning line).

    Raises:
      UsageError: both name different folders.
    """
    from awm_jax.errors import warn

    if args.cache_dir is None:
        return args.hub_cache
    warn("download --cache-dir names the hub file cache only until the next release; pass --hub-cache DIR instead "
         "(--cache-dir is the fingerprint cache in every other command)")
    if args.hub_cache is not None and args.hub_cache != args.cache_dir:
        raise UsageError("--cache-dir and --hub-cache name different folders; pass --hub-cache only")
    return args.cache_dir


def _run(args: argparse.Namespace) -> int:
    hub_cache = hub_cache_of(args)
    entries = expand_targets(args.targets)

    from awm_jax.io.hub import cached_snapshot, resolve_model


    counts = {"cached": 0, "downloaded": 0, "missing": 0, "failed": 0}
    first_failure: AWMError | None = None
    total = len(entries)
    for i, (spec, remark) in enumerate(entries, 1):
        tag = f"[{i}/{total}] {spec}"
        note = f" ({remark})" if remark else ""
        snapshot = cached_snapshot(spec, hub_cache)
        if snapshot is None and args.download == "partial":
            snapshot, _ = _partial(spec, args, hub_cache, fetch=False)
        if snapshot is not None:
            counts["cached"] += 1
            print(f"{tag}: cached, {_size(snapshot)} at {snapshot}")
            continue
        if args.dry_run:
            counts["missing"] += 1
            print(f"{tag}: not cached{note}")
            continue
        print(f"{tag}: downloading{note}", flush=True)
        fetched = ""
        try:
            if args.download == "partial":
                snapshot, stats = _partial(spec, args, hub_cache, fetch=True)
                fetched = f" (partial: {_mb(stats.fetched_bytes)} fetched now, the tensors awm_jax reads)" if stats else ""
            else:
                snapshot = resolve_model(spec, cache_dir=hub_cache)
        except AWMError as e:
            if total == 1:
                raise
            counts["failed"] += 1
            first_failure = first_failure or e
            print(f"awm_jax: error: {e}", file=sys.stderr, flush=True)
            continue
        counts["downloaded"] += 1
        print(f"{tag}: done, {_size(snapshot)} at {snapshot}{fetched}", flush=True)
    if args.dry_run:
        print(f"{total} model(s): {counts['cached']} cached, {counts['missing']} to download (dry run)")
    else:
        print(f"{total} model(s): {counts['downloaded']} downloaded, {counts['cached']} already cached, "
              f"{counts['failed']} failed")
    return first_failure.exit_code if first_failure is not None else 0


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    from awm_jax.errors import run_cli

    return run_cli(lambda: _run(args), "interrupted; run the same command again to resume the download")
