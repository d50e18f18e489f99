"""One timed comparison in a fresh process; prints a JSON line with timings and peak RSS.

The ``awm`` mode readies and ends the process as ``python -m awm_jax.compare`` does: the
allocator settings, :func:`awm_jax.cli.common.start_engine` (the engine's import and the verified
cache of compiled kernels) and :func:`awm_jax.cli._interrupt.exit_process`."""

import json
import resource
import sys
import time

T0 = time.perf_counter()


def main() -> None:
    mode, a, b = sys.argv[1:4]
    if mode == "awm":
        cache_dir = sys.argv[4]
        device = sys.argv[5] if len(sys.argv) > 5 else "auto"
        import awm_jax
        from awm_jax.cli.common import start_engine
        from awm_jax.io.memory import tune_allocator

        tune_allocator()  # as the CLI does
        start_engine(cache_dir)

        t = time.perf_counter()
        r = awm_jax.compare(a, b, cache_dir=cache_dir, device=device)
        out = {"mean": r.mean, "wq": r.wq, "wk": r.wk, "compare_s": time.perf_counter() - t, "timings": r.timings,
               "environment": r.environment, "cached": [r.model_a.fingerprint_cached, r.model_b.fingerprint_cached]}
    else:
        from benchmarks.naive import naive_compare

        t = time.perf_counter()
        out = naive_compare(a, b)
        out["compare_s"] = time.perf_counter() - t
    out["process_s"] = time.perf_counter() - T0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
    if mode == "awm":
        from awm_jax.cli._interrupt import exit_process

        exit_process(0)


if __name__ == "__main__":
    main()
