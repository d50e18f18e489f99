"""Hugging Face checkpoint folders for zoo models: tensor names, ``config.json``, atomic writes.

A zoo checkpoint is a folder with ``model.safetensors`` (float32 or bfloat16), ``config.json``
(a valid ``LlamaForCausalLM``, ``MixtralForCausalLM`` or ``LlavaForConditionalGeneration``
configuration) and ``tokenizer.json``. Tensor names are the flax parameter paths joined with
``"."`` (see :mod:`awm_jax.zoo.model`), so export is a flatten and import an unflatten.
Folders are written to a temporary sibling and moved into place with ``os.replace``, so a
reader never sees a half-written checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

from awm_jax.zoo.model import ModelConfig

__all__ = [
    "Checkpoint",
    "to_state_dict",
    "from_state_dict",
    "hf_config",
    "config_from_hf",
    "write_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_directory",
    "expected_shapes",
    "CHECKPOINT_FILES",
]

#: Files every zoo checkpoint folder holds.
CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json")

_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def to_state_dict(params: Any) -> dict[str, np.ndarray]:
    """Flattens a parameter tree into Hugging Face tensor names.

    Args:
        params: nested dict as returned by :func:`awm_jax.zoo.model.init_params`.

    Returns:
        ``{"model.layers.0.self_attn.q_proj.weight": array, ...}`` as float32 numpy arrays.
    """
    flat = traverse_util.flatten_dict(params, sep=".")
    return {k: np.asarray(v, dtype=np.float32) for k, v in sorted(flat.items())}


def from_state_dict(state: dict[str, np.ndarray]) -> dict:
    """Inverse of :func:`to_state_dict` (float32 arrays)."""
    nested: dict = {}
    for name, value in state.items():
        # Split on "." but keep "layers.{i}" / "experts.{i}" together, as the modules are named.
        parts = name.split(".")
        keys: list[str] = []
        i = 0
        while i < len(parts):
            if parts[i] in ("layers", "experts") and i + 1 < len(parts) and parts[i + 1].isdigit():
                keys.append(f"{parts[i]}.{parts[i + 1]}")
                i += 2
            else:
                keys.append(parts[i])
                i += 1
        node = nested
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = np.asarray(value, dtype=np.float32)
    return nested


def _text_config(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
    return {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "initializer_range": cfg.init_std,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "tie_word_embeddings": False,
        "dtype": dtype,
        "torch_dtype": dtype,
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
    }


def hf_config(cfg: ModelConfig, dtype: str = "float32", image_token_id: int | None = None) -> dict:
    """The ``config.json`` content for ``cfg``.

    Args:
        cfg: model shapes.
        dtype: stored tensor dtype name (``"float32"`` or ``"bfloat16"``).
        image_token_id: LLaVA only: the id of the ``<image>`` placeholder token.

    Returns:
        A JSON-ready dict with ``architectures``, ``model_type`` and the shape fields.
    """
    text = _text_config(cfg, dtype)
    if cfg.architecture == "llama":
        return {"architectures": ["LlamaForCausalLM"], **text}
    if cfg.architecture == "mixtral":
        text = {k: v for k, v in text.items() if k not in ("mlp_bias", "pretraining_tp")}
        return {
            "architectures": ["MixtralForCausalLM"],
            **text,
            "model_type": "mixtral",
            "num_local_experts": cfg.num_local_experts,
            "num_experts_per_tok": cfg.num_experts_per_tok,
            "output_router_logits": False,
            "router_aux_loss_coef": 0.02,
            "router_jitter_noise": 0.0,
            "sliding_window": None,
        }
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": cfg.vision_feature_size,
        "intermediate_size": 4 * cfg.vision_feature_size,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "image_size": 16,
        "patch_size": 16,
        "num_channels": 1,
        "projection_dim": cfg.vision_feature_size,
    }
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "text_config": {"architectures": ["LlamaForCausalLM"], **text},
        "vision_config": vision,
        "image_token_index": image_token_id,
        "image_token_id": image_token_id,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
        "tie_word_embeddings": False,
        "dtype": dtype,
        "torch_dtype": dtype,
    }


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
    """Reads a zoo ``config.json`` back into a :class:`ModelConfig`."""
    arch = {"llama": "llama", "mixtral": "mixtral", "llava": "llava"}.get(d.get("model_type"))
    if arch is None:
        raise ValueError(f"not a zoo config: model_type {d.get('model_type')!r}")
    text = d["text_config"] if arch == "llava" else d
    kwargs = dict(
        vocab_size=text["vocab_size"],
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_hidden_layers=text["num_hidden_layers"],
        num_attention_heads=text["num_attention_heads"],
        num_key_value_heads=text["num_key_value_heads"],
        head_dim=text["head_dim"],
        architecture=arch,
        rms_norm_eps=text["rms_norm_eps"],
        rope_theta=text["rope_theta"],
        max_position_embeddings=text["max_position_embeddings"],
        init_std=text.get("initializer_range", 0.02),
        bos_token_id=text["bos_token_id"],
        eos_token_id=text["eos_token_id"],
        pad_token_id=text["pad_token_id"],
    )
    if arch == "mixtral":
        kwargs.update(
            num_local_experts=d["num_local_experts"], num_experts_per_tok=d["num_experts_per_tok"]
        )
    if arch == "llava":
        kwargs.update(vision_feature_size=d["vision_config"]["hidden_size"])
    return ModelConfig(**kwargs)


class atomic_directory:
    """Context manager: yields a temporary directory that replaces ``target`` on success.

    On an exception the temporary directory is removed and ``target`` is left as it was.
    An existing ``target`` is replaced (moved aside, then deleted).
    """

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        os.chmod(self.tmp, 0o755)  # mkdtemp creates 0700; checkpoints are meant to be shared
        for f in self.tmp.iterdir():
            if f.is_file():
                os.chmod(f, 0o644)
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_checkpoint(
    folder: str | os.PathLike,
    cfg: ModelConfig,
    params: Any,
    tokenizer: Tokenizer,
    *,
    dtype: str = "float32",
    image_token_id: int | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Writes the checkpoint files into an existing folder (not atomic; see
    :func:`save_checkpoint`).

    Args:
        folder: existing directory.
        cfg: model shapes.
        params: parameter tree or flat state dict.
        tokenizer: the model's tokenizer (saved as ``tokenizer.json``).
        dtype: ``"float32"`` or ``"bfloat16"``.
        image_token_id: LLaVA only, see :func:`hf_config`.
        metadata: extra string metadata for the safetensors header.

    Raises:
        ValueError: unknown dtype, or tensors that do not match ``cfg``.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    state = params if _is_flat(params) else to_state_dict(params)
    _check_shapes(cfg, state)
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32).astype(_DTYPES[dtype]))
               for k, v in state.items()}
    folder = Path(folder)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt", **(metadata or {})})
    (folder / "config.json").write_text(json.dumps(hf_config(cfg, dtype, image_token_id), indent=2) + "\n")
    tokenizer.save(str(folder / "tokenizer.json"))


def save_checkpoint(
    path: str | os.PathLike,
    cfg: ModelConfig,
    params: Any,
    tokenizer: Tokenizer,
    *,
    dtype: str = "float32",
    image_token_id: int | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Writes a Hugging Face checkpoint folder atomically (replacing ``path`` if present).

    Arguments as for :func:`write_checkpoint`.

    Returns:
        The folder path.
    """
    with atomic_directory(path) as tmp:
        write_checkpoint(tmp, cfg, params, tokenizer, dtype=dtype,
                         image_token_id=image_token_id, metadata=metadata)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, np.ndarray], Tokenizer]:
    """Reads a zoo checkpoint folder.

    Returns:
        ``(config, state_dict, tokenizer)`` with float32 tensors.
    """
    path = Path(path)
    missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a zoo checkpoint: missing {missing}; build it with "
            "'python -m awm_jax.zoo build'"
        )
    cfg = config_from_hf(json.loads((path / "config.json").read_text()))
    state = {k: np.asarray(v, dtype=np.float32) for k, v in load_file(str(path / "model.safetensors")).items()}
    return cfg, state, Tokenizer.from_file(str(path / "tokenizer.json"))


def _is_flat(params: Any) -> bool:
    return isinstance(params, dict) and all(isinstance(v, np.ndarray) or hasattr(v, "shape")
                                            for v in params.values())


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of every tensor a checkpoint of ``cfg`` holds."""
    n, m, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    dq = cfg.num_attention_heads * cfg.head_dim
    dk = cfg.num_key_value_heads * cfg.head_dim
    pre = "language_model." if cfg.architecture == "llava" else ""
    shapes: dict[str, tuple[int, ...]] = {
        f"{pre}model.embed_tokens.weight": (v, n),
        f"{pre}model.norm.weight": (n,),
        f"{pre}lm_head.weight": (v, n),
    }
    for i in range(cfg.num_hidden_layers):
        lp = f"{pre}model.layers.{i}."
        shapes.update({
            lp + "input_layernorm.weight": (n,),
            lp + "post_attention_layernorm.weight": (n,),
            lp + "self_attn.q_proj.weight": (dq, n),
            lp + "self_attn.k_proj.weight": (dk, n),
            lp + "self_attn.v_proj.weight": (dk, n),
            lp + "self_attn.o_proj.weight": (n, dq),
        })
        if cfg.architecture == "mixtral":
            shapes[lp + "block_sparse_moe.gate.weight"] = (cfg.num_local_experts, n)
            for e in range(cfg.num_local_experts):
                ep = lp + f"block_sparse_moe.experts.{e}."
                shapes.update({ep + "w1.weight": (m, n), ep + "w3.weight": (m, n),
                               ep + "w2.weight": (n, m)})
        else:
            shapes.update({lp + "mlp.gate_proj.weight": (m, n), lp + "mlp.up_proj.weight": (m, n),
                           lp + "mlp.down_proj.weight": (n, m)})
    if cfg.architecture == "llava":
        f = cfg.vision_feature_size
        shapes.update({
            "multi_modal_projector.linear_1.weight": (n, f),
            "multi_modal_projector.linear_1.bias": (n,),
            "multi_modal_projector.linear_2.weight": (n, n),
            "multi_modal_projector.linear_2.bias": (n,),
        })
    return shapes


def _check_shapes(cfg: ModelConfig, state: dict[str, Any]) -> None:
    want = expected_shapes(cfg)
    got = {k: tuple(np.shape(v)) for k, v in state.items()}
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        wrong = [(k, want[k], got[k]) for k in sorted(set(want) & set(got)) if want[k] != got[k]][:5]
        raise ValueError(
            f"state dict does not match the config: missing {missing}, unexpected {extra}, "
            f"wrong shapes {wrong}"
        )



@dataclasses.dataclass
class Checkpoint:
    """A zoo model in memory: shapes, parameters, tokenizer.

    Attributes:
        cfg: model shapes.
        params: nested parameter tree (numpy or jax arrays, float32).
        tokenizer: the model's tokenizer.
        image_token_id: LLaVA only: id of the ``<image>`` placeholder token.
    """

    cfg: ModelConfig
    params: dict
    tokenizer: Tokenizer
    image_token_id: int | None = None

    def state_dict(self) -> dict[str, np.ndarray]:
        """Hugging Face tensor name -> float32 array."""
        return to_state_dict(self.params)

    def with_state(self, cfg: ModelConfig, state: dict[str, np.ndarray]) -> "Checkpoint":
        """A copy with new shapes and tensors (same tokenizer)."""
        return Checkpoint(cfg, from_state_dict(state), self.tokenizer, self.image_token_id)

    def save(
        self, path: str | os.PathLike, dtype: str = "float32", metadata: dict[str, str] | None = None
    ) -> Path:
        """Writes the checkpoint folder atomically (see :func:`save_checkpoint`)."""
        return save_checkpoint(path, self.cfg, self.params, self.tokenizer, dtype=dtype,
                               image_token_id=self.image_token_id, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Checkpoint":
        """Reads a checkpoint folder written by :meth:`save`."""
        cfg, state, tok = load_checkpoint(path)
        image_token_id = None
        if cfg.architecture == "llava":
            image_token_id = json.loads((Path(path) / "config.json").read_text())["image_token_id"]
        return cls(cfg, from_state_dict(state), tok, image_token_id)
