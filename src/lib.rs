//! bitnet-stfma: exact, fast BitNet b1.58 ternary kernels for CPUs.
pub mod error;
pub mod i2s;
pub mod kernels;

pub use error::{Error, ErrorKind, Result};
