"""The experiment suites (``*.toml``, schema in ``README.md``), installed as ``awm_jax.configs``.

This folder is the one source of the suites: a wheel or sdist ships it inside the package as
``awm_jax/configs`` (``package-dir`` in ``pyproject.toml``), and :mod:`awm_jax.io.suites` reads
it from there, or from here in a source checkout. Edit the suites here.
"""
