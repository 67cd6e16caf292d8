//! Beyond the RFC, the tensor and matmul API: activations quantized as
//! bitnet.cpp does, whole I2_S tensors cached in the tile layout, their
//! shape, raw row dots, and finished multi-threaded matmuls.

use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex};

use super::guard::{code, guard, handle_id, null, row_range, slice};
use super::registry::Registry;
use super::{ggml_bitnet_stfma_cache_handle, GGML_BITNET_STFMA_OK};
use crate::error::Error;
use crate::kernels;
use crate::matmul::{self, ActBatch};
use crate::threadpool::ThreadPool;

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
        let a = kernels::quantize_activations(x, q);
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
    // SAFETY: the same contract; without flags the bytes are only read.
    unsafe {
        super::ggml_bitnet_stfma_cache_tensor_ex(
            data as *mut c_void,
            data_size,
            rows,
            cols,
            0,
            std::ptr::null_mut(),
        )
    }
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
        let e = Registry::global().get(handle_id(h)?)?;
        let m = &e.matrix;
        let rows = row_range(first_row, nrows, m.rows())?;
        poison = rows.len();
        // SAFETY: by the caller's contract vy holds cols int8.
        let y = unsafe { slice(vy, m.cols(), "vy")? };
        let mut dots = vec![0i32; rows.len()];
        m.dot_rows(kernels::active(), rows, y, &mut dots);
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
