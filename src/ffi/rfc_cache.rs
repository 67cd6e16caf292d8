//! The STFMA RFC's cache API (names from the RFC; semantics documented
//! here): `ggml_bitnet_stfma_cache_*` entries made from one I2_S row,
//! their bytes, freeing, shutdown and statistics.

use std::ffi::c_int;

use super::ggml_bitnet_stfma_cache_handle;
use super::guard::{guard, handle_id, slice, to_handle};
use super::registry::Registry;
use crate::error::Error;
use crate::packed::PackedMatrix;
use crate::quant::i2s::QK_I2_S;

/// Prepares the cache. Optional (every cache function initialises on first
/// use) and idempotent: a second call does nothing and leaks nothing.
#[no_mangle]
pub extern "C" fn ggml_bitnet_stfma_cache_init() {
    guard(
        |_| (),
        || {
            Registry::global();
            Ok(())
        },
    )
}

/// Copies `n` weights (a positive multiple of 128) in the I2_S layout from
/// `bitnet_weights` (`n/4` bytes, one row) into a 64-byte aligned cache
/// entry and returns its handle, or NULL (with the last error set) on a NULL
/// pointer, a bad `n`, or no memory. The source may be freed afterwards.
/// Handle values are never valid addresses (see the hybrid dot). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn ggml_bitnet_stfma_cache_weights(
    bitnet_weights: *const u8,
    n: usize,
) -> ggml_bitnet_stfma_cache_handle {
    guard(
        |_| std::ptr::null_mut(),
        || {
            if n == 0 || !n.is_multiple_of(QK_I2_S) || n > c_int::MAX as usize {
                return Err(Error::invalid(format!(
                    "n = {n} must be a positive multiple of {QK_I2_S}"
                )));
            }
            // SAFETY: by the caller's contract the source holds n/4 bytes.
            let src = unsafe { slice(bitnet_weights, n / 4, "bitnet_weights")? };
            let m = PackedMatrix::single_row(src, n)?;
            Ok(to_handle(
                Registry::global().insert(m, bitnet_weights as usize),
            ))
        },
    )
}

/// The cached (repacked) bytes of a live entry, or NULL (last error set) for
/// a NULL, freed or foreign handle. The pointer stays valid until the entry
/// is freed or the cache is shut down. For an entry from
/// `ggml_bitnet_stfma_cache_tensor` the bytes are in the interleaved tile
/// layout, not in the I2_S layout.
#[no_mangle]
pub extern "C" fn ggml_bitnet_stfma_get_cached_weights(
    h: ggml_bitnet_stfma_cache_handle,
) -> *const u8 {
    guard(
        |_| std::ptr::null(),
        || {
            Ok(Registry::global()
                .get(handle_id(h)?)?
                .matrix
                .bytes()
                .as_ptr())
        },
    )
}

/// Frees a cache entry. A NULL, already freed, or foreign handle is a no-op
/// that sets the last error (never a crash or a double free).
#[no_mangle]
pub extern "C" fn ggml_bitnet_stfma_free_cached_weights(h: ggml_bitnet_stfma_cache_handle) {
    guard(|_| (), || Registry::global().remove(handle_id(h)?))
}

/// Frees every cache entry and invalidates every outstanding handle (they
/// are never reissued). The cache can be used again afterwards.
#[no_mangle]
pub extern "C" fn ggml_bitnet_stfma_cache_shutdown() {
    guard(
        |_| (),
        || {
            Registry::global().clear();
            Ok(())
        },
    )
}

/// Number of live entries and total bytes of cached weights. Either pointer
/// may be NULL.
#[no_mangle]
pub unsafe extern "C" fn ggml_bitnet_stfma_cache_stats(
    num_entries: *mut usize,
    total_bytes: *mut usize,
) {
    // SAFETY: forwarded caller contract.
    unsafe { ggml_bitnet_stfma_get_cache_stats(num_entries, total_bytes, std::ptr::null_mut()) }
}

/// As `ggml_bitnet_stfma_cache_stats`, plus `memory_overhead_ratio`: cached
/// bytes divided by the bytes of the I2_S originals (0 when the cache is
/// empty). Any pointer may be NULL.
#[no_mangle]
pub unsafe extern "C" fn ggml_bitnet_stfma_get_cache_stats(
    num_entries: *mut usize,
    total_bytes: *mut usize,
    memory_overhead_ratio: *mut f32,
) {
    guard(
        |_| (),
        || {
            let s = Registry::global().stats();
            // SAFETY: each pointer is NULL or valid for one write.
            unsafe {
                if !num_entries.is_null() {
                    *num_entries = s.entries;
                }
                if !total_bytes.is_null() {
                    *total_bytes = s.cached_bytes;
                }
                if !memory_overhead_ratio.is_null() {
                    *memory_overhead_ratio = s.overhead_ratio();
                }
            }
            Ok(())
        },
    )
}
