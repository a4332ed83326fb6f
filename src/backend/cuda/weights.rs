//! Device copies of layer weights. `TensorCache` maps a host tensor (identified by its buffer
//! address, length and 16 sampled values) to its device copy, so a tensor is uploaded once per
//! layer however many pipeline steps use it. `prefetch` uploads the next layer on the copy stream
//! through pinned staging buffers (one per tensor slot, reused from layer to layer), so the
//! transfer overlaps the current layer's compute; cudarc's per-buffer events make the compute
//! stream wait for a prefetched tensor before its first use. `end_layer` drops everything that
//! was not prefetched for the next layer, so at most two layers are resident.

use super::context::{DeviceBuf, Event, Gpu, PinnedBuf};
use crate::error::Result;
use crate::model::{LayerWeights, Linear, Norm};
use std::sync::Arc;

/// Identity of a host buffer: address, length and sampled bit patterns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    addr: usize,
    len: usize,
    sample: u64,
}

pub fn fingerprint(v: &[f32]) -> Fingerprint {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    if !v.is_empty() {
        for i in 0..16 {
            let j = i * (v.len() - 1) / 15;
            h = (h ^ v[j].to_bits() as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    Fingerprint { addr: v.as_ptr() as usize, len: v.len(), sample: h }
}

/// Device copies of host tensors for the current (and prefetched next) layer.
#[derive(Default)]
pub struct TensorCache {
    entries: Vec<(Fingerprint, Arc<DeviceBuf<f32>>)>,
    prefetched: Vec<Fingerprint>,
    staging: Vec<Option<PinnedBuf<f32>>>,
    /// Recorded on the copy stream after the last prefetch's copies.
    done: Option<Event>,
    /// Whether the compute stream has not yet waited for `done`.
    pending: bool,
    /// Bytes uploaded through the copy stream / the compute stream (for reports).
    pub bytes_prefetched: usize,
    pub bytes_uploaded: usize,
}

impl TensorCache {
    fn find(&self, fp: Fingerprint) -> Option<Arc<DeviceBuf<f32>>> {
        self.entries.iter().find(|(f, _)| *f == fp).map(|(_, d)| d.clone())
    }

    /// Makes the compute stream wait for the last prefetch's copies (before any use of, or free
    /// of, a prefetched tensor).
    pub fn await_prefetch(&mut self, gpu: &Gpu) -> Result<()> {
        if self.pending {
            if let Some(ev) = &self.done {
                gpu.stream.wait(ev)?;
            }
            self.pending = false;
        }
        Ok(())
    }

    /// The device copy of `v`, uploading it (compute stream) when not cached.
    pub fn get(&mut self, gpu: &Gpu, v: &[f32], what: &str) -> Result<Arc<DeviceBuf<f32>>> {
        self.await_prefetch(gpu)?;
        let fp = fingerprint(v);
        if let Some(d) = self.find(fp) {
            return Ok(d);
        }
        let d = Arc::new(gpu.upload(v, what)?);
        self.bytes_uploaded += v.len() * 4;
        self.entries.push((fp, d.clone()));
        Ok(d)
    }

    pub fn linear(&mut self, gpu: &Gpu, l: &Linear, what: &str) -> Result<DevLinear> {
        Ok(DevLinear {
            w: self.get(gpu, &l.w.data, what)?,
            b: l.b.as_ref().map(|b| self.get(gpu, b, what)).transpose()?,
            out: l.w.rows,
            inp: l.w.cols,
        })
    }

    /// A tensor the pipeline made for this step only (restored `W2'`, kept W1 rows): uploaded
    /// without caching, so a later buffer at the same host address can never alias it.
    pub fn fresh_linear(gpu: &Gpu, l: &Linear, what: &str) -> Result<DevLinear> {
        Ok(DevLinear {
            w: Arc::new(gpu.upload(&l.w.data, what)?),
            b: l.b.as_ref().map(|b| gpu.upload(b, what).map(Arc::new)).transpose()?,
            out: l.w.rows,
            inp: l.w.cols,
        })
    }

    pub fn norm(&mut self, gpu: &Gpu, n: &Norm, what: &str) -> Result<DevNorm> {
        Ok(DevNorm { w: self.get(gpu, &n.w, what)?, b: n.b.as_ref().map(|b| self.get(gpu, b, what)).transpose()? })
    }

    /// Starts uploading every tensor of `lw` on the copy stream through pinned staging buffers.
    pub fn prefetch(&mut self, gpu: &Gpu, lw: &LayerWeights) -> Result<()> {
        let tensors = layer_tensors(lw);
        if self.staging.len() < tensors.len() {
            self.staging.resize_with(tensors.len(), || None);
        }
        // the staging buffers are refilled below: the previous prefetch's copies must be done
        if let Some(ev) = &self.done {
            ev.synchronize()?;
        }
        let mut dst = Vec::new();
        for (slot, v) in tensors.iter().enumerate() {
            let fp = fingerprint(v);
            if v.is_empty() || self.find(fp).is_some() {
                self.prefetched.push(fp);
                continue;
            }
            // allocated in compute-stream order: freed there too, after its last use
            dst.push((slot, fp, gpu.alloc::<f32>(v.len(), "prefetched weights")?));
        }
        if dst.is_empty() {
            return Ok(());
        }
        let ready = gpu.event()?;
        gpu.stream.record(&ready)?;
        gpu.copy.wait(&ready)?;
        for (slot, fp, mut d) in dst {
            let v = tensors[slot];
            let stage = &mut self.staging[slot];
            if stage.as_ref().is_none_or(|s| s.len() != v.len()) {
                *stage = Some(PinnedBuf::new(&gpu.dev, v.len())?);
            }
            let stage = stage.as_mut().expect("staging buffer");
            stage.write(v)?;
            gpu.copy.memcpy_htod_pinned(stage, &mut d)?;
            self.bytes_prefetched += v.len() * 4;
            self.entries.push((fp, Arc::new(d)));
            self.prefetched.push(fp);
        }
        let done = gpu.event()?;
        gpu.copy.record(&done)?;
        self.done = Some(done);
        self.pending = true;
        Ok(())
    }

    /// Ends a layer: keeps only what was prefetched for the next one.
    pub fn end_layer(&mut self, gpu: &Gpu) -> Result<()> {
        self.await_prefetch(gpu)?;
        let keep = std::mem::take(&mut self.prefetched);
        self.entries.retain(|(f, _)| keep.contains(f));
        Ok(())
    }

    pub fn clear(&mut self, gpu: &Gpu) -> Result<()> {
        self.await_prefetch(gpu)?;
        self.entries.clear();
        self.prefetched.clear();
        Ok(())
    }
}

/// Every tensor of a layer, in a fixed order (the staging slot of each).
pub fn layer_tensors(lw: &LayerWeights) -> Vec<&[f32]> {
    let mut t: Vec<&[f32]> = Vec::new();
    let extra = [&lw.q_norm, &lw.k_norm, &lw.post_attn_norm, &lw.post_mlp_norm].into_iter().flatten();
    for n in [&lw.attn_norm, &lw.mlp_norm].into_iter().chain(extra) {
        t.push(&n.w);
        t.extend(n.b.as_deref());
    }
    for l in [&lw.q, &lw.k, &lw.v, &lw.o, &lw.up].into_iter().chain(lw.gate.as_ref()).chain([&lw.down]) {
        t.push(&l.w.data);
        t.extend(l.b.as_deref());
    }
    t
}

/// A `Linear` on the device: `w[out][inp]`, optional `b[out]`.
pub struct DevLinear {
    pub w: Arc<DeviceBuf<f32>>,
    pub b: Option<Arc<DeviceBuf<f32>>>,
    pub out: usize,
    pub inp: usize,
}

/// A `Norm` on the device (`b`: LayerNorm's bias); its kind is the family's (`Arch::norm`).
pub struct DevNorm {
    pub w: Arc<DeviceBuf<f32>>,
    pub b: Option<Arc<DeviceBuf<f32>>>,
}
