//! bitnet.cpp's kernel contract: `ggml_vec_dot_i2_i8_s` and `quantize_i2_s`
//! under their upstream names (exported with the `upstream-symbols`
//! feature), and the dot body they share with the RFC's hook name.

use std::ffi::{c_int, c_void};

use super::guard::{check_n, guard, null, slice};
use crate::error::{Error, Result};
use crate::kernels;
use crate::quant::i2s::{self, BLOCK_BYTES, QK_I2_S};

/// The shared body of `ggml_vec_dot_i2_i8_s` and `ggml_vec_dot_i2_i8_stfma`.
///
/// # Safety
/// The pointers are valid for the rows, columns and outputs the arguments
/// describe (see the header).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn vec_dot(
    n: c_int,
    s: *mut f32,
    bs: usize,
    vx: *const c_void,
    bx: usize,
    vy: *const c_void,
    by: usize,
    nrc: c_int,
) -> Result<()> {
    if s.is_null() {
        return Err(null("s"));
    }
    let outputs = |nrc: usize| -> Vec<usize> {
        if nrc > 1 && nrc.is_multiple_of(4) {
            (0..nrc).map(|c| c * bs).collect()
        } else {
            (0..nrc.max(1)).collect()
        }
    };
    let nrc_u = usize::try_from(nrc).unwrap_or(0);
    let checked = (|| -> Result<usize> {
        if nrc <= 0 {
            return Err(Error::invalid(format!("nrc = {nrc} must be positive")));
        }
        let n = check_n(n)?;
        if vx.is_null() {
            return Err(null("vx"));
        }
        if vy.is_null() {
            return Err(null("vy"));
        }
        Ok(n)
    })();
    let n = match checked {
        Ok(n) => n,
        Err(e) => {
            // Never a silently wrong result: poison the outputs we would write.
            for i in outputs(nrc_u) {
                // SAFETY: the caller provides room for these outputs.
                unsafe { *s.add(i) = f32::NAN };
            }
            return Err(e);
        }
    };
    let k = kernels::active();
    let (x, y, nb) = (vx as *const u8, vy as *const i8, n / QK_I2_S);
    if nrc_u == 1 {
        // The classic call, and the one ggml makes per row: straight to the kernel.
        // SAFETY: `k` is active, hence supported; by the caller's contract the
        // row holds n/4 bytes and the activations n.
        unsafe { *s = kernels::dot_raw(k, x, BLOCK_BYTES, y, nb) as f32 };
    } else if nrc_u % 4 == 0 {
        // Activation-parallel: one weight row, column c at vy + c*by, result to s[c*bs].
        for c in (0..nrc_u).step_by(4) {
            // SAFETY: as above, for activation columns c..c+4; the caller
            // provides s[(c+j)*bs].
            unsafe {
                let a = std::array::from_fn(|j| y.add((c + j) * by));
                let d = kernels::dot_4acts_raw(k, x, BLOCK_BYTES, a, nb);
                for (j, v) in d.iter().enumerate() {
                    *s.add((c + j) * bs) = *v as f32;
                }
            }
        }
    } else {
        // Weight rows: row r at vx + r*bx/4, result to s[r].
        let row = |r: usize| x.wrapping_add(r * bx / 4);
        let mut r = 0;
        while r + 4 <= nrc_u {
            // SAFETY: as above, for rows r..r+4; the caller provides s[0..nrc].
            unsafe {
                let d = kernels::dot_4rows_raw(
                    k,
                    [row(r), row(r + 1), row(r + 2), row(r + 3)],
                    BLOCK_BYTES,
                    y,
                    nb,
                );
                for (j, v) in d.iter().enumerate() {
                    *s.add(r + j) = *v as f32;
                }
            }
            r += 4;
        }
        while r < nrc_u {
            // SAFETY: as above.
            unsafe { *s.add(r) = kernels::dot_raw(k, row(r), BLOCK_BYTES, y, nb) as f32 };
            r += 1;
        }
    }
    Ok(())
}

/// bitnet.cpp's I2_S × I8_S dot. Writes the exact integer `Σ code·q` (codes
/// 0, 1, 2 for -1, 0, +1; no scale applied, nothing subtracted, no int16
/// wrap-around) as a float.
///
/// - `n`: weights per row, a positive multiple of 128.
/// - `nrc == 1`: one row `vx` (n/4 bytes) against `vy` (n int8), result to `s[0]`.
/// - `nrc > 1`, `nrc % 4 == 0`: activation-parallel: one weight row `vx`,
///   activation column `c` at `vy + c*by` bytes, result to `s[c*bs]`.
/// - other `nrc > 1`: `nrc` weight rows, row `r` at `vx + r*bx/4` bytes,
///   result to `s[r]`.
///
/// On bad arguments (NULL pointer, `n` not a positive multiple of 128,
/// `nrc <= 0`) writes NaN to every output it can address and sets the last
/// error. Only exported with the `upstream-symbols` feature (on by default).
#[cfg(feature = "upstream-symbols")]
#[no_mangle]
pub unsafe extern "C" fn ggml_vec_dot_i2_i8_s(
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

/// bitnet.cpp's `quantize_i2_s`: `src` holds `nrow * n_per_row` floats that
/// are ternary times one scale. Writes the I2_S codes (`|w| < 1e-6` → 0,
/// positive → +1, negative → -1), then the f32 scale `max|w|` and zero
/// padding to `dst`, and returns `nrow*n_per_row/4 + 32`, the bytes written;
/// `dst` must have room for that many. `n_per_row` must be a positive
/// multiple of 128. `quant_weights` is ignored. Returns 0 and sets the last
/// error on bad arguments. Only exported with `upstream-symbols`.
#[cfg(feature = "upstream-symbols")]
#[no_mangle]
pub unsafe extern "C" fn quantize_i2_s(
    src: *const f32,
    dst: *mut c_void,
    nrow: i64,
    n_per_row: i64,
    quant_weights: *const f32,
) -> usize {
    // SAFETY: forwarded caller contract.
    unsafe { quantize_i2_s_impl(src, dst, nrow, n_per_row, quant_weights) }
}

unsafe fn quantize_i2_s_impl(
    src: *const f32,
    dst: *mut c_void,
    nrow: i64,
    n_per_row: i64,
    _qw: *const f32,
) -> usize {
    guard(
        |_| 0,
        || {
            if nrow <= 0 || n_per_row <= 0 {
                return Err(Error::invalid(format!(
                    "nrow = {nrow} and n_per_row = {n_per_row} must be positive"
                )));
            }
            let (nrow, n_per_row) = (nrow as usize, n_per_row as usize);
            let n = nrow
                .checked_mul(n_per_row)
                .filter(|&n| n <= isize::MAX as usize / 4)
                .ok_or_else(|| Error::invalid("nrow * n_per_row is too large"))?;
            if n_per_row % QK_I2_S != 0 {
                return Err(Error::invalid(format!(
                    "n_per_row = {n_per_row} is not a multiple of {QK_I2_S}"
                )));
            }
            if dst.is_null() {
                return Err(null("dst"));
            }
            // SAFETY: by the caller's contract `src` holds n floats.
            let src = unsafe { slice(src, n, "src")? };
            // SAFETY: by the caller's contract `dst` has room for the result.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, i2s::tensor_bytes(n)) };
            i2s::quantize_i2_s(src, nrow, n_per_row, dst)
        },
    )
}
