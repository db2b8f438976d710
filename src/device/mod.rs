//! Where ops run: the CPU (always), or a CUDA device through cudarc. The CUDA path is built
//! everywhere (the driver is opened at run time) and chosen only when a driver and a device exist.

pub mod cuda;

use crate::error::{Error, Result};
use std::str::FromStr;

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

pub enum Device {
    Cpu,
    Cuda(cuda::Gpu),
}

impl Device {
    /// auto → CUDA device 0 when the driver library loads and reports a device, else the CPU.
    pub fn select(arg: &DeviceArg) -> Result<Device> {
        match arg {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Auto => Ok(if cuda::device_count() > 0 {
                cuda::Gpu::new(0).map(Device::Cuda).unwrap_or(Device::Cpu)
            } else {
                Device::Cpu
            }),
            DeviceArg::Cuda(n) => {
                let count = cuda::device_count();
                if *n >= count {
                    return Err(Error::Cuda(format!("cuda:{n} asked for, but {count} CUDA device(s) found (is the NVIDIA driver installed?); use --device cpu")));
                }
                cuda::Gpu::new(*n).map(Device::Cuda)
            }
        }
    }

    pub fn name(&self) -> String {
        match self {
            Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
            Device::Cuda(g) => format!("cuda:{}", g.ordinal),
        }
    }
}
