"""The N-model audit: equal to pairwise ``compare``, families recovered, resumable, bounded memory."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import mlp_tensors, random_model, save_llama

ROOT = Path(__file__).resolve().parents[2]
SCORE_ATOL = 1e-6
#: Families of the synthetic zoo below, as built (a threshold between its independent and derived scores).
FAMILY_THRESHOLD = 0.3
EXPECTED_FAMILIES = {("a0", "a1", "a2", "a3"), ("b0", "b1"), ("c0",), ("d0",), ("e0",)}


def _random_model(rng, vocab, hidden, layers, q_dim, k_dim):
    """Random weights ``(emb, qs, ks, gates, ups)``, MLP inputs included."""
    emb, qs, ks = random_model(rng, vocab=vocab, hidden=hidden, layers=layers, q_dim=q_dim, k_dim=k_dim)
    gates, ups = ([rng.standard_normal((32, hidden)).astype(np.float32) / np.sqrt(hidden) for _ in qs] for _ in range(2))
    return emb, qs, ks, gates, ups


def _derive(rng, model, noise, *, keep=None, extra_layer=False):
    """A derivative: noise on every scored tensor, then one signed permutation of the residual dims."""
    emb = model[0]
    n = emb.shape[1]
    perm = rng.permutation(n)[: keep or n]
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), perm.size)

    def edit(w):
        w = w + noise * float(np.std(w)) * rng.standard_normal(w.shape).astype(np.float32)
        return (w[:, perm] * signs).astype(np.float32)

    emb2 = edit(emb)
    stacks = [[edit(w) for w in stack] for stack in model[1:]]
    if extra_layer:
        for stack in stacks:
            stack.append(rng.standard_normal(stack[0].shape).astype(np.float32) / 8)
    return (emb2, *stacks)


def build_synthetic_zoo(root: Path) -> dict[str, Path]:
    """Nine small Llama checkpoints: two families, two independents, one with a foreign vocabulary.

    ``a0 -> a1 -> a2`` (a chain), ``a0 -> a3`` (one layer deeper: the layer-grid path),
    ``b0 -> b1`` (8 residual dimensions pruned: widths differ), ``c0``, ``d0`` independent,
    ``e0`` with tokens no other model has (its pairs cannot be scored). Every model has MLP inputs.
    """
    rng = np.random.default_rng(7)
    shape = dict(vocab=400, hidden=48, layers=3, q_dim=48, k_dim=16)
    a0, b0, c0, d0, e0 = (_random_model(rng, **shape) for _ in range(5))
    models = {
        "a0": a0, "a1": (a1 := _derive(rng, a0, 0.2)), "a2": _derive(rng, a1, 0.2),
        "a3": _derive(rng, a0, 0.2, extra_layer=True), "b0": b0, "b1": _derive(rng, b0, 0.3, keep=40),
        "c0": c0, "d0": d0, "e0": e0,
    }
    out = {}
    for name, (emb, qs, ks, gates, ups) in models.items():
        tokens = [f"other{i}" for i in range(emb.shape[0])] if name == "e0" else None
        out[name] = save_llama(root / name, emb, qs, ks, tokens=tokens, extra=mlp_tensors(gates, ups))
    return out


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> dict[str, Path]:
    """The synthetic zoo (shared with ``test_sharding``)."""
    return build_synthetic_zoo(tmp_path_factory.mktemp("audit-zoo"))


@pytest.fixture(scope="session")
def reference(zoo, tmp_path_factory):
    """The audit of the synthetic zoo on one device, run once: ``(result, out folder, cache)``."""
    from awm_jax.audit.core import audit

    out = tmp_path_factory.mktemp("audit-out")
    cache = tmp_path_factory.mktemp("audit-cache")
    result = audit(zoo, out_dir=out, cache_dir=cache, family_rule=FAMILY_THRESHOLD)
    return result, out, cache


def _pair_fields(result) -> dict:
    """The pair engine's record of a cell or a comparison, as plain JSON."""
    from awm_jax.report import PairResult

    return PairResult.to_dict(PairResult(**result.pair_fields()))


def _assert_matches_compare(result, paths: dict[str, Path], cache: Path) -> None:
    """Every scored cell equals ``compare``'s result for the same pair and options, bit for bit."""
    from awm_jax.engine import compare

    if not result.against:
        assert [(p.a, p.b) for p in result.pairs] == [(a, b) for i, a in enumerate(result.rows) for b in result.rows[i + 1:]]
    opts = result.options
    for p in result.pairs:
        if p.error:
            continue
        ref = compare(paths[p.a], paths[p.b], cache_dir=cache, layer_match=opts["layer_match"],
                      alignment=opts["alignment"], mlp=opts["mlp"], norm_gains=opts["norm_gains"])
        assert _pair_fields(p) == _pair_fields(ref), (p.a, p.b)


def test_audit_equals_pairwise_compare(zoo, reference):
    result, _, cache = reference
    assert result.rows == tuple(zoo) and result.columns == tuple(zoo)
    _assert_matches_compare(result, zoo, cache)
    modes = {p.layer_match for p in result.pairs if not p.error}
    assert modes == {"equal-depth", "assignment"}, "the zoo must exercise both layer pairings"
    assert any(p.alignment.get("base_dims") != p.alignment.get("matched_dims") for p in result.pairs if not p.error)


def test_families_recovered(reference):
    result, _, _ = reference
    assert set(result.families) == EXPECTED_FAMILIES


def test_matrices_symmetric_and_consistent(reference):
    result, _, _ = reference
    n = len(result.rows)
    assert result.mean.shape == (n, n)
    assert np.all(np.isnan(np.diag(result.mean)))
    np.testing.assert_array_equal(np.nan_to_num(result.mean, nan=9.0), np.nan_to_num(result.mean.T, nan=9.0))
    for p in result.pairs:
        i, j = result.rows.index(p.a), result.rows.index(p.b)
        assert result.verdict[i, j] == p.verdict
        if not p.error:
            assert result.mean[i, j] == p.mean and result.wq[i, j] == p.wq and result.z[i, j] == p.z_reference


def test_unscorable_pairs_are_reported_not_fatal(reference):
    result, _, _ = reference
    bad = [p for p in result.pairs if "e0" in (p.a, p.b)]
    assert len(bad) == len(result.rows) - 1
    assert all(p.verdict == "unscored" and "share no tokens" in p.error and math.isnan(p.mean) for p in bad)
    assert all(not p.error for p in result.pairs if "e0" not in (p.a, p.b))


def test_outputs_written(reference):
    result, out, _ = reference
    from awm_jax.audit.outputs import OUTPUT_FILES

    for name in OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    data = json.loads((out / "audit.json").read_text())
    assert data["rows"] == list(result.rows)
    assert sorted(map(tuple, data["families"])) == sorted(result.families)
    lines = (out / "matrix_mean.csv").read_text().splitlines()
    assert lines[0].split(",")[1:] == list(result.rows) and len(lines) == len(result.rows) + 1
    cell = float(lines[1].split(",")[2])
    assert cell == result.mean[0, 1]  # repr: exact round trip
    assert len((out / "pairs.csv").read_text().splitlines()) == len(result.pairs) + 1
    summary = (out / "summary.txt").read_text()
    assert "family 1 (4 models" in summary and "a0, a1, a2, a3" in summary
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_family_rules():
    """fwer: Bonferroni over the audit's pairs; verdict: compare's verdict; a float: a score cut."""
    from types import SimpleNamespace

    from awm_jax.audit.lineage_tree import derived_edges
    from awm_jax.numerics.statistics import CALIBRATED_ALPHA

    nan = float("nan")

    def pair(mean, verdict, p, error=""):
        return SimpleNamespace(mean=mean, verdict=verdict, p_value=p, error=error)

    pairs = [pair(0.9, "derived", 0.0), pair(0.02, "derived", CALIBRATED_ALPHA / 2),  # a chance pass at alpha
             pair(0.5, "derived", nan), pair(0.01, "independent", nan), pair(nan, "unscored", nan, "no tokens")]
    assert derived_edges(pairs, "verdict") == [True, True, True, False, False]
    assert derived_edges(pairs, "fwer") == [True, False, True, False, False]  # alpha / 4 scored pairs
    assert derived_edges(pairs, 0.3) == [True, False, True, False, False]
    with pytest.raises(ValueError, match="unknown family rule"):
        derived_edges(pairs, "fdr")


def test_against_mode_scores_n_by_m(zoo, reference, tmp_path):
    from awm_jax.audit.core import audit

    full, _, cache = reference
    new = {k: zoo[k] for k in ("a2", "b1", "c0")}
    bases = {k: zoo[k] for k in ("a0", "b0")}
    result = audit(new, against=bases, out_dir=tmp_path, cache_dir=cache, family_rule=FAMILY_THRESHOLD)
    assert result.rows == ("a2", "b1", "c0") and result.columns == ("a0", "b0")
    assert result.mean.shape == (3, 2) and len(result.pairs) == 6
    assert [(p.a, p.b) for p in result.pairs] == [(a, b) for a in result.rows for b in result.columns]
    _assert_matches_compare(result, zoo, cache)  # compare(new model, reference): A is the row
    for r, a in enumerate(result.rows):
        for c, b in enumerate(result.columns):
            assert result.mean[r, c] == result.pair(a, b).mean
    assert set(result.families) == {("a2", "a0"), ("b1", "b0"), ("c0",)}
    assert "a2: same lineage as a0" in (tmp_path / "summary.txt").read_text()
    assert not (tmp_path / "lineage.png").exists()


def test_memory_budget_evicts_with_identical_scores(zoo, reference, tmp_path):
    """A budget of about two models forces the store of prepared models to evict and prepare again."""
    from awm_jax.audit.core import audit

    full, _, cache = reference
    tiny = 2.5 * 400 * 48 * 4 / 2**30
    result = audit(zoo, out_dir=tmp_path, cache_dir=cache, family_rule=FAMILY_THRESHOLD, memory_gb=tiny)
    assert [_pair_fields(p) for p in result.pairs] == [_pair_fields(p) for p in full.pairs]
    assert result.families == full.families


@pytest.mark.parametrize("alignment", ["assignment", "orthogonal", "auto"])
@pytest.mark.parametrize("mlp", [False, True], ids=["qk", "mlp"])
@pytest.mark.parametrize("norm_gains", ["fold", "ignore"])
def test_every_pair_option_equals_compare(zoo, reference, tmp_path, alignment, mlp, norm_gains):
    """Audit cells equal ``compare`` bit for bit for every alignment, with and without MLP
    evidence, at equal and different depths and widths (the audit runs the same engine)."""
    from awm_jax.audit.core import audit

    _, _, cache = reference
    some = {k: zoo[k] for k in ("a0", "a1", "a3", "b0", "b1", "c0")}
    result = audit(some, cache_dir=cache, family_rule=FAMILY_THRESHOLD, alignment=alignment, mlp=mlp,
                   norm_gains=norm_gains)
    assert result.options == {"layer_match": "assignment", "alignment": alignment, "mlp": mlp, "norm_gains": norm_gains}
    assert {p.layer_match for p in result.pairs} == {"equal-depth", "assignment"}
    assert all((p.mlp is not None) == mlp for p in result.pairs)
    _assert_matches_compare(result, zoo, cache)


def test_damaged_progress_records_are_dropped_and_recomputed(zoo, reference, tmp_path, capsys):
    """Records with a valid checksum that do not fit the audit (a pair index out of range, other
    model names, a mangled result) are dropped with one warning; their pairs are scored again."""
    from awm_jax.audit import journal as audit_journal
    from awm_jax.audit.core import audit

    full, _, cache = reference
    some = {k: zoo[k] for k in ("a0", "a1", "c0")}
    first = audit(some, out_dir=tmp_path, cache_dir=cache, family_rule=FAMILY_THRESHOLD)
    path = tmp_path / "progress.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    records = [json.loads(l.decode().rsplit("\t", 1)[0]) for l in lines]
    forged = [dict(records[1], pair=10**9), dict(records[2], a="nobody"), dict(records[3], result={"wq": "x"})]
    path.write_bytes(lines[0] + b"".join(audit_journal.encode_record(r) for r in forged))
    capsys.readouterr()
    again = audit(some, out_dir=tmp_path, cache_dir=cache, family_rule=FAMILY_THRESHOLD)
    err = capsys.readouterr().err
    assert err.count("awm_jax: warning:") == 1 and "3 progress record(s)" in err
    assert [_pair_fields(p) for p in again.pairs] == [_pair_fields(p) for p in first.pairs]


def test_single_linkage_cut_equals_families():
    from scipy.cluster.hierarchy import fcluster

    from awm_jax.audit.lineage_tree import families, lineage_linkage

    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(2, 12))
        s = rng.uniform(-0.1, 1.0, (n, n))
        s = (s + s.T) / 2
        t = float(rng.uniform(0.2, 0.9))
        edges = [(i, j) for i in range(n) for j in range(i + 1, n) if s[i, j] >= t]
        fams = families([str(i) for i in range(n)], edges)
        labels = fcluster(lineage_linkage(s), 1.0 - t, criterion="distance")
        by_label = {}
        for i, lab in enumerate(labels):
            by_label.setdefault(lab, []).append(str(i))
        assert sorted(map(tuple, by_label.values())) == sorted(fams), trial


def test_journal_torn_and_damaged_lines(tmp_path):
    from awm_jax.audit.journal import Journal
    from awm_jax.errors import UsageError

    with Journal(tmp_path, "k1") as j:
        j.append({"kind": "align", "pair": 0})
        j.append({"kind": "align", "pair": 1})
    path = tmp_path / "progress.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"kind":"align","pa')  # torn by a kill
    with Journal(tmp_path, "k1") as j:
        assert [r["pair"] for r in j.records] == [0, 1]
        j.append({"kind": "align", "pair": 2})
    assert [r["pair"] for r in Journal(tmp_path, "k1", writer=False).records] == [0, 1, 2]
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"pair":0', b'"pair":5')  # checksum no longer matches
    path.write_bytes(b"\n".join(lines))
    assert Journal(tmp_path, "k1", writer=False).damaged == 1  # a reader leaves the file alone
    with Journal(tmp_path, "k1") as j:  # dropped and the file rewritten without it
        assert j.damaged == 1 and [r["pair"] for r in j.records] == [1, 2]
    j = Journal(tmp_path, "k1", writer=False)
    assert j.damaged == 0 and [r["pair"] for r in j.records] == [1, 2]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "progress.jsonl").write_bytes(b"my own notes\n")
    with pytest.raises(UsageError, match="not an awm_jax audit progress file"):
        Journal(foreign, "k1")
    assert (foreign / "progress.jsonl").read_bytes() == b"my own notes\n"  # never touched
    with pytest.raises(UsageError, match="different audit"):
        Journal(tmp_path / "other", "k1").close() or Journal(tmp_path / "other", "k2")
    assert Journal(tmp_path, "k2", fresh=True).records == []


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from awm_jax.audit import journal as audit_journal

    limit = int(os.environ["KILL_AFTER"])
    original = audit_journal.Journal.append
    count = [0]

    def append(self, record):
        if count[0] == limit:  # half a line on disk, then SIGKILL: a torn line to recover from
            data = audit_journal.encode_record(record)
            self._file.write(data[: len(data) // 2])
            self._file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        count[0] += 1
        original(self, record)

    audit_journal.Journal.append = append
    from awm_jax.cli.audit import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("kill_after", [3, 20], ids=["early", "late"])
def test_killed_audit_resumes_to_identical_files(zoo, reference, tmp_path, kill_after):
    from awm_jax.cli.audit import main

    full, ref_out, cache = reference
    out = tmp_path / "out"
    args = [str(p) for p in zoo.values()] + ["--out", str(out), "--cache-dir", str(cache),
                                              "--family-threshold", str(FAMILY_THRESHOLD), "--no-progress"]
    env = dict(os.environ, KILL_AFTER=str(kill_after), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _KILLER, *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (out / "audit.json").exists()
    done = (out / "progress.jsonl").read_bytes()
    assert done.count(b"\n") == kill_after + 1 and not done.endswith(b"\n")  # header + records + a torn line
    assert main(args + ["--quiet"]) == 0
    records = [json.loads(l.rsplit("\t", 1)[0]) for l in (out / "progress.jsonl").read_text().splitlines()]
    computed = sum(1 for r in records if r["kind"] == "pair")
    assert computed == len(full.pairs), "each pair is recorded once, none redone"
    for name in ("audit.json", "matrix_mean.csv", "matrix_wq.csv", "matrix_wk.csv", "matrix_z.csv",
                 "matrix_verdict.csv", "pairs.csv", "summary.txt", "heatmap.png", "lineage.png", "report.html"):
        assert (out / name).read_bytes() == (ref_out / name).read_bytes(), name


def test_cli_help_is_fast_and_errors_are_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "awm_jax.audit", "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "--against" in out.stdout
    assert time.perf_counter() - t < 5.0
    from awm_jax.cli.audit import main

    assert main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2  # one model only
    assert main(["--out", str(tmp_path / "o")]) == 2  # no models
    listing = tmp_path / "models.txt"
    listing.write_text("# comment\nx\t/nowhere/x\ny\t/nowhere/y\n")
    assert main(["--list", str(listing), "--out", str(tmp_path / "o")]) == 3  # no such folder


def test_label_check_counts_agreement(reference, tmp_path):
    from awm_jax.audit.outputs import write_label_check

    result, _, _ = reference
    labelled = [("a0", "a1", "derived"), ("a0", "c0", "independent"), ("c0", "d0", "derived")]
    line = write_label_check(result, labelled, tmp_path)
    expected_ok = [result.pair(a, b).verdict == label for a, b, label in labelled]
    assert expected_ok[:2] == [True, True]
    assert line.startswith(f"labelled pairs: derived found derived {int(expected_ok[0]) + int(expected_ok[2])}/2")
    rows = (tmp_path / "labels.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[1].startswith("a0,a1,derived,derived,")


def test_module_is_callable_as_the_api(zoo, reference):
    import awm_jax.audit as cli

    full, _, cache = reference
    result = cli({k: zoo[k] for k in ("a0", "a1")}, cache_dir=cache)
    assert result.mean[0, 1] == full.mean[0, 1]


def test_model_list_parsing(tmp_path):
    from awm_jax.cli.audit import read_model_list
    from awm_jax.errors import UsageError

    f = tmp_path / "l.txt"
    f.write_text("# models\n/a/b\n\n  /c/d  \n")
    assert read_model_list(str(f)) == ["/a/b", "/c/d"]
    f.write_text("base\t/a/b\nft\t/c/d\n")
    assert read_model_list(str(f)) == {"base": "/a/b", "ft": "/c/d"}
    f.write_text("base\t/a/b\n/c/d\n")
    with pytest.raises(UsageError, match="name every model"):
        read_model_list(str(f))


def test_unique_names():
    from awm_jax.audit.models import unique_names as _unique_names

    paths = [Path("/x/a/model"), Path("/y/b/model"), Path("/z/c"), Path("/z/c")]
    assert _unique_names(paths) == ["a/model", "b/model", "c", "c#2"]


def _micro_zoo_dir(tmp_path_factory) -> Path:
    """The micro lineage zoo: ``$AWM_MICRO_ZOO`` or the zoo's default micro folder when it holds a
    complete build (``python -m awm_jax.zoo build --micro``), else built here (15-30 s); skipped
    without the zoo extra."""
    from zoo import require_zoo_extra

    require_zoo_extra()
    from awm_jax.zoo.build import build_plan, default_cache_dir
    from awm_jax.zoo.plans import micro_plan

    for folder in (os.environ.get("AWM_MICRO_ZOO"), default_cache_dir("micro")):
        manifest = Path(folder) / "MANIFEST.json" if folder else None
        if manifest is not None and manifest.is_file() and json.loads(manifest.read_text()).get("complete"):
            return Path(folder)

    cache = tmp_path_factory.mktemp("micro-zoo")
    build_plan(micro_plan(), cache, progress=False, log=lambda s: None)
    return cache


def test_micro_lineage_zoo(tmp_path_factory, tmp_path):
    """The micro zoo: families as its manifest labels them, every pair equal to ``compare``."""
    from awm_jax.audit.core import audit

    zoo_dir = _micro_zoo_dir(tmp_path_factory)
    manifest = json.loads((zoo_dir / "MANIFEST.json").read_text())
    paths = {m["name"]: zoo_dir / m["folder"] for m in manifest["models"]}
    cache = tmp_path / "cache"
    result = audit(paths, out_dir=tmp_path / "out", cache_dir=cache, family_rule=0.5)
    _assert_matches_compare(result, paths, cache)
    edges = [(p["a"], p["b"]) for p in manifest["pairs"] if p["label"] == "derived"]
    from awm_jax.audit.lineage_tree import families

    names = list(paths)
    expected = families(names, [(names.index(a), names.index(b)) for a, b in edges])
    assert set(result.families) == set(expected)
    assert len([f for f in expected if len(f) > 1]) >= 1 and len(expected) >= 2


def test_summary_says_why_a_high_scoring_pair_is_not_joined(zoo, reference):
    """The depth-pruned ``a3`` scores 0.96 against its parent but its 4 x 3 layer grid is too small
    for the shuffled-grid null to reach p < 0.001: the tree draws it next to ``a0``, so the summary
    must say why the family rule leaves it out."""
    from awm_jax.audit.core import audit
    from awm_jax.audit.outputs import render_summary

    _, _, cache = reference
    result = audit({k: zoo[k] for k in ("a0", "a3", "c0")}, cache_dir=cache)
    pair = result.pair("a0", "a3")
    assert pair.mean > 0.9 and pair.verdict != "derived" and ("a0", "a3") not in result.families
    summary = render_summary(result)
    assert "not joined by the family rule, and why" in summary
    line = next(l for l in summary.splitlines() if l.strip().startswith("a0 / a3"))
    assert f"p {pair.p_value:.3g}" in line and "not below 0.001" in line
    assert "c0" not in summary.split("and why:")[1]  # independent pairs score low: no explanation owed


class _Node:
    """An element of a parsed HTML page: tag, attributes, children, text."""

    def __init__(self, tag: str, attrs: dict):
        self.tag, self.attrs, self.children, self.parts = tag, attrs, [], []

    @property
    def text(self) -> str:
        return "".join(self.parts) + "".join(c.text for c in self.children)

    def find_all(self, tag: str, cls: str | None = None) -> list["_Node"]:
        found = []
        for c in self.children:
            if c.tag == tag and (cls is None or cls in c.attrs.get("class", "").split()):
                found.append(c)
            found += c.find_all(tag, cls)
        return found


def _parse_page(text: str) -> tuple[_Node, list[_Node]]:
    """The page's element tree (html.parser; void elements closed at once) and all its elements."""
    from html.parser import HTMLParser

    void = {"meta", "img", "br", "hr", "link", "input", "base", "col", "source", "wbr"}
    root = _Node("document", {})
    every: list[_Node] = []

    class Builder(HTMLParser):
        stack = [root]

        def handle_starttag(self, tag, attrs):
            node = _Node(tag, {k: v or "" for k, v in attrs})
            self.stack[-1].children.append(node)
            every.append(node)
            if tag not in void:
                self.stack.append(node)

        def handle_endtag(self, tag):
            assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
            self.stack.pop()

        def handle_data(self, data):
            self.stack[-1].parts.append(data)

    builder = Builder(convert_charrefs=True)
    builder.feed(text)
    builder.close()
    assert builder.stack == [root], "unclosed elements"
    return root, every


def _check_self_contained(text: str, every: list[_Node]) -> None:
    """No script, no external resource, no link leaving the page; images are embedded PNGs."""
    import base64

    assert text.startswith("<!DOCTYPE html>")
    assert not {n.tag for n in every} & {"script", "link", "iframe", "object", "embed", "base", "frame"}
    assert not [k for n in every for k in n.attrs if k.startswith("on")]  # no event handlers
    assert "http://" not in text and "https://" not in text and "url(" not in text and "@import" not in text
    ids = {n.attrs["id"] for n in every if "id" in n.attrs}
    for n in every:
        if "href" in n.attrs:
            assert n.attrs["href"].startswith("#") and n.attrs["href"][1:] in ids, n.attrs["href"]
        if n.tag == "img":
            src = n.attrs["src"]
            assert src.startswith("data:image/png;base64,") and n.attrs.get("alt")
            assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def _check_report(result, out: Path) -> _Node:
    """report.html of an audit holds its matrix (scores and verdict marks), families and every pair
    with its per-layer scores."""
    from awm_jax.audit.html import MAX_PAIR_FIGURES
    from awm_jax.plots import VERDICT_MARKS

    text = (out / "report.html").read_text()
    root, every = _parse_page(text)
    _check_self_contained(text, every)
    (matrix,) = root.find_all("table", "matrix")
    body = matrix.find_all("tbody")[0].find_all("tr")
    header = [th.text for th in matrix.find_all("th", "col")]
    assert sorted(header) == sorted(result.columns) and len(body) == len(result.rows)
    for tr in body:
        a = tr.find_all("th")[0].text
        cells = tr.find_all("td")
        assert len(cells) == len(result.columns)
        for b, td in zip(header, cells):
            if a == b:
                assert "self" in td.attrs["class"]
                continue
            p = result.pair(a, b)
            assert td.find_all("a")[0].attrs["href"] == f"#pair-{result.pairs.index(p)}"
            mark = td.find_all("span", "mark")[0].text.strip()
            assert mark == VERDICT_MARKS[p.verdict] and (f"{p.mean:.3f}" in td.text or p.error)
    families = [li.text for li in root.find_all("section")[1].find_all("li")]
    assert families == [", ".join(f) for f in result.families if len(f) > 1]
    figures = 0
    for k, p in enumerate(result.pairs):
        (section,) = [n for n in every if n.attrs.get("id") == f"pair-{k}"]
        assert f"{p.a} / {p.b}" in section.find_all("h3")[0].text and p.verdict in section.find_all("h3")[0].text
        if p.error:
            assert p.error in section.text and not section.find_all("table", "layers")
            continue
        (layers,) = section.find_all("table", "layers")
        rows = [[td.text for td in tr.find_all("td")] for tr in layers.find_all("tbody")[0].find_all("tr")]
        assert rows == [[str(l.a_layer), str(l.b_layer), f"{l.wq:.4f}", f"{l.wk:.4f}", f"{l.mean:.4f}"]
                        + ([f"{l.mlp:.4f}"] if l.mlp is not None else []) for l in p.layers]
        figures += len(section.find_all("img"))
    assert figures == min(MAX_PAIR_FIGURES, sum(1 for p in result.pairs if not p.error))
    return root


def test_html_report_of_a_full_audit(reference):
    result, out, _ = reference
    root = _check_report(result, out)
    pictures = [n for n in root.find_all("figure") if n.find_all("figcaption")]
    assert [f.find_all("figcaption")[0].text.split("(")[-1] for f in pictures] == ["heatmap.png)", "lineage.png)"]


def test_heatmap_marks_verdicts_and_titles_axes(reference, zoo, tmp_path):
    """Each cell's verdict is marked (D / ? / x, independent blank) and both axes are titled, in N x N
    and in N x M mode (through the audit command); the files are valid PNGs."""
    from awm_jax.audit.outputs import _plots
    from awm_jax.cli.audit import main
    from awm_jax.plots import audit_heatmap

    full, out, cache = reference
    fig = audit_heatmap(list(full.rows), list(full.columns), full.mean, full.verdict, False)
    ax = fig.axes[0]
    marks = sorted(t.get_text() for t in ax.texts)
    want = sorted({"derived": "D", "inconclusive": "?", "unscored": "x"}[v] for v in full.verdict.ravel()
                  if v in ("derived", "inconclusive", "unscored"))
    assert marks == want and "D" in marks and "x" in marks
    assert ax.get_xlabel().startswith("model B") and ax.get_ylabel().startswith("model A")
    assert _plots(full)["heatmap.png"] == (out / "heatmap.png").read_bytes()  # what the audit wrote

    args = [str(zoo[k]) for k in ("a2", "b1", "c0")] + ["--against", str(zoo["a0"]), str(zoo["b0"]),
                                                         "--out", str(tmp_path), "--cache-dir", str(cache),
                                                         "--family-threshold", str(FAMILY_THRESHOLD), "--quiet"]
    assert main(args) == 0
    png = (tmp_path / "heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "report.html").is_file()
    data = json.loads((tmp_path / "audit.json").read_text())
    verdict = np.array(data["matrices"]["verdict"])
    mean = np.array([[np.nan if v is None else v for v in row] for row in data["matrices"]["mean"]])
    ax = audit_heatmap(data["rows"], data["columns"], mean, verdict, True).axes[0]
    assert ax.get_xlabel().startswith("reference models (--against)") and ax.get_ylabel().startswith("audited models")
    assert sorted(t.get_text() for t in ax.texts) == sorted(["D"] * int((verdict == "derived").sum())
                                                            + ["?"] * int((verdict == "inconclusive").sum()))


def test_html_report_of_an_against_audit_through_the_cli(zoo, reference, tmp_path):
    from awm_jax.audit.core import audit
    from awm_jax.cli.audit import main

    _, _, cache = reference
    args = [str(zoo[k]) for k in ("a2", "b1", "c0", "e0")] + ["--against", str(zoo["a0"]), str(zoo["b0"]),
                                                               "--out", str(tmp_path), "--cache-dir", str(cache),
                                                               "--family-threshold", str(FAMILY_THRESHOLD), "--quiet"]
    assert main(args) == 0
    result = audit({k: zoo[k] for k in ("a2", "b1", "c0", "e0")}, against={k: zoo[k] for k in ("a0", "b0")},
                   cache_dir=cache, family_rule=FAMILY_THRESHOLD)
    root = _check_report(result, tmp_path)
    assert root.find_all("table", "matrix")[0].find_all("th")[0].text == "audited \\ reference"
    pictures = [n for n in root.find_all("figure") if n.find_all("figcaption")]
    assert len(pictures) == 1 and "heatmap.png" in pictures[0].text  # no lineage tree in N x M mode


def test_html_report_draws_the_strongest_evidence_first_when_capped(reference, monkeypatch):
    """Past ``MAX_PAIR_FIGURES`` pairs, the layer pictures go to derived pairs first, by mean score."""
    import awm_jax.audit.html as report

    result, _, _ = reference
    monkeypatch.setattr(report, "MAX_PAIR_FIGURES", 2)
    root, every = _parse_page(report.render_html(result, {}, "summary"))
    drawn = [int(n.attrs["id"].split("-")[1]) for n in root.find_all("section", "pair") if n.find_all("img")]
    derived = sorted((k for k, p in enumerate(result.pairs) if p.verdict == "derived"), key=lambda k: -result.pairs[k].mean)
    assert drawn == sorted(derived[:2])
    assert "Layer pictures for 2 pairs" in root.text


def test_html_report_in_a_headless_browser(reference):
    """report.html opened in a real headless Chromium: every picture decodes, every in-page link has
    its target, the styles apply, and the page makes no request but its own file and data: URIs.
    Skipped when no Chromium is installed (Debian: ``apt-get install chromium-headless-shell``)."""
    from headless_browser import find_browser, open_page

    browser = find_browser()
    if browser is None:
        pytest.skip("no headless Chromium on PATH (apt-get install chromium-headless-shell)")
    result, out, _ = reference
    page = out / "report.html"
    value, requests = open_page(browser, page, """JSON.stringify({
        images: Array.from(document.images).map(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0),
        cells: document.querySelectorAll('table.matrix td').length,
        unresolved: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))
            .filter(h => !h.startsWith('#') || !document.getElementById(h.slice(1))),
        cellColour: getComputedStyle(document.querySelector('table.matrix td:not(.self)')).backgroundColor,
        pairSections: document.querySelectorAll('section.pair').length,
        scripts: document.scripts.length})""")
    seen = json.loads(value)
    assert seen["images"] and all(seen["images"]), seen["images"]
    assert seen["cells"] == len(result.rows) * len(result.columns) and seen["unresolved"] == []
    assert seen["cellColour"] not in ("", "rgba(0, 0, 0, 0)", "transparent")
    assert seen["pairSections"] == len(result.pairs) and seen["scripts"] == 0
    assert requests and all(u == page.resolve().as_uri() or u.startswith("data:") for u in requests), requests
