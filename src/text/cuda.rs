//! The text ops ([`TextOps`]) on a CUDA device, which run the very graphs of
//! [`super::decoder`] and [`super::bert`] with bf16 weights and GEMM operands, f32
//! accumulation and an f32 residual stream.
//!
//! - weights: converted once at load from the CPU loader's f32 tensors (LoRA already merged) to
//!   bf16 matrices on the device; norm weights and biases stay f32. The host copies are dropped.
//! - GEMMs: cuBLAS `cublasGemmEx` ([`RowMajorGemm`]), bf16 × bf16 with f32 compute, output
//!   bf16 (when a kernel reads it next) or f32 (accumulated straight into the residual stream,
//!   β = 1).
//! - everything else: `kernels/llm.cu` — embeddings, RMSNorm, residual + LayerNorm, bias,
//!   GELU, SwiGLU, RoPE (the host's [`RopeTable`], so theta and scaling are the CPU's), flash
//!   attention over the packed sequences, and token-weighted pooling into f64 sums.
//!
//! Sequences are packed back to back without padding, as on the CPU; attention runs on tiles
//! of `ATT_BQ` queries that never cross a sequence. The kernel wrappers below are public so
//! that tests/cuda_text.rs can check each against its CPU op in [`super::ops`].

use super::backend::{Norm, Packed, Rope, TextOps};
use super::bert::{Bert, Layer as BertLayer};
use super::cpu::Cpu;
use super::decoder::{Decoder, DecoderConfig, Layer as DecoderLayer};
use super::engine::{Engine, Model, TextNet};
use super::ops::{AttnMask, Heads, Linear, RopeTable};
use crate::device::cuda::consts::llm::{ATT_BQ, ATT_MAX_HEAD_DIM, ATT_THREADS, ROW_THREADS};
use crate::device::cuda::{launch, launch_err, launch_kernel, to_bf16, Elem, Gpu, RowMajorGemm};
use crate::error::{Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use std::sync::{Arc, Mutex};

const MODULE: &str = "llm";
/// The widest head the attention kernels take (`attention_*_d128`).
const MAX_HEAD_DIM: usize = ATT_MAX_HEAD_DIM as usize;

/// Sizes the kernels index with `int` must stay below 2³¹.
fn int(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| {
        Error::Usage(format!(
            "{what} = {n} is too large for one CUDA forward pass; use a smaller --batch"
        ))
    })
}

/// `out` holds `n · d` elements, and (n, d) as the kernels' ints; None when there are no tokens.
fn tokens_by_width<T>(
    out: &CudaSlice<T>,
    n: usize,
    d: usize,
    what: &str,
) -> Result<Option<(i32, i32)>> {
    need(out, n * d, what)?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some((int(n, "tokens")?, int(d, "width")?)))
}

/// The launch of an elementwise (grid-stride) kernel over `count` elements.
fn elementwise(count: usize) -> LaunchConfig {
    launch::flat(count, 256, 1 << 20)
}

fn need<T>(buf: &CudaSlice<T>, n: usize, what: &str) -> Result<()> {
    if buf.len() < n {
        return Err(Error::Cuda(format!(
            "{what}: buffer of {} elements, {n} needed",
            buf.len()
        )));
    }
    Ok(())
}

/// A null device pointer for the kernels' optional arguments.
const NULL: u64 = 0;

/// `out[t] = table[ids[t]]`, bf16 table of width `d` → f32 rows.
pub fn embed_gather(
    gpu: &Gpu,
    table: &CudaSlice<u16>,
    ids: &CudaSlice<i32>,
    n: usize,
    d: usize,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let Some((ni, di)) = tokens_by_width(out, n, d, "embed_gather")? else {
        return Ok(());
    };
    let cfg = elementwise(n * d);
    // SAFETY: embed_gather(table, ids, n, d, out); ids < vocab checked by the caller, out n·d.
    unsafe {
        launch_kernel!(
            gpu,
            MODULE,
            "embed_gather",
            cfg,
            [table, ids, &ni, &di, out]
        )
    }
}

/// BERT embeddings: `word[ids[t]] + type0 + position[positions[t]]`.
#[allow(clippy::too_many_arguments)]
pub fn bert_embed(
    gpu: &Gpu,
    word: &CudaSlice<u16>,
    position: &CudaSlice<u16>,
    type0: &CudaSlice<f32>,
    ids: &CudaSlice<i32>,
    positions: &CudaSlice<i32>,
    n: usize,
    d: usize,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let Some((ni, di)) = tokens_by_width(out, n, d, "bert_embed")? else {
        return Ok(());
    };
    let cfg = elementwise(n * d);
    // SAFETY: bert_embed(word, position, type0, ids, positions, n, d, out); ids < vocab and
    // positions < max_positions checked by the caller, out n·d.
    unsafe {
        launch_kernel!(
            gpu,
            MODULE,
            "bert_embed",
            cfg,
            [word, position, type0, ids, positions, &ni, &di, out]
        )
    }
}

/// RMSNorm of `rows` rows of width `d` (= w.len()), f32 in, `T` out.
pub fn rms_norm<T: Elem>(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    eps: f32,
    rows: usize,
    d: usize,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    need(x, rows * d, "rms_norm")?;
    need(out, rows * d, "rms_norm")?;
    need(w, d, "rms_norm weight")?;
    if rows == 0 {
        return Ok(());
    }
    let (name, di) = (format!("rms_norm_{}", T::SUFFIX), int(d, "width")?);
    let cfg = launch::rows(rows, 1, ROW_THREADS);
    // SAFETY: rms_norm_T(x, w, eps, d, out), one block per row of d.
    unsafe { launch_kernel!(gpu, MODULE, &name, cfg, [x, w, &eps, &di, out]) }
}

/// BERT's `x = LayerNorm(x + y + bias)` in place (y, bias optional), with a bf16 copy in `xb`.
#[allow(clippy::too_many_arguments)]
pub fn residual_layer_norm(
    gpu: &Gpu,
    x: &mut CudaSlice<f32>,
    y: Option<&CudaSlice<f32>>,
    bias: Option<&CudaSlice<f32>>,
    w: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    eps: f32,
    rows: usize,
    d: usize,
    xb: Option<&mut CudaSlice<u16>>,
) -> Result<()> {
    need(x, rows * d, "residual_layer_norm")?;
    if let Some(y) = y {
        need(y, rows * d, "residual_layer_norm")?;
    }
    if let Some(xb) = &xb {
        need(xb, rows * d, "residual_layer_norm")?;
    }
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function(MODULE, "residual_layer_norm")?;
    let di = int(d, "width")?;
    // The optional arguments are pushed one by one: a null pointer or the buffer.
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x);
    match y {
        Some(y) => l.arg(y),
        None => l.arg(&NULL),
    };
    match bias {
        Some(bias) => l.arg(bias),
        None => l.arg(&NULL),
    };
    l.arg(w).arg(b).arg(&eps).arg(&di);
    match xb {
        Some(xb) => l.arg(xb),
        None => l.arg(&NULL),
    };
    // SAFETY: residual_layer_norm(x, y?, bias?, w, b, eps, d, xb?); the optional ones are null
    // or rows·d (bias d), one block per row.
    unsafe { l.launch(launch::rows(rows, 1, ROW_THREADS)) }
        .map_err(launch_err("residual_layer_norm"))?;
    Ok(())
}

/// `x[r] += b` for `rows` rows of width `d`.
pub fn add_bias<T: Elem>(
    gpu: &Gpu,
    x: &mut CudaSlice<T>,
    b: &CudaSlice<f32>,
    rows: usize,
    d: usize,
) -> Result<()> {
    need(x, rows * d, "add_bias")?;
    need(b, d, "add_bias")?;
    if rows * d == 0 {
        return Ok(());
    }
    let (name, n, di) = (
        format!("add_bias_{}", T::SUFFIX),
        rows as i64,
        int(d, "width")?,
    );
    let cfg = elementwise(rows * d);
    // SAFETY: add_bias_T(x, b, n, d) over rows·d elements.
    unsafe { launch_kernel!(gpu, MODULE, &name, cfg, [x, b, &n, &di]) }
}

/// `x = GELU(x + b)` in place (exact erf GELU), b optional.
pub fn gelu_bias<T: Elem>(
    gpu: &Gpu,
    x: &mut CudaSlice<T>,
    b: Option<&CudaSlice<f32>>,
    rows: usize,
    d: usize,
) -> Result<()> {
    need(x, rows * d, "gelu_bias")?;
    if rows * d == 0 {
        return Ok(());
    }
    let name = format!("gelu_bias_{}", T::SUFFIX);
    let f = gpu.function(MODULE, &name)?;
    let (n, di) = (rows as i64, int(d, "width")?);
    // The optional argument is pushed one by one: a null pointer or the bias.
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x);
    match b {
        Some(b) => l.arg(b),
        None => l.arg(&NULL),
    };
    l.arg(&n).arg(&di);
    // SAFETY: gelu_bias_T(x, b?, n, d) over rows·d elements.
    unsafe { l.launch(elementwise(rows * d)) }.map_err(launch_err(&name))?;
    Ok(())
}

/// SwiGLU of the fused `[rows, 2·ff]` gate|up projection into `[rows, ff]`.
pub fn swiglu<T: Elem>(
    gpu: &Gpu,
    gate_up: &CudaSlice<T>,
    rows: usize,
    ff: usize,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    need(gate_up, rows * 2 * ff, "swiglu")?;
    need(out, rows * ff, "swiglu")?;
    if rows * ff == 0 {
        return Ok(());
    }
    let name = format!("swiglu_{}", T::SUFFIX);
    let (r, ffi) = (rows as i64, int(2 * ff, "MLP width")? / 2);
    let cfg = elementwise(rows * ff);
    // SAFETY: swiglu_T(gate_up, rows, ff, out) over rows·ff elements.
    unsafe { launch_kernel!(gpu, MODULE, &name, cfg, [gate_up, &r, &ffi, out]) }
}

/// A [`RopeTable`] on the device.
pub struct RopeDev {
    pub positions: usize,
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    half: usize,
}

impl RopeDev {
    pub fn new(gpu: &Gpu, inv_freq: &[f32], positions: usize) -> Result<RopeDev> {
        let t = RopeTable::new(inv_freq, positions);
        Ok(RopeDev {
            positions,
            cos: gpu.htod(&t.cos)?,
            sin: gpu.htod(&t.sin)?,
            half: t.half,
        })
    }
}

/// Rotary embedding in place on the first `heads` heads (width `hd`) of each of `n` rows of
/// stride `stride`; row t at position `positions[t]` (< `table.positions`, checked by the caller).
#[allow(clippy::too_many_arguments)]
pub fn rope<T: Elem>(
    gpu: &Gpu,
    x: &mut CudaSlice<T>,
    stride: usize,
    heads: usize,
    hd: usize,
    positions: &CudaSlice<i32>,
    table: &RopeDev,
    n: usize,
) -> Result<()> {
    if hd / 2 != table.half || heads * hd > stride {
        return Err(Error::Cuda(format!(
            "rope: {heads} heads of {hd} in rows of {stride}, table of {} frequencies",
            table.half
        )));
    }
    if n == 0 {
        return Ok(());
    }
    need(x, (n - 1) * stride + heads * hd, "rope")?;
    let name = format!("rope_{}", T::SUFFIX);
    let (si, hi, hdi, ni) = (
        int(stride, "row width")?,
        int(heads, "heads")?,
        int(hd, "head width")?,
        int(n, "tokens")?,
    );
    let cfg = elementwise(n * heads * hd / 2);
    // SAFETY: rope_T(x, stride, heads, hd, positions, cos, sin, n) over n·heads·hd/2 pairs.
    unsafe {
        launch_kernel!(
            gpu,
            MODULE,
            &name,
            cfg,
            [x, &si, &hi, &hdi, positions, &table.cos, &table.sin, &ni]
        )
    }
}

/// The attention tiles of packed sequences: {q0, q1, s0, s1} per block of at most `ATT_BQ`
/// queries of one sequence, the tiles with the most keys first (they finish last).
pub struct AttnPlan {
    tiles: CudaSlice<i32>,
    n_tiles: usize,
    total: usize,
}

impl AttnPlan {
    /// `starts`: sequence s holds rows `starts[s]..starts[s + 1]` (as `ops::attention_batch`).
    pub fn new(gpu: &Gpu, starts: &[usize], mask: AttnMask) -> Result<AttnPlan> {
        let bq = ATT_BQ as usize;
        let mut tiles: Vec<[usize; 4]> = Vec::new();
        for w in starts.windows(2) {
            for q0 in (w[0]..w[1]).step_by(bq) {
                tiles.push([q0, (q0 + bq).min(w[1]), w[0], w[1]]);
            }
        }
        let keys = |t: &[usize; 4]| {
            let hi = if mask.causal { t[1] } else { t[3] };
            let lo = mask
                .window
                .map_or(t[2], |w| (t[0] + 1).saturating_sub(w).max(t[2]));
            hi - lo
        };
        tiles.sort_by_key(|t| std::cmp::Reverse(keys(t)));
        let total = starts.last().copied().unwrap_or(0);
        int(total, "packed tokens")?;
        let flat: Vec<i32> = tiles.iter().flatten().map(|&v| v as i32).collect();
        Ok(AttnPlan {
            tiles: gpu.htod(&flat)?,
            n_tiles: tiles.len(),
            total,
        })
    }
}

/// Attention of packed sequences (`plan`), all heads: q rows of stride `q_stride` (head h at
/// column h·hd), k and v rows of stride `kv_stride`, out rows of stride `out_stride`; the mask
/// and grouped-query rule of `ops::attention_batch`.
#[allow(clippy::too_many_arguments)]
pub fn attention<T: Elem>(
    gpu: &Gpu,
    q: &CudaView<T>,
    k: &CudaView<T>,
    v: &CudaView<T>,
    q_stride: usize,
    kv_stride: usize,
    out: &mut CudaSlice<T>,
    out_stride: usize,
    plan: &AttnPlan,
    heads: Heads,
    mask: AttnMask,
) -> Result<()> {
    let Heads { nh, nkv, hd } = heads;
    if nkv == 0
        || nh % nkv != 0
        || hd == 0
        || nh * hd > q_stride.min(out_stride)
        || nkv * hd > kv_stride
    {
        return Err(Error::Cuda(format!(
            "attention: {nh}/{nkv} heads of {hd} in rows of {q_stride}/{kv_stride}/{out_stride}"
        )));
    }
    let width = match hd {
        1..=64 => 64,
        65..=MAX_HEAD_DIM => MAX_HEAD_DIM,
        _ => {
            return Err(Error::Usage(format!(
                "head_dim {hd} is wider than the CUDA attention kernels take ({MAX_HEAD_DIM}); use --device cpu"
            )))
        }
    };
    if plan.n_tiles == 0 {
        return Ok(());
    }
    let t = plan.total;
    for (buf, stride, w, name) in [
        (q.len(), q_stride, nh * hd, "q"),
        (k.len(), kv_stride, nkv * hd, "k"),
        (v.len(), kv_stride, nkv * hd, "v"),
        (out.len(), out_stride, nh * hd, "out"),
    ] {
        if buf < (t - 1) * stride + w {
            return Err(Error::Cuda(format!(
                "attention: {name} holds {buf} elements, {t} rows of stride {stride} need more"
            )));
        }
    }
    if nh > 65535 {
        return Err(Error::Usage(format!("{nh} attention heads are too many")));
    }
    let name = format!("attention_{}_d{width}", T::SUFFIX);
    let scale_log2 = std::f32::consts::LOG2_E / (hd as f32).sqrt();
    let (qs, ks, os) = (
        int(q_stride, "row width")?,
        int(kv_stride, "row width")?,
        int(out_stride, "row width")?,
    );
    let (nhi, nkvi, hdi) = (nh as i32, nkv as i32, hd as i32);
    let causal = mask.causal as i32;
    let window = match mask.window {
        Some(w) => int(w.max(1), "sliding window").unwrap_or(i32::MAX),
        None => 0,
    };
    let cfg = launch::grid((plan.n_tiles as u32, nh as u32, 1), ATT_THREADS, 0);
    // SAFETY: attention_T_dW(q, k, v, q_stride, kv_stride, out, out_stride, tiles, nh, nkv, hd,
    // scale_log2, causal, window); the tiles index rows < plan.total, which every operand holds
    // (checked above), and hd <= the kernel's width.
    unsafe {
        launch_kernel!(
            gpu,
            MODULE,
            &name,
            cfg,
            [
                q,
                k,
                v,
                &qs,
                &ks,
                out,
                &os,
                &plan.tiles,
                &nhi,
                &nkvi,
                &hdi,
                &scale_log2,
                &causal,
                &window
            ]
        )
    }
}

/// Adds the column sums (f64) of each chunk of `h` (`[rows, d]`; chunk b = rows
/// `chunk_start[b]..chunk_start[b + 1]`) to `sums[chunk_text[b]]`.
pub fn pool_rows(
    gpu: &Gpu,
    h: &CudaSlice<f32>,
    d: usize,
    chunk_start: &[usize],
    chunk_text: &[usize],
    sums: &mut CudaSlice<f64>,
) -> Result<()> {
    let chunks = chunk_text.len();
    if chunk_start.len() != chunks + 1 {
        return Err(Error::Cuda(
            "pool_rows: chunk_start needs chunks + 1 entries".into(),
        ));
    }
    if chunks == 0 || d == 0 {
        return Ok(());
    }
    need(h, chunk_start[chunks] * d, "pool_rows")?;
    let texts = chunk_text.iter().max().map_or(0, |t| t + 1);
    need(sums, texts * d, "pool_rows")?;
    let starts: Vec<i32> = chunk_start
        .iter()
        .map(|&s| int(s, "packed tokens"))
        .collect::<Result<_>>()?;
    let text: Vec<i32> = chunk_text.iter().map(|&t| t as i32).collect();
    let (starts, text) = (gpu.htod(&starts)?, gpu.htod(&text)?);
    let di = int(d, "width")?;
    let cfg = launch::grid((chunks as u32, d.div_ceil(128) as u32, 1), 128, 0);
    // SAFETY: pool_rows(h, d, chunk_start, chunk_text, sums): rows and texts in range (checked).
    unsafe {
        launch_kernel!(
            gpu,
            MODULE,
            "pool_rows",
            cfg,
            [h, &di, &starts, &text, sums]
        )
    }
}

/// `n` bf16 values uniform in [−amp, amp) from a hash of (seed, index).
pub fn fill_uniform_bf16(
    gpu: &Gpu,
    x: &mut CudaSlice<u16>,
    n: usize,
    seed: u64,
    amp: f32,
) -> Result<()> {
    need(x, n, "fill_uniform_bf16")?;
    if n == 0 {
        return Ok(());
    }
    let ni = n as i64;
    // SAFETY: fill_uniform_bf16(x, n, seed, amp) writes n elements.
    unsafe {
        launch_kernel!(
            gpu,
            MODULE,
            "fill_uniform_bf16",
            elementwise(n),
            [x, &ni, &seed, &amp]
        )
    }
}

/// A dense layer on the device: bf16 weight `[out, inp]`, optional f32 bias.
pub struct DevLinear {
    w: CudaSlice<u16>,
    b: Option<CudaSlice<f32>>,
    out: usize,
    inp: usize,
}

impl DevLinear {
    fn upload(gpu: &Gpu, l: &Linear) -> Result<DevLinear> {
        Ok(DevLinear {
            w: gpu.htod(&to_bf16(&l.w))?,
            b: l.b.as_deref().map(|b| gpu.htod(b)).transpose()?,
            out: l.out,
            inp: l.inp,
        })
    }

    /// Uniform weights of variance 1/inp (outputs of the inputs' scale), no bias.
    fn random(gpu: &Gpu, out: usize, inp: usize, seed: u64) -> Result<DevLinear> {
        let mut w = gpu.zeros::<u16>(out * inp)?;
        fill_uniform_bf16(gpu, &mut w, out * inp, seed, (3.0 / inp as f32).sqrt())?;
        Ok(DevLinear {
            w,
            b: None,
            out,
            inp,
        })
    }

    /// `y = x Wᵀ` (`y += x Wᵀ` when `accumulate`), bf16 operands, f32 compute.
    fn gemm<T: Elem>(
        &self,
        c: &Cuda,
        x: &CudaSlice<u16>,
        rows: usize,
        y: &mut CudaSlice<T>,
        accumulate: bool,
    ) -> Result<()> {
        RowMajorGemm::linear(rows, self.out, self.inp, accumulate).run_bf16(
            &c.gpu.stream,
            &c.blas,
            x,
            &self.w,
            y,
        )
    }

    /// `y += b` when there is a bias.
    fn bias<T: Elem>(&self, c: &Cuda, y: &mut CudaSlice<T>, rows: usize) -> Result<()> {
        match &self.b {
            Some(b) => add_bias(&c.gpu, y, b, rows, self.out),
            None => Ok(()),
        }
    }
}

/// The CUDA backend of the text models: the device, its cuBLAS handle, and the RoPE table,
/// grown to the longest sequence seen (one per model).
pub struct Cuda {
    gpu: Arc<Gpu>,
    blas: Arc<CudaBlas>,
    rope: Mutex<Option<Arc<RopeDev>>>,
}

/// A model on a CUDA device.
pub type CudaText = Engine<Cuda>;

/// A packed batch on the device.
pub struct DevBatch {
    tokens: usize,
    ids: CudaSlice<i32>,
    positions: CudaSlice<i32>,
    plan: AttnPlan,
    mask: AttnMask,
    rope: Option<Arc<RopeDev>>,
}

/// The f32 residual stream `[rows, width]`. A BERT stream also holds the bf16 copy of it its
/// LayerNorms write for the next GEMM, and the f32 scratch a layer's output lands in before
/// the residual LayerNorm adds it; a decoder's holds one-element placeholders there.
pub struct DevStream {
    x: CudaSlice<f32>,
    copy: CudaSlice<u16>,
    scratch: CudaSlice<f32>,
    rows: usize,
    width: usize,
}

/// Per-text f64 sums on the device, and their count.
pub struct DevSums {
    sums: CudaSlice<f64>,
    len: usize,
}

impl Cuda {
    fn new(gpu: &Arc<Gpu>) -> Result<Cuda> {
        let gpu = gpu.clone();
        let blas = gpu.blas()?.ok_or_else(|| {
            Error::Cuda("cuBLAS (libcublas.so) cannot be loaded: add the CUDA toolkit's lib directory to LD_LIBRARY_PATH, or use --device cpu".into())
        })?;
        // Load the kernels now, so that a missing NVRTC shows at load time, not mid-run.
        gpu.module(MODULE)?;
        Ok(Cuda {
            gpu,
            blas,
            rope: Mutex::new(None),
        })
    }

    /// The RoPE table for `longest` positions: the kept one when it is long enough, else a new
    /// one of at least `r.keep` positions, kept for the next batches.
    fn rope_table(&self, r: Rope, longest: usize) -> Result<Arc<RopeDev>> {
        let mut slot = self
            .rope
            .lock()
            .map_err(|_| Error::Cuda("RoPE table poisoned by an earlier panic".into()))?;
        if let Some(t) = slot.as_ref().filter(|t| t.positions >= longest) {
            return Ok(t.clone());
        }
        let t = Arc::new(RopeDev::new(&self.gpu, r.inv_freq, longest.max(r.keep))?);
        *slot = Some(t.clone());
        Ok(t)
    }

    /// A zeroed stream of the batch's rows; `bert`: with its bf16 copy and scratch.
    fn stream(&self, bt: &DevBatch, width: usize, bert: bool) -> Result<DevStream> {
        let n = bt.tokens * width;
        int(n, "packed tokens × width")?;
        let extra = if bert { n } else { 1 };
        Ok(DevStream {
            x: self.gpu.zeros(n)?,
            copy: self.gpu.zeros(extra)?,
            scratch: self.gpu.zeros(extra)?,
            rows: bt.tokens,
            width,
        })
    }

    /// The decoder's weights as bf16 matrices (norm weights stay f32).
    fn upload_decoder(&self, m: Decoder) -> Result<Decoder<Cuda>> {
        let g = &self.gpu;
        let layers = m
            .layers
            .iter()
            .map(|l| {
                Ok(DecoderLayer {
                    attn_norm: g.htod(&l.attn_norm)?,
                    qkv: DevLinear::upload(g, &l.qkv)?,
                    o: DevLinear::upload(g, &l.o)?,
                    mlp_norm: g.htod(&l.mlp_norm)?,
                    gate_up: DevLinear::upload(g, &l.gate_up)?,
                    down: DevLinear::upload(g, &l.down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoder {
            embed: g.htod(&to_bf16(&m.embed))?,
            norm: g.htod(&m.norm)?,
            layers,
            cfg: m.cfg,
        })
    }

    /// The encoder's weights as bf16 matrices (norms, biases and the token type stay f32).
    fn upload_bert(&self, m: Bert) -> Result<Bert<Cuda>> {
        let g = &self.gpu;
        let norm = |n: &Norm<Cpu>| -> Result<Norm<Cuda>> {
            Ok(Norm {
                w: g.htod(&n.w)?,
                b: g.htod(&n.b)?,
            })
        };
        let layers = m
            .layers
            .iter()
            .map(|l| {
                Ok(BertLayer {
                    qkv: DevLinear::upload(g, &l.qkv)?,
                    o: DevLinear::upload(g, &l.o)?,
                    attn_norm: norm(&l.attn_norm)?,
                    inter: DevLinear::upload(g, &l.inter)?,
                    out: DevLinear::upload(g, &l.out)?,
                    out_norm: norm(&l.out_norm)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert {
            word: g.htod(&to_bf16(&m.word))?,
            position: g.htod(&to_bf16(&m.position))?,
            token_type0: g.htod(&m.token_type0)?,
            emb_norm: norm(&m.emb_norm)?,
            layers,
            cfg: m.cfg,
        })
    }
}

impl Model {
    /// The network on a CUDA device: its f32 weights become bf16 matrices there, and the host
    /// copies are dropped.
    pub(crate) fn into_cuda(self, gpu: &Arc<Gpu>) -> Result<Box<dyn TextNet>> {
        let ops = Cuda::new(gpu)?;
        let model = match self {
            Model::Decoder(m) => Model::Decoder(ops.upload_decoder(m)?),
            Model::Bert(m) => Model::Bert(ops.upload_bert(m)?),
        };
        Ok(Box::new(Engine { ops, model }))
    }
}

impl CudaText {
    /// A decoder of `cfg`'s shape with random bf16 weights drawn on the device (benches of
    /// model sizes with no checkpoint at hand, e.g. Mistral-7B): every matrix uniform with
    /// variance 1/fan-in, norm weights 1, no biases.
    pub fn random_decoder(gpu: &Arc<Gpu>, cfg: DecoderConfig, seed: u64) -> Result<CudaText> {
        let ops = Cuda::new(gpu)?;
        let g = &ops.gpu;
        let d = cfg.hidden;
        let Heads { nh, nkv, hd } = cfg.heads;
        let ones = vec![1.0f32; d];
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_add(crate::rng::GOLDEN);
            s
        };
        let layers = (0..cfg.layers)
            .map(|_| {
                Ok(DecoderLayer {
                    attn_norm: g.htod(&ones)?,
                    qkv: DevLinear::random(g, (nh + 2 * nkv) * hd, d, next())?,
                    o: DevLinear::random(g, d, nh * hd, next())?,
                    mlp_norm: g.htod(&ones)?,
                    gate_up: DevLinear::random(g, 2 * cfg.ff, d, next())?,
                    down: DevLinear::random(g, d, cfg.ff, next())?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut embed = g.zeros::<u16>(cfg.vocab * d)?;
        fill_uniform_bf16(g, &mut embed, cfg.vocab * d, next(), 1.0)?;
        let norm = g.htod(&ones)?;
        g.sync()?;
        let model = Model::Decoder(Decoder {
            embed,
            norm,
            layers,
            cfg,
        });
        Ok(Engine { ops, model })
    }
}

impl TextOps for Cuda {
    type Linear = DevLinear;
    type Vector = CudaSlice<f32>;
    type Table = CudaSlice<u16>;
    type Stream = DevStream;
    type Act = CudaSlice<u16>;
    type Qkv = CudaSlice<u16>;
    type Batch = DevBatch;
    type Sums = DevSums;

    fn batch(&self, p: &Packed, mask: AttnMask, rope: Option<Rope>) -> Result<DevBatch> {
        let ids: Vec<i32> = p.ids.iter().map(|&i| i as i32).collect();
        let positions: Vec<i32> = p.positions.iter().map(|&i| i as i32).collect();
        let rope = rope.map(|r| self.rope_table(r, p.longest)).transpose()?;
        Ok(DevBatch {
            tokens: p.tokens(),
            ids: self.gpu.htod(&ids)?,
            positions: self.gpu.htod(&positions)?,
            plan: AttnPlan::new(&self.gpu, &p.starts, mask)?,
            mask,
            rope,
        })
    }

    fn act(&self, bt: &DevBatch, width: usize) -> Result<CudaSlice<u16>> {
        self.gpu.zeros(bt.tokens * width)
    }

    fn qkv_buffer(&self, bt: &DevBatch, heads: Heads) -> Result<CudaSlice<u16>> {
        self.act(bt, (heads.nh + 2 * heads.nkv) * heads.hd)
    }

    fn embed(&self, bt: &DevBatch, table: &CudaSlice<u16>, d: usize) -> Result<DevStream> {
        let mut s = self.stream(bt, d, false)?;
        embed_gather(&self.gpu, table, &bt.ids, bt.tokens, d, &mut s.x)?;
        Ok(s)
    }

    fn bert_embed(
        &self,
        bt: &DevBatch,
        word: &CudaSlice<u16>,
        position: &CudaSlice<u16>,
        type0: &CudaSlice<f32>,
        d: usize,
    ) -> Result<DevStream> {
        let mut s = self.stream(bt, d, true)?;
        let (ids, pos) = (&bt.ids, &bt.positions);
        bert_embed(
            &self.gpu, word, position, type0, ids, pos, bt.tokens, d, &mut s.x,
        )?;
        Ok(s)
    }

    fn rms_norm(
        &self,
        bt: &DevBatch,
        x: &DevStream,
        w: &CudaSlice<f32>,
        eps: f32,
        out: &mut CudaSlice<u16>,
    ) -> Result<()> {
        rms_norm(&self.gpu, &x.x, w, eps, bt.tokens, x.width, out)
    }

    fn final_rms_norm(
        &self,
        bt: &DevBatch,
        x: DevStream,
        w: &CudaSlice<f32>,
        eps: f32,
    ) -> Result<DevStream> {
        let mut out = self.gpu.zeros::<f32>(bt.tokens * x.width)?;
        rms_norm(&self.gpu, &x.x, w, eps, bt.tokens, x.width, &mut out)?;
        Ok(DevStream { x: out, ..x })
    }

    fn layer_norm(&self, bt: &DevBatch, s: &mut DevStream, n: &Norm<Cuda>, eps: f32) -> Result<()> {
        let (t, d) = (bt.tokens, s.width);
        let copy = Some(&mut s.copy);
        residual_layer_norm(&self.gpu, &mut s.x, None, None, &n.w, &n.b, eps, t, d, copy)
    }

    fn normed<'a>(&self, x: &'a DevStream) -> &'a CudaSlice<u16> {
        &x.copy
    }

    fn qkv(
        &self,
        bt: &DevBatch,
        x: &CudaSlice<u16>,
        lin: &DevLinear,
        _: Heads,
        out: &mut CudaSlice<u16>,
    ) -> Result<()> {
        self.linear(bt, x, lin, out)
    }

    fn rope(&self, bt: &DevBatch, qkv: &mut CudaSlice<u16>, heads: Heads) -> Result<()> {
        let Some(table) = &bt.rope else {
            return Ok(());
        };
        let Heads { nh, nkv, hd } = heads;
        // q and k are adjacent in the fused row: one call rotates both.
        let w = (nh + 2 * nkv) * hd;
        rope(
            &self.gpu,
            qkv,
            w,
            nh + nkv,
            hd,
            &bt.positions,
            table,
            bt.tokens,
        )
    }

    fn attention(
        &self,
        bt: &DevBatch,
        qkv: &CudaSlice<u16>,
        heads: Heads,
        out: &mut CudaSlice<u16>,
    ) -> Result<()> {
        let Heads { nh, nkv, hd } = heads;
        let w = (nh + 2 * nkv) * hd;
        let (q, k, v) = (
            qkv.slice(..),
            qkv.slice(nh * hd..),
            qkv.slice((nh + nkv) * hd..),
        );
        let g = &self.gpu;
        attention(g, &q, &k, &v, w, w, out, nh * hd, &bt.plan, heads, bt.mask)
    }

    fn linear(
        &self,
        bt: &DevBatch,
        x: &CudaSlice<u16>,
        lin: &DevLinear,
        out: &mut CudaSlice<u16>,
    ) -> Result<()> {
        lin.gemm(self, x, bt.tokens, out, false)?;
        lin.bias(self, out, bt.tokens)
    }

    fn linear_gelu(
        &self,
        bt: &DevBatch,
        x: &CudaSlice<u16>,
        lin: &DevLinear,
        out: &mut CudaSlice<u16>,
    ) -> Result<()> {
        lin.gemm(self, x, bt.tokens, out, false)?;
        gelu_bias(&self.gpu, out, lin.b.as_ref(), bt.tokens, lin.out)
    }

    fn swiglu(
        &self,
        bt: &DevBatch,
        gate_up: &CudaSlice<u16>,
        ff: usize,
        out: &mut CudaSlice<u16>,
    ) -> Result<()> {
        swiglu(&self.gpu, gate_up, bt.tokens, ff, out)
    }

    fn add_linear(
        &self,
        bt: &DevBatch,
        x: &mut DevStream,
        a: &CudaSlice<u16>,
        lin: &DevLinear,
    ) -> Result<()> {
        // The residual add is the GEMM's β = 1.
        lin.gemm(self, a, bt.tokens, &mut x.x, true)?;
        lin.bias(self, &mut x.x, bt.tokens)
    }

    fn add_linear_norm(
        &self,
        bt: &DevBatch,
        s: &mut DevStream,
        a: &CudaSlice<u16>,
        lin: &DevLinear,
        n: &Norm<Cuda>,
        eps: f32,
    ) -> Result<()> {
        let (t, d) = (bt.tokens, s.width);
        lin.gemm(self, a, t, &mut s.scratch, false)?;
        let (y, b, copy) = (Some(&s.scratch), lin.b.as_ref(), Some(&mut s.copy));
        residual_layer_norm(&self.gpu, &mut s.x, y, b, &n.w, &n.b, eps, t, d, copy)
    }

    fn sums(&self, texts: usize, width: usize) -> Result<DevSums> {
        let len = texts * width;
        Ok(DevSums {
            sums: self.gpu.zeros(len)?,
            len,
        })
    }

    fn pool(
        &self,
        h: &DevStream,
        width: usize,
        chunk_start: &[usize],
        chunk_text: &[usize],
        sums: &mut DevSums,
    ) -> Result<()> {
        pool_rows(
            &self.gpu,
            &h.x,
            width,
            chunk_start,
            chunk_text,
            &mut sums.sums,
        )?;
        self.gpu.sync()
    }

    fn sums_to_host(&self, sums: DevSums) -> Result<Vec<f64>> {
        self.gpu.dtoh(&sums.sums, sums.len)
    }

    fn to_host(&self, h: DevStream) -> Result<Vec<f32>> {
        self.gpu.dtoh(&h.x, h.rows * h.width)
    }
}
