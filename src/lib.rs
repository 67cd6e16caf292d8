//! bitnet-stfma: exact, fast BitNet b1.58 ternary kernels for CPUs.
//!
//! - [`i2s`]: the I2_S weight and I8_S activation formats.
//! - [`kernels`]: the dot kernels per instruction set behind one dispatcher.
//! - [`cache`]: the load-time repacked weight layout and the handle registry.
//! - [`matmul`]: finished `y = W x` over repacked weights.
//! - [`threadpool`]: the persistent worker pool.
//! - `ffi`: the C ABI (`include/ggml-bitnet-stfma.h`).
pub mod cache;
pub mod error;
pub mod ffi;
pub mod i2s;
pub mod kernels;
pub mod matmul;
pub mod threadpool;

pub use error::{Error, ErrorKind, Result};
