//! Whole jobs, as the command line runs them and sweeps or a Python package can: each takes
//! its inputs by path, the [`Device`](crate::device::Device) where it computes, writes its
//! outputs, shows progress on stderr and returns what it did. `cli` only parses arguments,
//! calls one of these and prints the result.
//!
//! Jobs here join several parts of the library (a corpus and an atlas, a corpus and a text
//! model), so no part depends on another through them.

pub mod augment;
pub mod brain;
pub mod embed;
pub mod resume;
pub mod vocab;

use crate::error::{Error, Result};
use std::path::Path;

/// Refuses an array output that is not `.npy` (arrays exchanged with Python are `.npy`).
pub fn check_npy_out(out: &Path) -> Result<()> {
    if out.extension().is_some_and(|e| e == "npy") {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{}: the output must end in .npy",
            out.display()
        )))
    }
}
