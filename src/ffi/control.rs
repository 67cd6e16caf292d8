//! Version, errors and kernel selection: the ABI and library versions, the
//! calling thread's last error message, and the kernel in use.

use std::ffi::{c_char, c_int, CStr};

use super::guard::{code, guard, LAST_ERROR};
use super::{GGML_BITNET_STFMA_ABI_VERSION, GGML_BITNET_STFMA_OK};
use crate::error::Error;
use crate::kernels::{self, Kernel};

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
