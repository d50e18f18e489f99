"""AWM sketches and catalogues: the sketch's contents and file, its scores against the exact
engine and a float64 reference, catalogue folders (manifest, integrity), hub publish/fetch."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ortho_group

from awm_jax.catalogue.sketch import (
    SKETCH_TOKENS,
    decode_sketch,
    encode_sketch,
    make_sketch,
    model_bytes,
    plan_sketch,
    retained_dims,
    select_tokens,
)
from awm_jax.catalogue.store import (
    ModelSource,
    build_catalogue,
    fetch_catalogue,
    load_catalogue,
    publish_catalogue,
    read_list,
)
from awm_jax.engine import prepare_model, score_pair
from awm_jax.engine.sketch import score_against_sketch
from awm_jax.errors import CacheError, UsageError
from awm_jax.options import PairOptions
from conftest import random_model, save_llama
from hub_server import StandInHub, _git_sha1, _lfs, isolate_hub_client

SHAPES_7B = dict(n=4096, layers=32, rows=32000, q_dim=4096, k_dim=4096, itemsize=2)


def _derive(emb, qs, ks, seed, noise=0.3, perm=True):
    """A derived model: Q/K plus relative noise, every matrix's residual axis signed-permuted."""
    rng = np.random.default_rng(seed)
    n = emb.shape[1]
    p = rng.permutation(n) if perm else np.arange(n)
    s = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32) if perm else np.ones(n, np.float32)
    bump = lambda w: w + noise * rng.standard_normal(w.shape).astype(np.float32) * w.std()  # noqa: E731
    return emb[:, p] * s, [bump(q)[:, p] * s for q in qs], [bump(k)[:, p] * s for k in ks], p, s


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base, a derived (noise + signed permutation), a rotated copy and an independent model (4 layers)."""
    root = tmp_path_factory.mktemp("models")
    emb, qs, ks = random_model(np.random.default_rng(0), vocab=300, hidden=64, layers=4, q_dim=64, k_dim=32)
    d_emb, d_qs, d_ks, perm, signs = _derive(emb, qs, ks, 1)
    rot = ortho_group.rvs(64, random_state=3).astype(np.float32)
    i_emb, i_qs, i_ks = random_model(np.random.default_rng(9), vocab=300, hidden=64, layers=4, q_dim=64, k_dim=32)
    return {
        "base": save_llama(root / "base", emb, qs, ks),
        "derived": save_llama(root / "derived", d_emb, d_qs, d_ks),
        "rotated": save_llama(root / "rotated", emb @ rot, [q @ rot for q in qs], [k @ rot for k in ks]),
        "independent": save_llama(root / "independent", i_emb, i_qs, i_ks),
        "perm": perm, "signs": signs,
    }


def _cka64(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased linear CKA in float64, straight from ALGORITHM.md step 6."""
    def center(g):
        g = np.array(g, np.float64)
        n = g.shape[0]
        np.fill_diagonal(g, 0.0)
        m = g.sum(0) / (n - 2)
        m -= m.sum() / (2 * (n - 1))
        c = g - m[None, :] - m[:, None]
        np.fill_diagonal(c, 0.0)
        return c
    kc, lc = center(k), center(l)
    return float((kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum()))


# --- the sketch's contents ----------------------------------------------------------------------


def test_token_selection_is_a_min_hash_of_the_strings_not_the_ids():
    tokens = [f"t{i}" for i in range(500)]
    a = {t: i for i, t in enumerate(tokens)}
    b = {t: 499 - i for i, t in enumerate(tokens)}  # same strings, other ids
    b_extra = dict(b, **{f"x{i}": 500 + i for i in range(300)})
    chosen = select_tokens(a, 500, 64)
    assert chosen == select_tokens(b, 500, 64) and len(set(chosen)) == 64
    # a larger vocabulary keeps every shared token that still ranks among its smallest hashes
    wider = select_tokens(b_extra, 800, 64)
    assert set(wider) & set(tokens) <= set(chosen) and len(set(wider) & set(chosen)) > 20
    assert "t0" not in select_tokens({"t0": 10}, 10, 5)  # ids beyond the embedding rows are not selectable


def test_retained_dims_are_evenly_spaced_and_all_when_full():
    np.testing.assert_array_equal(retained_dims(64, 64), np.arange(64))
    d = retained_dims(4096, 832)
    assert d.size == 832 and d[0] == 0 and d[-1] < 4096 and np.all(np.diff(d) >= 4) and np.all(np.diff(d) <= 5)


def test_plan_keeps_a_7b_sketch_within_two_percent_and_small_models_whole():
    plan = plan_sketch(**SHAPES_7B)
    assert plan.model_bytes == model_bytes(**SHAPES_7B)
    assert plan.sketch_bytes <= 0.02 * plan.model_bytes and plan.sketch_bytes <= 48 * 2**20
    assert plan.tokens == max(SKETCH_TOKENS, 4096) and 512 <= plan.dims < 4096 and plan.dims % 64 == 0
    small = plan_sketch(n=64, layers=5, rows=512, q_dim=64, k_dim=32, itemsize=4)
    assert (small.tokens, small.dims) == (512, 64)


def test_sketch_file_round_trip(models):
    model = prepare_model(models["base"])
    full, _ = make_sketch(model, "base")
    back = decode_sketch(encode_sketch(full), "base")  # every dimension: float32, exact
    assert back.tokens == full.tokens and back.name == "base" and back.hidden_size == 64
    np.testing.assert_array_equal(back.q, full.q)
    np.testing.assert_array_equal(back.embedding, full.embedding)
    np.testing.assert_array_equal(back.q[0], model.grams.q[0])
    reduced, plan = make_sketch(model, "base", dims=40, tokens=100)
    assert (plan.tokens, plan.dims) == (100, 40) and reduced.q.shape == (4, 40, 40)
    back = decode_sketch(encode_sketch(reduced), "r")  # float16, scaled by powers of two
    for got, want in ((back.q, reduced.q), (back.k, reduced.k), (back.embedding, reduced.embedding)):
        assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    np.testing.assert_array_equal(back.q, back.q.transpose(0, 2, 1))


@pytest.mark.parametrize("damage", ["truncate", "flip-meta", "not-safetensors"])
def test_damaged_sketch_bytes_are_refused_with_one_line(models, damage):
    data = encode_sketch(make_sketch(prepare_model(models["base"]))[0])
    bad = {"truncate": data[: len(data) // 2], "flip-meta": data.replace(b"awm_jax.sketch", b"awm_jax.sketchX", 1),
           "not-safetensors": b"hello world, not a sketch"}[damage]
    with pytest.raises(CacheError) as e:
        decode_sketch(bad, "entry.safetensors")
    assert "\n" not in str(e.value) and "entry.safetensors" in str(e.value)


# --- scores -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["assignment", "orthogonal", "auto"])
@pytest.mark.parametrize("other", ["derived", "independent", "rotated"])
def test_full_sketch_scores_equal_the_engine(models, mode, other):
    base, model = prepare_model(models["base"]), prepare_model(models[other])
    sketch = decode_sketch(encode_sketch(make_sketch(base, "base")[0]), "base")
    options = PairOptions(alignment=mode)
    exact = score_pair(model, base, options)
    got = score_against_sketch(model, sketch, options)
    assert got.mean == pytest.approx(exact.mean, abs=1e-5) and got.verdict == exact.verdict
    np.testing.assert_allclose([l.wq for l in got.layers], [l.wq for l in exact.layers], atol=1e-5)
    assert got.calibrated["p_value"] == pytest.approx(exact.calibrated["p_value"], rel=1e-3, abs=1e-12)


def test_reduced_sketch_gathers_the_model_at_the_matched_dimensions_float64_reference(models):
    """m < n: the model's Grams at p(D), signed, against K_sketch[D, D]; checked per layer
    against float64 CKA computed from the known permutation."""
    base, model = prepare_model(models["base"]), prepare_model(models["derived"])
    sketch, _ = make_sketch(base, "base", dims=24)
    got = score_against_sketch(model, sketch)
    perm, signs = models["perm"], models["signs"]
    inverse = np.argsort(perm)  # model column of each base dimension
    cols = inverse[sketch.dims]
    outer = np.outer(signs[cols], signs[cols])
    for layer in got.layers:
        i = layer.a_layer
        want_q = _cka64(model.grams.q[i][np.ix_(cols, cols)] * outer, base.grams.q[i][np.ix_(sketch.dims, sketch.dims)])
        want_k = _cka64(model.grams.k[i][np.ix_(cols, cols)] * outer, base.grams.k[i][np.ix_(sketch.dims, sketch.dims)])
        assert layer.wq == pytest.approx(want_q, abs=1e-5) and layer.wk == pytest.approx(want_k, abs=1e-5)
    assert got.verdict == "derived" and got.alignment["scored_dims"] == 24


def test_reduced_sketch_with_rotation_uses_the_whole_model_gram(models):
    base, rotated = prepare_model(models["base"]), prepare_model(models["rotated"])
    sketch, _ = make_sketch(base, "base", dims=32)
    paper = score_against_sketch(rotated, sketch, PairOptions(alignment="assignment"))
    turned = score_against_sketch(rotated, sketch)  # the default alignment, auto
    assert paper.mean < 0.5 and turned.alignment["used"] == "orthogonal"
    assert turned.mean == pytest.approx(1.0, abs=1e-3) and turned.verdict == "derived"


def test_reduced_sketch_keeps_verdicts(models):
    base = prepare_model(models["base"])
    sketch = decode_sketch(encode_sketch(make_sketch(base, "base", dims=32, tokens=200)[0]), "base")
    assert score_against_sketch(prepare_model(models["derived"]), sketch).verdict == "derived"
    assert score_against_sketch(prepare_model(models["independent"]), sketch).verdict != "derived"


def test_a_wider_sketch_is_the_base_as_in_the_engine(tmp_path, models):
    """A width-pruned model (48 of the base's 64 dimensions) against the base's whole sketch:
    the engine's alignment (wider = base), hence the engine's score."""
    emb, qs, ks = random_model(np.random.default_rng(0), vocab=300, hidden=64, layers=4, q_dim=64, k_dim=32)
    keep = np.sort(np.random.default_rng(5).permutation(64)[:48])
    pruned = save_llama(tmp_path / "pruned", emb[:, keep], [q[:, keep] for q in qs], [k[:, keep] for k in ks])
    base, model = prepare_model(models["base"]), prepare_model(pruned)
    exact = score_pair(model, base)
    got = score_against_sketch(model, make_sketch(base, "base")[0])
    assert exact.base == got.base == "b"
    assert got.mean == pytest.approx(exact.mean, abs=1e-5) and got.verdict == exact.verdict == "derived"
    # the other way round: the wider model against the narrower model's whole sketch, rotation included
    for mode in ("assignment", "orthogonal"):
        exact = score_pair(base, model, PairOptions(alignment=mode))
        got = score_against_sketch(base, make_sketch(model, "pruned")[0], PairOptions(alignment=mode))
        assert exact.base == got.base == "a" and got.mean == pytest.approx(exact.mean, abs=1e-5)


# --- catalogue folders --------------------------------------------------------------------------


@pytest.fixture
def catalogue(tmp_path, models):
    sources = [ModelSource("base", str(models["base"])), ModelSource("independent", str(models["independent"]))]
    return build_catalogue(sources, tmp_path / "cat")


def test_catalogue_manifest_and_integrity(catalogue, models):
    body = json.loads((catalogue.folder / "MANIFEST.json").read_text())
    assert body["format"] == "awm_jax.catalogue/1" and [e["id"] for e in body["entries"]] == ["base", "independent"]
    entry = catalogue.entries[0]
    assert entry.hidden_size == 64 and entry.num_layers == 4 and entry.sketch_dims == 64 and entry.commit is None
    assert entry.architecture == "LlamaForCausalLM" and entry.layout == "llama" and len(entry.sha256) == 64
    assert catalogue.sketch(entry).name == "base"
    path = catalogue.folder / entry.file
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="does not match its manifest hash"):
        catalogue.sketch(entry)


def test_rebuilding_replaces_an_entry_and_keeps_the_others(catalogue, models):
    again = build_catalogue([ModelSource("base", str(models["derived"]))], catalogue.folder)
    assert [e.id for e in again.entries] == ["base", "independent"]
    assert again.entries[0].source == str(models["derived"])


def test_manifest_naming_a_file_outside_is_refused(catalogue):
    path = catalogue.folder / "MANIFEST.json"
    body = json.loads(path.read_text())
    body["entries"][0]["file"] = "../../etc/passwd"
    path.write_text(json.dumps(body))
    with pytest.raises(CacheError, match="outside the catalogue"):
        load_catalogue(catalogue.folder)


def test_not_a_catalogue(tmp_path):
    with pytest.raises(CacheError, match="not a catalogue"):
        load_catalogue(tmp_path)
    (tmp_path / "x").write_text("x")
    with pytest.raises(UsageError, match="not empty and not a catalogue"):
        build_catalogue([], tmp_path)


def test_list_file(tmp_path):
    f = tmp_path / "list.txt"
    f.write_text("# bases\nowner/model@main\nmine /some/folder  # a comment\n\n")
    assert read_list(f) == [ModelSource("owner/model@main", "owner/model@main"), ModelSource("mine", "/some/folder")]
    f.write_text("a b c\n")
    with pytest.raises(UsageError):
        read_list(f)


# --- hub dataset repositories -------------------------------------------------------------------


class DatasetHub(StandInHub):
    """The stand-in hub plus what publishing a dataset needs: ``POST /api/repos/create``,
    ``POST /api/datasets/{repo}/preupload/{rev}`` (every file "regular", so no LFS transfer),
    ``POST /api/datasets/{repo}/commit/{rev}`` (NDJSON with base64 file contents; a new commit of
    the repository), and the dataset read routes (``/api/datasets/...``, ``/datasets/.../resolve/...``),
    served by the model routes of :class:`StandInHub`, plus ``GET /api/datasets/{repo}/tree/{rev}``
    (the listing ``snapshot_download`` reads). Kept out of ``hub_server.py``."""

    def _handler(self, role: str):
        base = super()._handler(role)
        hub = self

        class Handler(base):
            def do_GET(self):
                if "/tree/" in self.path and self.path.startswith("/api/datasets/"):
                    self._record()
                    hub._tree(self)
                    return
                self.path = hub._model_route(self.path)
                super().do_GET()

            def do_HEAD(self):
                self.path = hub._model_route(self.path)
                super().do_HEAD()

            def do_POST(self):
                self._record()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub._post(self, body)

        return Handler

    @staticmethod
    def _model_route(path: str) -> str:
        if path.startswith("/api/datasets/"):
            return "/api/models/" + path[len("/api/datasets/"):]
        if path.startswith("/datasets/"):
            return path[len("/datasets"):]
        return path

    def _tree(self, h) -> None:
        parts = h.path.split("?")[0].strip("/").split("/")
        repo = self._check_access(h, "/".join(parts[2:4]), False)
        if repo is None or not self._revision(h, repo, parts[5], False):
            return
        listing = []
        for name, data in sorted(repo.files.items()):
            item = {"type": "file", "path": name, "size": len(data), "oid": _git_sha1(data)}
            if _lfs(name):
                item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            listing.append(item)
        self._reply(h, 200, {"Content-Type": "application/json"}, json.dumps(listing).encode())

    def _post(self, h, body: bytes) -> None:
        parts = h.path.split("?")[0].strip("/").split("/")
        if parts[:3] == ["api", "repos", "create"]:
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}"
            if repo_id not in self.repos:
                self.add_repo(repo_id, {})
            self._reply(h, 200, {"Content-Type": "application/json"},
                        json.dumps({"url": f"{self.endpoint}/datasets/{repo_id}"}).encode())
            return
        repo_id = "/".join(parts[2:4])
        if parts[:2] != ["api", "datasets"] or repo_id not in self.repos:
            self._error(h, 404, "RepoNotFound", "Repository not found", False)
            return
        if parts[4] == "preupload":
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                     for f in json.loads(body)["files"]]
            self._reply(h, 200, {"Content-Type": "application/json"}, json.dumps({"files": files}).encode())
            return
        if parts[4] == "commit":
            files = dict(self.repos[repo_id].files)
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            repo = self.add_repo(repo_id, files)
            self._reply(h, 200, {"Content-Type": "application/json"}, json.dumps(
                {"commitUrl": f"{self.endpoint}/datasets/{repo_id}/commit/{repo.commit}", "commitOid": repo.commit}
            ).encode())
            return
        self._error(h, 404, None, "Not found", False)


@pytest.fixture
def dataset_hub(tmp_path, monkeypatch):
    from huggingface_hub import close_session

    with DatasetHub() as server:
        blocked = isolate_hub_client(monkeypatch, tmp_path, server.endpoint)
        close_session()
        yield server
        close_session()
    assert not blocked


def test_publish_and_fetch_a_catalogue(catalogue, dataset_hub, models):
    commit = publish_catalogue(catalogue.folder, "org/bases")
    assert commit == dataset_hub.repos["org/bases"].commit
    assert set(dataset_hub.repos["org/bases"].files) == {"MANIFEST.json", *(e.file for e in catalogue.entries)}
    fetched = fetch_catalogue("org/bases")
    assert [e.sha256 for e in fetched.entries] == [e.sha256 for e in catalogue.entries]
    assert commit in fetched.origin
    model = prepare_model(models["derived"])
    assert score_against_sketch(model, fetched.sketch(fetched.entries[0])).verdict == "derived"
    # a damaged file on the hub is refused after the download
    name = catalogue.entries[1].file
    files = dict(dataset_hub.repos["org/bases"].files)
    files[name] = files[name][:-1] + bytes([files[name][-1] ^ 0xFF])
    dataset_hub.add_repo("org/damaged", files)
    damaged = fetch_catalogue("org/damaged")
    with pytest.raises(CacheError, match="does not match its manifest hash"):
        damaged.sketch(damaged.entries[1])


def test_fetch_of_a_missing_dataset_is_one_line(dataset_hub):
    from awm_jax.errors import CheckpointError

    with pytest.raises(CheckpointError, match="cannot fetch the catalogue") as e:
        fetch_catalogue("org/nothing")
    assert "\n" not in str(e.value)


def test_publishing_a_damaged_catalogue_uploads_nothing(catalogue, dataset_hub):
    path = catalogue.folder / catalogue.entries[0].file
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CacheError):
        publish_catalogue(catalogue.folder, "org/bases")
    assert "org/bases" not in dataset_hub.repos


def test_build_from_a_hub_id_records_the_resolved_commit(dataset_hub, tmp_path):
    from hub_server import write_tiny_model

    repo = dataset_hub.add_folder("org/tiny", write_tiny_model(tmp_path / "tiny"))
    built = build_catalogue([ModelSource("tiny", "org/tiny@main")], tmp_path / "cat")
    entry = built.entries[0]
    assert entry.source == "org/tiny@main" and entry.commit == repo.commit and entry.hidden_size == 64
    assert built.sketch(entry).hidden_size == 64
