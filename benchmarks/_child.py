"""One timed comparison in a fresh process; prints a JSON line with timings and peak RSS."""

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
        from awm_jax.io.memory import tune_allocator

        tune_allocator()  # as the CLI does

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


if __name__ == "__main__":
    main()
