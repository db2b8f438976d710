//! `threshold:pct=Q`: a modeled map's in-mask values below the Q-th percentile of its in-mask
//! values set to 0, the rest kept (numpy's linear percentile, computed on the host on both
//! devices). Kernel: `aug_threshold`.

use super::{named_param, percentile, Augmentation, Draws, Entry, Kind};

pub const ENTRY: Entry = Entry {
    name: "threshold",
    params: "pct=Q  (0 ≤ Q ≤ 100): keep values ≥ the Q-th in-mask percentile, zero the rest",
    sample: "threshold:pct=90",
    random: false,
    parse,
};

/// The percentile parameter shared with `binarize`.
pub fn parse_pct(args: &str) -> Result<f64, String> {
    let q = named_param(args, "pct")?;
    if !(0.0..=100.0).contains(&q) {
        return Err(format!("pct must be in [0, 100], got {q}"));
    }
    Ok(q)
}

#[derive(Debug)]
pub struct Threshold {
    pub pct: f64,
}

fn parse(args: &str) -> Result<Box<dyn Augmentation>, String> {
    Ok(Box::new(Threshold {
        pct: parse_pct(args)?,
    }))
}

impl Augmentation for Threshold {
    fn spec(&self) -> String {
        format!("threshold:pct={}", self.pct)
    }
    fn kind(&self) -> Kind {
        Kind::MapValue
    }
    fn kernel(&self) -> &'static str {
        "aug_threshold"
    }
    fn kernel_params(&self) -> [f64; 2] {
        [self.pct, 0.0]
    }
    fn needs_scalar(&self) -> bool {
        true
    }
    fn map_scalar(&self, in_mask: &mut [f32]) -> f64 {
        percentile(in_mask, self.pct)
    }
    fn map_value(&self, _: Draws, x: f32, cut: f64) -> f32 {
        if x as f64 >= cut {
            x
        } else {
            0.0
        }
    }
}
