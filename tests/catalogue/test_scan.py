"""Scanning a model against a catalogue: ranking, filters, the command lines and their exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from awm_jax.__main__ import main as awm_main
from awm_jax.catalogue.scan import scan_model
from awm_jax.catalogue.store import ModelSource, build_catalogue
from awm_jax.cli.scan import FOUND_EXIT
from awm_jax.engine import prepare_model
from awm_jax.fingerprint import FingerprintCache
from conftest import random_model, save_llama
from test_catalogue import _derive


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Two bases (4 layers, hidden 64), a derivative of each, an independent model, a model with
    a vocabulary of its own and a model too narrow to be a pruned base; and their catalogue."""
    root = tmp_path_factory.mktemp("zoo")
    out = {}
    for name, seed in (("base1", 0), ("base2", 1)):
        emb, qs, ks = random_model(np.random.default_rng(seed), vocab=300, hidden=64, layers=4, q_dim=64, k_dim=32)
        out[name] = save_llama(root / name, emb, qs, ks)
        d_emb, d_qs, d_ks, _, _ = _derive(emb, qs, ks, 10 + seed)
        out[f"{name}-ft"] = save_llama(root / f"{name}-ft", d_emb, d_qs, d_ks)
    emb, qs, ks = random_model(np.random.default_rng(5), vocab=300, hidden=64, layers=4, q_dim=64, k_dim=32)
    out["independent"] = save_llama(root / "independent", emb, qs, ks)
    emb, qs, ks = random_model(np.random.default_rng(6), vocab=300, hidden=64, layers=4, q_dim=64, k_dim=32)
    out["foreign"] = save_llama(root / "foreign", emb, qs, ks, tokens=[f"other{i}" for i in range(300)])
    emb, qs, ks = random_model(np.random.default_rng(7), vocab=300, hidden=8, layers=4, q_dim=8, k_dim=8)
    out["narrow"] = save_llama(root / "narrow", emb, qs, ks)
    sources = [ModelSource(k, str(out[k])) for k in ("base1", "base2", "foreign", "narrow")]
    out["catalogue"] = build_catalogue(sources, root / "catalogue").folder
    return out


def _scan(zoo, name, **kw):
    from awm_jax.catalogue.store import load_catalogue

    return scan_model(prepare_model(zoo[name]), load_catalogue(zoo["catalogue"]), **kw)


@pytest.mark.parametrize("name, base", [("base1-ft", "base1"), ("base2-ft", "base2")])
def test_a_derivative_matches_its_base_first(zoo, name, base):
    result = _scan(zoo, name)
    assert result.matches[0].entry.id == base and result.matches[0].result.verdict == "derived"
    assert [m.entry.id for m in result.derived()] == [base]
    assert result.matches[1].result.verdict != "derived"


def test_an_independent_model_matches_nothing_and_impossible_entries_are_set_aside(zoo):
    result = _scan(zoo, "independent")
    assert not result.derived()
    skipped = dict(result.skipped)
    assert set(skipped) == {"foreign", "narrow"}
    assert "no shared tokens" in skipped["foreign"] and "more than 4x apart" in skipped["narrow"]
    assert {m.entry.id for m in result.matches} == {"base1", "base2"}


def test_entries_scored_at_once_give_what_one_at_a_time_gives_in_catalogue_order(zoo, monkeypatch):
    from awm_jax.catalogue import scan

    seen = []
    together = _scan(zoo, "base1-ft", progress=lambda entry, result: seen.append(entry.id))
    monkeypatch.setattr(scan, "SCAN_WORKERS", 1)
    alone = _scan(zoo, "base1-ft")
    assert seen == ["narrow", "base1", "base2", "foreign"]  # set aside first, then catalogue order
    assert [(m.entry.id, m.result.mean, m.result.verdict) for m in together.matches] == \
        [(m.entry.id, m.result.mean, m.result.verdict) for m in alone.matches]
    assert together.skipped == alone.skipped


def test_the_model_fingerprint_is_cached_as_usual(zoo, tmp_path):
    from awm_jax.catalogue.store import load_catalogue

    cache = FingerprintCache(tmp_path / "fp")
    first = prepare_model(zoo["base1-ft"], cache=cache)
    second = prepare_model(zoo["base1-ft"], cache=cache)
    assert not first.cached and second.cached
    result = scan_model(second, load_catalogue(zoo["catalogue"]))
    assert result.model.fingerprint_cached and result.matches[0].entry.id == "base1"


def test_cli_text_json_and_fail_on(zoo, tmp_path, capsys):
    cat = str(zoo["catalogue"])
    assert awm_main(["scan", str(zoo["base1-ft"]), "--catalogue", cat, "--top-k", "1"]) == 0
    text = capsys.readouterr().out
    assert "derived from: base1" in text and "base2" not in text.split("derived from")[1].split("set aside")[0]
    assert awm_main(["scan", str(zoo["base1-ft"]), "--catalogue", cat, "--json", "-", "--fail-on", "derived"]) == FOUND_EXIT
    payload = json.loads(capsys.readouterr().out)
    assert payload["format"] == "awm_jax.scan/1" and payload["matches"][0]["id"] == "base1"
    top = payload["matches"][0]
    assert top["verdict"] == "derived" and top["p_value"] < 1e-3 and top["matched_layers"] == [[i, i] for i in range(4)]
    assert {s["id"] for s in payload["skipped"]} == {"foreign", "narrow"}
    out = tmp_path / "scan.json"
    assert awm_main(["scan", str(zoo["independent"]), "--catalogue", cat, "--json", str(out), "--fail-on", "derived"]) == 0
    assert json.loads(out.read_text())["scored"] == 2


def test_cli_usage_and_damaged_catalogue_errors(zoo, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AWM_JAX_CATALOGUE", raising=False)
    assert awm_main(["scan", str(zoo["base1"])]) == 2
    assert "no catalogue" in capsys.readouterr().err
    assert awm_main(["scan", str(zoo["base1"]), "--catalogue", str(tmp_path)]) == 7
    err = capsys.readouterr().err
    assert err.startswith("awm_jax: error:") and "not a catalogue" in err and err.count("\n") == 1
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(zoo["catalogue"], damaged)
    manifest = json.loads((damaged / "MANIFEST.json").read_text())
    victim = damaged / manifest["entries"][0]["file"]
    victim.write_bytes(victim.read_bytes()[:-10])
    assert awm_main(["scan", str(zoo["base1-ft"]), "--catalogue", str(damaged)]) == 7
    err = capsys.readouterr().err
    assert "does not match its manifest hash" in err and err.count("\n") == 1
    assert awm_main(["catalogue", "verify", str(damaged)]) == 7
    capsys.readouterr()
    assert awm_main(["catalogue", "verify", str(zoo["catalogue"])]) == 0
    assert "4 entries verified" in capsys.readouterr().out


def test_cli_catalogue_build_from_a_list(zoo, tmp_path, capsys):
    listing = tmp_path / "bases.txt"
    listing.write_text(f"first {zoo['base1']}\n{zoo['base2']}\n")
    assert awm_main(["catalogue", "build", str(tmp_path / "cat"), "--list", str(listing)]) == 0
    out = capsys.readouterr().out
    assert "first\t64x4" in out and "base2\t64x4" in out and "2 entries" in out
    assert awm_main(["catalogue", "build", str(tmp_path / "cat2")]) == 2
    assert "no models" in capsys.readouterr().err


def test_help_lists_the_new_commands(capsys):
    assert awm_main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "scan " in text and "catalogue " in text


def test_an_entry_with_too_little_evidence_to_align_is_set_aside_not_scored(zoo, tmp_path):
    """A model sharing 3 tokens with the bases' sketches: as ``compare`` refuses such a pair
    (degenerate alignment), the scan sets those entries aside with the reason instead of scoring them."""
    from awm_jax.catalogue.store import load_catalogue

    emb, qs, ks = random_model(np.random.default_rng(8), vocab=300, hidden=64, layers=4, q_dim=64, k_dim=32)
    few = save_llama(tmp_path / "few", emb, qs, ks, tokens=[f"tok{i}" if i < 3 else f"mine{i}" for i in range(300)])
    result = scan_model(prepare_model(few), load_catalogue(zoo["catalogue"]))
    skipped = dict(result.skipped)
    assert not result.matches
    for base in ("base1", "base2"):
        assert "share only 3 token(s)" in skipped[base] and "degenerate alignment" in skipped[base]
