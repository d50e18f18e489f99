"""``python -m awm_jax.audit``: the audit command line (:mod:`awm_jax.cli.audit`)."""

from awm_jax.cli import run_as_main

run_as_main("audit")
