"""The public surface is pinned."""

import awm_jax


def test_public_names():
    assert sorted(awm_jax.__all__) == sorted(
        ["ALGORITHM_VERSION", "AWMError", "AuditResult", "CompareResult", "LayerScore", "ModelSummary", "__version__",
         "audit", "compare"]
    )
    for name in awm_jax.__all__:
        assert getattr(awm_jax, name) is not None


def test_compare_stays_callable_after_importing_the_cli_module():
    import awm_jax.compare as cli

    assert callable(awm_jax.compare) and callable(cli.main)
