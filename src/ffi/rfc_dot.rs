//! The STFMA RFC's dot variants and conversion: the hook name
//! `ggml_vec_dot_i2_i8_stfma`, the dot on a cached entry, the hybrid dot,
//! and the RFC's byte re-encoding.

use std::ffi::{c_int, c_void};

use super::ggml_bitnet_stfma_cache_handle;
use super::guard::{check_n, guard, handle_id, null, slice};
use super::registry::{Lookup, Registry};
use super::upstream::vec_dot;
use crate::error::{Error, ErrorKind, Result};
use crate::kernels;
use crate::packed::PackedMatrix;

/// The RFC's hook name: exactly `ggml_vec_dot_i2_i8_s` (same arguments,
/// same results, same error behaviour), always exported.
#[no_mangle]
pub unsafe extern "C" fn ggml_vec_dot_i2_i8_stfma(
    n: c_int,
    s: *mut f32,
    bs: usize,
    vx: *const c_void,
    bx: usize,
    vy: *const c_void,
    by: usize,
    nrc: c_int,
) {
    // SAFETY: forwarded caller contract.
    guard(|_| (), || unsafe { vec_dot(n, s, bs, vx, bx, vy, by, nrc) })
}

/// The dot of the first `n` weights of a cached entry's first row with `vy`
/// (`n` int8), identical to `ggml_vec_dot_i2_i8_s` on the original bytes.
/// `n` must be a positive multiple of 128 no larger than the entry's row.
/// On error writes NaN to `*s` (if `s` is not NULL) and sets the last error.
#[no_mangle]
pub unsafe extern "C" fn ggml_vec_dot_i2_i8_s_stfma_cached(
    n: c_int,
    s: *mut f32,
    vx: ggml_bitnet_stfma_cache_handle,
    vy: *const c_void,
) {
    let r = guard(
        |_| None,
        || {
            if s.is_null() {
                return Err(null("s"));
            }
            let n = check_n(n)?;
            let e = Registry::global().get(handle_id(vx)?)?;
            // SAFETY: by the caller's contract vy holds n int8.
            let y = unsafe { slice(vy as *const i8, n, "vy")? };
            Ok(Some(dot_entry_prefix(&e.matrix, y)?))
        },
    );
    if !s.is_null() {
        // SAFETY: s is valid for one write.
        unsafe { *s = r.map_or(f32::NAN, |v| v as f32) };
    }
}

fn dot_entry_prefix(m: &PackedMatrix, y: &[i8]) -> Result<i32> {
    if y.len() > m.cols() {
        return Err(Error::invalid(format!(
            "n = {} exceeds the cached row of {} weights",
            y.len(),
            m.cols()
        )));
    }
    Ok(m.row_prefix_dot(kernels::active(), 0, y))
}

/// The RFC's hybrid dot. What `vx` may be:
///
/// - `use_cache == false`: the address of `n/4` bytes of I2_S weights (one
///   row), read directly, as `ggml_vec_dot_i2_i8_s` with `nrc == 1`.
/// - `use_cache == true`: a live handle from `ggml_bitnet_stfma_cache_weights`
///   or `ggml_bitnet_stfma_cache_tensor` (the RFC's contract: the dot of its
///   first row's first `n` weights, as `ggml_vec_dot_i2_i8_s_stfma_cached`);
///   or, as an extension, the address of the bytes a live entry was made from,
///   which are then read directly (so bytes changed or reused since caching
///   give the current result, never a stale one). Anything else (NULL, a
///   freed or never-issued handle, an address no live entry was made from)
///   is an error: nothing is read through it.
///
/// The result equals `ggml_vec_dot_i2_i8_s` on the original bytes. On error
/// writes NaN to `*s` (if `s` is not NULL) and sets the last error.
#[no_mangle]
pub unsafe extern "C" fn ggml_vec_dot_i2_i8_s_stfma_hybrid(
    n: c_int,
    s: *mut f32,
    vx: *const c_void,
    vy: *const c_void,
    use_cache: bool,
) {
    let r = guard(
        |_| None,
        || {
            if s.is_null() {
                return Err(null("s"));
            }
            let n = check_n(n)?;
            // SAFETY: by the caller's contract vy holds n int8.
            let y = unsafe { slice(vy as *const i8, n, "vy")? };
            if use_cache {
                match Registry::global().lookup(vx as usize) {
                    Lookup::Handle(e) => return Ok(Some(dot_entry_prefix(&e.matrix, y)?)),
                    Lookup::Source => {}
                    Lookup::Unknown => {
                        return Err(Error::new(
                            ErrorKind::BadHandle,
                            format!(
                                "vx = {vx:p} with use_cache is neither a live cache handle nor \
                                 the source address of a live cache entry"
                            ),
                        ))
                    }
                }
            }
            // SAFETY: by the caller's contract vx holds n/4 bytes (with
            // use_cache, the caller cached from this address and keeps it).
            let w = unsafe { slice(vx as *const u8, n / 4, "vx")? };
            Ok(Some(kernels::dot(w, 32, y)))
        },
    );
    if !s.is_null() {
        // SAFETY: s is valid for one write.
        unsafe { *s = r.map_or(f32::NAN, |v| v as f32) };
    }
}

/// The RFC's per-2-bit-field re-encoding, kept for source compatibility:
/// 00→10, 01→00, 10→01, 11→11 in each of the four fields.
#[no_mangle]
pub extern "C" fn convert_bitnet_to_stfma_byte(b: u8) -> u8 {
    let hi = (b >> 1) & 0x55;
    let lo = b & 0x55;
    ((!(hi ^ lo) & 0x55) << 1) | hi
}

/// `convert_bitnet_to_stfma_byte` over `num_bytes` bytes; `in` and `out` may
/// be the same buffer. NULL pointers (with `num_bytes > 0`) set the last
/// error and write nothing.
#[no_mangle]
pub unsafe extern "C" fn convert_bitnet_to_stfma_array(
    input: *const u8,
    output: *mut u8,
    num_bytes: usize,
) {
    guard(
        |_| (),
        || {
            if num_bytes == 0 {
                return Ok(());
            }
            if input.is_null() {
                return Err(null("in"));
            }
            if output.is_null() {
                return Err(null("out"));
            }
            for i in 0..num_bytes {
                // SAFETY: both buffers hold num_bytes bytes; each byte is read
                // before it is written, so in == out is fine.
                unsafe { *output.add(i) = convert_bitnet_to_stfma_byte(*input.add(i)) };
            }
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convert_golden_bytes() {
        for (a, b) in [
            (0x00, 0xAA),
            (0x55, 0x00),
            (0xAA, 0x55),
            (0xFF, 0xFF),
            (0x1B, 0x87),
            (0xE4, 0xD2),
        ] {
            assert_eq!(convert_bitnet_to_stfma_byte(a), b, "{a:#x}");
        }
        let mut buf = [0x00u8, 0x55, 0x1B];
        // SAFETY: in == out is allowed.
        unsafe { convert_bitnet_to_stfma_array(buf.as_ptr(), buf.as_mut_ptr(), 3) };
        assert_eq!(buf, [0xAA, 0x00, 0x87]);
    }
}
