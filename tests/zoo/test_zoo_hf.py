"""Exported checkpoints load in Hugging Face transformers and give the same logits.

Skipped unless ``transformers`` and ``torch`` are importable here, or ``AWM_ZOO_HF_PYTHON``
names an interpreter that has them (e.g. a separate virtual environment); the comparison then
runs in a subprocess of that interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from . import require_zoo_extra

require_zoo_extra()

from awm_jax.zoo.checkpoint import Checkpoint, from_state_dict
from awm_jax.zoo.tokenizer import train_bpe

from .zoo_helpers import ARCHS, logits, random_state, tiny_config

_SCRIPT = r"""
import sys, json
import numpy as np, torch, transformers
folder, arch = sys.argv[1], sys.argv[2]
ids = torch.tensor(np.load(folder + "/ids.npy")).long()
cls = transformers.LlavaForConditionalGeneration if arch == "llava" else transformers.AutoModelForCausalLM
model = cls.from_pretrained(folder, dtype=torch.float32).eval()
with torch.no_grad():
    out = model(input_ids=ids).logits.float().numpy()
np.save(folder + "/hf_logits.npy", out)
print(type(model).__name__)
"""


def _interpreter() -> str:
    if importlib.util.find_spec("transformers") and importlib.util.find_spec("torch"):
        return sys.executable
    exe = os.environ.get("AWM_ZOO_HF_PYTHON")
    if exe:
        return exe
    pytest.skip("transformers is not installed; set AWM_ZOO_HF_PYTHON to an interpreter with "
                "torch and transformers to run this check")


@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_loads_export_with_same_logits(tmp_path, arch):
    exe = _interpreter()
    tok = train_bpe(["def f(x):\n    return x + 1\n" * 20, "The fox jumps.\n" * 20], 300,
                    min_frequency=1)
    cfg = tiny_config(arch, vocab_size=300)
    state = random_state(cfg, seed=2)
    Checkpoint(cfg, from_state_dict(state), tok, 299 if arch == "llava" else None).save(tmp_path)
    ids = np.random.default_rng(0).integers(3, 299, (2, 12)).astype(np.int64)
    np.save(tmp_path / "ids.npy", ids)
    run = subprocess.run([exe, "-c", _SCRIPT, str(tmp_path), arch], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    want_cls = {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM",
                "llava": "LlavaForConditionalGeneration"}[arch]
    assert run.stdout.strip().splitlines()[-1] == want_cls
    ours = logits(cfg, state, ids.astype(np.int32))
    theirs = np.load(tmp_path / "hf_logits.npy")
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4 * np.abs(ours).max())
