//! One method per op family: the only place that dispatches on the device. Each arm calls the
//! family's CPU function or its CUDA launch, which live beside the rest of the family.

use super::Device;
use crate::baseline;
use crate::brain::augment::{self, AugmentSpec, Augmented};
use crate::brain::kernels::MaKernel;
use crate::brain::{self, Atlas, Mask, Peaks};
use crate::clip::cpu::CpuEngine;
use crate::clip::cuda::{models_that_fit, CudaEngine};
use crate::clip::data::Pairs;
use crate::clip::kernels::{CpuKernels, CudaKernels, Kernels};
use crate::clip::layout::Layout;
use crate::clip::train::{self, Engine, EpochImages, Job, Outcome, Progress, TrainConfig};
use crate::error::Result;

impl Device {
    /// Image features of studies: MA maps (MKDA, KDA or ALE) of their peaks projected on the
    /// atlas, n × k (`kernels/mkda.cu` on CUDA).
    pub fn image_features(
        &self,
        kernel: &MaKernel,
        mask: &Mask,
        atlas: &Atlas,
        peaks: &Peaks,
    ) -> Result<Vec<f32>> {
        match self {
            Device::Cpu => brain::features::image_features_cpu(kernel, mask, atlas, peaks),
            Device::Cuda(g) => {
                brain::features_cuda::image_features_cuda(g, kernel, mask, atlas, peaks)
            }
        }
    }

    /// The spec's peak-level augmentations of a batch of studies (`keys[s]` is study s's
    /// `augment::study_key`), epoch `epoch` of a run seeded `seed` (`kernels/augment.cu` on CUDA).
    pub fn augment_peaks(
        &self,
        spec: &AugmentSpec,
        peaks: &Peaks,
        keys: &[u64],
        mask: &Mask,
        seed: u64,
        epoch: u64,
    ) -> Result<Augmented> {
        match self {
            Device::Cpu => augment::augment_peaks_cpu(spec, peaks, keys, mask, seed, epoch),
            Device::Cuda(g) => {
                augment::cuda::augment_peaks_cuda(g, spec, peaks, keys, mask, seed, epoch)
            }
        }
    }

    /// The spec's map-level augmentations of `keys.len()` dense volumes on `mask.grid`, one
    /// after the other in `vols` (`kernels/augment.cu` on CUDA).
    pub fn augment_maps(
        &self,
        spec: &AugmentSpec,
        vols: &mut [f32],
        mask: &Mask,
        keys: &[u64],
        seed: u64,
        epoch: u64,
    ) -> Result<()> {
        match self {
            Device::Cpu => augment::augment_maps_cpu(spec, vols, mask, keys, seed, epoch),
            Device::Cuda(g) => {
                augment::cuda::augment_maps_cuda(g, spec, vols, mask, keys, seed, epoch)
            }
        }
    }

    /// The Neurosynth correlation decoder's z-maps, one per selected term
    /// (`kernels/baseline.cu` on CUDA).
    pub fn z_maps(
        &self,
        ma: &[Vec<u32>],
        total: &[u32],
        selected: &[Vec<u32>],
        n_voxels: usize,
    ) -> Result<Vec<f32>> {
        match self {
            Device::Cpu => Ok(baseline::neurosynth::z_maps(ma, total, selected, n_voxels)),
            Device::Cuda(g) => baseline::cuda::z_maps_cuda(g, ma, total, selected, n_voxels),
        }
    }

    /// A text model's network placed on this device: the CPU's f32 network as it is, or its
    /// weights uploaded as bf16 (`kernels/llm.cu` and cuBLAS on CUDA).
    pub(crate) fn place_text_net(
        &self,
        net: crate::text::Model,
    ) -> Result<Box<dyn crate::text::TextNet>> {
        match self {
            Device::Cpu => Ok(net.on_cpu()),
            Device::Cuda(g) => net.into_cuda(g),
        }
    }

    /// Trains CLIP models (`clip::train::train`) on this device's engine: one model after the
    /// other on the CPU, as many at once as fit on CUDA (`kernels/clip.cu` and cuBLAS); with
    /// `augment`, on the image features it draws for each epoch.
    pub fn train_clip<'a>(
        &'a self,
        pairs: &'a Pairs,
        cfg: &'a TrainConfig,
        jobs: &[Job],
        resume: bool,
        augment: Option<&dyn EpochImages>,
        progress: &mut Progress,
    ) -> Result<Vec<Outcome>> {
        type Engines<'a> = Box<dyn FnMut(usize) -> Result<Box<dyn Engine + 'a>> + 'a>;
        let mut engine: Engines<'a> = match self {
            Device::Cpu => {
                let layout = Layout::new(pairs.d, pairs.k);
                Box::new(move |_| Ok(Box::new(CpuEngine::new(pairs, &layout, cfg))))
            }
            Device::Cuda(g) => {
                let fit = models_that_fit(g, pairs, cfg)?;
                Box::new(move |n| Ok(Box::new(CudaEngine::new(g, pairs, cfg, n.min(fit))?)))
            }
        };
        train::train(pairs, cfg, jobs, resume, augment, progress, &mut engine)
    }

    /// The CLIP ops one by one on this device (`clip::kernels`), for the parity tests: the
    /// CPU's functions, or `kernels/clip.cu` through the CUDA engine's launch wrappers.
    pub fn clip_kernels(&self) -> Box<dyn Kernels> {
        match self {
            Device::Cpu => Box::new(CpuKernels),
            Device::Cuda(g) => Box::new(CudaKernels(g.clone())),
        }
    }
}
