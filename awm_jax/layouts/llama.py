"""Llama-like decoders: separate ``q_proj``/``k_proj`` under ``model.layers.{i}.self_attn``.

Every family here stores its query and key projections as their own ``Linear`` weights
(grouped- and multi-query attention just give ``k_proj`` fewer rows) and its input embedding
as ``model.embed_tokens``; they differ in their MLP (gated, fused gate/up, plain, mixture of
experts) and in normalisations that are not scored (Qwen3/Gemma-3/OLMo-2 query/key norms are
applied after the projection and are not part of ``Wq``/``Wk``, as in the reference method).

Pre-norm gains (folded in the canonical mode, ``awm_jax.layouts._norms``): ``input_layernorm``
in front of the attention and ``post_attention_layernorm`` in front of the MLP, except Gemma 2/3
(``pre_feedforward_layernorm``; their ``post_attention_layernorm`` normalises the attention's
output), the parallel blocks of Phi-1/2 and Cohere (one ``input_layernorm`` read by both),
StableLM with ``use_parallel_residual`` (no ``post_attention_layernorm``: the MLP reads
``input_layernorm``), Gemma's stored ``gain - 1`` (offset 1), and OLMo (parameter-free
LayerNorm) and OLMo-2 (norms after the attention and MLP, none in front): nothing to fold.
"""

from __future__ import annotations

from awm_jax.layouts._base import Layout
from awm_jax.layouts._mlp import Experts, FusedGatedMLP, GatedMLP, PlainMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import Separate

__all__ = [
    "LLAMA", "MISTRAL", "MIXTRAL", "QWEN2", "QWEN2_MOE", "QWEN3", "QWEN3_MOE", "GEMMA", "GEMMA2", "GEMMA3",
    "PHI", "OLMO", "OLMO2", "OLMOE", "STABLELM", "COHERE", "STARCODER2", "GLM", "LLAMA_LIKE",
]

_Q = Separate("{p}layers.{i}.self_attn.q_proj.weight")
_K = Separate("{p}layers.{i}.self_attn.k_proj.weight")
_EMBED = ("{p}embed_tokens.weight",)
_GATED = GatedMLP("{p}layers.{i}.mlp.gate_proj.weight", "{p}layers.{i}.mlp.up_proj.weight")
_INPUT_NORM = "{p}layers.{i}.input_layernorm.weight"
_POST_ATTN_NORM = "{p}layers.{i}.post_attention_layernorm.weight"
#: Pre-norm: ``input_layernorm`` before the attention, ``post_attention_layernorm`` before the MLP.
_PRE_NORMS = NormGains((_INPUT_NORM,), (_POST_ATTN_NORM,))
#: Parallel attention and MLP reading one ``input_layernorm`` (Phi-1/2, Cohere).
_PARALLEL_NORMS = NormGains((_INPUT_NORM,), (_INPUT_NORM,))
#: Gemma 2/3: ``pre_feedforward_layernorm`` before the MLP; Gemma stores ``gain - 1``.
_GEMMA_NORMS = NormGains((_INPUT_NORM,), (_POST_ATTN_NORM,), offset=1.0)
_GEMMA2_NORMS = NormGains((_INPUT_NORM,), ("{p}layers.{i}.pre_feedforward_layernorm.weight",), offset=1.0)


def _moe(expert_root: str, *shared_roots: str) -> Experts:
    """Routed experts ``{root}.{e}.gate_proj/up_proj`` plus shared experts."""
    shared = tuple(GatedMLP(f"{r}.gate_proj.weight", f"{r}.up_proj.weight", name="shared expert") for r in shared_roots)
    return Experts(GatedMLP(f"{expert_root}.{{e}}.gate_proj.weight", f"{expert_root}.{{e}}.up_proj.weight"), shared)


def _decoder(name: str, architectures: tuple[str, ...], model_types: tuple[str, ...], mlp=(_GATED,),
             norms: NormGains | None = _PRE_NORMS) -> Layout:
    return Layout(name=name, architectures=architectures, model_types=model_types, embedding=_EMBED,
                  query=_Q, key=_K, mlp=tuple(mlp), norms=norms)


LLAMA = _decoder("llama", ("LlamaForCausalLM", "LlamaModel"), ("llama",))
MISTRAL = _decoder("mistral", ("MistralForCausalLM", "MistralModel"), ("mistral", "ministral"))
MIXTRAL = _decoder(
    "mixtral", ("MixtralForCausalLM",), ("mixtral",),
    mlp=(Experts(GatedMLP("{p}layers.{i}.block_sparse_moe.experts.{e}.w1.weight",
                          "{p}layers.{i}.block_sparse_moe.experts.{e}.w3.weight")),),
)
QWEN2 = _decoder(
    "qwen2",
    ("Qwen2ForCausalLM", "Qwen2Model", "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
     "Qwen2AudioForConditionalGeneration"),
    ("qwen2", "qwen2_vl", "qwen2_5_vl", "qwen2_vl_text", "qwen2_5_vl_text", "qwen2_audio"),
)
QWEN2_MOE = _decoder(
    "qwen2_moe", ("Qwen2MoeForCausalLM",), ("qwen2_moe",),
    mlp=(_moe("{p}layers.{i}.mlp.experts", "{p}layers.{i}.mlp.shared_expert"), _GATED),
)
QWEN3 = _decoder("qwen3", ("Qwen3ForCausalLM", "Qwen3Model"), ("qwen3",))
QWEN3_MOE = _decoder("qwen3_moe", ("Qwen3MoeForCausalLM",), ("qwen3_moe",),
                     mlp=(_moe("{p}layers.{i}.mlp.experts"), _GATED))
GEMMA = _decoder("gemma", ("GemmaForCausalLM",), ("gemma",), norms=_GEMMA_NORMS)
GEMMA2 = _decoder("gemma2", ("Gemma2ForCausalLM",), ("gemma2",), norms=_GEMMA2_NORMS)
GEMMA3 = _decoder("gemma3", ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"), ("gemma3", "gemma3_text"),
                  norms=_GEMMA2_NORMS)
PHI = _decoder("phi", ("PhiForCausalLM",), ("phi",), mlp=(PlainMLP("{p}layers.{i}.mlp.fc1.weight"),),
               norms=_PARALLEL_NORMS)
OLMO = _decoder("olmo", ("OlmoForCausalLM",), ("olmo",), norms=None)
OLMO2 = _decoder("olmo2", ("Olmo2ForCausalLM",), ("olmo2",), norms=None)
OLMOE = _decoder("olmoe", ("OlmoeForCausalLM",), ("olmoe",), mlp=(_moe("{p}layers.{i}.mlp.experts"),))
STABLELM = _decoder("stablelm", ("StableLmForCausalLM",), ("stablelm",),
                    norms=NormGains((_INPUT_NORM,), (_POST_ATTN_NORM, _INPUT_NORM)))
COHERE = _decoder("cohere", ("CohereForCausalLM", "Cohere2ForCausalLM"), ("cohere", "cohere2"), norms=_PARALLEL_NORMS)
STARCODER2 = _decoder("starcoder2", ("Starcoder2ForCausalLM",), ("starcoder2",),
                      mlp=(PlainMLP("{p}layers.{i}.mlp.c_fc.weight"),))
GLM = _decoder("glm", ("GlmForCausalLM", "Glm4ForCausalLM"), ("glm", "glm4"),
               mlp=(FusedGatedMLP("{p}layers.{i}.mlp.gate_up_proj.weight"),))

#: All layouts of this module, in registry order.
LLAMA_LIKE = (LLAMA, MISTRAL, MIXTRAL, QWEN2, QWEN2_MOE, QWEN3, QWEN3_MOE, GEMMA, GEMMA2, GEMMA3, PHI, OLMO, OLMO2,
              OLMOE, STABLELM, COHERE, STARCODER2, GLM)
