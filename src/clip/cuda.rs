//! CUDA training of many independent models at once.

use super::data::Pairs;
use super::train::{Job, Outcome, Progress, TrainConfig};
use crate::device::cuda::Gpu;
use crate::error::{Error, Result};

pub fn train_many(
    _gpu: &Gpu,
    _pairs: &Pairs,
    _cfg: &TrainConfig,
    _jobs: &[Job],
    _resume: bool,
    _progress: &mut Progress,
) -> Result<Vec<Outcome>> {
    Err(Error::Cuda("not yet".into()))
}
