//! Writers for a pruned model (docs/spec.md §9): the dense-equivalent HF directory (default) or the
//! compact form (`--compact`), plus `fasp.json` and the tokenizer files.
//!
//! Everything is written into a temporary directory beside `--out` and renamed into place only
//! when complete; on any error (or a panic) the temporary directory is removed, so a failed run
//! leaves nothing behind. Layers are encoded as they arrive and flushed into ~2 GiB shards, so the
//! writer holds at most one shard in memory.

use crate::error::{FaspError, Result};
use crate::model::arch::{attn_columns, AttnBiases, Role};
use crate::model::{DType, LayerWeights, Linear, Model, ModelConfig, TOKENIZER_FILES};
use crate::tensor::Mat;
use safetensors::tensor::TensorView;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const SHARD_BYTES: usize = 2 << 30;

/// A directory that is deleted on drop unless `keep` was called. It holds the lock on its
/// `--out` (see `OutClaim`) until it is dropped.
pub struct TempDir {
    path: PathBuf,
    /// Where a replaced `--out` goes while the new one is renamed into place.
    old: PathBuf,
    keep: bool,
    _lock: Option<OutLock>,
}

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
        crate::interrupt::unregister_temp(&self.path);
    }
}

fn out_err(path: &Path, msg: impl Into<String>) -> FaspError {
    FaspError::Output { path: path.into(), msg: msg.into() }
}

/// Absolute form of a path that may not exist yet.
fn absolute(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent).map(|c| c.join(name)).unwrap_or(abs),
        _ => abs,
    }
}

/// What an output is: an HF directory or a single file (`.gguf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutKind {
    Dir,
    File,
}

/// Checks `out` against the input and `--force`, without touching anything.
pub fn check_out(out: &Path, input: &Path, force: bool) -> Result<()> {
    check_out_kind(out, input, force, OutKind::Dir)
}

/// [`check_out`] for an output of `kind`: an existing `out` of the other kind is refused even
/// with `--force`.
pub fn check_out_kind(out: &Path, input: &Path, force: bool, kind: OutKind) -> Result<()> {
    let out_abs = absolute(out);
    let in_abs = std::fs::canonicalize(input).unwrap_or_else(|_| absolute(input));
    if out_abs == in_abs || in_abs.starts_with(&out_abs) {
        return Err(out_err(out, "refusing to write over the input model; choose another --out"));
    }
    if out_abs.exists() && !force {
        return Err(out_err(out, "already exists (use --force to replace it)"));
    }
    if out_abs.exists() && !out_abs.is_dir() && kind == OutKind::Dir {
        return Err(out_err(out, "exists and is not a directory"));
    }
    if out_abs.is_dir() && kind == OutKind::File {
        return Err(out_err(out, "is a directory; a .gguf output is a file path"));
    }
    let parent = out_abs.parent().ok_or_else(|| out_err(out, "has no parent directory"))?;
    if !parent.is_dir() {
        return Err(out_err(out, format!("parent directory {} does not exist", parent.display())));
    }
    Ok(())
}

/// Refuses an `out` that overlaps an input, with or without `--force`: `out` may not be an input,
/// contain one (replacing it would delete it) or lie inside an input directory (it would write
/// into the input model). `inputs` are (what, path) pairs, e.g. ("calibration file", calib); a
/// directory input (an HF model) counts with every entry in it, so that symlinked shards or
/// tokenizer files (as in the Hugging Face cache) are compared where they really live.
pub fn check_out_vs_inputs(out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    // the lexical absolute form and, when it exists, where it resolves to
    let mut out_forms = vec![absolute(out)];
    if let Ok(c) = std::fs::canonicalize(out) {
        out_forms.push(c);
    }
    let mut checks: Vec<(String, PathBuf, bool)> = Vec::new();
    for &(what, input) in inputs {
        let is_dir = input.is_dir();
        for p in [absolute(input), std::fs::canonicalize(input).unwrap_or_else(|_| absolute(input))] {
            checks.push((format!("{what} {}", input.display()), p, is_dir));
        }
        if is_dir {
            for e in std::fs::read_dir(input).into_iter().flatten().flatten() {
                if let Ok(c) = std::fs::canonicalize(e.path()) {
                    checks.push((format!("{what} {} ({})", input.display(), e.file_name().to_string_lossy()), c, false));
                }
            }
        }
    }
    for o in &out_forms {
        for (what, p, is_dir) in &checks {
            let msg = if o == p {
                format!("refusing to write over the {what}; choose another --out")
            } else if p.starts_with(o) {
                format!("contains the {what}; choose another --out (replacing it would delete the input)")
            } else if *is_dir && o.starts_with(p) {
                format!("is inside the {what}; choose another --out")
            } else {
                continue;
            };
            return Err(out_err(out, msg));
        }
    }
    Ok(())
}

/// The lock on one `--out`: the file `.NAME.lock` beside it, `flock`ed (exclusively) for as long
/// as this value lives, holding the owner's PID. The kernel releases the lock when the process
/// dies however it dies, so a killed run never blocks the next one; the file is removed on drop.
pub struct OutLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl OutLock {
    /// Takes the lock on `out` or fails at once, naming the PID of the run holding it.
    pub fn acquire(out: &Path) -> Result<OutLock> {
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        let (parent, name) = split_out(out)?;
        let path = parent.join(format!(".{name}.lock"));
        loop {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| FaspError::io(&path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Err(FaspError::Locked { path: out.into(), pid: lock_owner(&path) }),
                Err(std::fs::TryLockError::Error(e)) => return Err(FaspError::io(&path, e)),
            }
            // the previous holder removes the file before it unlocks: if it did so between our
            // open and lock, this lock is on a file nobody else will see; start over
            let same = match (file.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            file.set_len(0).and_then(|()| write!(file, "{}", std::process::id())).map_err(|e| FaspError::io(&path, e))?;
            crate::interrupt::register_temp(&path);
            return Ok(OutLock { path, _file: file });
        }
    }
}

impl Drop for OutLock {
    fn drop(&mut self) {
        // removed while still locked (the file is closed, and so unlocked, right after)
        let _ = std::fs::remove_file(&self.path);
        crate::interrupt::unregister_temp(&self.path);
    }
}

/// The PID written in a lock file held by another run (it writes it right after locking).
fn lock_owner(path: &Path) -> String {
    for _ in 0..20 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.trim().is_empty() {
                return s.trim().to_string();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    "unknown".into()
}

/// `out`'s (canonical) parent directory and file name.
fn split_out(out: &Path) -> Result<(PathBuf, String)> {
    let out_abs = absolute(out);
    let parent = out_abs.parent().ok_or_else(|| out_err(out, "has no parent directory"))?.to_path_buf();
    let name = out_abs.file_name().ok_or_else(|| out_err(out, "has no file name"))?.to_string_lossy().into_owned();
    Ok((parent, name))
}

/// Whether process `pid` is running.
fn pid_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else { return false };
    if p <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(p, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// What a directory entry beside `--out` named `name` is, if it belongs to that output:
/// `Some((is_temporary, owner PID))` for `.NAME.tmp-PID-N` and `.NAME.old-PID-N`, and
/// `Some((false, None))` for the `.NAME.old` of earlier versions.
fn leftover_kind(entry: &str, name: &str) -> Option<(bool, Option<u32>)> {
    let rest = entry.strip_prefix('.')?.strip_prefix(name)?.strip_prefix('.')?;
    if rest == "old" {
        return Some((false, None));
    }
    let (tmp, rest) = match (rest.strip_prefix("tmp-"), rest.strip_prefix("old-")) {
        (Some(r), _) => (true, r),
        (_, Some(r)) => (false, r),
        _ => return None,
    };
    let (pid, seq) = rest.split_once('-')?;
    seq.parse::<usize>().ok()?;
    Some((tmp, Some(pid.parse().ok()?)))
}

/// Permission to write one `--out`: the checks passed, the lock is held, and the leftovers of
/// earlier runs on the same output whose process is gone were removed, except for temporary
/// directories holding a checkpoint when a resume was asked for (`resumable`).
pub struct OutClaim {
    out: PathBuf,
    parent: PathBuf,
    name: String,
    lock: OutLock,
    resumable: Vec<PathBuf>,
}

impl OutClaim {
    /// `check_out`, then the lock, then the stale leftovers (each removal is logged). With
    /// `keep_checkpoints`, stale temporary directories holding a checkpoint are kept, newest first,
    /// in `resumable`.
    pub fn acquire(out: &Path, input: &Path, force: bool, keep_checkpoints: bool) -> Result<OutClaim> {
        Self::acquire_kind(out, input, force, keep_checkpoints, OutKind::Dir)
    }

    /// [`OutClaim::acquire`] for an output of `kind` (a `.gguf` file: its temporary directory
    /// beside it holds the checkpoint and the file being assembled).
    pub fn acquire_kind(out: &Path, input: &Path, force: bool, keep_checkpoints: bool, kind: OutKind) -> Result<OutClaim> {
        check_out_kind(out, input, force, kind)?;
        let lock = OutLock::acquire(out)?;
        let (parent, name) = split_out(out)?;
        let mut resumable = Vec::new();
        let entries = std::fs::read_dir(&parent).map_err(|e| FaspError::io(&parent, e))?;
        for e in entries.flatten() {
            let entry = e.file_name().to_string_lossy().into_owned();
            let Some((is_tmp, owner)) = leftover_kind(&entry, &name) else { continue };
            let path = parent.join(&entry);
            if owner.is_some_and(|pid| pid == std::process::id() || pid_alive(pid)) || !path.is_dir() {
                continue;
            }
            if keep_checkpoints && is_tmp && crate::checkpoint::present(&path) {
                resumable.push(path);
                continue;
            }
            let by = owner.map_or("an earlier run".to_string(), |p| format!("PID {p}, which is no longer running"));
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::warn!("removed {}, left behind by {by}", path.display()),
                Err(err) => tracing::warn!("could not remove {}, left behind by {by}: {err}", path.display()),
            }
        }
        resumable.sort_by_key(|p| std::cmp::Reverse(crate::checkpoint::modified(p)));
        // the output may have changed before the lock was taken
        check_out_kind(out, input, force, kind)?;
        Ok(OutClaim { out: out.into(), parent, name, lock, resumable })
    }

    /// Stale temporary directories of this output holding a checkpoint, newest first (only with
    /// `keep_checkpoints`).
    pub fn resumable(&self) -> &[PathBuf] {
        &self.resumable
    }

    fn fresh_names(&self) -> (PathBuf, PathBuf) {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (name, pid) = (&self.name, std::process::id());
        (self.parent.join(format!(".{name}.tmp-{pid}-{seq}")), self.parent.join(format!(".{name}.old-{pid}-{seq}")))
    }

    fn remove_resumable(&self, except: Option<&Path>) {
        for p in self.resumable.iter().filter(|p| Some(p.as_path()) != except) {
            match std::fs::remove_dir_all(p) {
                Ok(()) => tracing::warn!("removed {}, left behind by an interrupted run", p.display()),
                Err(err) => tracing::warn!("could not remove {}: {err}", p.display()),
            }
        }
    }

    /// Creates the (empty) temporary directory beside `out`; the other resumable directories
    /// are removed.
    pub fn create_tmp(self) -> Result<TempDir> {
        self.remove_resumable(None);
        let (tmp, old) = self.fresh_names();
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(|e| FaspError::io(&tmp, e))?;
        crate::interrupt::register_temp(&tmp);
        Ok(TempDir { path: tmp, old, keep: false, _lock: Some(self.lock) })
    }

    /// Takes over `dir` (one of `resumable`) as this run's temporary directory: renamed to this
    /// process's name, and emptied but for its checkpoint. The other resumable ones are removed.
    pub fn adopt(self, dir: &Path) -> Result<TempDir> {
        self.remove_resumable(Some(dir));
        let (tmp, old) = self.fresh_names();
        std::fs::rename(dir, &tmp).map_err(|e| FaspError::io(dir, e))?;
        crate::interrupt::register_temp(&tmp);
        let t = TempDir { path: tmp, old, keep: false, _lock: Some(self.lock) };
        for e in std::fs::read_dir(t.path()).map_err(|e| FaspError::io(t.path(), e))?.flatten() {
            if e.file_name() == crate::checkpoint::DIR {
                continue;
            }
            let p = e.path();
            let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            r.map_err(|err| FaspError::io(&p, err))?;
        }
        Ok(t)
    }

    pub fn out(&self) -> &Path {
        &self.out
    }
}

/// `OutClaim::acquire`, then creates the temporary directory beside `out`.
pub fn prepare_out(out: &Path, input: &Path, force: bool) -> Result<TempDir> {
    OutClaim::acquire(out, input, force, false)?.create_tmp()
}

/// Renames the finished temporary directory to `out` (replacing an old `out` under `--force`).
pub fn commit_out(mut tmp: TempDir, out: &Path) -> Result<()> {
    let out_abs = absolute(out);
    crate::interrupt::critical(|| {
        if out_abs.exists() {
            std::fs::rename(&out_abs, &tmp.old).map_err(|e| FaspError::io(&out_abs, e))?;
            if let Err(e) = std::fs::rename(&tmp.path, &out_abs) {
                // put the old output back
                let _ = std::fs::rename(&tmp.old, &out_abs);
                return Err(FaspError::io(&out_abs, e));
            }
        } else {
            std::fs::rename(&tmp.path, &out_abs).map_err(|e| FaspError::io(&out_abs, e))?;
        }
        tmp.keep = true;
        crate::interrupt::unregister_temp(&tmp.path);
        Ok(())
    })?;
    let _ = std::fs::remove_dir_all(&tmp.old);
    Ok(())
}

/// Accumulates encoded tensors and flushes them into safetensors shards.
struct ShardWriter {
    dir: PathBuf,
    pending: Vec<(String, Vec<usize>, Vec<u8>)>,
    pending_bytes: usize,
    /// (file name, tensor names) of the flushed shards.
    shards: Vec<(String, Vec<String>)>,
    total_bytes: usize,
    dtype: DType,
}

impl ShardWriter {
    fn add(&mut self, name: String, shape: Vec<usize>, data: &[f32]) -> Result<()> {
        let bytes = self.dtype.encode(data);
        self.pending_bytes += bytes.len();
        self.total_bytes += bytes.len();
        self.pending.push((name, shape, bytes));
        if self.pending_bytes >= SHARD_BYTES {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let file = format!("shard-{:05}.safetensors", self.shards.len() + 1);
        let path = self.dir.join(&file);
        let views: Vec<(String, TensorView)> = self
            .pending
            .iter()
            .map(|(n, s, b)| {
                Ok((n.clone(), TensorView::new(self.dtype.safetensors(), s.clone(), b).map_err(|e| out_err(&path, e.to_string()))?))
            })
            .collect::<Result<_>>()?;
        let meta = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
        safetensors::serialize_to_file(views, meta, &path).map_err(|e| out_err(&path, e.to_string()))?;
        self.shards.push((file, self.pending.iter().map(|(n, _, _)| n.clone()).collect()));
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }
    /// Gives the shards their final names, with an index when there is more than one.
    fn finish(mut self) -> Result<()> {
        self.flush()?;
        let n = self.shards.len();
        if n == 1 {
            let from = self.dir.join(&self.shards[0].0);
            let to = self.dir.join("model.safetensors");
            return std::fs::rename(&from, &to).map_err(|e| FaspError::io(&to, e));
        }
        let mut weight_map = BTreeMap::new();
        for (i, (file, names)) in self.shards.iter().enumerate() {
            let final_name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            let to = self.dir.join(&final_name);
            std::fs::rename(self.dir.join(file), &to).map_err(|e| FaspError::io(&to, e))?;
            for t in names {
                weight_map.insert(t.clone(), final_name.clone());
            }
        }
        let index = serde_json::json!({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map});
        write_json(&self.dir.join("model.safetensors.index.json"), &index)
    }
}

pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialize");
    std::fs::write(path, text + "\n").map_err(|e| FaspError::io(path, e))
}

/// Shipped with an output whose FLAP compensation added o_proj / down_proj biases that the
/// family's transformers class has no slot for (`fasp_extra_biases` in config.json).
const FASP_BIASES_PY: &str = r#""""Written by fasp-engine: {base} with the o_proj / down_proj biases that FLAP's bias
compensation added (config.json lists them in `fasp_extra_biases`). transformers' {base} has no
place for them; load this directory with
    AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
Without trust_remote_code, transformers drops these biases (warning that some weights were not
used) and the model is not the pruned one.
"""
import torch
from transformers import {base}


class {class}({base}):
    def __init__(self, config):
        super().__init__(config)
        extra = set(getattr(config, "fasp_extra_biases", None) or [])
        for layer in self.model.layers:
            for key, lin in (("o_proj", layer.self_attn.o_proj), ("down_proj", layer.mlp.down_proj)):
                if key in extra and lin.bias is None:
                    lin.bias = torch.nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
"#;

/// The dense-equivalent V and o_proj of a layer given in compact form (docs/spec.md §9): zero V
/// rows (and bias entries) for the pruned units, the kept o_proj columns scattered back into the
/// full context width with zeros elsewhere. A dense layer comes back unchanged.
pub fn dense_equivalent_attn(cfg: &ModelConfig, lw: &LayerWeights) -> (Linear, Linear) {
    let nv = cfg.v_width();
    let mut vw = Mat::zeros(nv, cfg.hidden);
    for (i, &u) in lw.v_units.iter().enumerate() {
        vw.row_mut(u).copy_from_slice(lw.v.w.row(i));
    }
    let vb = lw.v.b.as_ref().map(|b| {
        let mut full = vec![0.0; nv];
        for (i, &u) in lw.v_units.iter().enumerate() {
            full[u] = b[i];
        }
        full
    });
    let cols = attn_columns(cfg, &lw.v_units);
    (Linear { w: vw, b: vb }, Linear { w: lw.o.w.scatter_cols(&cols, cfg.ctx_width()), b: lw.o.b.clone() })
}

/// Writes the pruned model layer by layer.
pub struct ModelWriter {
    tmp: TempDir,
    shards: ShardWriter,
    compact: bool,
    kept_v: Vec<Vec<usize>>,
    ffn: Option<usize>,
    /// An o_proj / down_proj bias was added (FLAP's compensation) where the model had none.
    o_bias_added: bool,
    down_bias_added: bool,
    params_dense_equivalent: usize,
    params_compact: usize,
}

impl ModelWriter {
    /// Validates `out` and creates the temporary directory. Call before the prune starts, so
    /// that a bad `--out` fails at once.
    pub fn create(out: &Path, model: &Model, force: bool, dtype: DType, compact: bool) -> Result<Self> {
        Ok(Self::with_tmp(prepare_out(out, &model.path, force)?, dtype, compact))
    }

    /// A writer into a temporary directory made by `OutClaim` (empty but for a checkpoint).
    pub fn with_tmp(tmp: TempDir, dtype: DType, compact: bool) -> Self {
        let dir = tmp.path().to_path_buf();
        ModelWriter {
            tmp,
            shards: ShardWriter { dir, pending: Vec::new(), pending_bytes: 0, shards: Vec::new(), total_bytes: 0, dtype },
            compact,
            kept_v: Vec::new(),
            ffn: None,
            o_bias_added: false,
            down_bias_added: false,
            params_dense_equivalent: 0,
            params_compact: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Writes one pruned layer (given in compact form).
    pub fn write_layer(&mut self, model: &Model, l: usize, lw: &LayerWeights) -> Result<()> {
        let cfg = &model.cfg;
        let name = |r| model.names.layer(l, r);
        let ffn = lw.ffn();
        if *self.ffn.get_or_insert(ffn) != ffn {
            return Err(out_err(self.tmp.path(), format!("layer {l} keeps {ffn} MLP channels, earlier layers {:?}", self.ffn)));
        }
        self.o_bias_added |= lw.o.b.is_some() && !cfg.bias.o;
        self.down_bias_added |= lw.down.b.is_some() && !cfg.bias.down;
        self.params_compact += lw.param_count();
        let (v, o) = if self.compact { (lw.v.clone(), lw.o.clone()) } else { dense_equivalent_attn(cfg, lw) };
        let dense_eq = LayerWeights { v: v.clone(), o: o.clone(), ..lw.clone() };
        self.params_dense_equivalent += dense_eq.param_count();
        self.kept_v.push(lw.v_units.clone());

        // an added o_proj bias turns a family's attention-bias switch on, which gives q/k/v biases too
        // (written as zeros); likewise an added down bias under an MLP-bias switch
        let a = cfg.arch();
        let attn_switch = matches!(a.attn_biases, AttnBiases::Switch { .. }) && self.o_bias_added;
        let mlp_switch = a.mlp_bias_key.is_some() && self.down_bias_added;
        let s = &mut self.shards;
        let mat = |s: &mut ShardWriter, role, m: &Mat| s.add(name(role), vec![m.rows, m.cols], &m.data);
        let vecw = |s: &mut ShardWriter, role, v: &[f32]| s.add(name(role), vec![v.len()], v);
        let bias = |s: &mut ShardWriter, role, b: &Option<Vec<f32>>, len: usize, on: bool| -> Result<()> {
            match (b, on) {
                (Some(b), _) => vecw(s, role, b),
                (None, true) => vecw(s, role, &vec![0.0; len]),
                (None, false) => Ok(()),
            }
        };
        let norm = |s: &mut ShardWriter, role, n: &Option<crate::model::Norm>| n.as_ref().map_or(Ok(()), |n| vecw(s, role, &n.w));
        vecw(s, Role::AttnNormW, &lw.attn_norm.w)?;
        if let Some(b) = &lw.attn_norm.b {
            vecw(s, Role::AttnNormB, b)?;
        }
        mat(s, Role::QW, &lw.q.w)?;
        bias(s, Role::QB, &lw.q.b, lw.q.w.rows, attn_switch)?;
        mat(s, Role::KW, &lw.k.w)?;
        bias(s, Role::KB, &lw.k.b, lw.k.w.rows, attn_switch)?;
        mat(s, Role::VW, &v.w)?;
        bias(s, Role::VB, &v.b, v.w.rows, attn_switch)?;
        mat(s, Role::OW, &o.w)?;
        bias(s, Role::OB, &o.b, o.w.rows, attn_switch || self.o_bias_added)?;
        norm(s, Role::QNormW, &lw.q_norm)?;
        norm(s, Role::KNormW, &lw.k_norm)?;
        norm(s, Role::PostAttnNormW, &lw.post_attn_norm)?;
        vecw(s, Role::MlpNormW, &lw.mlp_norm.w)?;
        if let Some(b) = &lw.mlp_norm.b {
            vecw(s, Role::MlpNormB, b)?;
        }
        mat(s, Role::UpW, &lw.up.w)?;
        bias(s, Role::UpB, &lw.up.b, lw.up.w.rows, mlp_switch)?;
        if let Some(g) = &lw.gate {
            mat(s, Role::GateW, &g.w)?;
            bias(s, Role::GateB, &g.b, g.w.rows, mlp_switch)?;
        }
        mat(s, Role::DownW, &lw.down.w)?;
        bias(s, Role::DownB, &lw.down.b, lw.down.w.rows, mlp_switch || self.down_bias_added)?;
        norm(s, Role::PostMlpNormW, &lw.post_mlp_norm)?;
        Ok(())
    }

    /// (dense-equivalent, compact) parameter counts of what was written, including the
    /// non-layer tensors of `model`.
    pub fn param_counts(&self, model: &Model) -> (usize, usize) {
        let other = model.non_layer_param_count();
        (self.params_dense_equivalent + other, self.params_compact + other)
    }

    /// Writes the non-layer tensors, config.json, the tokenizer files and `fasp.json`, then
    /// renames the directory into place.
    pub fn finish(mut self, model: &Model, out: &Path, fasp_json: Option<&serde_json::Value>) -> Result<()> {
        let cfg = &model.cfg;
        if self.kept_v.len() != cfg.layers {
            return Err(out_err(out, format!("only {} of {} layers were written", self.kept_v.len(), cfg.layers)));
        }
        let mut names = vec![model.names.embed(), model.names.final_norm_w()];
        names.extend(model.names.positions());
        names.extend(model.names.final_norm_b());
        if model.src.shape(model.names.lm_head()).is_some() {
            names.push(model.names.lm_head().to_string());
        }
        for n in names {
            let shape = model.src.shape(&n).unwrap_or_default();
            let data = model.load(&n)?;
            self.shards.add(n, shape, &data)?;
        }
        let dtype = self.shards.dtype;
        self.shards.finish()?;
        let dir = self.tmp.path().to_path_buf();

        let mut config = cfg.raw.clone();
        let obj = config.as_object_mut().ok_or_else(|| out_err(out, "config is not a JSON object"))?;
        let a = cfg.arch();
        obj.insert(a.ffn_key.into(), self.ffn.unwrap_or(cfg.ffn).into());
        obj.insert("torch_dtype".into(), dtype.name().into());
        // biases FLAP's compensation added: through the family's config switch, or (a family
        // without one) listed in `fasp_extra_biases` and added by the shipped `fasp_biases.py` (below)
        let mut extra: Vec<&str> = cfg
            .raw
            .get("fasp_extra_biases")
            .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
            .map_or(vec![], |v| v.iter().filter_map(|e| ["o_proj", "down_proj"].into_iter().find(|k| k == e)).collect());
        if self.o_bias_added {
            match a.attn_biases {
                AttnBiases::Switch { key, .. } => {
                    obj.insert(key.into(), true.into());
                }
                AttnBiases::Fixed { .. } => extra.push("o_proj"),
            }
        }
        if self.down_bias_added {
            match a.mlp_bias_key {
                Some(key) => {
                    obj.insert(key.into(), true.into());
                }
                None => extra.push("down_proj"),
            }
        }
        extra.sort_unstable();
        extra.dedup();
        if !extra.is_empty() {
            // transformers' class of this family has no slot for these biases: ship a subclass
            // that adds them, mapped for `trust_remote_code=True` (README "FLAP's added biases")
            obj.insert("fasp_extra_biases".into(), serde_json::to_value(&extra).expect("serializable"));
            let class = format!("FaspBiased{}", a.hf_class);
            obj.insert("auto_map".into(), serde_json::json!({"AutoModelForCausalLM": format!("fasp_biases.{class}")}));
            let code = FASP_BIASES_PY.replace("{base}", a.hf_class).replace("{class}", &class);
            let path = dir.join("fasp_biases.py");
            std::fs::write(&path, code).map_err(|e| FaspError::io(&path, e))?;
        }
        if !model.head_is_tied() {
            obj.insert("tie_word_embeddings".into(), false.into());
        } else {
            obj.insert("tie_word_embeddings".into(), true.into());
        }
        if self.compact {
            obj.insert("fasp_compact_v_units".into(), serde_json::to_value(&self.kept_v).expect("serializable"));
        }
        write_json(&dir.join("config.json"), &config)?;

        if model.path.is_dir() {
            for f in TOKENIZER_FILES {
                let src = model.path.join(f);
                if src.exists() {
                    std::fs::copy(&src, dir.join(f)).map_err(|e| FaspError::io(&src, e))?;
                }
            }
        } else if let Some(json) = model.tokenizer_json()? {
            std::fs::write(dir.join("tokenizer.json"), json).map_err(|e| FaspError::io(dir.join("tokenizer.json"), e))?;
        }
        if let Some(rec) = fasp_json {
            write_json(&dir.join("fasp.json"), rec)?;
        }
        let ckpt = dir.join(crate::checkpoint::DIR);
        if ckpt.exists() {
            std::fs::remove_dir_all(&ckpt).map_err(|e| FaspError::io(&ckpt, e))?;
        }
        commit_out(self.tmp, out)
    }
}

/// Total size in bytes of the files in `dir` (not recursive: a written model is flat), for the
/// size a run reports.
pub fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let m = e?.metadata()?;
        if m.is_file() {
            total += m.len();
        }
    }
    Ok(total)
}
