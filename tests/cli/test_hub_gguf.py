"""GGUF repositories and LoRA adapter repositories as hub ids, through the real command lines,
against the stand-in hub (tests/hub_server.py): ``owner/name:QUANT`` chooses the model, only the
GGUF header and the byte ranges of the tensors read are fetched (into sparse files whose holes
are never read), and an adapter repository is merged onto its base fetched partially."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from awm_jax.cli.audit import main as audit_main  # noqa: E402
from awm_jax.cli.compare import main as compare_main  # noqa: E402
from awm_jax.cli.download import main as download_main  # noqa: E402
from awm_jax.io.checkpoint import Checkpoint  # noqa: E402
from awm_jax.io.gguf import GGUFCheckpoint, find_gguf  # noqa: E402
from awm_jax.io.hub import hub_cache_dir, parse_hub_id  # noqa: E402
from awm_jax.io.hub_gguf import GGUF_HEADER_GUESS, header_length, quants_in  # noqa: E402
from awm_jax.io.sparse import SparseFile  # noqa: E402
from hub_server import hub, write_gguf_model, write_llama_model  # noqa: E402, F401  (hub is a fixture)

#: GGUF tensors no score reads (the MLP inputs and their norm only with --mlp).
NEVER_READ = ("attn_v.weight", "attn_output.weight", "ffn_down.weight", "output.weight", "output_norm.weight")
MLP_READ = ("ffn_gate.weight", "ffn_up.weight", "ffn_norm.weight")
QK_READ = ("token_embd.weight", "attn_q.weight", "attn_k.weight", "attn_norm.weight")


def _load_adapter_helpers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("adapters_test", Path(__file__).parents[1] / "io" / "test_adapters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def repos(hub, tmp_path, monkeypatch):
    """``org/gguf``: a Q8_0 file and a Q4_0 split set of one Llama; ``org/base``: its safetensors
    release; ``org/single``: one GGUF file of another Llama; ``org/other``: that Llama's safetensors."""
    import awm_jax.io._ranges as ranges
    import awm_jax.io.hub_gguf as hub_gguf

    monkeypatch.setattr(hub_gguf, "GGUF_HEADER_GUESS", 4096)  # the header takes several requests
    monkeypatch.setattr(ranges, "MERGE_GAP_BYTES", 0)  # each request is exactly the bytes of tensors read
    base = write_llama_model(tmp_path / "base", vocab=512, hidden=128, layers=3, intermediate=256, seed=1,
                             shard_bytes=None)
    other = write_llama_model(tmp_path / "other", vocab=512, hidden=128, layers=3, intermediate=256, seed=2,
                              shard_bytes=None)
    files = tmp_path / "gguf"
    files.mkdir()
    write_gguf_model(base, files / "llama-Q8_0.gguf")
    write_gguf_model(base, files / "llama-Q4_0.gguf", qtype="Q4_0", split=2)
    (files / "README.md").write_text("# llama in GGUF\n")
    hub.add_folder("org/gguf", files, refs=("main", "v1"))
    hub.add_folder("org/base", base)
    hub.add_folder("org/other", other)
    single = tmp_path / "single"
    single.mkdir()
    write_gguf_model(other, single / "other-F32.gguf", qtype="F32")
    hub.add_folder("org/single", single)
    return hub, files, base, other


def _partial_files(repo: str) -> Path:
    storage = hub_cache_dir() / ("models--" + repo.replace("/", "--"))
    (folder,) = (storage / "awm_partial").iterdir()
    return folder


def _tensor_spans(path: Path) -> dict[str, tuple[int, int]]:
    reader = gguf.GGUFReader(path)
    return {t.name: (int(t.data_offset), int(t.data_offset) + int(t.n_bytes)) for t in reader.tensors}


def _present(path: Path) -> dict[str, bool]:
    sparse = SparseFile.load(path)
    return {name: not sparse.missing(s, e) for name, (s, e) in _tensor_spans(path).items()}


def _json(capsys, argv, main=compare_main) -> tuple[int, dict | None, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in argv else None), err


def _gets(hub, name: str, since: int = 0) -> list[tuple[int, int]]:
    """The byte ranges ``[start, end)`` of the content store's GET requests for file ``name`` since
    log entry ``since``, sorted."""
    blob = next(k for k, v in hub._blobs.items() if v[0] == name)
    out = []
    for r in hub.log[since:]:
        if r.server == "cdn" and r.method == "GET" and r.path.endswith(blob):
            assert r.range, "a whole-file GET"
            start, end = map(int, r.range.removeprefix("bytes=").split("-"))
            out.append((start, end + 1))
    return sorted(out)


def test_parse_hub_id_takes_a_gguf_selector():
    assert parse_hub_id("org/gguf:Q4_K_M") == ("org/gguf", "main", "Q4_K_M")
    assert parse_hub_id("org/gguf@v1:q8_0") == ("org/gguf", "v1", "q8_0")
    assert str(parse_hub_id("org/gguf@v1:Q8_0")) == "org/gguf@v1:Q8_0"
    assert parse_hub_id("org/gguf:") is None and parse_hub_id("org/gguf:a/b") is None
    assert quants_in(["x-Q4_K_M.gguf", "x-IQ2_XS-00001-of-00002.gguf", "x.f16.gguf", "x-bf16.gguf"]) == \
        ["BF16", "F16", "IQ2_XS", "Q4_K_M"]


def test_header_length_is_found_in_growing_prefixes(tmp_path):
    base = write_llama_model(tmp_path / "b", vocab=512, hidden=64, layers=2, intermediate=128, shard_bytes=None)
    (path,) = write_gguf_model(base, tmp_path / "m.gguf")
    data = path.read_bytes()
    start = min(s for s, _ in _tensor_spans(path).values())
    assert header_length(data) == start
    assert all(header_length(data[:n]) is None for n in (0, 10, 24, 100, start - 40))
    with pytest.raises(ValueError, match="magic"):
        header_length(b"GGUX" + data[4:])


def test_a_gguf_hub_id_fetches_only_the_header_and_the_tensors_read(repos, capsys, tmp_path):
    hub, files, _, _ = repos
    code, remote, _ = _json(capsys, ["org/gguf:Q8_0", "org/other", "--json", "-", "--no-cache"])
    assert code == 0
    path = _partial_files("org/gguf") / "llama-Q8_0.gguf"
    spans = _tensor_spans(files / "llama-Q8_0.gguf")
    header = min(s for s, _ in spans.values())
    present = _present(path)
    for name, have in present.items():
        assert have == name.endswith(QK_READ), name
    # the request count: the header in requests doubling from 4096 bytes, then one request per run
    # of adjacent tensors read, and not one byte more (holes stay holes)
    got = _gets(hub, "llama-Q8_0.gguf")
    assert got[:3] == [(0, 4096), (4096, 8192), (8192, 16384)] and header <= 16384
    needed = sorted(spans[n] for n in spans if n.endswith(QK_READ))
    runs = []
    for s, e in needed:
        if s >= 16384:
            if runs and runs[-1][1] == s:
                runs[-1] = (runs[-1][0], e)
            else:
                runs.append((s, e))
        elif e > 16384:
            runs.append((16384, e))
    assert got[3:] == runs
    fetched = sum(e - s for s, e in got)
    assert fetched == 16384 + sum(e - s for s, e in runs)  # the header requests and the tensors read, no more
    assert fetched < 0.5 * (files / "llama-Q8_0.gguf").stat().st_size
    # the scores are those of the whole file read locally
    code, local, _ = _json(capsys, [str(files / "llama-Q8_0.gguf"), "org/other", "--json", "-", "--no-cache"])
    for key in ("wq", "wk", "mean", "verdict", "per_layer_wq", "per_layer_wk"):
        assert remote[key] == local[key], key
    assert remote["model_a"]["origin"]["repo_id"] == "org/gguf"
    assert remote["model_a"]["origin"]["download"] == "partial"
    assert remote["model_a"]["form"].startswith("GGUF llama, Q8_0")


def test_mlp_later_fetches_only_the_mlp_inputs_and_a_warm_model_makes_no_request(repos, capsys):
    hub, files, _, _ = repos
    assert compare_main(["org/gguf:Q8_0", "org/other", "--quiet"]) == 0
    before = len(hub.log)
    assert compare_main(["org/gguf:Q8_0", "org/other", "--quiet"]) == 0
    assert len(hub.log) == before  # not even a HEAD
    path = _partial_files("org/gguf") / "llama-Q8_0.gguf"
    old = SparseFile.load(path)
    assert compare_main(["org/gguf:Q8_0", "org/other", "--quiet", "--mlp"]) == 0
    new = _gets(hub, "llama-Q8_0.gguf", before)
    assert new and all(old.missing(s, e) == [(s, e)] for s, e in new)  # nothing present is asked again
    present = _present(path)
    for name, have in present.items():
        assert have == name.endswith(QK_READ + MLP_READ), name


def test_a_hole_is_refused_never_read_as_zeros(repos, capsys):
    assert compare_main(["org/gguf:Q8_0", "org/other", "--quiet"]) == 0
    ckpt = GGUFCheckpoint(find_gguf(_partial_files("org/gguf") / "llama-Q8_0.gguf"))
    assert ckpt.sparse
    with pytest.raises(Exception, match="was not fetched"):
        ckpt.read("model.layers.0.mlp.up_proj.weight")
    with pytest.raises(Exception, match="was not fetched"):
        ckpt.map("model.layers.0.post_attention_layernorm.weight")  # F32: would be a memory map of a hole


def test_split_sets_revisions_and_single_file_repositories(repos, capsys):
    hub, files, _, other = repos
    code, split, _ = _json(capsys, ["org/gguf@v1:q4_0", "org/single", "--json", "-", "--no-cache"])
    assert code == 0
    folder = _partial_files("org/gguf")
    assert sorted(p.name for p in folder.glob("*.gguf")) == ["llama-Q4_0-00001-of-00002.gguf",
                                                            "llama-Q4_0-00002-of-00002.gguf"]
    for part in folder.glob("*.gguf"):
        present = _present(part)
        assert not any(have for name, have in present.items() if name.endswith(NEVER_READ + MLP_READ))
    code, local, _ = _json(capsys, [str(files / "llama-Q4_0-00001-of-00002.gguf"), str(other), "--json", "-",
                                    "--no-cache"])
    assert (split["wq"], split["wk"], split["verdict"]) == (local["wq"], local["wk"], local["verdict"])
    assert split["model_a"]["origin"]["revision"] == "v1"
    assert split["model_b"]["origin"]["repo_id"] == "org/single"


@pytest.mark.parametrize("spec, fragment", [
    ("org/gguf:Q5_K_M", "no GGUF model(s) match 'Q5_K_M' (quants available: Q4_0, Q8_0)"),
    ("org/gguf", "holds 2 GGUF models (quants available: Q4_0, Q8_0); choose one with org/gguf:FILE or org/gguf:QUANT"),
    ("org/base:Q4_K_M", "the repository holds no .gguf file, so :Q4_K_M selects nothing"),
])
def test_bad_selectors_are_one_line_listing_the_quants(repos, capsys, spec, fragment):
    hub, _, _, _ = repos
    for main, argv in ((compare_main, [spec, "org/other", "--quiet"]), (download_main, [spec])):
        assert main(argv) == 3
        out, err = capsys.readouterr()
        assert err.count("\n") == 1 and err.startswith("awm_jax: error: ") and fragment in err, err
    assert not any(r.server == "cdn" for r in hub.log)  # nothing was downloaded


def test_download_then_offline_compare_makes_no_request(repos, capsys, monkeypatch):
    hub, _, _, _ = repos
    assert download_main(["org/gguf:Q8_0", "org/other"]) == 0
    out, _ = capsys.readouterr()
    assert "org/gguf:Q8_0: done" in out and "partial" in out
    assert download_main(["org/gguf:Q8_0", "--dry-run"]) == 0
    out, _ = capsys.readouterr()
    assert "org/gguf:Q8_0: cached" in out
    before = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert compare_main(["org/gguf:Q8_0", "org/other", "--quiet"]) == 0
    assert len(hub.log) == before
    assert compare_main(["org/gguf:Q8_0", "org/other", "--quiet", "--mlp"]) == 3  # its MLP inputs were not fetched
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "HF_HUB_OFFLINE" in err


def test_download_full_fetches_the_whole_gguf_model(repos, capsys):
    hub, files, _, _ = repos
    assert download_main(["org/gguf:Q8_0", "--download", "full"]) == 0
    storage = hub_cache_dir() / "models--org--gguf"
    (snapshot,) = (storage / "snapshots").iterdir()
    assert (snapshot / "llama-Q8_0.gguf").read_bytes() == (files / "llama-Q8_0.gguf").read_bytes()
    assert not (snapshot / "llama-Q4_0-00001-of-00002.gguf").exists()
    capsys.readouterr()
    code, d, _ = _json(capsys, ["org/gguf:Q8_0", "org/other", "--json", "-", "--no-cache", "--download", "full"])
    assert code == 0 and d["model_a"]["origin"]["download"] == "full"


def test_audit_names_gguf_hub_models_by_id(repos, capsys, tmp_path):
    out = tmp_path / "out"
    assert audit_main(["org/gguf:Q8_0", "org/base", "org/single", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "audit.json").read_text())
    assert result["rows"] == ["org/gguf:Q8_0", "org/base", "org/single"]
    assert [m["origin"]["repo_id"] for m in result["models"]] == ["org/gguf", "org/base", "org/single"]


def test_an_adapter_repository_is_merged_onto_its_hub_base(repos, capsys, tmp_path):
    hub, _, base, _ = repos
    helpers = _load_adapter_helpers()
    helpers.write_adapter(base, tmp_path / "lora", base_name="org/base")
    hub.add_folder("org/lora", tmp_path / "lora")
    code, remote, _ = _json(capsys, ["org/lora", "org/other", "--json", "-", "--no-cache"])
    assert code == 0, _
    assert "LoRA adapter" in remote["model_a"]["form"]
    storage = hub_cache_dir() / "models--org--base"
    (partial,) = (storage / "awm_partial").iterdir()
    sparse = SparseFile.load(partial / "model.safetensors")
    header = Checkpoint(partial)
    assert not sparse.complete()
    lm_head = header.info("lm_head.weight")
    assert sparse.missing(lm_head.start, lm_head.start + lm_head.nbytes)
    code, local, _ = _json(capsys, [str(tmp_path / "lora"), "org/other", "--json", "-", "--no-cache",
                                    "--adapter-base", str(base)])
    for key in ("wq", "wk", "mean", "verdict", "per_layer_wq"):
        assert remote[key] == local[key], key
    # --adapter-base names the base when the config's does not exist
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "nobody/missing-base"
    (tmp_path / "lora2").mkdir()
    (tmp_path / "lora2" / "adapter_config.json").write_text(json.dumps(cfg))
    (tmp_path / "lora2" / "adapter_model.safetensors").write_bytes((tmp_path / "lora" / "adapter_model.safetensors").read_bytes())
    hub.add_folder("org/lora2", tmp_path / "lora2")
    code, named, _ = _json(capsys, ["org/lora2", "org/other", "--json", "-", "--no-cache", "--adapter-base", "org/base"])
    assert code == 0 and (named["wq"], named["wk"]) == (remote["wq"], remote["wk"])
    assert download_main(["org/lora"]) == 0  # the adapter whole, its base's tensors read (cached already)
    out, _ = capsys.readouterr()
    assert "org/lora: cached" in out
    assert compare_main(["org/lora2", "org/other", "--quiet"]) == 3
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "nobody/missing-base" in err


def test_an_adapter_over_a_gguf_hub_base(repos, capsys, tmp_path):
    hub, files, base, _ = repos
    helpers = _load_adapter_helpers()
    helpers.write_adapter(base, tmp_path / "lora", base_name="org/gguf:Q8_0")
    code, remote, err = _json(capsys, [str(tmp_path / "lora"), "org/other", "--json", "-", "--no-cache"])
    assert code == 0, err
    present = _present(_partial_files("org/gguf") / "llama-Q8_0.gguf")
    assert not any(have for name, have in present.items() if name.endswith(NEVER_READ))
    code, local, _ = _json(capsys, [str(tmp_path / "lora"), "org/other", "--json", "-", "--no-cache",
                                    "--adapter-base", str(files / "llama-Q8_0.gguf")])
    assert (remote["wq"], remote["wk"], remote["verdict"]) == (local["wq"], local["wk"], local["verdict"])


@pytest.mark.parametrize("cut, fragment", [(5000, "ends before its GGUF header does"),
                                           (None, "is not a readable GGUF file (no GGUF magic bytes)")])
def test_a_broken_gguf_header_on_the_hub_is_one_line(repos, capsys, cut, fragment):
    hub, files, _, _ = repos
    data = (files / "llama-Q8_0.gguf").read_bytes()
    hub.add_repo("org/broken", {"m-Q8_0.gguf": data[:cut] if cut else b"NOPE" + data[4:]})
    assert compare_main(["org/broken:Q8_0", "org/other", "--quiet"]) == 3
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err, err


def test_gguf_norm_gains_are_folded_as_in_the_float_parent(repos, capsys, tmp_path):
    _, _, base, other = repos
    (f32,) = write_gguf_model(base, tmp_path / "base-F32.gguf", qtype="F32")
    ckpt = GGUFCheckpoint(find_gguf(f32))
    assert ckpt.info("model.layers.2.input_layernorm.weight").shape == (128,)
    scores = {}
    for name, model in (("gguf", f32), ("float", base)):
        for gains in ("fold", "ignore"):
            code, d, err = _json(capsys, [str(model), str(other), "--json", "-", "--no-cache", "--norm-gains", gains])
            assert code == 0, err
            scores[name, gains] = np.array([d[k][i] for k in ("per_layer_wq", "per_layer_wk") for i in sorted(d[k])])
    for gains in ("fold", "ignore"):
        np.testing.assert_allclose(scores["gguf", gains], scores["float", gains], rtol=0, atol=1e-6)
    assert np.abs(scores["float", "fold"] - scores["float", "ignore"]).max() > 1e-4  # the gains matter here
