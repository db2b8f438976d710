//! `noise:sd=S`: additive N(0, S²) noise at every mask voxel of a modeled map (values off the
//! mask are left alone: the projection never reads them). Kernel: `aug_noise`.

use super::{named_param, Augmentation, Draws, Entry, Kind};

pub const ENTRY: Entry = Entry {
    name: "noise",
    params: "sd=S  (finite, 0 ≤ S ≤ 1e6): additive N(0, S²) in the mask",
    sample: "noise:sd=0.1",
    random: true,
    parse,
};

#[derive(Debug)]
pub struct Noise {
    pub sd: f64,
}

fn parse(args: &str) -> Result<Box<dyn Augmentation>, String> {
    let sd = named_param(args, "sd")?;
    if !(0.0..=1e6).contains(&sd) {
        return Err(format!("sd must be in [0, 1e6], got {sd}"));
    }
    Ok(Box::new(Noise { sd }))
}

impl Augmentation for Noise {
    fn spec(&self) -> String {
        format!("noise:sd={}", self.sd)
    }
    fn kind(&self) -> Kind {
        Kind::MapValue
    }
    fn kernel(&self) -> &'static str {
        "aug_noise"
    }
    fn kernel_params(&self) -> [f64; 2] {
        [self.sd, 0.0]
    }
    fn map_value(&self, d: Draws, x: f32, _: f64) -> f32 {
        (x as f64 + self.sd * d.normal(0)) as f32
    }
}
