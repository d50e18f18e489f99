"""Fuzzing target for the audit's progress file (``progress.jsonl``) and its resume.

One small audit (three tiny models, three pairs) is run once per process; its clean progress
file is then damaged (byte flips, deletions, insertions, cuts; whole lines swapped, repeated or
dropped) or forged with valid checksums (pair indices out of range or of the wrong type, other
model names, missing or mangled results, unknown kinds). The property: resuming either refuses
the file with a documented one-line error, or yields cells each equal to the clean run's cell
for that pair; work it cannot trust is dropped, never used. (A record forged with a valid
checksum AND valid-looking scores is a deliberate edit of the user's own output folder, which
no checksum can tell from a real record; it is not generated.)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from hypothesis import strategies as st

__all__ = ["journal_target"]

_CLEAN: dict[str, Any] = {}


def _clean_run() -> dict[str, Any]:
    """The clean audit: its key, plan, cells (by pair) and progress file bytes (computed once)."""
    if _CLEAN:
        return _CLEAN
    from awm_jax.audit import core
    from awm_jax.audit.journal import JOURNAL_NAME
    from awm_jax.synthetic import llama_config, write_model

    root = Path(tempfile.mkdtemp(prefix="awm_jax-fuzz-journal-"))
    rng = np.random.default_rng(0)
    base = rng.standard_normal((60, 16)).astype(np.float32)
    folders = {}
    for name, noise in (("m0", None), ("m1", 0.1), ("m2", None)):
        emb = base + noise * rng.standard_normal(base.shape).astype(np.float32) if noise else (
            base if name == "m0" else rng.standard_normal(base.shape).astype(np.float32))
        specs = [("model.embed_tokens.weight", emb.shape, np.float32, (lambda a=emb: a))]
        for i in range(3):
            for proj, rows in (("q", 16), ("k", 8)):
                w = rng.standard_normal((rows, 16)).astype(np.float32)
                specs.append((f"model.layers.{i}.self_attn.{proj}_proj.weight", w.shape, np.float32, (lambda a=w: a)))
        folders[name] = write_model(root / name, specs, llama_config(60, 16, 3, 2, 1, 8, dtype="float32"),
                                    [f"t{i}" for i in range(60)], None)
    out = root / "out"
    result = core.audit(folders, out_dir=out, cache_dir=root / "cache", family_rule=0.5)
    header = json.loads((out / JOURNAL_NAME).read_bytes().split(b"\n")[0].rsplit(b"\t", 1)[0])
    names = [m.name for m in result.models]
    plan = core.PairPlan([SimpleNamespace(name=n) for n in names],
                         [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))])
    _CLEAN.update(key=header["key"], plan=plan, bytes=(out / JOURNAL_NAME).read_bytes(),
                  cells={k: p.to_dict() for k, p in enumerate(result.pairs)})
    return _CLEAN


@st.composite
def _damaged_journal(draw) -> tuple[str, Any]:
    from awm_jax.audit.journal import encode_record

    from .fuzz_targets import _mutated, json_values

    clean = _clean_run()
    lines = clean["bytes"].split(b"\n")[:-1]
    kind = draw(st.sampled_from(["bytes", "lines", "forged"]))
    if kind == "bytes":
        return kind, draw(_mutated(clean["bytes"]))
    if kind == "lines":
        body = lines[1:]
        picked = draw(st.lists(st.integers(0, len(body) - 1), max_size=6)) if body else []
        return kind, b"".join(l + b"\n" for l in [lines[0], *(body[i] for i in picked)])
    records = [json.loads(l.rsplit(b"\t", 1)[0]) for l in lines[1:]]
    forged = []
    for _ in range(draw(st.integers(1, 4))):
        rec = dict(draw(st.sampled_from(records)))
        field = draw(st.sampled_from(["pair", "a", "b", "result", "kind", "error", "drop"]))
        if field == "drop":
            rec.pop(draw(st.sampled_from(sorted(rec))))
        elif field == "pair":
            rec["pair"] = draw(st.one_of(st.integers(-5, 10**12), st.booleans(), json_values))
        elif field == "result":
            rec["result"] = draw(st.one_of(json_values, st.just({**rec["result"], "layers": draw(json_values)})))
        else:
            rec[field] = draw(json_values)
        forged.append(rec)
    return kind, lines[0] + b"\n" + b"".join(encode_record(r) for r in forged)


def _run_journal(folder: Path, example: tuple[str, bytes]) -> None:
    from awm_jax.audit.core import load_progress
    from awm_jax.audit.journal import JOURNAL_NAME, Journal

    clean = _clean_run()
    (folder / JOURNAL_NAME).write_bytes(example[1])
    cells: dict = {}
    with Journal(folder, clean["key"]) as journal:
        load_progress(clean["plan"], cells, folder, clean["key"], 1, journal)
    for k, cell in cells.items():
        assert cell.to_dict() == clean["cells"][k], f"pair {k}: a damaged record was trusted"
    assert Journal(folder, clean["key"], writer=False).damaged == 0, "damaged lines are removed from the file"


def journal_target():
    """The :class:`~bad_input.fuzz_targets.Target` of the progress file."""
    from .fuzz_targets import Target

    return Target("audit_journal", _damaged_journal(), _run_journal)
