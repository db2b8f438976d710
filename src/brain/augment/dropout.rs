//! `dropout:p=P`: every peak kept with probability 1 − P, independently (a study under-reporting
//! its foci). No minimum is kept: a study whose every peak drops stays in the table with no
//! peaks, as NiMARE holds a study without coordinates, and its MKDA map is empty, so its image
//! features are all zero (Xᵀy = 0). Kernel: `aug_dropout`.

use super::{named_param, Augmentation, Draws, Entry, Kind};

pub const ENTRY: Entry = Entry {
    name: "dropout",
    params: "p=P  (0 ≤ P < 1): each peak dropped with probability P",
    sample: "dropout:p=0.3",
    random: true,
    parse,
};

#[derive(Debug)]
pub struct Dropout {
    pub p: f64,
}

fn parse(args: &str) -> Result<Box<dyn Augmentation>, String> {
    let p = named_param(args, "p")?;
    if !(0.0..1.0).contains(&p) {
        return Err(format!("p must be in [0, 1), got {p}"));
    }
    Ok(Box::new(Dropout { p }))
}

impl Augmentation for Dropout {
    fn spec(&self) -> String {
        format!("dropout:p={}", self.p)
    }
    fn kind(&self) -> Kind {
        Kind::KeepPeak
    }
    fn kernel(&self) -> &'static str {
        "aug_dropout"
    }
    fn kernel_params(&self) -> [f64; 2] {
        [self.p, 0.0]
    }
    fn keep_peak(&self, d: Draws) -> bool {
        d.uniform(0) >= self.p
    }
}
