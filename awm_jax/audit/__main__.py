"""``python -m awm_jax.audit``: the audit command line (:mod:`awm_jax.cli.audit`)."""

import sys

from awm_jax.cli import launch

sys.exit(launch("audit"))
