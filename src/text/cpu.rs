//! The text ops on the CPU: the f32 reference functions of [`super::ops`], called in the order
//! the models have always run them (the parity tests against transformers pin every bit).

use super::backend::{Norm, Packed, Rope, TextOps};
use super::ops::{self, AttnMask, Heads, Linear, RopeTable};
use crate::error::Result;

/// The CPU backend (weights and activations in f32, gemm + rayon).
pub struct Cpu;

/// A packed batch on the CPU.
pub struct CpuBatch {
    ids: Vec<u32>,
    positions: Vec<usize>,
    starts: Vec<usize>,
    mask: AttnMask,
    rope: Option<RopeTable>,
}

/// The residual stream, and the scratch a layer's output lands in before it is added.
pub struct CpuStream {
    x: Vec<f32>,
    h: Vec<f32>,
}

/// q, k and v of every token, split out of the fused projection.
#[derive(Default)]
pub struct CpuQkv {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl CpuBatch {
    fn tokens(&self) -> usize {
        self.ids.len()
    }

    fn stream(&self, x: Vec<f32>) -> CpuStream {
        let h = vec![0.0f32; x.len()];
        CpuStream { x, h }
    }
}

/// Rows of `x` for a layer of `inp` inputs.
fn rows(x: &[f32], inp: usize) -> usize {
    x.len() / inp.max(1)
}

impl TextOps for Cpu {
    type Linear = Linear;
    type Vector = Vec<f32>;
    type Table = Vec<f32>;
    type Stream = CpuStream;
    type Act = Vec<f32>;
    type Qkv = CpuQkv;
    type Batch = CpuBatch;
    type Sums = Vec<f64>;

    fn batch(&self, p: &Packed, mask: AttnMask, rope: Option<Rope>) -> Result<CpuBatch> {
        Ok(CpuBatch {
            ids: p.ids.clone(),
            positions: p.positions.clone(),
            starts: p.starts.clone(),
            mask,
            rope: rope.map(|r| RopeTable::new(r.inv_freq, p.longest)),
        })
    }

    fn act(&self, bt: &CpuBatch, width: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0f32; bt.tokens() * width])
    }

    fn qkv_buffer(&self, _: &CpuBatch, _: Heads) -> Result<CpuQkv> {
        Ok(CpuQkv::default())
    }

    fn embed(&self, bt: &CpuBatch, table: &Vec<f32>, d: usize) -> Result<CpuStream> {
        let mut x = Vec::with_capacity(bt.tokens() * d);
        for &id in &bt.ids {
            x.extend_from_slice(&table[id as usize * d..][..d]);
        }
        Ok(bt.stream(x))
    }

    fn bert_embed(
        &self,
        bt: &CpuBatch,
        word: &Vec<f32>,
        position: &Vec<f32>,
        type0: &Vec<f32>,
        d: usize,
    ) -> Result<CpuStream> {
        let mut x = Vec::with_capacity(bt.tokens() * d);
        for (&id, &p) in bt.ids.iter().zip(&bt.positions) {
            let (w, pe) = (&word[id as usize * d..][..d], &position[p * d..][..d]);
            x.extend((0..d).map(|j| w[j] + type0[j] + pe[j]));
        }
        Ok(bt.stream(x))
    }

    fn rms_norm(
        &self,
        _: &CpuBatch,
        x: &CpuStream,
        w: &Vec<f32>,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        ops::rms_norm(&x.x, w, eps, out);
        Ok(())
    }

    fn final_rms_norm(
        &self,
        _: &CpuBatch,
        mut x: CpuStream,
        w: &Vec<f32>,
        eps: f32,
    ) -> Result<CpuStream> {
        ops::rms_norm(&x.x, w, eps, &mut x.h);
        std::mem::swap(&mut x.x, &mut x.h);
        Ok(x)
    }

    fn layer_norm(&self, _: &CpuBatch, x: &mut CpuStream, n: &Norm<Cpu>, eps: f32) -> Result<()> {
        ops::layer_norm(&mut x.x, &n.w, &n.b, eps);
        Ok(())
    }

    fn normed<'a>(&self, x: &'a CpuStream) -> &'a Vec<f32> {
        &x.x
    }

    fn qkv(
        &self,
        _: &CpuBatch,
        x: &Vec<f32>,
        lin: &Linear,
        heads: Heads,
        out: &mut CpuQkv,
    ) -> Result<()> {
        let Heads { nh, nkv, hd } = heads;
        let (qw, kw) = (nh * hd, nkv * hd);
        let qkv = lin.forward(x, rows(x, lin.inp));
        for part in [&mut out.q, &mut out.k, &mut out.v] {
            part.clear();
        }
        for row in qkv.chunks_exact(qw + 2 * kw) {
            out.q.extend_from_slice(&row[..qw]);
            out.k.extend_from_slice(&row[qw..qw + kw]);
            out.v.extend_from_slice(&row[qw + kw..]);
        }
        Ok(())
    }

    fn rope(&self, bt: &CpuBatch, qkv: &mut CpuQkv, heads: Heads) -> Result<()> {
        if let Some(table) = &bt.rope {
            ops::rope(&mut qkv.q, heads.nh, heads.hd, &bt.positions, table);
            ops::rope(&mut qkv.k, heads.nkv, heads.hd, &bt.positions, table);
        }
        Ok(())
    }

    fn attention(
        &self,
        bt: &CpuBatch,
        qkv: &CpuQkv,
        heads: Heads,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        *out = ops::attention_batch(&qkv.q, &qkv.k, &qkv.v, &bt.starts, heads, bt.mask);
        Ok(())
    }

    fn linear(&self, _: &CpuBatch, x: &Vec<f32>, lin: &Linear, out: &mut Vec<f32>) -> Result<()> {
        lin.forward_into(x, rows(x, lin.inp), out);
        Ok(())
    }

    fn linear_gelu(
        &self,
        _: &CpuBatch,
        x: &Vec<f32>,
        lin: &Linear,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        lin.forward_into(x, rows(x, lin.inp), out);
        ops::gelu(out);
        Ok(())
    }

    fn swiglu(
        &self,
        _: &CpuBatch,
        gate_up: &Vec<f32>,
        ff: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        *out = ops::swiglu(gate_up, ff);
        Ok(())
    }

    fn add_linear(
        &self,
        _: &CpuBatch,
        x: &mut CpuStream,
        a: &Vec<f32>,
        lin: &Linear,
    ) -> Result<()> {
        lin.forward_into(a, rows(a, lin.inp), &mut x.h);
        ops::add(&mut x.x, &x.h);
        Ok(())
    }

    fn add_linear_norm(
        &self,
        bt: &CpuBatch,
        x: &mut CpuStream,
        a: &Vec<f32>,
        lin: &Linear,
        n: &Norm<Cpu>,
        eps: f32,
    ) -> Result<()> {
        self.add_linear(bt, x, a, lin)?;
        ops::layer_norm(&mut x.x, &n.w, &n.b, eps);
        Ok(())
    }

    fn sums(&self, texts: usize, width: usize) -> Result<Vec<f64>> {
        Ok(vec![0.0f64; texts * width])
    }

    fn pool(
        &self,
        h: &CpuStream,
        d: usize,
        chunk_start: &[usize],
        chunk_text: &[usize],
        sums: &mut Vec<f64>,
    ) -> Result<()> {
        for (c, &t) in chunk_text.iter().enumerate() {
            let acc = &mut sums[t * d..][..d];
            for row in h.x[chunk_start[c] * d..chunk_start[c + 1] * d].chunks_exact(d) {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += *v as f64);
            }
        }
        Ok(())
    }

    fn sums_to_host(&self, sums: Vec<f64>) -> Result<Vec<f64>> {
        Ok(sums)
    }

    fn to_host(&self, h: CpuStream) -> Result<Vec<f32>> {
        Ok(h.x)
    }
}
