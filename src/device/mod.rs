//! The backend: where ops run. The CPU always; a CUDA device through cudarc when a driver and a
//! device exist (the CUDA path is built everywhere and the driver opened at run time).
//!
//! A [`Device`] is chosen once (`--device`) and passed down; the pipeline calls one method per
//! op family on it ([`ops`]: image features, the correlation decoder's z-maps, the text
//! engine, CLIP training), and only this module looks at which device it is. Each op family
//! keeps its CPU function and its CUDA launch in its own module of the pipeline (e.g.
//! `brain::features` and `brain::features_cuda`, with `kernels/mkda.cu`); the parity tests and
//! benches run one body on every device of [`Device::available`]. A CUDA device's context,
//! stream, kernel modules and cuBLAS handle are opened once per process ([`cuda::Gpu::open`]).

pub mod cpu;
pub mod cuda;
pub mod emulator;
mod ops;

use crate::error::{Error, Result};
use std::str::FromStr;
use std::sync::Arc;

/// `--device auto|cpu|cuda[:N]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceArg::Auto),
            "cpu" => Ok(DeviceArg::Cpu),
            "cuda" => Ok(DeviceArg::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceArg::Cuda)
                .ok_or_else(|| format!("unknown device '{s}': use auto, cpu, cuda or cuda:N")),
        }
    }
}

/// Where ops run.
#[derive(Clone)]
pub enum Device {
    Cpu,
    Cuda(Arc<cuda::Gpu>),
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Device {
    /// auto → CUDA device 0 when the driver library loads and reports a device, else the CPU.
    pub fn select(arg: &DeviceArg) -> Result<Device> {
        match arg {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Auto => Ok(if cuda::device_count() > 0 {
                cuda::Gpu::open(0).map(Device::Cuda).unwrap_or(Device::Cpu)
            } else {
                Device::Cpu
            }),
            DeviceArg::Cuda(n) => {
                let count = cuda::device_count();
                if *n >= count {
                    return Err(Error::Cuda(format!("cuda:{n} asked for, but {count} CUDA device(s) found (is the NVIDIA driver installed?); use --device cpu")));
                }
                cuda::Gpu::open(*n).map(Device::Cuda)
            }
        }
    }

    /// Every device present: the CPU, then each CUDA device that opens. Tests and benches run
    /// their one body on each.
    pub fn available() -> Vec<Device> {
        let gpus = (0..cuda::device_count()).filter_map(|n| cuda::Gpu::open(n).ok());
        std::iter::once(Device::Cpu)
            .chain(gpus.map(Device::Cuda))
            .collect()
    }

    /// `cpu (N threads)`, `cuda:N` or `cuda:N (emulated)`.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
            Device::Cuda(g) if g.emulated => format!("cuda:{} (emulated)", g.ordinal),
            Device::Cuda(g) => format!("cuda:{}", g.ordinal),
        }
    }

    /// Whether ops run on the CPU (a test's tolerance: the CPU is the bit-exact reference).
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }
}
