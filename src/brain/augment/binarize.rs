//! `binarize:pct=Q`: a modeled map's in-mask values set to 1 where ≥ the Q-th percentile of its
//! in-mask values, else 0 (numpy's linear percentile, on the host). Kernel: `aug_binarize`.

use super::threshold::parse_pct;
use super::{percentile, Augmentation, Draws, Entry, Kind};

pub const ENTRY: Entry = Entry {
    name: "binarize",
    params: "pct=Q  (0 ≤ Q ≤ 100): 1 where ≥ the Q-th in-mask percentile, else 0",
    sample: "binarize:pct=75",
    random: false,
    parse,
};

#[derive(Debug)]
pub struct Binarize {
    pub pct: f64,
}

fn parse(args: &str) -> Result<Box<dyn Augmentation>, String> {
    Ok(Box::new(Binarize {
        pct: parse_pct(args)?,
    }))
}

impl Augmentation for Binarize {
    fn spec(&self) -> String {
        format!("binarize:pct={}", self.pct)
    }
    fn kind(&self) -> Kind {
        Kind::MapValue
    }
    fn kernel(&self) -> &'static str {
        "aug_binarize"
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
            1.0
        } else {
            0.0
        }
    }
}
