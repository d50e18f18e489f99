"""Audit benchmark: N synthetic models of a real shape (families plus independents), audited.

    python -m benchmarks.audit [--models 64] [--shape tinyllama-1.1b] [--dir DIR] [--keep]

Synthesises lean checkpoints (only the tensors awm_jax reads: embedding, Q, K, norms; bf16) of
the named shape (``benchmarks/shapes.py``): a few families, each a base model and derivatives
(noise on every scored tensor, then a signed permutation of the residual dimensions; some
derivatives are derived from a derivative), and independent models for the rest. Then runs
``python -m awm_jax.audit`` on them in a fresh process with an empty fingerprint cache and
reports: total time, the share of the pair stages, the child's peak RSS (``wait4``), whether
the families were recovered exactly, and a correctness check: a few pairs are recompared with
``awm_jax.compare`` and must agree within 1e-6. Every tensor is regenerated from seeds, layer by
layer, so synthesis never holds a model in memory.

Disk: a model takes about ``(V + 2 L d) n`` bf16 bytes (0.33 GB for TinyLlama), its fingerprint
two Gram files of ``awm_jax.fingerprint.cache.gram_file_bytes`` each (about ``4 L n^2`` bytes in
all, 0.37 GB); the benchmark refuses to start without that much free space plus a
margin. The JSON goes to ``benchmarks/results/audit-<shape>-<N>-<platform>[-<cpu model>].json``; the
synthetic models and the cache are deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from awm_jax.fingerprint.cache import gram_file_bytes
from benchmarks.host_blas import cpu_record, machine_tag
from benchmarks.shapes import BF16, SHAPES, Shape

RESULTS = Path(__file__).resolve().parent / "results"
#: Relative noise of successive derivatives of a family (cycled).
NOISES = (0.15, 0.3, 0.5, 0.25, 0.4, 0.2)
#: First seed word of each random stream (see ``_tensor``).
SEED_BASE, SEED_NOISE, SEED_PERMUTATION = 0, 1, 2
#: Free disk space left untouched (GB).
DISK_MARGIN_GB = 8.0


@dataclasses.dataclass(frozen=True)
class Step:
    """One derivation: relative noise, then a signed permutation (seeded)."""

    noise: float
    seed: int


@dataclasses.dataclass(frozen=True)
class Member:
    """A synthetic model: its family's seed and the derivation steps from the family base."""

    name: str
    family: int
    base_seed: int
    steps: tuple[Step, ...]


def plan_models(count: int, seed: int = 0) -> list[Member]:
    """``count`` models: families of up to 7 (base, direct and chained derivatives), the rest independent.

    About two thirds of the models belong to families; a family's derivative ``i`` is derived
    from the base when ``i`` is odd and from derivative ``i - 1`` when even (a chain).
    """
    if count < 2:
        raise SystemExit("--models must be at least 2")
    size = 7 if count >= 20 else max(2, count // 2)
    families = max(1, round(count * 0.66 / size))
    members: list[Member] = []
    for f in range(families):
        chains: list[tuple[Step, ...]] = [()]
        for i in range(1, size):
            parent = chains[0] if i % 2 else chains[i - 1]
            chains.append(parent + (Step(NOISES[(i - 1) % len(NOISES)], seed * 100_000 + f * 100 + i),))
        members += [Member(f"fam{f:02d}-{i}", f, seed * 1000 + f, c) for i, c in enumerate(chains)]
    while len(members) < count:
        i = len(members)
        members.append(Member(f"ind{i:02d}", families + i, seed * 1000 + 500 + i, ()))
    return members[:count]


def _tensor(member: Member, shape: Shape, tag: int, rows: int, scale: float) -> np.ndarray:
    """One ``[rows, n]`` float32 tensor of a member, regenerated from seeds.

    Base weights, derivation noise and permutations draw from separate seed spaces (the first
    seed word): a derivation's noise must never equal another family's base weights, or the
    derivative really is related to that family.
    """
    n = shape.hidden
    w = np.random.default_rng([SEED_BASE, member.base_seed, tag]).standard_normal((rows, n), np.float32)
    w *= scale
    for step in member.steps:
        noise = np.random.default_rng([SEED_NOISE, step.seed, tag]).standard_normal((rows, n), np.float32)
        w += (step.noise * scale) * noise
        prng = np.random.default_rng([SEED_PERMUTATION, step.seed])
        perm = prng.permutation(n)
        signs = prng.choice(np.array([-1.0, 1.0], np.float32), n)
        w = w[:, perm] * signs
    return w


def synthesize(member: Member, shape: Shape, root: Path) -> Path:
    """Writes one lean bf16 checkpoint (sharded like a real one) with a WordLevel tokenizer."""
    from awm_jax.synthetic import llama_config, write_model

    n = shape.hidden
    q_rows, k_rows = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    specs = [("model.embed_tokens.weight", (shape.vocab, n), BF16, lambda: _tensor(member, shape, 0, shape.vocab, 1.0))]
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (n,), BF16, lambda: np.ones(n, BF16)),
            (p + "self_attn.q_proj.weight", (q_rows, n), BF16, lambda i=i: _tensor(member, shape, 2 * i + 1, q_rows, 0.02)),
            (p + "self_attn.k_proj.weight", (k_rows, n), BF16, lambda i=i: _tensor(member, shape, 2 * i + 2, k_rows, 0.02)),
            (p + "post_attention_layernorm.weight", (n,), BF16, lambda: np.ones(n, BF16)),
        ]
    specs.append(("model.norm.weight", (n,), BF16, lambda: np.ones(n, BF16)))
    cfg = llama_config(shape.vocab, n, shape.layers, shape.heads, shape.kv_heads, shape.head_dim, shape.intermediate)
    return write_model(root / member.name, specs, cfg, [f"t{i}" for i in range(shape.vocab)], 2 << 30)


def disk_needed(shape: Shape, count: int) -> float:
    """Bytes of ``count`` lean checkpoints and their fingerprints (Q and K Gram files)."""
    n = shape.hidden
    q_rows, k_rows = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    model = 2 * n * (shape.vocab + shape.layers * (q_rows + k_rows))
    return float(count * (model + 2 * gram_file_bytes(n, shape.layers)))


def run_audit(listing: Path, out: Path, cache: Path, memory_gb: float) -> dict:
    """Runs the audit CLI in a child process; returns its wall time and peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "awm_jax.audit", "--list", str(listing), "--out", str(out), "--cache-dir", str(cache),
           "--memory-gb", str(memory_gb), "--fresh"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"audit failed with exit code {proc.returncode}")
    return {"wall_s": wall, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9}


def check_pairs(result: dict, paths: dict[str, Path], cache: Path, count: int = 3) -> list[dict]:
    """Recompares a derived, a chained and an independent pair with ``compare``; 1e-6 or fail."""
    from awm_jax.engine import compare

    pairs = result["pairs"]
    derived = [p for p in pairs if p["a"].split("-")[0] == p["b"].split("-")[0] and p["a"].startswith("fam")]
    independent = [p for p in pairs if p["a"].split("-")[0] != p["b"].split("-")[0]]
    picks = (derived[:1] + derived[-1:] + independent[:1])[:count]
    checked = []
    for p in picks:
        ref = compare(paths[p["a"]], paths[p["b"]], cache_dir=cache)
        diff = max(abs(p[f] - getattr(ref, f)) for f in ("wq", "wk", "mean"))
        checked.append({"a": p["a"], "b": p["b"], "mean": p["mean"], "compare_mean": ref.mean, "max_abs_diff": diff})
        if diff > 1e-6 or p["verdict"] != ref.verdict:
            raise SystemExit(f"audit and compare disagree on {p['a']} / {p['b']}: {diff:.3g}")
    return checked


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.audit", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=64)
    p.add_argument("--shape", default="tinyllama-1.1b", choices=sorted(SHAPES))
    p.add_argument("--dir", default=os.environ.get("AWM_BENCH_DIR", "/tmp/awm_audit_bench"),
                   help="where checkpoints, the fingerprint cache and the audit output go")
    p.add_argument("--memory-gb", type=float, default=2.0, help="the audit's --memory-gb")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints, cache and audit output")
    p.add_argument("--report-only", action="store_true",
                   help="write the JSON from the audit already run in --dir with the same --models and --seed (its "
                        "models, cache and output still there: a benchmark stopped after its audit); the audit's wall "
                        "time and peak RSS are then unknown (null)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    shape = SHAPES[args.shape]
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    need = disk_needed(shape, args.models)
    free = shutil.disk_usage(root).free
    if args.report_only and not (root / "audit" / "run.json").exists():
        raise SystemExit(f"{root}: no audit output to report (audit/run.json)")
    if not args.report_only and free < need + DISK_MARGIN_GB * 1e9:
        raise SystemExit(f"{root}: {args.models} {shape.name} models and their fingerprints need {need / 1e9:.1f} GB "
                         f"plus a {DISK_MARGIN_GB:.0f} GB margin; {free / 1e9:.1f} GB free. Choose fewer --models or "
                         "another --dir")
    members = plan_models(args.models, args.seed)
    models_dir, cache, out = root / "models", root / "cache", root / "audit"
    if not args.report_only:
        shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    paths = {}
    for i, m in enumerate(members):
        marker = models_dir / m.name / ".complete"
        if not marker.exists() and args.report_only:
            raise SystemExit(f"{models_dir / m.name}: not there; --report-only needs the models the audit scored")
        if not marker.exists():
            shutil.rmtree(models_dir / m.name, ignore_errors=True)
            synthesize(m, shape, models_dir)
            marker.write_text("ok")
        paths[m.name] = models_dir / m.name
        print(f"\rsynthesised {i + 1}/{len(members)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    synth_s = time.perf_counter() - t
    listing = root / "models.txt"
    listing.write_text("".join(f"{name}\t{path}\n" for name, path in paths.items()))

    load_before = os.getloadavg()
    run = {"wall_s": None, "peak_rss_gb": None} if args.report_only else run_audit(listing, out, cache, args.memory_gb)
    result = json.loads((out / "audit.json").read_text())
    info = json.loads((out / "run.json").read_text())
    timings = info["timings"]
    expected: dict[int, list[str]] = {}
    for m in members:
        expected.setdefault(m.family, []).append(m.name)
    found = sorted(sorted(f) for f in result["families"])
    exact = found == sorted(sorted(f) for f in expected.values())
    checked = check_pairs(result, paths, cache)
    pairs = len(result["pairs"])
    report = {
        "benchmark": "audit",
        "shape": dataclasses.asdict(shape),
        "models": args.models,
        "pairs": pairs,
        "families_expected": sum(len(f) > 1 for f in expected.values()),
        "families_found": sum(len(f) > 1 for f in result["families"]),
        "families_exact": exact,
        "family_rule": result["family_rule_text"],
        "total_s": timings["total_s"],
        "wall_s": run["wall_s"],
        "fingerprint_s": timings["fingerprint_s"],
        "pair_phase_s": timings["pair_phase_s"],
        "pair_phase_share": timings["pair_phase_s"] / timings["total_s"],
        "per_pair_s": timings["pair_phase_s"] / pairs,
        "per_model_fingerprint_s": timings["fingerprint_s"] / args.models,
        "breakdown_s": {k: timings[k] for k in ("embedding_read_s", "embedding_cosine_s", "assignment_s", "procrustes_s",
                                                "scores_s", "report_s") if k in timings},
        "peak_rss_gb": run["peak_rss_gb"],
        "memory_gb_budget": args.memory_gb,
        "disk_gb": need / 1e9,
        "checked_against_compare": checked,
        "synthesis_s": None if args.report_only else synth_s,
        "report_only": args.report_only,
        "machine": dict(cpu_record(), load_before=load_before, device=info["environment"]["device"],
                        devices=info["environment"]["devices"]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    platform_name = info["environment"]["device"].split(":")[0]
    path = dest / f"audit-{shape.name}-{args.models}-{platform_name}{'-' + machine_tag() if platform_name == 'cpu' else ''}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("models", "pairs", "total_s", "pair_phase_share", "peak_rss_gb",
                                              "families_exact")}, indent=1))
    print(f"wrote {path}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
