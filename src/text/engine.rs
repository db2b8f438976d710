//! A model placed on a device: its graph ([`Model`]) and the backend that runs it ([`Engine`]),
//! driven through [`TextNet`] whichever the device (the CPU's f32 network as built, or its
//! weights uploaded by cuda.rs).

use super::backend::{Packed, TextOps};
use super::bert::Bert;
use super::cpu::Cpu;
use super::decoder::Decoder;
use crate::error::{Error, Result};

/// A text model's network on backend `B`: its graph and weights.
pub enum Model<B: TextOps = Cpu> {
    Decoder(Decoder<B>),
    Bert(Bert<B>),
}

impl<B: TextOps> Model<B> {
    /// Width of a hidden state (the hidden size).
    pub fn dim(&self) -> usize {
        match self {
            Model::Decoder(m) => m.cfg.hidden,
            Model::Bert(m) => m.cfg.hidden,
        }
    }

    /// As [`super::TextModel::default_max_length`].
    pub fn default_max_length(&self) -> usize {
        match self {
            Model::Decoder(m) => m.cfg.max_positions.min(8192),
            Model::Bert(m) => m.cfg.max_positions,
        }
    }

    /// BERT's position-embedding count, the longest chunk it takes; None for decoders.
    pub fn bert_max_positions(&self) -> Option<usize> {
        match self {
            Model::Bert(m) => Some(m.cfg.max_positions),
            Model::Decoder(_) => None,
        }
    }

    pub(super) fn vocab(&self) -> usize {
        match self {
            Model::Decoder(m) => m.cfg.vocab,
            Model::Bert(m) => m.cfg.vocab,
        }
    }

    /// Last hidden states of a packed batch (at least one token), left where `b` runs.
    pub(super) fn forward(&self, b: &B, p: &Packed) -> Result<B::Stream> {
        let vocab = self.vocab();
        if let Some(bad) = p.ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::Usage(format!(
                "token id {bad} is out of range for a model of {vocab} embeddings"
            )));
        }
        if let Some(max) = self.bert_max_positions().filter(|&m| p.longest > m) {
            return Err(Error::Usage(format!(
                "a sequence of {} tokens exceeds this BERT model's {max} position embeddings",
                p.longest
            )));
        }
        match self {
            Model::Decoder(m) => m.forward(b, &b.batch(p, m.mask(), Some(m.rope()))?),
            Model::Bert(m) => m.forward(b, &b.batch(p, m.mask(), None)?),
        }
    }
}

impl Model {
    /// The network on the CPU, as built.
    pub(crate) fn on_cpu(self) -> Box<dyn TextNet> {
        Box::new(Engine {
            ops: Cpu,
            model: self,
        })
    }
}

/// A model and the backend it runs on.
pub struct Engine<B: TextOps> {
    pub(crate) ops: B,
    pub(crate) model: Model<B>,
}

/// A model placed on a device, as [`super::TextModel`] drives it (any [`Engine`]).
pub trait TextNet: Send + Sync {
    /// Last hidden states of packed sequences, `[Σ len, dim]` on the host.
    fn hidden_states(&self, seqs: &[&[u32]]) -> Result<Vec<f32>>;

    /// Token-weighted sums over all chunks of each text: `chunks` are (text, tokens) work items
    /// run `batch` at a time; returns `n_texts × dim` f64 sums (divide by the token counts for
    /// the mean). `progress(tokens)` after each finished batch.
    fn pooled_sums(
        &self,
        chunks: &[(usize, &[u32])],
        n_texts: usize,
        batch: usize,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<f64>>;
}

impl<B: TextOps> TextNet for Engine<B> {
    fn hidden_states(&self, seqs: &[&[u32]]) -> Result<Vec<f32>> {
        let p = Packed::new(seqs);
        if p.tokens() == 0 {
            return Ok(Vec::new());
        }
        let h = self.model.forward(&self.ops, &p)?;
        self.ops.to_host(h)
    }

    fn pooled_sums(
        &self,
        chunks: &[(usize, &[u32])],
        n_texts: usize,
        batch: usize,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<f64>> {
        let d = self.model.dim();
        if let Some(&(t, _)) = chunks.iter().find(|(t, _)| *t >= n_texts) {
            return Err(Error::Usage(format!("pooled_sums: text {t} of {n_texts}")));
        }
        let mut sums = self.ops.sums(n_texts, d)?;
        for b in chunks.chunks(batch.max(1)) {
            let seqs: Vec<&[u32]> = b.iter().map(|(_, c)| *c).collect();
            let p = Packed::new(&seqs);
            if p.tokens() == 0 {
                continue;
            }
            let h = self.model.forward(&self.ops, &p)?;
            let text: Vec<usize> = b.iter().map(|(t, _)| *t).collect();
            self.ops.pool(&h, d, &p.starts, &text, &mut sums)?;
            progress(p.tokens());
        }
        self.ops.sums_to_host(sums)
    }
}
