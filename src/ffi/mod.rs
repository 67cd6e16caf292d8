//! The C ABI, declared in `include/ggml-bitnet-stfma.h`, which cbindgen
//! generates from this module: this file (the error codes, the ABI version
//! and the handle type), then its submodules in the order they are declared
//! below, one per section of the header. This is the only module with
//! `#[no_mangle]`.
//!
//! Rules every function follows: no panic crosses the boundary (it is caught
//! and reported as `GGML_BITNET_STFMA_ERR_INTERNAL`); every call clears the
//! calling thread's last-error message first and sets it when it fails;
//! pointers are checked for NULL and sizes for range before use; handles are
//! looked up in the registry and never dereferenced.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_int;

/// Success.
pub const GGML_BITNET_STFMA_OK: c_int = 0;
/// A required pointer was NULL.
pub const GGML_BITNET_STFMA_ERR_NULL: c_int = -1;
/// A size, count or name was out of range.
pub const GGML_BITNET_STFMA_ERR_INVALID: c_int = -2;
/// The handle is not live (NULL, freed, foreign, or from before a shutdown).
pub const GGML_BITNET_STFMA_ERR_BAD_HANDLE: c_int = -3;
/// Memory could not be allocated.
pub const GGML_BITNET_STFMA_ERR_NO_MEMORY: c_int = -4;
/// The CPU cannot run what was asked for.
pub const GGML_BITNET_STFMA_ERR_UNSUPPORTED: c_int = -5;
/// An internal error (a caught panic); please report it.
pub const GGML_BITNET_STFMA_ERR_INTERNAL: c_int = -8;

/// Version of this ABI: bumped when a signature or a documented behaviour
/// changes incompatibly.
pub const GGML_BITNET_STFMA_ABI_VERSION: c_int = 1;

/// Opaque cache entry; only ever seen through a handle.
pub struct ggml_bitnet_stfma_cache_entry {
    _private: (),
}

/// A cache handle: an opaque id, validated on every use.
pub type ggml_bitnet_stfma_cache_handle = *mut ggml_bitnet_stfma_cache_entry;

// The sections of the header, in its order: cbindgen writes the functions
// in the order it reads them, this file first, then each submodule as
// declared here. Each declaration stands alone because rustfmt sorts
// adjacent ones by name.

// The guard and argument helpers every function shares (nothing exported).
mod guard;

// The store behind the cache handles (nothing exported).
mod registry;

// bitnet.cpp's kernel contract: ggml_vec_dot_i2_i8_s, quantize_i2_s.
mod upstream;

// The STFMA RFC's cache API: ggml_bitnet_stfma_cache_* and its statistics.
mod rfc_cache;

// The STFMA RFC's dot variants and the byte conversion.
mod rfc_dot;

// Version, last error and kernel selection.
mod control;

// Beyond the RFC: activation quantization, cached tensors and the matmul.
mod tensor;

// For a linked ggml's matmul hooks: tensors cached in place, the tile GEMM.
mod linked;

pub use control::*;
pub use linked::*;
pub use rfc_cache::*;
pub use rfc_dot::*;
pub use tensor::*;
#[cfg(feature = "upstream-symbols")]
pub use upstream::*;

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    fn last_error() -> String {
        // SAFETY: the library returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(ggml_bitnet_stfma_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    /// Bad arguments are reported (through the return value or NaN, and
    /// `ggml_bitnet_stfma_last_error`), not crashed on: one test per kind.
    mod errors_are_reported_not_crashed {
        use super::*;

        /// `ggml_vec_dot_i2_i8_stfma` of `n` over zero weights and
        /// activations, into the first of four floats.
        fn dot_of_zeros(n: c_int) -> f32 {
            let mut s = [0f32; 4];
            let w = [0u8; 32];
            let y = [0i8; 128];
            // SAFETY: w and y hold what n = 128 reads; a bad n must be
            // rejected before anything is read.
            unsafe {
                ggml_vec_dot_i2_i8_stfma(
                    n,
                    s.as_mut_ptr(),
                    1,
                    w.as_ptr().cast(),
                    0,
                    y.as_ptr().cast(),
                    0,
                    1,
                );
            }
            s[0]
        }

        #[test]
        fn a_dot_of_a_partial_block() {
            assert!(dot_of_zeros(100).is_nan());
            assert!(last_error().contains("multiple of 128"), "{}", last_error());
        }

        /// A good call after a bad one clears the error.
        #[test]
        fn a_good_call_clears_the_error() {
            dot_of_zeros(100);
            let s = dot_of_zeros(128);
            assert_eq!((s, last_error().as_str()), (0.0, ""));
        }

        #[test]
        fn freeing_null() {
            ggml_bitnet_stfma_free_cached_weights(std::ptr::null_mut());
            assert!(last_error().contains("NULL"));
        }

        #[test]
        fn freeing_a_handle_that_is_not_live() {
            ggml_bitnet_stfma_free_cached_weights(0x1234 as ggml_bitnet_stfma_cache_handle);
            assert!(last_error().contains("not live"));
        }

        #[test]
        fn an_unknown_kernel_name() {
            // SAFETY: a valid NUL-terminated name.
            assert_eq!(
                unsafe { ggml_bitnet_stfma_set_kernel(c"nonsense".as_ptr()) },
                GGML_BITNET_STFMA_ERR_INVALID
            );
        }
    }
}
