//! bitnet-stfma: exact, fast BitNet b1.58 ternary kernels for CPUs.
//!
//! - [`quant`]: the weight and activation formats, each defined once: I2_S
//!   and I8_S ([`quant::i2s`]), Q8_0, Q8_K and Q6_K (typed blocks).
//! - [`kernels`]: the dot kernels per instruction set behind one dispatcher.
//! - [`packed`]: the load-time repacked weight layout.
//! - [`matmul`]: finished `y = W x` over repacked weights.
//! - [`threadpool`]: the persistent worker pool.
//! - `ffi`: the C ABI (`include/ggml-bitnet-stfma.h`), with the registry
//!   behind its cache handles.
#[cfg(feature = "runner")]
pub mod chat;
#[cfg(feature = "runner")]
pub mod convert;
#[cfg(feature = "runner")]
pub mod embedding;
pub mod error;
pub mod ffi;
#[cfg(feature = "runner")]
pub mod fuzz;
#[cfg(feature = "runner")]
pub mod gguf;
#[cfg(feature = "runner")]
pub mod json_schema;
pub mod kernels;
pub mod matmul;
#[cfg(feature = "runner")]
pub mod model;
pub mod packed;
pub mod quant;
#[cfg(feature = "runner")]
pub mod sampler;
#[cfg(feature = "runner")]
pub mod server;
#[cfg(feature = "runner")]
pub mod synthetic;
pub mod threadpool;
#[cfg(feature = "runner")]
pub mod tokenizer;

#[cfg(target_endian = "big")]
compile_error!(
    "bitnet-stfma reads little-endian GGUF data in place and supports little-endian targets only"
);

pub use error::{Error, ErrorKind, Result};

/// The shared test fixtures (`../shared/testdata` beside the crate, or
/// `$BITNET_STFMA_TESTDATA`). When they are missing this returns `None` and
/// the calling test reports itself skipped, unless `CI` or
/// `BITNET_STFMA_REQUIRE_TESTDATA` is set, in which case it panics: CI must
/// never pass by skipping.
#[doc(hidden)]
pub fn testdata_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("BITNET_STFMA_TESTDATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata")
        });
    if dir.join("bitnet-tiny.gguf").is_file() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some()
        || std::env::var_os("BITNET_STFMA_REQUIRE_TESTDATA").is_some()
    {
        panic!(
            "test fixtures not found at {} (set BITNET_STFMA_TESTDATA)",
            dir.display()
        );
    }
    None
}
