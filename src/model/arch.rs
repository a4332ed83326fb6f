//! What is model-specific: tensor names, expected shapes, which tensors form the attention pair and
//! the MLP pair of a layer, and the unit ↔ column maps (FASP-SPEC §2). The pipeline never asks
//! "is this OPT?"; it asks this module.

use super::config::{Family, ModelConfig};

/// The role of a tensor inside a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    MlpNormW,
    MlpNormB,
    /// fc1 (OPT) or up_proj (LLaMA).
    UpW,
    UpB,
    /// gate_proj (LLaMA only).
    GateW,
    GateB,
    /// fc2 (OPT) or down_proj (LLaMA).
    DownW,
    DownB,
}

/// Names of the non-layer tensors and the layer prefix, per family.
#[derive(Clone, Debug)]
pub struct Names {
    pub family: Family,
    /// `model.decoder.` / `decoder.` (OPT) or `model.` (LLaMA).
    pub prefix: String,
}

impl Names {
    pub fn new(family: Family, prefix: &str) -> Self {
        Names { family, prefix: prefix.to_string() }
    }
    /// Candidate prefixes, most usual first; the loader picks the one whose embedding exists.
    pub fn candidates(family: Family) -> &'static [&'static str] {
        match family {
            Family::Opt => &["model.decoder.", "decoder."],
            Family::Llama => &["model.", ""],
        }
    }
    pub fn embed(&self) -> String {
        format!("{}embed_tokens.weight", self.prefix)
    }
    pub fn positions(&self) -> Option<String> {
        (self.family == Family::Opt).then(|| format!("{}embed_positions.weight", self.prefix))
    }
    pub fn final_norm_w(&self) -> String {
        match self.family {
            Family::Opt => format!("{}final_layer_norm.weight", self.prefix),
            Family::Llama => format!("{}norm.weight", self.prefix),
        }
    }
    pub fn final_norm_b(&self) -> Option<String> {
        (self.family == Family::Opt).then(|| format!("{}final_layer_norm.bias", self.prefix))
    }
    pub fn lm_head(&self) -> &'static str {
        "lm_head.weight"
    }
    pub fn layer(&self, l: usize, role: Role) -> String {
        let p = format!("{}layers.{l}.", self.prefix);
        let s = match (self.family, role) {
            (Family::Opt, Role::AttnNormW) => "self_attn_layer_norm.weight",
            (Family::Opt, Role::AttnNormB) => "self_attn_layer_norm.bias",
            (Family::Opt, Role::OW) => "self_attn.out_proj.weight",
            (Family::Opt, Role::OB) => "self_attn.out_proj.bias",
            (Family::Opt, Role::MlpNormW) => "final_layer_norm.weight",
            (Family::Opt, Role::MlpNormB) => "final_layer_norm.bias",
            (Family::Opt, Role::UpW) => "fc1.weight",
            (Family::Opt, Role::UpB) => "fc1.bias",
            (Family::Opt, Role::DownW) => "fc2.weight",
            (Family::Opt, Role::DownB) => "fc2.bias",
            (Family::Opt, Role::GateW | Role::GateB) => unreachable!("OPT has no gate projection"),
            (Family::Llama, Role::AttnNormW) => "input_layernorm.weight",
            (Family::Llama, Role::AttnNormB) => "input_layernorm.bias",
            (Family::Llama, Role::OW) => "self_attn.o_proj.weight",
            (Family::Llama, Role::OB) => "self_attn.o_proj.bias",
            (Family::Llama, Role::MlpNormW) => "post_attention_layernorm.weight",
            (Family::Llama, Role::MlpNormB) => "post_attention_layernorm.bias",
            (Family::Llama, Role::UpW) => "mlp.up_proj.weight",
            (Family::Llama, Role::UpB) => "mlp.up_proj.bias",
            (Family::Llama, Role::GateW) => "mlp.gate_proj.weight",
            (Family::Llama, Role::GateB) => "mlp.gate_proj.bias",
            (Family::Llama, Role::DownW) => "mlp.down_proj.weight",
            (Family::Llama, Role::DownB) => "mlp.down_proj.bias",
            (_, Role::QW) => "self_attn.q_proj.weight",
            (_, Role::QB) => "self_attn.q_proj.bias",
            (_, Role::KW) => "self_attn.k_proj.weight",
            (_, Role::KB) => "self_attn.k_proj.bias",
            (_, Role::VW) => "self_attn.v_proj.weight",
            (_, Role::VB) => "self_attn.v_proj.bias",
        };
        p + s
    }
}

/// The tensors a layer must have, with the shapes the config implies.
/// `ffn` and `v_units` are the layer's current widths (they shrink after pruning).
pub fn layer_layout(cfg: &ModelConfig, l: usize) -> Vec<(Role, Vec<usize>)> {
    let d = cfg.hidden;
    let nv = cfg.v_units(l).len();
    let nctx = nv * cfg.group();
    let (nq, nk) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    let mut t = vec![(Role::AttnNormW, vec![d])];
    if cfg.family == Family::Opt {
        t.push((Role::AttnNormB, vec![d]));
    }
    t.extend([(Role::QW, vec![nq, d]), (Role::KW, vec![nk, d]), (Role::VW, vec![nv, d]), (Role::OW, vec![d, nctx])]);
    if cfg.attn_bias {
        t.extend([(Role::QB, vec![nq]), (Role::KB, vec![nk]), (Role::VB, vec![nv]), (Role::OB, vec![d])]);
    }
    t.push((Role::MlpNormW, vec![d]));
    if cfg.family == Family::Opt {
        t.push((Role::MlpNormB, vec![d]));
    }
    t.push((Role::UpW, vec![cfg.ffn, d]));
    if cfg.family == Family::Llama {
        t.push((Role::GateW, vec![cfg.ffn, d]));
    }
    t.push((Role::DownW, vec![d, cfg.ffn]));
    if cfg.mlp_bias {
        t.push((Role::UpB, vec![cfg.ffn]));
        if cfg.family == Family::Llama {
            t.push((Role::GateB, vec![cfg.ffn]));
        }
        t.push((Role::DownB, vec![d]));
    }
    t
}

/// Attention pair: the o_proj columns fed by V row (unit) `c = g*hd + d` are
/// `{h*hd + d : h in g*G .. g*G+G}` (FASP-SPEC §2). For plain MHA that is just `{c}`.
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
}
