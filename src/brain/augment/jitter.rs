//! `jitter:sigma=S`: every peak moved by N(0, S²) mm on each axis, independently (a reported
//! coordinate's localisation error; NiMARE's ALE models the same uncertainty as a Gaussian).
//! Kernel: `aug_jitter`.

use super::{named_param, Augmentation, Draws, Entry, Kind};

pub const ENTRY: Entry = Entry {
    name: "jitter",
    params: "sigma=S  (mm, finite, 0 ≤ S ≤ 100): each peak moved by N(0, S²) per axis",
    sample: "jitter:sigma=4",
    random: true,
    parse,
};

#[derive(Debug)]
pub struct Jitter {
    pub sigma: f64,
}

fn parse(args: &str) -> Result<Box<dyn Augmentation>, String> {
    let sigma = named_param(args, "sigma")?;
    if !(0.0..=100.0).contains(&sigma) {
        return Err(format!("sigma must be in [0, 100] mm, got {sigma}"));
    }
    Ok(Box::new(Jitter { sigma }))
}

impl Augmentation for Jitter {
    fn spec(&self) -> String {
        format!("jitter:sigma={}", self.sigma)
    }
    fn kind(&self) -> Kind {
        Kind::MovePeak
    }
    fn kernel(&self) -> &'static str {
        "aug_jitter"
    }
    fn kernel_params(&self) -> [f64; 2] {
        [self.sigma, 0.0]
    }
    /// Axis a takes the normal of draws 2a, 2a+1.
    fn move_peak(&self, d: Draws, xyz: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|a| xyz[a] + self.sigma * d.normal(a as u64))
    }
}
