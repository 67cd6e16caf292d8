//! The C ABI, declared in `include/ggml-bitnet-stfma.h` (generated from this
//! file by cbindgen). This is the only module with `#[no_mangle]`.
//!
//! Rules every function follows: no panic crosses the boundary (it is caught
//! and reported as `GGML_BITNET_STFMA_ERR_INTERNAL`); every call clears the
//! calling thread's last-error message first and sets it when it fails;
//! pointers are checked for NULL and sizes for range before use; handles are
//! looked up in the registry and never dereferenced.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::cache::{Lookup, PackedMatrix, Registry};
use crate::error::{Error, ErrorKind, Result};
use crate::i2s::{self, BLOCK_BYTES, QK_I2_S};
use crate::kernels::{self, Kernel};
use crate::matmul::{self, ActBatch};
use crate::threadpool::ThreadPool;

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

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
    static HAS_ERROR: Cell<bool> = const { Cell::new(false) };
}

/// Threads whose last-error slot holds a message (a thread that exits with
/// one leaves the count high, which only costs the fast path below).
static THREADS_WITH_ERROR: AtomicUsize = AtomicUsize::new(0);

fn clear_error() {
    // Every call clears the message. ggml calls the dot once per weight row,
    // and thread-local access in a shared library is a call, so the common
    // case (no thread has an error) is one load of a shared counter.
    if THREADS_WITH_ERROR.load(Ordering::Relaxed) != 0 && HAS_ERROR.with(Cell::get) {
        HAS_ERROR.with(|f| f.set(false));
        THREADS_WITH_ERROR.fetch_sub(1, Ordering::Relaxed);
        LAST_ERROR.with(|e| {
            if let Ok(mut e) = e.try_borrow_mut() {
                *e = None;
            }
        });
    }
}

fn set_error(err: &Error) {
    let msg = CString::new(err.message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            *e = Some(msg);
        }
    });
    if !HAS_ERROR.with(|f| f.replace(true)) {
        THREADS_WITH_ERROR.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `f`, catching panics; on failure records the message and returns
/// `fallback(kind)`.
#[inline]
fn guard<T>(fallback: impl FnOnce(ErrorKind) -> T, f: impl FnOnce() -> Result<T>) -> T {
    clear_error();
    let err = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => return v,
        Ok(Err(e)) => e,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Error::new(ErrorKind::Internal, format!("internal error: {what}"))
        }
    };
    set_error(&err);
    fallback(err.kind)
}

fn code(kind: ErrorKind) -> c_int {
    kind.code()
}

fn null(what: &str) -> Error {
    Error::new(ErrorKind::Null, format!("{what} is NULL"))
}

fn check_n(n: c_int) -> Result<usize> {
    if n <= 0 || !(n as usize).is_multiple_of(QK_I2_S) {
        return Err(Error::invalid(format!(
            "n = {n} must be a positive multiple of {QK_I2_S}"
        )));
    }
    Ok(n as usize)
}

fn handle_id(h: ggml_bitnet_stfma_cache_handle) -> Result<u64> {
    if h.is_null() {
        return Err(Error::new(ErrorKind::BadHandle, "cache handle is NULL"));
    }
    Ok(h as usize as u64)
}

fn to_handle(id: u64) -> ggml_bitnet_stfma_cache_handle {
    id as usize as ggml_bitnet_stfma_cache_handle
}

/// # Safety
/// `p` is NULL or valid for `len` elements.
unsafe fn slice<'a, T>(p: *const T, len: usize, what: &str) -> Result<&'a [T]> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL and, by the caller's contract, valid for `len` elements.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// The shared body of `ggml_vec_dot_i2_i8_s` and `ggml_vec_dot_i2_i8_stfma`.
///
/// # Safety
/// The pointers are valid for the rows, columns and outputs the arguments
/// describe (see the header).
#[allow(clippy::too_many_arguments)]
unsafe fn vec_dot(
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

// ---------------------------------------------------------------------------
// 1. The upstream bitnet.cpp kernel contract.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 2. The STFMA family (names from the RFC; semantics documented here).
// ---------------------------------------------------------------------------

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
    let (w, stride) = m.row(0);
    Ok(kernels::dot(w, stride, y))
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

// ---------------------------------------------------------------------------
// 3. Beyond the RFC: whole matmuls, kernel control, errors, version.
// ---------------------------------------------------------------------------

/// The ABI version (`GGML_BITNET_STFMA_ABI_VERSION` of the library linked).
#[no_mangle]
pub extern "C" fn ggml_bitnet_stfma_abi_version() -> c_int {
    GGML_BITNET_STFMA_ABI_VERSION
}

/// The library version, e.g. "0.1.0" (static string).
#[no_mangle]
pub extern "C" fn ggml_bitnet_stfma_version() -> *const c_char {
    static V: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    V.as_ptr()
}

/// The calling thread's last error message: empty if the most recent call
/// of this library on this thread succeeded. Valid until the thread's next
/// call into the library.
#[no_mangle]
pub extern "C" fn ggml_bitnet_stfma_last_error() -> *const c_char {
    LAST_ERROR.with(|e| match e.try_borrow() {
        Ok(e) => e.as_ref().map_or(c"".as_ptr(), |m| m.as_ptr()),
        Err(_) => c"".as_ptr(),
    })
}

/// Name of the kernel in use: "scalar", "avx2", "avx512", "neon" or
/// "neon-dotprod" (static string).
#[no_mangle]
pub extern "C" fn ggml_bitnet_stfma_kernel_name() -> *const c_char {
    guard(
        |_| c"scalar".as_ptr(),
        || Ok(kernel_cname(kernels::active()).as_ptr()),
    )
}

fn kernel_cname(k: Kernel) -> &'static CStr {
    match k {
        Kernel::Scalar => c"scalar",
        Kernel::Avx2 => c"avx2",
        Kernel::Avx512 => c"avx512",
        Kernel::Neon => c"neon",
        Kernel::NeonDotprod => c"neon-dotprod",
    }
}

/// Forces the kernel for every later call in the process: a name as
/// returned by `ggml_bitnet_stfma_kernel_name`, or NULL / "auto" for the best
/// one. Returns 0, `GGML_BITNET_STFMA_ERR_INVALID` for an unknown name, or
/// `GGML_BITNET_STFMA_ERR_UNSUPPORTED` if this CPU cannot run it (the kernel
/// then stays as it was). Results never depend on the kernel.
#[no_mangle]
pub unsafe extern "C" fn ggml_bitnet_stfma_set_kernel(name: *const c_char) -> c_int {
    guard(code, || {
        let k = if name.is_null() {
            None
        } else {
            // SAFETY: by the caller's contract a NUL-terminated string.
            let s = unsafe { CStr::from_ptr(name) }.to_string_lossy();
            if s.trim().eq_ignore_ascii_case("auto") {
                None
            } else {
                Some(
                    Kernel::from_name(&s)
                        .ok_or_else(|| Error::invalid(format!("unknown kernel name {s:?}")))?,
                )
            }
        };
        kernels::force(k)?;
        Ok(GGML_BITNET_STFMA_OK)
    })
}

/// Quantizes `n` floats to I8_S exactly as bitnet.cpp's `quantize_row_i8_s`:
/// `act_scale = 127 / max(1e-5, max|x|)`, `q = round_half_even(x*act_scale)`
/// clamped to [-128, 127], `act_sum = Σ q`. Returns 0 or an error code.
#[no_mangle]
pub unsafe extern "C" fn ggml_bitnet_stfma_quantize_activations(
    x: *const f32,
    n: i64,
    q: *mut i8,
    act_scale: *mut f32,
    act_sum: *mut i32,
) -> c_int {
    guard(code, || {
        if n <= 0 || n as u64 > isize::MAX as u64 / 4 {
            return Err(Error::invalid(format!("n = {n} must be positive")));
        }
        let n = n as usize;
        if q.is_null() || act_scale.is_null() || act_sum.is_null() {
            return Err(null("q, act_scale or act_sum"));
        }
        // SAFETY: by the caller's contract x holds n floats, q room for n.
        let (x, q) = unsafe { (slice(x, n, "x")?, std::slice::from_raw_parts_mut(q, n)) };
        let a = i2s::quantize_activations(x, q);
        // SAFETY: checked non-NULL above.
        unsafe {
            *act_scale = a.scale;
            *act_sum = a.sum;
        }
        Ok(GGML_BITNET_STFMA_OK)
    })
}

/// Caches a whole I2_S weight tensor of `rows` rows of `cols` weights (`cols`
/// a multiple of 128) as stored in a GGUF file: `rows*cols/4` bytes of codes
/// followed by the f32 tensor scale. `data_size` is the bytes readable at
/// `data` and must be at least `rows*cols/4 + 4`. The weights are repacked
/// into the interleaved tile layout. Returns NULL (last error set) on bad
/// arguments.
#[no_mangle]
pub unsafe extern "C" fn ggml_bitnet_stfma_cache_tensor(
    data: *const c_void,
    data_size: usize,
    rows: i64,
    cols: i64,
) -> ggml_bitnet_stfma_cache_handle {
    guard(
        |_| std::ptr::null_mut(),
        || {
            if rows <= 0 || cols <= 0 {
                return Err(Error::invalid(format!(
                    "shape {rows}x{cols} must be positive"
                )));
            }
            let (rows, cols) = (rows as usize, cols as usize);
            let n = rows
                .checked_mul(cols)
                .ok_or_else(|| Error::invalid("rows * cols overflows"))?;
            if data_size < n / 4 + 4 {
                return Err(Error::invalid(format!(
                    "data_size {data_size} is below the {} bytes a {rows}x{cols} I2_S tensor needs",
                    n / 4 + 4
                )));
            }
            // SAFETY: by the caller's contract data holds data_size bytes.
            let t = unsafe { slice(data as *const u8, data_size, "data")? };
            let m = PackedMatrix::from_i2s_tensor(t, rows, cols)?;
            Ok(to_handle(Registry::global().insert(m, data as usize)))
        },
    )
}

/// Shape and scale of a cached entry (`cache_weights` entries have one row
/// and scale 1). Any output pointer may be NULL. Returns 0 or an error code.
#[no_mangle]
pub unsafe extern "C" fn ggml_bitnet_stfma_tensor_info(
    h: ggml_bitnet_stfma_cache_handle,
    rows: *mut i64,
    cols: *mut i64,
    scale: *mut f32,
) -> c_int {
    guard(code, || {
        let e = Registry::global().get(handle_id(h)?)?;
        // SAFETY: each pointer is NULL or valid for one write.
        unsafe {
            if !rows.is_null() {
                *rows = e.matrix.rows() as i64;
            }
            if !cols.is_null() {
                *cols = e.matrix.cols() as i64;
            }
            if !scale.is_null() {
                *scale = e.matrix.scale();
            }
        }
        Ok(GGML_BITNET_STFMA_OK)
    })
}

/// Raw integer dots (as floats, like `ggml_vec_dot_i2_i8_s`) of rows
/// `first_row .. first_row + nrows` of a cached entry against one activation
/// row `vy` of `cols` int8, into `s[0..nrows]`. Returns 0 or an error code
/// (on error the outputs are NaN where addressable).
#[no_mangle]
pub unsafe extern "C" fn ggml_bitnet_stfma_tensor_dot(
    h: ggml_bitnet_stfma_cache_handle,
    first_row: i64,
    nrows: i64,
    vy: *const i8,
    s: *mut f32,
) -> c_int {
    let mut poison = 0usize;
    let rc = guard(code, || {
        if s.is_null() {
            return Err(null("s"));
        }
        if nrows <= 0 || first_row < 0 {
            return Err(Error::invalid(format!(
                "first_row = {first_row}, nrows = {nrows}"
            )));
        }
        let e = Registry::global().get(handle_id(h)?)?;
        let m = &e.matrix;
        let (r0, nr) = (first_row as u64, nrows as u64);
        if r0.checked_add(nr).is_none_or(|end| end > m.rows() as u64) {
            return Err(Error::invalid(format!(
                "rows {r0}..{} exceed the tensor's {}",
                r0 + nr,
                m.rows()
            )));
        }
        poison = nr as usize;
        // SAFETY: by the caller's contract vy holds cols int8.
        let y = unsafe { slice(vy, m.cols(), "vy")? };
        let mut dots = vec![0i32; nr as usize];
        m.dot_rows(
            kernels::active(),
            r0 as usize..(r0 + nr) as usize,
            y,
            &mut dots,
        );
        for (i, d) in dots.iter().enumerate() {
            // SAFETY: s holds nrows floats.
            unsafe { *s.add(i) = *d as f32 };
        }
        poison = 0;
        Ok(GGML_BITNET_STFMA_OK)
    });
    for i in 0..poison {
        // SAFETY: s is non-NULL and holds nrows floats (poison > 0 only then).
        unsafe { *s.add(i) = f32::NAN };
    }
    rc
}

fn pool(threads: c_int) -> Arc<ThreadPool> {
    static POOL: Mutex<Option<Arc<ThreadPool>>> = Mutex::new(None);
    let want = if threads <= 0 {
        crate::threadpool::default_threads()
    } else {
        threads as usize
    };
    let mut g = POOL.lock().unwrap_or_else(|e| e.into_inner());
    match &*g {
        Some(p) if p.threads() == want => Arc::clone(p),
        _ => {
            let p = Arc::new(ThreadPool::new(want));
            *g = Some(Arc::clone(&p));
            p
        }
    }
}

/// Finished ternary matmul `y = W x` with a cached tensor of `rows × cols`:
/// `x` holds `n_cols_x` activation columns of `cols` floats (column `c` at
/// `x + c*cols`), `y` receives `n_cols_x` columns of `rows` floats (column
/// `c` at `y + c*rows`). Each column is quantized to I8_S and finished as
/// `(dot - act_sum) / act_scale * scale`, exactly as bitnet.cpp. Runs on
/// `n_threads` threads (<= 0: all cores). Returns 0 or an error code.
#[no_mangle]
pub unsafe extern "C" fn ggml_bitnet_stfma_matmul(
    h: ggml_bitnet_stfma_cache_handle,
    x: *const f32,
    n_cols_x: i64,
    y: *mut f32,
    n_threads: c_int,
) -> c_int {
    guard(code, || {
        let e = Registry::global().get(handle_id(h)?)?;
        let m = &e.matrix;
        if n_cols_x <= 0 || n_cols_x > (1 << 24) {
            return Err(Error::invalid(format!(
                "n_cols_x = {n_cols_x} out of range"
            )));
        }
        let nc = n_cols_x as usize;
        if y.is_null() {
            return Err(null("y"));
        }
        // SAFETY: by the caller's contract x holds nc*cols floats, y nc*rows.
        let (xs, ys) = unsafe {
            (
                slice(x, nc * m.cols(), "x")?,
                std::slice::from_raw_parts_mut(y, nc * m.rows()),
            )
        };
        let mut acts = ActBatch::new(m.cols(), nc);
        acts.quantize(xs);
        matmul::matmul(m, &acts, ys, &pool(n_threads));
        Ok(GGML_BITNET_STFMA_OK)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: the library returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(ggml_bitnet_stfma_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

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
