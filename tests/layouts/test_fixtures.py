"""Every architecture fixture: awm_jax reads exactly the Q, K, embedding and MLP rows the model computes.

The truth was captured from the architectures' own modules by
``tests/fixtures/architectures/generate.py`` (or, for families transformers does not ship, from
transcriptions of their published modelling code); this test needs only the saved fixtures.
"""

from __future__ import annotations

import numpy as np
import pytest

from awm_jax.io.checkpoint import Checkpoint
from awm_jax.layouts import REGISTRY, detect
from ._fixtures import (
    CASES, FIXTURES, MANIFEST, assert_same_rows, case_dir, truth_embedding, truth_mlp, truth_qk,
)

LAYERS = MANIFEST["generator"]["layers"]
HIDDEN = MANIFEST["generator"]["hidden"]

#: The architectures the project promises (issue 3), each with at least one fixture.
REQUIRED = {
    "llama": "llama", "mistral": "mistral", "mixtral": "mixtral", "qwen2": "qwen2", "qwen2_moe": "qwen2_moe",
    "qwen3": "qwen3", "qwen3_moe": "qwen3_moe", "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3",
    "phi3": "phi3", "gpt2": "gpt2", "gpt_neox": "gpt_neox", "bloom": "bloom", "falcon_7b": "falcon",
    "falcon_40b": "falcon", "mpt": "mpt", "baichuan": "baichuan", "qwen1": "qwen", "chatglm": "chatglm",
    "internlm2": "internlm2", "olmo": "olmo", "olmo2": "olmo2", "gptj": "gptj", "opt": "opt", "stablelm": "stablelm",
    "cohere": "cohere", "starcoder2": "starcoder2", "gpt_bigcode": "gpt_bigcode", "deepseek_v2": "deepseek_mla",
    "deepseek_v3": "deepseek_mla", "llava": "llama", "qwen2_vl": "qwen2", "gemma3_mm": "gemma3", "smolvlm": "llama",
    "qwen2_audio": "qwen2",
}


def test_every_promised_architecture_has_a_fixture():
    missing = sorted(set(REQUIRED) - set(CASES))
    assert not missing, f"no fixture for {missing}"
    for case, layout in REQUIRED.items():
        assert MANIFEST["cases"][case]["layout"] == layout


def test_fixtures_stay_small():
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 10 * 1024 * 1024, f"fixtures total {total / 2**20:.2f} MiB"


@pytest.fixture(scope="module", params=CASES)
def resolved(request):
    return request.param, detect(Checkpoint(case_dir(request.param)))


def test_detected_layout_and_sizes(resolved):
    case, r = resolved
    assert r.name == MANIFEST["cases"][case]["layout"]
    assert r.layout is REGISTRY[r.name]
    assert r.num_layers == LAYERS
    assert r.hidden_size == HIDDEN
    q, k = truth_qk(case, 0)
    assert (r.q_dim, r.k_dim) == (q.shape[0], k.shape[0])


def test_query_and_key_rows_match_the_modules(resolved):
    case, r = resolved
    for layer in range(LAYERS):
        q, k = r.read_qk(layer)
        assert q.dtype == np.float32 and k.dtype == np.float32
        want_q, want_k = truth_qk(case, layer)
        assert_same_rows(q, want_q, f"{case} layer {layer} Wq")
        assert_same_rows(k, want_k, f"{case} layer {layer} Wk")


def test_embedding_matches_the_module(resolved):
    case, r = resolved
    emb = np.asarray(r.read_embedding(), dtype=np.float32)
    want = truth_embedding(case)
    np.testing.assert_allclose(emb, want, rtol=0, atol=2e-6 * np.abs(want).max())
    assert r.vocab_rows == want.shape[0]


def test_mlp_inputs_match_the_modules(resolved):
    case, r = resolved
    for layer in range(LAYERS):
        got = r.read_mlp(layer)
        want = truth_mlp(case, layer)
        assert len(got) == len(want), f"{case} layer {layer}: {len(got)} MLP blocks, expected {len(want)}"
        for block, (g, w) in enumerate(zip(got, want, strict=True)):
            where = f"{case} layer {layer} block {block} ({g.name})"
            assert (g.gate is None) == ("gate" not in w), f"{where}: gated is {g.gate is not None}"
            assert_same_rows(g.up, w["up"], f"{where} up/fc1")
            if g.gate is not None:
                # The gate is the activation's input: its rows in the module's order.
                np.testing.assert_allclose(g.gate, w["gate"], rtol=0, atol=2e-6 * np.abs(w["gate"]).max())


def test_tensor_names_are_exact_and_present(resolved):
    case, r = resolved
    for layer in range(LAYERS):
        names = r.tensor_names(layer)
        assert names and all(n in r.ckpt for n in names), names
        assert all(n.startswith(r.prefix) for n in names)
    assert r.embedding_name in r.ckpt


@pytest.mark.parametrize("case", [c for c in CASES if MANIFEST["cases"][c]["source"].startswith("documented")])
def test_documented_families_are_marked(case):
    assert REGISTRY[MANIFEST["cases"][case]["layout"]].source == "documented"
