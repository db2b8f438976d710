//! `radius:LO..HI`: the MKDA sphere radius of every study drawn uniformly from [LO, HI] mm. The
//! augmentation only outputs the per-study radius (`Augmented::radius`); the caller builds each
//! study's kernel (`MkdaKernel::for_grid`). Kernel: `aug_radius`.

use super::{Augmentation, Draws, Entry, Kind};

pub const ENTRY: Entry = Entry {
    name: "radius",
    params: "LO..HI  (mm, 0 < LO ≤ HI ≤ 100): MKDA radius per study, uniform on [LO, HI]",
    sample: "radius:8..12",
    random: true,
    parse,
};

#[derive(Debug)]
pub struct Radius {
    pub lo: f64,
    pub hi: f64,
}

fn parse(args: &str) -> Result<Box<dyn Augmentation>, String> {
    let (lo, hi) = args
        .split_once("..")
        .ok_or_else(|| format!("expected LO..HI in mm, got '{args}'"))?;
    let num = |s: &str| {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("'{s}' is not a finite number"))
    };
    let (lo, hi) = (num(lo)?, num(hi)?);
    if !(lo > 0.0 && lo <= hi && hi <= 100.0) {
        return Err(format!("need 0 < LO ≤ HI ≤ 100 mm, got {lo}..{hi}"));
    }
    Ok(Box::new(Radius { lo, hi }))
}

impl Augmentation for Radius {
    fn spec(&self) -> String {
        format!("radius:{}..{}", self.lo, self.hi)
    }
    fn kind(&self) -> Kind {
        Kind::StudyValue
    }
    fn kernel(&self) -> &'static str {
        "aug_radius"
    }
    fn kernel_params(&self) -> [f64; 2] {
        [self.lo, self.hi]
    }
    fn study_value(&self, d: Draws) -> f64 {
        self.lo + (self.hi - self.lo) * d.uniform(0)
    }
}
