//! Thin wrappers of the forward kernels: `norm.cu` (LayerNorm, RMSNorm, `(1+w)` RMSNorm), `rope.cu`
//! (rotary), `attention.cu` (causal and sliding-window softmax, head split/merge), `elementwise.cu`
//! (ReLU, SiLU·mul, GELU-tanh·mul, adds, bias, bf16 conversion, the non-finite check) and `embed.cu`
//! (token gather, OPT positions).
//! Each function launches one kernel with the launch shape of cuda/KERNELS.md on the compute
//! stream, after checking the buffer sizes; nothing here synchronises except `all_finite`.

use super::context::{c_int, cfg, grid_1d, launch, need, Bf16, Gpu};
use super::context::{DevicePtr, DevicePtrMut, LaunchConfig};
use crate::error::Result;

const NULL: u64 = 0;

/// Rows per norm block are one row each; `min(rows, 2^21)` blocks of 256 threads.
fn norm_cfg(rows: usize) -> LaunchConfig {
    cfg((rows.clamp(1, 1 << 21) as u32, 1, 1), (256, 1, 1))
}

/// `fasp_layernorm_f32`: `y = (x − μ)/sqrt(var + eps)·γ + β` per row of `x[rows][d]`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    gamma: Option<&dyn DevicePtrF32>,
    beta: Option<&dyn DevicePtrF32>,
    y: &mut impl DevicePtrMut<f32>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    need(x, rows * d, "layernorm x")?;
    need(y, rows * d, "layernorm y")?;
    if rows == 0 {
        return Ok(());
    }
    let px = x.addr();
    let pg = opt_ptr(gamma, d, "layernorm gamma")?;
    let pb = opt_ptr(beta, d, "layernorm beta")?;
    let py = y.addr_mut();
    let (r, dd) = (c_int(rows, "rows")?, c_int(d, "d")?);
    launch!(gpu, "norm", "fasp_layernorm_f32", norm_cfg(rows), [px, pg, pb, py, r, dd, eps])
}

/// `fasp_rmsnorm_f32`: `y = w · x / sqrt(mean(x²) + eps)` per row.
pub fn rmsnorm(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    weight: Option<&dyn DevicePtrF32>,
    y: &mut impl DevicePtrMut<f32>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    need(x, rows * d, "rmsnorm x")?;
    need(y, rows * d, "rmsnorm y")?;
    if rows == 0 {
        return Ok(());
    }
    let px = x.addr();
    let pw = opt_ptr(weight, d, "rmsnorm weight")?;
    let py = y.addr_mut();
    let (r, dd) = (c_int(rows, "rows")?, c_int(d, "d")?);
    launch!(gpu, "norm", "fasp_rmsnorm_f32", norm_cfg(rows), [px, pw, py, r, dd, eps])
}

/// `fasp_rmsnorm_plus_one_f32`: `y = (x / sqrt(mean(x²) + eps)) · (1 + w)` per row (Gemma's norm).
pub fn rmsnorm_plus_one(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    weight: Option<&dyn DevicePtrF32>,
    y: &mut impl DevicePtrMut<f32>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    need(x, rows * d, "rmsnorm (1+w) x")?;
    need(y, rows * d, "rmsnorm (1+w) y")?;
    if rows == 0 {
        return Ok(());
    }
    let px = x.addr();
    let pw = opt_ptr(weight, d, "rmsnorm (1+w) weight")?;
    let py = y.addr_mut();
    let (r, dd) = (c_int(rows, "rows")?, c_int(d, "d")?);
    launch!(gpu, "norm", "fasp_rmsnorm_plus_one_f32", norm_cfg(rows), [px, pw, py, r, dd, eps])
}

/// `fasp_rmsnorm_f32` (or `fasp_rmsnorm_plus_one_f32` with `plus_one`) in place on `x[rows][d]`
/// (the kernels allow `y = x`): the per-head q/k norms, rows of `head_dim` over the projection output.
pub fn rmsnorm_in_place(
    gpu: &Gpu,
    plus_one: bool,
    weight: &dyn DevicePtrF32,
    x: &mut impl DevicePtrMut<f32>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    need(x, rows * d, "rmsnorm in place x")?;
    if rows == 0 {
        return Ok(());
    }
    let pw = opt_ptr(Some(weight), d, "rmsnorm in place weight")?;
    let px = x.addr_mut();
    let py = px;
    let (r, dd) = (c_int(rows, "rows")?, c_int(d, "d")?);
    if plus_one {
        launch!(gpu, "norm", "fasp_rmsnorm_plus_one_f32", norm_cfg(rows), [px, pw, py, r, dd, eps])
    } else {
        launch!(gpu, "norm", "fasp_rmsnorm_f32", norm_cfg(rows), [px, pw, py, r, dd, eps])
    }
}

/// `fasp_rope_f32`, in place on `x[ntok][ld]`, heads at columns `h*head_dim`; position `t % seqlen`;
/// `inv_freq` (head_dim/2 values) or the kernel's own `1/theta^(2i/hd)`.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    gpu: &Gpu,
    x: &mut impl DevicePtrMut<f32>,
    ntok: usize,
    nheads: usize,
    head_dim: usize,
    ld: usize,
    seqlen: usize,
    theta: f32,
    inv_freq: Option<&dyn DevicePtrF32>,
) -> Result<()> {
    if !head_dim.is_multiple_of(2) || nheads * head_dim > ld {
        return Err(crate::FaspError::Cuda(format!("rope: head_dim {head_dim} must be even and fit ld {ld}")));
    }
    need(x, ntok * ld, "rope x")?;
    let total = ntok * nheads * head_dim / 2;
    if total == 0 {
        return Ok(());
    }
    let pf = opt_ptr(inv_freq, head_dim / 2, "rope inv_freq")?;
    let px = x.addr_mut();
    let pos = NULL;
    let (nt, nh, hd, l, sl) =
        (c_int(ntok, "ntok")?, c_int(nheads, "heads")?, c_int(head_dim, "head_dim")?, c_int(ld, "ld")?, c_int(seqlen.max(1), "seqlen")?);
    launch!(gpu, "rope", "fasp_rope_f32", cfg((grid_1d(total, 256), 1, 1), (256, 1, 1)), [px, nt, nh, hd, l, pos, sl, theta, pf])
}

/// `fasp_attention_softmax_causal_f32`, in place on `s[nmat][L][L]`: row i becomes
/// softmax(scale·s[i][0..=i]) and zeros after.
pub fn softmax_causal(gpu: &Gpu, s: &mut impl DevicePtrMut<f32>, nmat: usize, l: usize, scale: f32) -> Result<()> {
    need(s, nmat * l * l, "softmax scores")?;
    let rows = nmat * l;
    if rows == 0 {
        return Ok(());
    }
    let ps = s.addr_mut();
    let (nm, ll) = (c_int(nmat, "nmat")?, c_int(l, "L")?);
    let grid = rows.min(i32::MAX as usize) as u32;
    launch!(gpu, "attention", "fasp_attention_softmax_causal_f32", cfg((grid, 1, 1), (256, 1, 1)), [ps, nm, ll, scale])
}

/// `fasp_attention_softmax_window_f32`, in place on `s[nmat][L][L]`: row i becomes
/// softmax(scale·s[i][j]) over `i − window < j ≤ i` and zeros elsewhere (a sliding window).
pub fn softmax_window(gpu: &Gpu, s: &mut impl DevicePtrMut<f32>, nmat: usize, l: usize, scale: f32, window: usize) -> Result<()> {
    if window == 0 {
        return Err(crate::FaspError::Cuda("softmax_window: the sliding window must be at least 1".into()));
    }
    need(s, nmat * l * l, "softmax scores")?;
    let rows = nmat * l;
    if rows == 0 {
        return Ok(());
    }
    let ps = s.addr_mut();
    let (nm, ll, w) = (c_int(nmat, "nmat")?, c_int(l, "L")?, c_int(window.min(l), "window")?);
    let grid = rows.min(i32::MAX as usize) as u32;
    launch!(gpu, "attention", "fasp_attention_softmax_window_f32", cfg((grid, 1, 1), (256, 1, 1)), [ps, nm, ll, scale, w])
}

/// `fasp_attention_split_heads_f32`: `src[batch*L][ld_src]` (head h at `col0 + h*hd`) →
/// `dst[batch][heads*group][L][hd]`, dst head h' reading src head h'/group.
#[allow(clippy::too_many_arguments)]
pub fn split_heads(
    gpu: &Gpu,
    src: &impl DevicePtr<f32>,
    dst: &mut impl DevicePtrMut<f32>,
    batch: usize,
    l: usize,
    heads: usize,
    head_dim: usize,
    ld_src: usize,
    col0: usize,
    group: usize,
) -> Result<()> {
    if col0 + heads * head_dim > ld_src {
        return Err(crate::FaspError::Cuda(format!("split_heads: {heads} heads of {head_dim} from column {col0} exceed {ld_src}")));
    }
    need(src, batch * l * ld_src, "split_heads src")?;
    let total = batch * heads * group * l * head_dim;
    need(dst, total, "split_heads dst")?;
    if total == 0 {
        return Ok(());
    }
    let ps = src.addr();
    let pd = dst.addr_mut();
    let (b, ll, h, hd, lds, c0, g) = (
        c_int(batch, "batch")?,
        c_int(l, "L")?,
        c_int(heads, "heads")?,
        c_int(head_dim, "head_dim")?,
        c_int(ld_src, "ld_src")?,
        c_int(col0, "col0")?,
        c_int(group, "group")?,
    );
    launch!(
        gpu,
        "attention",
        "fasp_attention_split_heads_f32",
        cfg((grid_1d(total, 256), 1, 1), (256, 1, 1)),
        [ps, b, ll, h, hd, lds, c0, g, pd]
    )
}

/// `fasp_attention_merge_heads_f32`: `src[batch][heads][L][hd]` → `dst[batch*L][heads*hd]`.
pub fn merge_heads(
    gpu: &Gpu,
    src: &impl DevicePtr<f32>,
    dst: &mut impl DevicePtrMut<f32>,
    batch: usize,
    l: usize,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    let total = batch * heads * l * head_dim;
    need(src, total, "merge_heads src")?;
    need(dst, total, "merge_heads dst")?;
    if total == 0 {
        return Ok(());
    }
    let ps = src.addr();
    let pd = dst.addr_mut();
    let (b, ll, h, hd) = (c_int(batch, "batch")?, c_int(l, "L")?, c_int(heads, "heads")?, c_int(head_dim, "head_dim")?);
    launch!(gpu, "attention", "fasp_attention_merge_heads_f32", cfg((grid_1d(total, 256), 1, 1), (256, 1, 1)), [ps, b, ll, h, hd, pd])
}

fn ew_cfg(n: usize) -> LaunchConfig {
    cfg((grid_1d(n, 256), 1, 1), (256, 1, 1))
}

/// `fasp_relu_f32` in place on the first `n` elements.
pub fn relu(gpu: &Gpu, x: &mut impl DevicePtrMut<f32>, n: usize) -> Result<()> {
    need(x, n, "relu x")?;
    if n == 0 {
        return Ok(());
    }
    let px = x.addr_mut();
    let nn = n as i64;
    launch!(gpu, "elementwise", "fasp_relu_f32", ew_cfg(n), [px, nn])
}

/// `fasp_silu_mul_f32` with the output written over `up`: `up = silu(gate) · up`.
pub fn silu_mul_into_up(gpu: &Gpu, gate: &impl DevicePtr<f32>, up: &mut impl DevicePtrMut<f32>, n: usize) -> Result<()> {
    need(gate, n, "silu gate")?;
    need(up, n, "silu up")?;
    if n == 0 {
        return Ok(());
    }
    let pg = gate.addr();
    let pu = up.addr_mut();
    let (po, nn) = (pu, n as i64);
    launch!(gpu, "elementwise", "fasp_silu_mul_f32", ew_cfg(n), [pg, pu, po, nn])
}

/// `fasp_silu_mul_f32`: `out = silu(gate) · up`.
pub fn silu_mul(gpu: &Gpu, gate: &impl DevicePtr<f32>, up: &impl DevicePtr<f32>, out: &mut impl DevicePtrMut<f32>, n: usize) -> Result<()> {
    need(gate, n, "silu gate")?;
    need(up, n, "silu up")?;
    need(out, n, "silu out")?;
    if n == 0 {
        return Ok(());
    }
    let pg = gate.addr();
    let pu = up.addr();
    let po = out.addr_mut();
    let nn = n as i64;
    launch!(gpu, "elementwise", "fasp_silu_mul_f32", ew_cfg(n), [pg, pu, po, nn])
}

/// `fasp_gelu_tanh_mul_f32` with the output written over `up`: `up = up · gelu_tanh(gate)`.
pub fn gelu_tanh_mul_into_up(gpu: &Gpu, gate: &impl DevicePtr<f32>, up: &mut impl DevicePtrMut<f32>, n: usize) -> Result<()> {
    need(gate, n, "gelu gate")?;
    need(up, n, "gelu up")?;
    if n == 0 {
        return Ok(());
    }
    let pg = gate.addr();
    let pu = up.addr_mut();
    let (po, nn) = (pu, n as i64);
    launch!(gpu, "elementwise", "fasp_gelu_tanh_mul_f32", ew_cfg(n), [pg, pu, po, nn])
}

/// `fasp_gelu_tanh_mul_f32`: `out = up · gelu_tanh(gate)`.
pub fn gelu_tanh_mul(
    gpu: &Gpu,
    gate: &impl DevicePtr<f32>,
    up: &impl DevicePtr<f32>,
    out: &mut impl DevicePtrMut<f32>,
    n: usize,
) -> Result<()> {
    need(gate, n, "gelu gate")?;
    need(up, n, "gelu up")?;
    need(out, n, "gelu out")?;
    if n == 0 {
        return Ok(());
    }
    let pg = gate.addr();
    let pu = up.addr();
    let po = out.addr_mut();
    let nn = n as i64;
    launch!(gpu, "elementwise", "fasp_gelu_tanh_mul_f32", ew_cfg(n), [pg, pu, po, nn])
}

/// `fasp_add_f32`: `out = a + b`.
pub fn add(gpu: &Gpu, a: &impl DevicePtr<f32>, b: &impl DevicePtr<f32>, out: &mut impl DevicePtrMut<f32>, n: usize) -> Result<()> {
    need(a, n, "add a")?;
    need(b, n, "add b")?;
    need(out, n, "add out")?;
    if n == 0 {
        return Ok(());
    }
    let pa = a.addr();
    let pb = b.addr();
    let po = out.addr_mut();
    let nn = n as i64;
    launch!(gpu, "elementwise", "fasp_add_f32", ew_cfg(n), [pa, pb, po, nn])
}

/// `fasp_add_f32` accumulating in place: `acc = acc + b`.
pub fn add_assign(gpu: &Gpu, acc: &mut impl DevicePtrMut<f32>, b: &impl DevicePtr<f32>, n: usize) -> Result<()> {
    need(acc, n, "add acc")?;
    need(b, n, "add b")?;
    if n == 0 {
        return Ok(());
    }
    let pb = b.addr();
    let pa = acc.addr_mut();
    let (po, nn) = (pa, n as i64);
    launch!(gpu, "elementwise", "fasp_add_f32", ew_cfg(n), [pa, pb, po, nn])
}

/// `fasp_add_bias_f32`: `x[r][c] += bias[c]`.
pub fn add_bias(gpu: &Gpu, x: &mut impl DevicePtrMut<f32>, bias: &impl DevicePtr<f32>, rows: usize, cols: usize) -> Result<()> {
    need(x, rows * cols, "bias x")?;
    need(bias, cols, "bias")?;
    if rows * cols == 0 {
        return Ok(());
    }
    let pb = bias.addr();
    let px = x.addr_mut();
    let (r, c) = (c_int(rows, "rows")?, c_int(cols, "cols")?);
    launch!(gpu, "elementwise", "fasp_add_bias_f32", ew_cfg(rows * cols), [px, pb, r, c])
}

/// `fasp_convert_f32_to_bf16` (round to nearest even).
pub fn to_bf16(gpu: &Gpu, src: &impl DevicePtr<f32>, dst: &mut impl DevicePtrMut<Bf16>, n: usize) -> Result<()> {
    need(src, n, "convert src")?;
    need(dst, n, "convert dst")?;
    if n == 0 {
        return Ok(());
    }
    let ps = src.addr();
    let pd = dst.addr_mut();
    let nn = n as i64;
    launch!(gpu, "elementwise", "fasp_convert_f32_to_bf16", ew_cfg(n), [ps, pd, nn])
}

/// `fasp_convert_bf16_to_f32` (exact).
pub fn from_bf16(gpu: &Gpu, src: &impl DevicePtr<Bf16>, dst: &mut impl DevicePtrMut<f32>, n: usize) -> Result<()> {
    need(src, n, "convert src")?;
    need(dst, n, "convert dst")?;
    if n == 0 {
        return Ok(());
    }
    let ps = src.addr();
    let pd = dst.addr_mut();
    let nn = n as i64;
    launch!(gpu, "elementwise", "fasp_convert_bf16_to_f32", ew_cfg(n), [ps, pd, nn])
}

/// `fasp_check_finite_f32`: sets `flag[0] = 1` if any of the first `n` values is NaN/±inf
/// (never clears it: zero the flag first).
pub fn check_finite(gpu: &Gpu, x: &impl DevicePtr<f32>, n: usize, flag: &mut impl DevicePtrMut<i32>) -> Result<()> {
    need(x, n, "check_finite x")?;
    need(flag, 1, "check_finite flag")?;
    if n == 0 {
        return Ok(());
    }
    let px = x.addr();
    let pf = flag.addr_mut();
    let nn = n as i64;
    launch!(gpu, "elementwise", "fasp_check_finite_f32", ew_cfg(n), [px, nn, pf])
}

/// `fasp_check_finite_bf16`.
pub fn check_finite_bf16(gpu: &Gpu, x: &impl DevicePtr<Bf16>, n: usize, flag: &mut impl DevicePtrMut<i32>) -> Result<()> {
    need(x, n, "check_finite x")?;
    need(flag, 1, "check_finite flag")?;
    if n == 0 {
        return Ok(());
    }
    let px = x.addr();
    let pf = flag.addr_mut();
    let nn = n as i64;
    launch!(gpu, "elementwise", "fasp_check_finite_bf16", ew_cfg(n), [px, nn, pf])
}

/// Whether the first `n` values are all finite (one launch, then a synchronising read of the flag).
pub fn all_finite(gpu: &Gpu, x: &impl DevicePtr<f32>, n: usize) -> Result<bool> {
    let mut flag = gpu.zeros::<i32>(1, "finite flag")?;
    check_finite(gpu, x, n, &mut flag)?;
    Ok(gpu.download(&flag, 1, "finite flag")?[0] == 0)
}

fn embed_cfg(ntok: usize, d: usize) -> LaunchConfig {
    cfg((d.div_ceil(256).max(1) as u32, ntok.clamp(1, 65535) as u32, 1), (256, 1, 1))
}

/// `fasp_embed_gather_f32`: `out[t] = table[ids[t]]` (out of range → NaN row).
pub fn embed_gather(
    gpu: &Gpu,
    ids: &impl DevicePtr<i32>,
    table: &impl DevicePtr<f32>,
    out: &mut impl DevicePtrMut<f32>,
    ntok: usize,
    vocab: usize,
    d: usize,
) -> Result<()> {
    need(ids, ntok, "embed ids")?;
    need(table, vocab * d, "embed table")?;
    need(out, ntok * d, "embed out")?;
    if ntok * d == 0 {
        return Ok(());
    }
    let pi = ids.addr();
    let pt = table.addr();
    let po = out.addr_mut();
    let (nt, v, dd) = (c_int(ntok, "ntok")?, c_int(vocab, "vocab")?, c_int(d, "d")?);
    launch!(gpu, "embed", "fasp_embed_gather_f32", embed_cfg(ntok, d), [pi, nt, pt, v, dd, po])
}

/// `fasp_embed_gather_bf16`: bf16 table, fp32 out.
pub fn embed_gather_bf16(
    gpu: &Gpu,
    ids: &impl DevicePtr<i32>,
    table: &impl DevicePtr<Bf16>,
    out: &mut impl DevicePtrMut<f32>,
    ntok: usize,
    vocab: usize,
    d: usize,
) -> Result<()> {
    need(ids, ntok, "embed ids")?;
    need(table, vocab * d, "embed table")?;
    need(out, ntok * d, "embed out")?;
    if ntok * d == 0 {
        return Ok(());
    }
    let pi = ids.addr();
    let pt = table.addr();
    let po = out.addr_mut();
    let (nt, v, dd) = (c_int(ntok, "ntok")?, c_int(vocab, "vocab")?, c_int(d, "d")?);
    launch!(gpu, "embed", "fasp_embed_gather_bf16", embed_cfg(ntok, d), [pi, nt, pt, v, dd, po])
}

/// `fasp_embed_add_positions_f32`: `out[t] += pos_table[t % seqlen + offset]` (OPT: offset 2).
#[allow(clippy::too_many_arguments)]
pub fn embed_add_positions(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<f32>,
    pos_table: &impl DevicePtr<f32>,
    ntok: usize,
    d: usize,
    npos: usize,
    seqlen: usize,
    offset: usize,
) -> Result<()> {
    need(out, ntok * d, "positions out")?;
    need(pos_table, npos * d, "positions table")?;
    if ntok * d == 0 {
        return Ok(());
    }
    let pt = pos_table.addr();
    let po = out.addr_mut();
    let pp = NULL;
    let (nt, dd, np, sl, off) =
        (c_int(ntok, "ntok")?, c_int(d, "d")?, c_int(npos, "npos")?, c_int(seqlen.max(1), "seqlen")?, c_int(offset, "offset")?);
    launch!(gpu, "embed", "fasp_embed_add_positions_f32", embed_cfg(ntok, d), [po, nt, dd, pt, np, pp, sl, off])
}

/// An optional f32 device argument (nullable kernel pointers) as a trait object.
pub trait DevicePtrF32 {
    fn ptr(&self) -> u64;
    fn elems(&self) -> usize;
}

impl<D: DevicePtr<f32>> DevicePtrF32 for D {
    fn ptr(&self) -> u64 {
        self.addr()
    }
    fn elems(&self) -> usize {
        self.len()
    }
}

fn opt_ptr(p: Option<&dyn DevicePtrF32>, need_len: usize, what: &str) -> Result<u64> {
    match p {
        None => Ok(NULL),
        Some(p) => {
            if p.elems() < need_len {
                return Err(crate::FaspError::Cuda(format!("{what}: {} elements, needs {need_len}", p.elems())));
            }
            Ok(p.ptr())
        }
    }
}
