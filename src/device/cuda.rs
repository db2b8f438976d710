//! CUDA through cudarc: context, stream and kernel modules (PTX built by build.rs, or the
//! embedded sources compiled by NVRTC when no PTX was built).

use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaStream};
use std::sync::Arc;

/// Number of CUDA devices; 0 when the driver library is absent (checked before any context,
/// since creating one without a driver panics).
pub fn device_count() -> usize {
    // SAFETY: only tries to dlopen the driver library; no CUDA state is touched.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    CudaContext::device_count().map(|n| n as usize).unwrap_or(0)
}

pub struct Gpu {
    pub ordinal: usize,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
}

impl Gpu {
    pub fn new(ordinal: usize) -> Result<Gpu> {
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::Cuda(format!("cannot open device {ordinal}: {e:?}")))?;
        let stream = ctx.default_stream();
        Ok(Gpu {
            ordinal,
            ctx,
            stream,
        })
    }
}
