"""``python -m awm_jax.download SUITE|REPO_ID...``: the download command line (:mod:`awm_jax.cli.download`)."""

import sys

if __name__ == "__main__":
    from awm_jax.cli import run_as_main

    run_as_main("download")

from awm_jax.cli.download import build_parser, expand_targets, main  # noqa: E402

__all__ = ["build_parser", "expand_targets", "main"]
