"""Acceptance of ``scan``: a catalogue of known bases, every derived model and every base scanned.

The catalogue holds the bases of the micro lineage zoo, of the wild set and of the parity set
(built with ``catalogue build``, as a user would). Scanned:

* every derived model (the zoo's and wild set's derivatives, the parity derivatives, and the
  function-preserving rewrites of a wild base, ``benchmarks.sketch_accuracy.manipulated_models``):
  its top match should be its true base, at verdict ``derived`` where the exact engine gives
  ``derived`` for the pair;
* every base, with its own entry left out of the scan: it should match nothing at ``derived``.

Under each alignment mode. Writes benchmarks/results/scan-acceptance.json and prints the table.

    python -m benchmarks.scan_acceptance
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.sketch_accuracy import MANIPULATED_BASE, MICROZOO, SHARED, manipulated_models

MODES = ("assignment", "orthogonal", "auto")
WILD_BASES = ("stories260K", "saltyduckegg_h192", "hongyihuang_relu260K", "babyllama_tok105", "babyllama_tok361",
              "owngpt_pretrained", "gptbyhand_v1")
WILD_DERIVED = {"stories260K_q8": "stories260K", "stories260K_bf16": "stories260K",
                "owngpt_finetuned": "owngpt_pretrained"}
PARITY_BASES = ("llama_a", "llama_b", "qwen2_a", "gpt2_a", "gpt2_b")
PARITY_DERIVED = {"llama_a_ft": "llama_a", "qwen2_a_ft": "qwen2_a", "gpt2_a_ft": "gpt2_a",
                  "llama_a_permuted": "llama_a", "llama_a_width96": "llama_a", "llama_a_depth3": "llama_a",
                  "llama_a_newvocab": "llama_a"}


def plan(shared: Path, microzoo: Path, work: Path) -> tuple[dict[str, Path], dict[str, tuple[Path, str]]]:
    """``(bases: id -> folder, derived: id -> (folder, true base id))``."""
    bases = {f"wild/{b}": shared / "wild" / b for b in WILD_BASES}
    bases.update({f"parity/{b}": shared / "parity" / b for b in PARITY_BASES})
    derived = {f"wild/{d}": (shared / "wild" / d, f"wild/{b}") for d, b in WILD_DERIVED.items()}
    derived.update({f"parity/{d}": (shared / "parity" / d, f"parity/{b}") for d, b in PARITY_DERIVED.items()})
    for folder in manipulated_models(shared / "wild" / MANIPULATED_BASE, work):
        derived[f"manipulated/{folder.name}"] = (folder, f"wild/{MANIPULATED_BASE}")
    zoo = json.loads((microzoo / "MANIFEST.json").read_text())
    for m in zoo["models"]:
        if m["parent"] is None:
            bases[f"zoo/{m['name']}"] = microzoo / m["folder"]
        else:
            root = m
            while root["parent"] is not None:
                root = next(x for x in zoo["models"] if x["name"] == root["parent"])
            derived[f"zoo/{m['name']}"] = (microzoo / m["folder"], f"zoo/{root['name']}")
    return bases, derived


def run(shared: Path, microzoo: Path, work: Path) -> dict:
    import jax

    from awm_jax.catalogue.scan import scan_model
    from awm_jax.catalogue.store import ModelSource, build_catalogue
    from awm_jax.engine import prepare_model, score_pair
    from awm_jax.options import PairOptions

    bases, derived = plan(shared, microzoo, work)
    catalogue = build_catalogue([ModelSource(k, str(v)) for k, v in bases.items()], work / "catalogue")
    sizes = {e.id: {"bytes": e.bytes, "tokens": e.sketch_tokens, "dims": e.sketch_dims,
                    "fraction_of_model": e.fraction} for e in catalogue.entries}
    prepared = {}

    def model(path):
        if path not in prepared:
            prepared[path] = prepare_model(path)
        return prepared[path]

    rows = []
    with jax.default_device(jax.devices("cpu")[0]):
        for mode in MODES:
            options = PairOptions(alignment=mode)
            for name, (folder, true_base) in derived.items():
                result = scan_model(model(folder), catalogue, options)
                top = result.matches[0]
                exact = score_pair(model(folder), model(bases[true_base]), options)
                rows.append({"kind": "derived", "model": name, "alignment": mode, "true_base": true_base,
                             "top": top.entry.id, "top_verdict": top.result.verdict, "top_mean": top.result.mean,
                             "top_p": None if top.result.p_value != top.result.p_value else top.result.p_value,
                             "exact_verdict_vs_true_base": exact.verdict,
                             "derived_matches": [m.entry.id for m in result.derived()],
                             "ok": top.entry.id == true_base and top.result.verdict == exact.verdict
                             and set(m.entry.id for m in result.derived()) <= {true_base}})
            for name, folder in bases.items():
                others = dataclasses.replace(catalogue, entries=tuple(e for e in catalogue.entries if e.id != name))
                result = scan_model(model(folder), others, options)
                best = result.matches[0] if result.matches else None
                rows.append({"kind": "base", "model": name, "alignment": mode,
                             "top": best.entry.id if best else None, "top_verdict": best.result.verdict if best else None,
                             "top_mean": best.result.mean if best else None,
                             "derived_matches": [m.entry.id for m in result.derived()],
                             "ok": not result.derived()})
    return {"catalogue_entries": len(catalogue.entries), "sketch_sizes": sizes, "rows": rows,
            "summary": summarise(rows)}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for mode in MODES:
        d = [r for r in rows if r["alignment"] == mode and r["kind"] == "derived"]
        b = [r for r in rows if r["alignment"] == mode and r["kind"] == "base"]
        out[mode] = {
            "derived_models": len(d),
            "top_is_true_base": sum(r["top"] == r["true_base"] for r in d),
            "top_derived": sum(r["top"] == r["true_base"] and r["top_verdict"] == "derived" for r in d),
            "exact_engine_derived": sum(r["exact_verdict_vs_true_base"] == "derived" for r in d),
            "verdict_as_exact": sum(r["top_verdict"] == r["exact_verdict_vs_true_base"] for r in d),
            "bases": len(b), "bases_matching_nothing": sum(r["ok"] for r in b),
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/scan-acceptance.json")
    ap.add_argument("--shared", default=str(SHARED))
    ap.add_argument("--microzoo", default=str(MICROZOO))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="awm-scan-acc-") as tmp:
        result = run(Path(args.shared), Path(args.microzoo), Path(tmp))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("| alignment | derived models | top = true base | ... at verdict derived | exact engine derived | "
          "verdict = exact | bases matching nothing |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, s in result["summary"].items():
        print(f"| {mode} | {s['derived_models']} | {s['top_is_true_base']} | {s['top_derived']} | "
              f"{s['exact_engine_derived']} | {s['verdict_as_exact']} | {s['bases_matching_nothing']} of {s['bases']} |")
    for r in result["rows"]:
        if not r["ok"]:
            print(f"not ok: {r}")
    return 0 if all(r["ok"] for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
