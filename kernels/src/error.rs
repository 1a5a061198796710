//! The crate's one error type: every launcher and constructor returns it.

use cudarc::driver::DriverError;

/// Anything that can go wrong between a launcher's arguments and the GPU.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// libcuda could not be loaded: this machine has no NVIDIA driver.
    #[error("no CUDA driver found (libcuda could not be loaded)")]
    NoDriver,
    /// The driver is there but a run-time library the kernels need is not.
    #[error("CUDA library {0} not found (needed at run time; nothing CUDA is needed to build)")]
    MissingLibrary(&'static str),
    /// A CUDA driver call failed (device missing, out of memory, launch failure…).
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    /// NVRTC rejected a kernel source; `log` is the compiler's own output.
    #[error("NVRTC could not compile {module}: {log}")]
    Compile { module: &'static str, log: String },
    /// cuBLASLt refused or failed a matrix product.
    #[error("cuBLASLt: {0}")]
    Blas(String),
    /// A launcher was called with shapes or buffers that do not fit together.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Shorthand for launcher results.
pub type Result<T> = std::result::Result<T, KernelError>;

/// Returns `Invalid(msg)` unless `cond` holds.
pub(crate) fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(KernelError::Invalid(msg()))
    }
}
