"""``python -m awm_jax.compare MODEL_A MODEL_B``: the compare command line (:mod:`awm_jax.cli.compare`).

Imported, this module stays callable as the API (``awm_jax.compare(a, b)`` after
``import awm_jax.compare`` binds the package attribute to this module).
"""

import sys
import types

if __name__ == "__main__":
    from awm_jax.cli import run_as_main

    run_as_main("compare")

from awm_jax.cli.compare import build_parser, main  # noqa: E402  (no JAX: the CLI imports it lazily)

__all__ = ["build_parser", "main"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from awm_jax.engine import compare

        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
