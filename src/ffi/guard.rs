//! The guard every exported function runs in, and the argument helpers
//! they share: the thread-local last-error message, panics caught and
//! turned into errors, NULL and range checks, handle conversions.

use std::cell::{Cell, RefCell};
use std::ffi::{c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::ggml_bitnet_stfma_cache_handle;
use crate::error::{Error, ErrorKind, Result};
use crate::quant::i2s::QK_I2_S;

thread_local! {
    pub(super) static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
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
pub(super) fn guard<T>(fallback: impl FnOnce(ErrorKind) -> T, f: impl FnOnce() -> Result<T>) -> T {
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

pub(super) fn code(kind: ErrorKind) -> c_int {
    kind.code()
}

pub(super) fn null(what: &str) -> Error {
    Error::new(ErrorKind::Null, format!("{what} is NULL"))
}

pub(super) fn check_n(n: c_int) -> Result<usize> {
    if n <= 0 || !(n as usize).is_multiple_of(QK_I2_S) {
        return Err(Error::invalid(format!(
            "n = {n} must be a positive multiple of {QK_I2_S}"
        )));
    }
    Ok(n as usize)
}

/// Rows `first_row .. first_row + nrows` of a tensor of `total` rows, or an
/// error naming what is out of range.
pub(super) fn row_range(
    first_row: i64,
    nrows: i64,
    total: usize,
) -> Result<std::ops::Range<usize>> {
    if nrows <= 0 || first_row < 0 {
        return Err(Error::invalid(format!(
            "first_row = {first_row}, nrows = {nrows}"
        )));
    }
    let (r0, nr) = (first_row as u64, nrows as u64);
    match r0.checked_add(nr) {
        Some(end) if end <= total as u64 => Ok(r0 as usize..end as usize),
        _ => Err(Error::invalid(format!(
            "rows {r0}..{} exceed the tensor's {total}",
            r0.saturating_add(nr)
        ))),
    }
}

pub(super) fn handle_id(h: ggml_bitnet_stfma_cache_handle) -> Result<u64> {
    if h.is_null() {
        return Err(Error::new(ErrorKind::BadHandle, "cache handle is NULL"));
    }
    Ok(h as usize as u64)
}

pub(super) fn to_handle(id: u64) -> ggml_bitnet_stfma_cache_handle {
    id as usize as ggml_bitnet_stfma_cache_handle
}

/// # Safety
/// `p` is NULL or valid for `len` elements.
pub(super) unsafe fn slice<'a, T>(p: *const T, len: usize, what: &str) -> Result<&'a [T]> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL and, by the caller's contract, valid for `len` elements.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}
