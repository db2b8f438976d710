//! The text models' ops behind one interface, so that each model graph is written once
//! (decoder.rs, bert.rs) and runs on either device: `cpu::Cpu` over the f32 reference ops of
//! ops.rs, `cuda::Cuda` over `kernels/llm.cu` and cuBLAS (bf16 weights and GEMM operands, f32
//! residual stream).
//!
//! An op is a step of the models' equations (RMSNorm, a Linear layer added to the residual
//! stream, RoPE, attention, SwiGLU, …); each backend carries it out in its own order of
//! operations, the one its parity tests pin, and owns the buffers it needs. A graph allocates
//! its activations once per forward pass and writes them layer after layer.

use super::ops::{AttnMask, Heads};
use crate::error::Result;

/// Sequences packed back to back without padding: every op of a forward pass sees them so.
pub struct Packed {
    /// Token ids, sequence after sequence.
    pub ids: Vec<u32>,
    /// Each token's position in its own sequence.
    pub positions: Vec<usize>,
    /// Sequence s holds rows `starts[s]..starts[s + 1]`.
    pub starts: Vec<usize>,
    /// The longest sequence's length.
    pub longest: usize,
}

impl Packed {
    pub fn new(seqs: &[&[u32]]) -> Packed {
        let mut starts = vec![0usize];
        let (mut ids, mut positions) = (Vec::new(), Vec::new());
        for s in seqs {
            starts.push(starts.last().unwrap() + s.len());
            ids.extend_from_slice(s);
            positions.extend(0..s.len());
        }
        let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        Packed {
            ids,
            positions,
            starts,
            longest,
        }
    }

    /// Packed tokens (rows of every activation).
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }
}

/// A decoder's rotary embedding: its inverse frequencies (theta and scaling applied), and the
/// positions a backend that keeps its table between batches builds it for at least.
#[derive(Clone, Copy)]
pub struct Rope<'a> {
    pub inv_freq: &'a [f32],
    pub keep: usize,
}

/// A LayerNorm's weight and bias.
pub struct Norm<B: TextOps> {
    pub w: B::Vector,
    pub b: B::Vector,
}

/// The ops of the text models on one device. `t` below is the batch's packed tokens.
pub trait TextOps: Send + Sync + Sized {
    /// A dense layer: weight `[out, inp]` as PyTorch stores it, optional bias.
    type Linear: Send + Sync;
    /// An f32 vector of the hidden width (norm weights, biases, BERT's token type 0).
    type Vector: Send + Sync;
    /// An embedding table, rows of the hidden width.
    type Table: Send + Sync;
    /// The residual stream `[t, hidden]` in f32, with the scratch its updates use.
    type Stream;
    /// An activation a GEMM reads or writes (`[t, width]`).
    type Act;
    /// The fused q | k | v projection of every token.
    type Qkv;
    /// A packed batch as this backend runs it (ids, positions, attention tiles, RoPE table).
    type Batch;
    /// Per-text sums of pooled hidden states, in f64.
    type Sums;

    /// Prepares a packed batch for a model with this attention mask (and RoPE, for decoders).
    fn batch(&self, p: &Packed, mask: AttnMask, rope: Option<Rope>) -> Result<Self::Batch>;
    /// An activation of `[t, width]` for a graph to write.
    fn act(&self, bt: &Self::Batch, width: usize) -> Result<Self::Act>;
    /// The fused q | k | v projection's buffer.
    fn qkv_buffer(&self, bt: &Self::Batch, heads: Heads) -> Result<Self::Qkv>;

    /// The decoder's token embedding: `table[ids]`.
    fn embed(&self, bt: &Self::Batch, table: &Self::Table, width: usize) -> Result<Self::Stream>;
    /// BERT's embedding: `word[ids] + token_type0 + position[positions]`.
    fn bert_embed(
        &self,
        bt: &Self::Batch,
        word: &Self::Table,
        position: &Self::Table,
        type0: &Self::Vector,
        width: usize,
    ) -> Result<Self::Stream>;

    /// `out = RMSNorm(x) · w` (LlamaRMSNorm).
    fn rms_norm(
        &self,
        bt: &Self::Batch,
        x: &Self::Stream,
        w: &Self::Vector,
        eps: f32,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// The decoder's last RMSNorm, into a stream of its own (the hidden states).
    fn final_rms_norm(
        &self,
        bt: &Self::Batch,
        x: Self::Stream,
        w: &Self::Vector,
        eps: f32,
    ) -> Result<Self::Stream>;
    /// `x = LayerNorm(x)` in place (BERT's embeddings).
    fn layer_norm(
        &self,
        bt: &Self::Batch,
        x: &mut Self::Stream,
        n: &Norm<Self>,
        eps: f32,
    ) -> Result<()>;
    /// The stream as the next GEMM reads it, after a [`TextOps::layer_norm`] or
    /// [`TextOps::add_linear_norm`] (BERT's layers read the normalised stream itself).
    fn normed<'a>(&self, x: &'a Self::Stream) -> &'a Self::Act;

    /// The fused q | k | v projection of `x` (bias included).
    fn qkv(
        &self,
        bt: &Self::Batch,
        x: &Self::Act,
        lin: &Self::Linear,
        heads: Heads,
        out: &mut Self::Qkv,
    ) -> Result<()>;
    /// RoPE on q and k at each token's position, when the batch has a table (decoders).
    fn rope(&self, bt: &Self::Batch, qkv: &mut Self::Qkv, heads: Heads) -> Result<()>;
    /// Attention of every sequence over itself under the batch's mask: `[t, nh · hd]`.
    fn attention(
        &self,
        bt: &Self::Batch,
        qkv: &Self::Qkv,
        heads: Heads,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// `out = x Wᵀ + b`.
    fn linear(
        &self,
        bt: &Self::Batch,
        x: &Self::Act,
        lin: &Self::Linear,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// `out = GELU(x Wᵀ + b)` (exact erf GELU).
    fn linear_gelu(
        &self,
        bt: &Self::Batch,
        x: &Self::Act,
        lin: &Self::Linear,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// `out = silu(gate) · up` of the fused `[t, 2·ff]` gate | up projection.
    fn swiglu(
        &self,
        bt: &Self::Batch,
        gate_up: &Self::Act,
        ff: usize,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// The residual update `x += a Wᵀ + b`.
    fn add_linear(
        &self,
        bt: &Self::Batch,
        x: &mut Self::Stream,
        a: &Self::Act,
        lin: &Self::Linear,
    ) -> Result<()>;
    /// BERT's residual update `x = LayerNorm(x + a Wᵀ + b)`.
    fn add_linear_norm(
        &self,
        bt: &Self::Batch,
        x: &mut Self::Stream,
        a: &Self::Act,
        lin: &Self::Linear,
        n: &Norm<Self>,
        eps: f32,
    ) -> Result<()>;

    /// Zeroed sums for `texts` texts of `width`.
    fn sums(&self, texts: usize, width: usize) -> Result<Self::Sums>;
    /// Adds the hidden states of chunk c (rows `chunk_start[c]..chunk_start[c + 1]` of `h`, of
    /// `width`) to the sums of text `chunk_text[c]`, in f64; returns when they are added.
    fn pool(
        &self,
        h: &Self::Stream,
        width: usize,
        chunk_start: &[usize],
        chunk_text: &[usize],
        sums: &mut Self::Sums,
    ) -> Result<()>;
    /// The sums on the host, `texts × width`.
    fn sums_to_host(&self, sums: Self::Sums) -> Result<Vec<f64>>;
    /// The stream on the host, `[t, hidden]`.
    fn to_host(&self, h: Self::Stream) -> Result<Vec<f32>>;
}
