//! Architectures as data. Each supported family is one [`Arch`] value in [`ARCHS`]: its tensor
//! names (HF and GGUF), its norm kind and placement, positions, activation, biases, q/k norms,
//! embedding scale, head tying and how its config spells these. Everything else (the CPU forward,
//! the CUDA forward, the writer, the GGUF reader) reads this description instead of asking
//! "which family is this?".
//!
//! This module also holds the FASP pair geometry (docs/spec.md §2): which tensors form the attention
//! pair and the MLP pair of a layer, and the unit ↔ column maps under GQA.
//!
//! Adding a family: one more [`Family`] variant, one more [`Arch`] entry in [`ARCHS`], and, if its
//! config spells something in a new way, the matching rule in `config.rs`; then fixtures and tests.

use super::config::ModelConfig;

/// The supported families (`model_type` in config.json). The description of each is [`Family::arch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Opt,
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Family {
    pub const ALL: [Family; 6] = [Family::Opt, Family::Llama, Family::Mistral, Family::Qwen2, Family::Qwen3, Family::Gemma3];

    /// The description of this family.
    pub fn arch(self) -> &'static Arch {
        ARCHS.iter().find(|a| a.family == self).expect("every family has a description")
    }
    /// The family name (the HF `model_type`).
    pub fn name(self) -> &'static str {
        self.arch().model_type
    }
    /// The family of an HF `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        ARCHS.iter().find(|a| a.model_type == model_type || a.aliases.contains(&model_type)).map(|a| a.family)
    }
    /// The family of a GGUF `general.architecture`.
    pub fn from_gguf_arch(arch: &str) -> Option<Family> {
        ARCHS.iter().find(|a| a.gguf_arch == arch).map(|a| a.family)
    }
    /// The names of every supported `model_type`, for error messages and the README.
    pub fn supported() -> String {
        ARCHS.iter().map(|a| a.model_type).collect::<Vec<_>>().join(", ")
    }
}

/// How a norm normalises and scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `(x − μ)/sqrt(var + eps)·w + b` (OPT).
    LayerNorm,
    /// `w · x/sqrt(mean(x²) + eps)` (LLaMA and most others).
    RmsNorm,
    /// `(1 + w) · x/sqrt(mean(x²) + eps)` (Gemma): the stored weight is an offset from 1.
    RmsNormPlusOne,
}

/// The MLP's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `fc2(relu(fc1 x))`: no gate.
    Relu,
    /// `down(silu(gate x) · up x)`.
    SiluGlu,
    /// `down(gelu_tanh(gate x) · up x)` (`gelu_pytorch_tanh`).
    GeluTanhGlu,
}

impl Activation {
    pub fn gated(self) -> bool {
        self != Activation::Relu
    }
    /// The HF config value(s) that name this activation.
    pub fn hf_names(self) -> &'static [&'static str] {
        match self {
            Activation::Relu => &["relu"],
            Activation::SiluGlu => &["silu", "swish"],
            Activation::GeluTanhGlu => &["gelu_pytorch_tanh", "gelu_tanh"],
        }
    }
}

/// How positions enter the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// A learned table added to the embeddings, row `t + offset` for position `t` (OPT: 2).
    Learned { offset: usize },
    /// Rotary embedding of Q and K in HF's `rotate_half` layout (bases and scaling from the config).
    Rotary,
}

/// Which attention biases a family has, and the config switch that turns them on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnBiases {
    /// q/k/v/o biases all follow one boolean config key (with its default).
    Switch { key: &'static str, default: bool },
    /// Fixed by the architecture, no config key (Qwen2: q/k/v yes, o no).
    Fixed { q: bool, k: bool, v: bool, o: bool },
}

/// Which layers use sliding-window attention when the config has no `layer_types` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlidingRule {
    /// Never (no sliding window in this family).
    Never,
    /// Every layer when `sliding_window` is set (Mistral).
    AllWhenSet,
    /// Layers `i >= max_window_layers` when `use_sliding_window` is true (Qwen2/Qwen3).
    QwenMaxWindow,
    /// Layer `i` is sliding unless `(i + 1) % sliding_window_pattern == 0` (Gemma-3; pattern 6 by default).
    GemmaPattern,
}

/// The role of a tensor inside a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    AttnNormW,
    AttnNormB,
    QW,
    QB,
    KW,
    KB,
    VW,
    VB,
    OW,
    OB,
    /// Per-head norm of Q (Qwen3, Gemma-3), `[head_dim]`.
    QNormW,
    /// Per-head norm of K, `[head_dim]`.
    KNormW,
    /// Norm of the attention output before the residual add (Gemma-3).
    PostAttnNormW,
    /// The MLP's input norm.
    MlpNormW,
    MlpNormB,
    /// fc1 (OPT) or up_proj.
    UpW,
    UpB,
    /// gate_proj (gated MLPs only).
    GateW,
    GateB,
    /// fc2 (OPT) or down_proj.
    DownW,
    DownB,
    /// Norm of the MLP output before the residual add (Gemma-3).
    PostMlpNormW,
}

/// One layer tensor: its role, its HF name after `layers.{l}.`, and its GGUF name after `blk.{l}.`.
pub type LayerTensor = (Role, &'static str, &'static str);

/// The description of one family. Public and documented: the GGUF reader maps GGUF files to it.
#[derive(Debug)]
pub struct Arch {
    pub family: Family,
    /// HF `model_type`.
    pub model_type: &'static str,
    /// Other `model_type` values read as this family.
    pub aliases: &'static [&'static str],
    /// GGUF `general.architecture`.
    pub gguf_arch: &'static str,
    /// transformers' causal-LM class of this family (named in the code an output ships for
    /// biases the class has no slot for, see `output.rs`).
    pub hf_class: &'static str,
    /// HF prefixes of the model tensors, most usual first (the loader picks the one whose embedding exists).
    pub prefixes: &'static [&'static str],
    /// HF names after the prefix: embedding, learned positions, final norm weight and bias.
    pub embed: &'static str,
    pub positions_tensor: Option<&'static str>,
    pub final_norm: &'static str,
    pub final_norm_bias: Option<&'static str>,
    /// Every layer tensor the family can have (which are present depends on the config).
    pub layer_tensors: &'static [LayerTensor],
    pub norm: NormKind,
    /// Norms after attention and after the MLP, before each residual add (Gemma-3).
    pub post_norms: bool,
    /// Per-head RMS norms of Q and K after the projection, before rotary.
    pub qk_norm: bool,
    pub positions: Positions,
    pub activation: Activation,
    /// The config key naming the activation.
    pub activation_key: &'static str,
    /// Embeddings are multiplied by `sqrt(hidden_size)` (in the weights' dtype, as transformers does).
    pub embed_scale: bool,
    pub attn_biases: AttnBiases,
    /// Config key switching gate/up/down (or fc1/fc2) biases; `None`: this family has none.
    pub mlp_bias_key: Option<&'static str>,
    /// Config key of the MLP width.
    pub ffn_key: &'static str,
    /// `tie_word_embeddings` when the config does not say.
    pub tie_default: bool,
    /// `head_dim` when the config does not say (`None`: `hidden_size / num_attention_heads`).
    pub head_dim_default: Option<usize>,
    /// The norm epsilon's config key and default (`None`: fixed at the default).
    pub eps_key: Option<&'static str>,
    pub eps_default: f32,
    pub sliding: SlidingRule,
    /// Sliding layers use their own rope base `rope_local_base_freq` without scaling (Gemma-3).
    pub local_rope_base: bool,
    /// The attention scale is `query_pre_attn_scalar^-0.5` instead of `head_dim^-0.5` (Gemma-3).
    pub query_pre_attn_scalar: bool,
    /// The config may set `final_logit_softcapping` (Gemma-3).
    pub final_softcap: bool,
    /// GGUF stores Q and K rows permuted for llama.cpp's rotary layout (llama only).
    pub gguf_qk_permuted: bool,
    /// GGUF stores `(1 + w)` norm weights (llama.cpp's Gemma converters add the 1).
    pub gguf_norm_plus_one_stored: bool,
}

const LLAMA_LAYER: &[LayerTensor] = &[
    (Role::AttnNormW, "input_layernorm.weight", "attn_norm.weight"),
    (Role::QW, "self_attn.q_proj.weight", "attn_q.weight"),
    (Role::QB, "self_attn.q_proj.bias", "attn_q.bias"),
    (Role::KW, "self_attn.k_proj.weight", "attn_k.weight"),
    (Role::KB, "self_attn.k_proj.bias", "attn_k.bias"),
    (Role::VW, "self_attn.v_proj.weight", "attn_v.weight"),
    (Role::VB, "self_attn.v_proj.bias", "attn_v.bias"),
    (Role::OW, "self_attn.o_proj.weight", "attn_output.weight"),
    (Role::OB, "self_attn.o_proj.bias", "attn_output.bias"),
    (Role::QNormW, "self_attn.q_norm.weight", "attn_q_norm.weight"),
    (Role::KNormW, "self_attn.k_norm.weight", "attn_k_norm.weight"),
    (Role::MlpNormW, "post_attention_layernorm.weight", "ffn_norm.weight"),
    (Role::UpW, "mlp.up_proj.weight", "ffn_up.weight"),
    (Role::UpB, "mlp.up_proj.bias", "ffn_up.bias"),
    (Role::GateW, "mlp.gate_proj.weight", "ffn_gate.weight"),
    (Role::GateB, "mlp.gate_proj.bias", "ffn_gate.bias"),
    (Role::DownW, "mlp.down_proj.weight", "ffn_down.weight"),
    (Role::DownB, "mlp.down_proj.bias", "ffn_down.bias"),
];

const GEMMA3_LAYER: &[LayerTensor] = &[
    (Role::AttnNormW, "input_layernorm.weight", "attn_norm.weight"),
    (Role::QW, "self_attn.q_proj.weight", "attn_q.weight"),
    (Role::QB, "self_attn.q_proj.bias", "attn_q.bias"),
    (Role::KW, "self_attn.k_proj.weight", "attn_k.weight"),
    (Role::KB, "self_attn.k_proj.bias", "attn_k.bias"),
    (Role::VW, "self_attn.v_proj.weight", "attn_v.weight"),
    (Role::VB, "self_attn.v_proj.bias", "attn_v.bias"),
    (Role::OW, "self_attn.o_proj.weight", "attn_output.weight"),
    (Role::OB, "self_attn.o_proj.bias", "attn_output.bias"),
    (Role::QNormW, "self_attn.q_norm.weight", "attn_q_norm.weight"),
    (Role::KNormW, "self_attn.k_norm.weight", "attn_k_norm.weight"),
    (Role::PostAttnNormW, "post_attention_layernorm.weight", "post_attention_norm.weight"),
    (Role::MlpNormW, "pre_feedforward_layernorm.weight", "ffn_norm.weight"),
    (Role::UpW, "mlp.up_proj.weight", "ffn_up.weight"),
    (Role::UpB, "mlp.up_proj.bias", "ffn_up.bias"),
    (Role::GateW, "mlp.gate_proj.weight", "ffn_gate.weight"),
    (Role::GateB, "mlp.gate_proj.bias", "ffn_gate.bias"),
    (Role::DownW, "mlp.down_proj.weight", "ffn_down.weight"),
    (Role::DownB, "mlp.down_proj.bias", "ffn_down.bias"),
    (Role::PostMlpNormW, "post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
];

const OPT_LAYER: &[LayerTensor] = &[
    (Role::AttnNormW, "self_attn_layer_norm.weight", "attn_norm.weight"),
    (Role::AttnNormB, "self_attn_layer_norm.bias", "attn_norm.bias"),
    (Role::QW, "self_attn.q_proj.weight", "attn_q.weight"),
    (Role::QB, "self_attn.q_proj.bias", "attn_q.bias"),
    (Role::KW, "self_attn.k_proj.weight", "attn_k.weight"),
    (Role::KB, "self_attn.k_proj.bias", "attn_k.bias"),
    (Role::VW, "self_attn.v_proj.weight", "attn_v.weight"),
    (Role::VB, "self_attn.v_proj.bias", "attn_v.bias"),
    (Role::OW, "self_attn.out_proj.weight", "attn_output.weight"),
    (Role::OB, "self_attn.out_proj.bias", "attn_output.bias"),
    (Role::MlpNormW, "final_layer_norm.weight", "ffn_norm.weight"),
    (Role::MlpNormB, "final_layer_norm.bias", "ffn_norm.bias"),
    (Role::UpW, "fc1.weight", "ffn_up.weight"),
    (Role::UpB, "fc1.bias", "ffn_up.bias"),
    (Role::DownW, "fc2.weight", "ffn_down.weight"),
    (Role::DownB, "fc2.bias", "ffn_down.bias"),
];

/// A llama-shaped description; the entries below change only what differs.
const LLAMA: Arch = Arch {
    family: Family::Llama,
    model_type: "llama",
    aliases: &[],
    gguf_arch: "llama",
    hf_class: "LlamaForCausalLM",
    prefixes: &["model.", ""],
    embed: "embed_tokens.weight",
    positions_tensor: None,
    final_norm: "norm.weight",
    final_norm_bias: None,
    layer_tensors: LLAMA_LAYER,
    norm: NormKind::RmsNorm,
    post_norms: false,
    qk_norm: false,
    positions: Positions::Rotary,
    activation: Activation::SiluGlu,
    activation_key: "hidden_act",
    embed_scale: false,
    attn_biases: AttnBiases::Switch { key: "attention_bias", default: false },
    mlp_bias_key: Some("mlp_bias"),
    ffn_key: "intermediate_size",
    tie_default: false,
    head_dim_default: None,
    eps_key: Some("rms_norm_eps"),
    eps_default: 1e-6,
    sliding: SlidingRule::Never,
    local_rope_base: false,
    query_pre_attn_scalar: false,
    final_softcap: false,
    gguf_qk_permuted: true,
    gguf_norm_plus_one_stored: false,
};

/// Every supported family.
pub static ARCHS: [Arch; 6] = [
    Arch {
        family: Family::Opt,
        model_type: "opt",
        aliases: &[],
        gguf_arch: "opt",
        hf_class: "OPTForCausalLM",
        prefixes: &["model.decoder.", "decoder."],
        embed: "embed_tokens.weight",
        positions_tensor: Some("embed_positions.weight"),
        final_norm: "final_layer_norm.weight",
        final_norm_bias: Some("final_layer_norm.bias"),
        layer_tensors: OPT_LAYER,
        norm: NormKind::LayerNorm,
        positions: Positions::Learned { offset: 2 },
        activation: Activation::Relu,
        activation_key: "activation_function",
        attn_biases: AttnBiases::Switch { key: "enable_bias", default: true },
        mlp_bias_key: Some("enable_bias"),
        ffn_key: "ffn_dim",
        tie_default: true,
        eps_key: None,
        eps_default: 1e-5,
        gguf_qk_permuted: false,
        ..LLAMA
    },
    LLAMA,
    Arch {
        family: Family::Mistral,
        model_type: "mistral",
        gguf_arch: "mistral",
        hf_class: "MistralForCausalLM",
        attn_biases: AttnBiases::Fixed { q: false, k: false, v: false, o: false },
        mlp_bias_key: None,
        sliding: SlidingRule::AllWhenSet,
        ..LLAMA
    },
    Arch {
        family: Family::Qwen2,
        model_type: "qwen2",
        gguf_arch: "qwen2",
        hf_class: "Qwen2ForCausalLM",
        attn_biases: AttnBiases::Fixed { q: true, k: true, v: true, o: false },
        mlp_bias_key: None,
        sliding: SlidingRule::QwenMaxWindow,
        gguf_qk_permuted: false,
        ..LLAMA
    },
    Arch {
        family: Family::Qwen3,
        model_type: "qwen3",
        gguf_arch: "qwen3",
        hf_class: "Qwen3ForCausalLM",
        qk_norm: true,
        mlp_bias_key: None,
        head_dim_default: Some(128),
        sliding: SlidingRule::QwenMaxWindow,
        gguf_qk_permuted: false,
        ..LLAMA
    },
    Arch {
        family: Family::Gemma3,
        model_type: "gemma3_text",
        gguf_arch: "gemma3",
        hf_class: "Gemma3ForCausalLM",
        layer_tensors: GEMMA3_LAYER,
        norm: NormKind::RmsNormPlusOne,
        post_norms: true,
        qk_norm: true,
        activation: Activation::GeluTanhGlu,
        activation_key: "hidden_activation",
        embed_scale: true,
        mlp_bias_key: None,
        tie_default: true,
        head_dim_default: Some(256),
        sliding: SlidingRule::GemmaPattern,
        local_rope_base: true,
        query_pre_attn_scalar: true,
        final_softcap: true,
        gguf_qk_permuted: false,
        gguf_norm_plus_one_stored: true,
        ..LLAMA
    },
];

impl Arch {
    /// The HF name of a layer tensor after `layers.{l}.`, if this family has the role.
    pub fn hf_suffix(&self, role: Role) -> Option<&'static str> {
        self.layer_tensors.iter().find(|t| t.0 == role).map(|t| t.1)
    }
    /// The GGUF name of a layer tensor after `blk.{l}.`, if this family has the role.
    pub fn gguf_suffix(&self, role: Role) -> Option<&'static str> {
        self.layer_tensors.iter().find(|t| t.0 == role).map(|t| t.2)
    }
    /// GGUF name of an HF tensor name of this family (`prefix` as the model resolved it), or None.
    pub fn hf_to_gguf(&self, prefix: &str, hf: &str) -> Option<String> {
        let rest = hf.strip_prefix(prefix).unwrap_or(hf);
        if hf == "lm_head.weight" {
            return Some("output.weight".into());
        }
        if rest == self.embed {
            return Some("token_embd.weight".into());
        }
        if rest == self.final_norm {
            return Some("output_norm.weight".into());
        }
        let (l, suffix) = rest.strip_prefix("layers.")?.split_once('.')?;
        let t = self.layer_tensors.iter().find(|t| t.1 == suffix)?;
        Some(format!("blk.{l}.{}", t.2))
    }
    /// HF name (with `prefix`) of a GGUF tensor name of this family, or None.
    pub fn gguf_to_hf(&self, prefix: &str, gguf: &str) -> Option<String> {
        match gguf {
            "token_embd.weight" => return Some(format!("{prefix}{}", self.embed)),
            "output_norm.weight" => return Some(format!("{prefix}{}", self.final_norm)),
            "output.weight" => return Some("lm_head.weight".into()),
            _ => {}
        }
        let (l, suffix) = gguf.strip_prefix("blk.")?.split_once('.')?;
        let l: usize = l.parse().ok()?;
        let t = self.layer_tensors.iter().find(|t| t.2 == suffix)?;
        Some(format!("{prefix}layers.{l}.{}", t.1))
    }
    /// Whether the MLP has a gate projection.
    pub fn gated(&self) -> bool {
        self.activation.gated()
    }
}

/// Names of the model's tensors: the family's description with the prefix the checkpoint uses.
#[derive(Clone, Debug)]
pub struct Names {
    pub arch: &'static Arch,
    /// `model.decoder.` / `decoder.` (OPT) or `model.` (the others).
    pub prefix: String,
}

impl Names {
    pub fn new(family: Family, prefix: &str) -> Self {
        Names { arch: family.arch(), prefix: prefix.to_string() }
    }
    /// Candidate prefixes, most usual first; the loader picks the one whose embedding exists.
    pub fn candidates(family: Family) -> &'static [&'static str] {
        family.arch().prefixes
    }
    pub fn embed(&self) -> String {
        format!("{}{}", self.prefix, self.arch.embed)
    }
    pub fn positions(&self) -> Option<String> {
        self.arch.positions_tensor.map(|p| format!("{}{p}", self.prefix))
    }
    pub fn final_norm_w(&self) -> String {
        format!("{}{}", self.prefix, self.arch.final_norm)
    }
    pub fn final_norm_b(&self) -> Option<String> {
        self.arch.final_norm_bias.map(|b| format!("{}{b}", self.prefix))
    }
    pub fn lm_head(&self) -> &'static str {
        "lm_head.weight"
    }
    /// The HF name of a layer tensor. Panics if the family has no such role (a programming error:
    /// roles come from [`layer_layout`], which lists only the family's own).
    pub fn layer(&self, l: usize, role: Role) -> String {
        let s = self.arch.hf_suffix(role).unwrap_or_else(|| panic!("{} has no {role:?} tensor", self.arch.model_type));
        format!("{}layers.{l}.{s}", self.prefix)
    }
}

/// The tensors a layer must have, with the shapes the config implies.
/// `ffn` and `v_units` are the layer's current widths (they shrink after pruning).
pub fn layer_layout(cfg: &ModelConfig, l: usize) -> Vec<(Role, Vec<usize>)> {
    let a = cfg.arch();
    let d = cfg.hidden;
    let nv = cfg.v_units(l).len();
    let nctx = nv * cfg.group();
    let (nq, nk, hd) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.head_dim);
    let b = &cfg.bias;
    let layer_norm = a.norm == NormKind::LayerNorm;
    let mut t = vec![(Role::AttnNormW, vec![d])];
    if layer_norm {
        t.push((Role::AttnNormB, vec![d]));
    }
    t.extend([(Role::QW, vec![nq, d]), (Role::KW, vec![nk, d]), (Role::VW, vec![nv, d]), (Role::OW, vec![d, nctx])]);
    for (on, role, n) in [(b.q, Role::QB, nq), (b.k, Role::KB, nk), (b.v, Role::VB, nv), (b.o, Role::OB, d)] {
        if on {
            t.push((role, vec![n]));
        }
    }
    if a.qk_norm {
        t.extend([(Role::QNormW, vec![hd]), (Role::KNormW, vec![hd])]);
    }
    if a.post_norms {
        t.push((Role::PostAttnNormW, vec![d]));
    }
    t.push((Role::MlpNormW, vec![d]));
    if layer_norm {
        t.push((Role::MlpNormB, vec![d]));
    }
    t.push((Role::UpW, vec![cfg.ffn, d]));
    if a.gated() {
        t.push((Role::GateW, vec![cfg.ffn, d]));
    }
    t.push((Role::DownW, vec![d, cfg.ffn]));
    if cfg.mlp_bias {
        t.push((Role::UpB, vec![cfg.ffn]));
        if a.gated() {
            t.push((Role::GateB, vec![cfg.ffn]));
        }
    }
    if cfg.mlp_bias || b.down {
        t.push((Role::DownB, vec![d]));
    }
    if a.post_norms {
        t.push((Role::PostMlpNormW, vec![d]));
    }
    t
}

/// Attention pair: the o_proj columns fed by V row (unit) `c = g*hd + d` are
/// `{h*hd + d : h in g*G .. g*G+G}` (docs/spec.md §2). For plain MHA that is just `{c}`.
pub fn attn_unit_columns(cfg: &ModelConfig, unit: usize) -> Vec<usize> {
    let (hd, g) = (cfg.head_dim, cfg.group());
    let (kv, d) = (unit / hd, unit % hd);
    (kv * g..kv * g + g).map(|h| h * hd + d).collect()
}

/// The o_proj columns of a set of kept units, in increasing order (the set `S` of §6).
pub fn attn_columns(cfg: &ModelConfig, units: &[usize]) -> Vec<usize> {
    let mut cols: Vec<usize> = units.iter().flat_map(|&u| attn_unit_columns(cfg, u)).collect();
    cols.sort_unstable();
    cols
}

/// Column layout of the attention context for a given set of V units (dense: all units):
/// for each query head h, the units of its KV group in increasing order. Returns, per context
/// column, `(query head, index of the unit within v_units)`.
pub fn ctx_layout(cfg: &ModelConfig, v_units: &[usize]) -> Vec<(usize, usize)> {
    let (hd, g) = (cfg.head_dim, cfg.group());
    let mut out = Vec::with_capacity(v_units.len() * g);
    for h in 0..cfg.heads {
        let kv = h / g;
        for (i, &u) in v_units.iter().enumerate() {
            if u / hd == kv {
                out.push((h, i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gqa_unit_columns_follow_the_spec() {
        let cfg = crate::model::config::tiny_gqa_config();
        // unit c = g*hd + d with G = 2: columns h*hd + d for h in {2g, 2g+1}
        assert_eq!(attn_unit_columns(&cfg, 3), vec![3, 8 + 3]);
        assert_eq!(attn_unit_columns(&cfg, 8 + 5), vec![16 + 5, 24 + 5]);
        assert_eq!(attn_columns(&cfg, &[9, 1]), vec![1, 9, 17, 25]);
        // context layout of the compact form matches the order of attn_columns
        let units = vec![1, 9];
        let lay = ctx_layout(&cfg, &units);
        let cols: Vec<usize> = lay.iter().map(|&(h, i)| h * 8 + units[i] % 8).collect();
        assert_eq!(cols, attn_columns(&cfg, &units));
    }

    #[test]
    fn every_family_has_one_description_and_round_trips_its_names() {
        for f in Family::ALL {
            let a = f.arch();
            assert_eq!(a.family, f);
            assert_eq!(Family::from_model_type(a.model_type), Some(f));
            assert_eq!(Family::from_gguf_arch(a.gguf_arch), Some(f));
            for &(role, hf, _) in a.layer_tensors {
                let name = format!("{}layers.7.{hf}", a.prefixes[0]);
                let g = a.hf_to_gguf(a.prefixes[0], &name).unwrap();
                assert_eq!(a.gguf_to_hf(a.prefixes[0], &g).as_deref(), Some(name.as_str()), "{f:?} {role:?}");
            }
            for n in [format!("{}{}", a.prefixes[0], a.embed), format!("{}{}", a.prefixes[0], a.final_norm), "lm_head.weight".into()] {
                let g = a.hf_to_gguf(a.prefixes[0], &n).unwrap();
                assert_eq!(a.gguf_to_hf(a.prefixes[0], &g), Some(n));
            }
        }
        // Gemma-3's MLP input norm is `pre_feedforward_layernorm`; its `post_attention_layernorm` is a post-norm
        let g = Family::Gemma3.arch();
        assert_eq!(g.hf_suffix(Role::MlpNormW), Some("pre_feedforward_layernorm.weight"));
        assert_eq!(g.hf_suffix(Role::PostAttnNormW), Some("post_attention_layernorm.weight"));
        assert_eq!(Family::Llama.arch().hf_suffix(Role::MlpNormW), Some("post_attention_layernorm.weight"));
    }
}
