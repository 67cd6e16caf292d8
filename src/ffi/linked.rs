//! For a linked ggml that hands whole matmuls to the library (the hooks of
//! `ggml_bitnet_hooks.c`, see docs/integration.md): a tensor cached at load,
//! in place where its buffer allows, and the finished tile GEMM over
//! activation columns that the caller quantized into its own buffer.

use std::ffi::{c_int, c_void};

use super::guard::{code, guard, handle_id, null, row_range, to_handle};
use super::registry::Registry;
use super::{ggml_bitnet_stfma_cache_handle, GGML_BITNET_STFMA_OK};
use crate::error::Error;
use crate::kernels;
use crate::matmul::{self, ActCols};
use crate::packed::{Layout, PackedMatrix, TILE_ROWS};
use crate::quant::i2s::ActQuant;

/// `ggml_bitnet_stfma_cache_tensor_ex` flag: repack inside the caller's
/// buffer when it is private writable memory and the shape allows it (rows a
/// multiple of 4, columns of 128), keeping no second copy. The buffer then
/// holds the tile layout, no longer I2_S.
pub const GGML_BITNET_STFMA_IN_PLACE: c_int = 1;
/// `ggml_bitnet_stfma_cache_tensor_ex` flag: when a copy is made and the
/// source lies in a read-only file mapping (a model file mapped with mmap),
/// drop the source's whole pages from the process's resident set (Linux
/// `madvise(MADV_DONTNEED)`): they stay correct and are read back from the
/// file if touched again, but no longer count twice.
pub const GGML_BITNET_STFMA_RELEASE_SOURCE: c_int = 2;

/// `ggml_bitnet_stfma_cache_tensor` with a choice of where the repacked
/// bytes live (`flags`: `GGML_BITNET_STFMA_IN_PLACE`,
/// `GGML_BITNET_STFMA_RELEASE_SOURCE`, or 0 for a plain copy). `data` holds
/// the tensor as stored in a GGUF file (`rows*cols/4` bytes of codes, then
/// the f32 scale; `data_size` at least `rows*cols/4 + 4`). If `in_place` is
/// not NULL it receives 1 when the tensor was repacked in place, else 0. An
/// entry made in place reads `data`, which must stay allocated and unchanged
/// until the entry is freed; freeing it leaves the repacked bytes there.
/// Returns NULL (last error set) on bad arguments.
#[no_mangle]
pub unsafe extern "C" fn ggml_bitnet_stfma_cache_tensor_ex(
    data: *mut c_void,
    data_size: usize,
    rows: i64,
    cols: i64,
    flags: c_int,
    in_place: *mut c_int,
) -> ggml_bitnet_stfma_cache_handle {
    guard(
        |_| std::ptr::null_mut(),
        || {
            if !in_place.is_null() {
                // SAFETY: non-NULL, valid for one write by the contract.
                unsafe { *in_place = 0 };
            }
            if flags & !(GGML_BITNET_STFMA_IN_PLACE | GGML_BITNET_STFMA_RELEASE_SOURCE) != 0 {
                return Err(Error::invalid(format!("unknown flags {flags:#x}")));
            }
            if data.is_null() {
                return Err(null("data"));
            }
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
            let addr = data as usize;
            // What kind of memory holds the tensor: read once, only when a
            // flag needs it.
            let region = if flags != 0 {
                pages::Region::of(addr, data_size)
            } else {
                None
            };
            if flags & GGML_BITNET_STFMA_IN_PLACE != 0
                && PackedMatrix::fits_in_place(rows, cols)
                && region.as_ref().is_some_and(pages::Region::writable_private)
            {
                // SAFETY: the caller's contract gives data_size bytes at
                // data, to stay allocated and unwritten while the entry
                // lives; the mapping is writable.
                let m = unsafe {
                    let t = std::slice::from_raw_parts_mut(data as *mut u8, data_size);
                    PackedMatrix::repack_in_place(t, rows, cols)?
                };
                if !in_place.is_null() {
                    // SAFETY: as above.
                    unsafe { *in_place = 1 };
                }
                // Not findable by its source address: the bytes there are no
                // longer I2_S, so the hybrid dot must not read them as such.
                return Ok(to_handle(Registry::global().insert(m, 0)));
            }
            // SAFETY: the caller's contract gives data_size readable bytes.
            let t = unsafe { std::slice::from_raw_parts(data as *const u8, data_size) };
            // The C ABI's caches stay I2_S (their byte counts are part of
            // the contract) unless BITNET_STFMA_FORMAT asks for TL3.
            let layout = Layout::from_env()?.unwrap_or(Layout::I2s);
            let m = PackedMatrix::from_i2s_tensor_as(t, rows, cols, layout)?;
            if flags & GGML_BITNET_STFMA_RELEASE_SOURCE != 0
                && region.as_ref().is_some_and(pages::Region::read_only_file)
            {
                pages::release(addr, data_size);
            }
            Ok(to_handle(Registry::global().insert(m, addr)))
        },
    )
}

/// Columns per stack-held batch of `ggml_bitnet_stfma_tensor_gemm`.
const GEMM_COLS: usize = 128;

/// Finished outputs of rows `first_row .. first_row + nrows` of a cached
/// tensor for `ncols` activation columns quantized by the caller
/// (`ggml_bitnet_stfma_quantize_activations`), computed on the calling
/// thread: column `c` is `q[c]` (as many int8 as the tensor has columns)
/// with `act_scales[c]` and `act_sums[c]`; output (row `r`, column `c`) is
/// written to `y[c*ldy + r - first_row]` as
/// `(dot - act_sum) / act_scale * scale`, the same value as
/// `ggml_bitnet_stfma_matmul`. `first_row` must be a multiple of 4 and
/// `ldy >= nrows`. Other threads may compute other rows of the same `y` at
/// the same time. Returns 0 or an error code.
#[no_mangle]
pub unsafe extern "C" fn ggml_bitnet_stfma_tensor_gemm(
    h: ggml_bitnet_stfma_cache_handle,
    first_row: i64,
    nrows: i64,
    ncols: i64,
    q: *const *const i8,
    act_scales: *const f32,
    act_sums: *const i32,
    y: *mut f32,
    ldy: i64,
) -> c_int {
    guard(code, || {
        if q.is_null() || act_scales.is_null() || act_sums.is_null() || y.is_null() {
            return Err(null("q, act_scales, act_sums or y"));
        }
        let e = Registry::global().get(handle_id(h)?)?;
        let m = &e.matrix;
        let rows = row_range(first_row, nrows, m.rows())?;
        if ncols <= 0 || ldy < nrows {
            return Err(Error::invalid(format!(
                "ncols = {ncols}, ldy = {ldy} (nrows = {nrows})"
            )));
        }
        let (nc, ld) = (ncols as usize, ldy as usize);
        if m.tile_rows() == TILE_ROWS && !rows.start.is_multiple_of(TILE_ROWS) {
            return Err(Error::invalid(format!(
                "first_row {} is not a multiple of {TILE_ROWS}",
                rows.start
            )));
        }
        let k = kernels::active();
        let mut c0 = 0;
        while c0 < nc {
            let n = GEMM_COLS.min(nc - c0);
            let mut cols: [&[i8]; GEMM_COLS] = [&[]; GEMM_COLS];
            let mut quant = [ActQuant { scale: 1.0, sum: 0 }; GEMM_COLS];
            for j in 0..n {
                // SAFETY: by the caller's contract the three arrays hold
                // ncols entries and each column m.cols() int8.
                unsafe {
                    let p = *q.add(c0 + j);
                    if p.is_null() {
                        return Err(null("a column of q"));
                    }
                    cols[j] = std::slice::from_raw_parts(p, m.cols());
                    quant[j] = ActQuant {
                        scale: *act_scales.add(c0 + j),
                        sum: *act_sums.add(c0 + j),
                    };
                }
            }
            let acts = ActCols {
                q: &cols[..n],
                quant: &quant[..n],
            };
            // SAFETY: by the caller's contract y holds these rows of these
            // columns at stride ldy, and no other thread touches them.
            unsafe { matmul::rows_into(k, m, &acts, rows.clone(), y.add(c0 * ld), ld) };
            c0 += n;
        }
        Ok(GGML_BITNET_STFMA_OK)
    })
}

/// What kind of memory a range is, from `/proc/self/maps` (Linux; elsewhere
/// nothing is known, so nothing is done in place or released).
mod pages {
    /// The mapping that holds a range: its permissions (`rwxp` as the maps
    /// file writes them) and whether it maps a file.
    pub struct Region {
        perms: String,
        file: bool,
    }

    impl Region {
        /// The mapping that holds `addr..addr+len`, if one holds all of it.
        pub fn of(addr: usize, len: usize) -> Option<Region> {
            let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
            let end = addr.checked_add(len)?;
            maps.lines().find_map(|line| {
                let mut f = line.split_whitespace();
                let (lo, hi) = f.next()?.split_once('-')?;
                let (lo, hi) = (
                    usize::from_str_radix(lo, 16).ok()?,
                    usize::from_str_radix(hi, 16).ok()?,
                );
                if lo > addr || end > hi {
                    return None;
                }
                let perms = f.next()?.to_string();
                let inode = f.nth(2)?;
                Some(Region {
                    perms,
                    file: inode != "0",
                })
            })
        }

        fn writable(&self) -> bool {
            self.perms.as_bytes().get(1) == Some(&b'w')
        }

        /// Private writable memory (a heap or anonymous buffer, or a
        /// private mapping written copy-on-write): safe to rewrite in place.
        pub fn writable_private(&self) -> bool {
            self.writable() && self.perms.ends_with('p')
        }

        /// A read-only mapping of a file: its pages can be dropped and come
        /// back from the file.
        pub fn read_only_file(&self) -> bool {
            self.file && !self.writable()
        }
    }

    /// Drops the whole pages of `addr..addr+len`, which lie in a read-only
    /// file mapping ([`Region::read_only_file`]), from the resident set
    /// (their contents come back from the file if read again).
    pub fn release(addr: usize, len: usize) {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
            let lo = addr.next_multiple_of(page);
            let hi = (addr + len) / page * page;
            if hi > lo {
                // SAFETY: the pages lie inside a read-only file mapping, so
                // MADV_DONTNEED only drops them from the resident set; a
                // later read maps the file's (unchanged) contents again.
                unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (addr, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::{ggml_bitnet_stfma_free_cached_weights, ggml_bitnet_stfma_matmul};
    use crate::kernels::tests::Rng;
    use crate::quant::i2s;

    /// A GGUF-style I2_S tensor (codes then the scale) of random weights.
    fn tensor(rng: &mut Rng, rows: usize, cols: usize, scale: f32) -> Vec<u8> {
        let codes: Vec<u8> = (0..rows * cols).map(|_| (rng.next() % 3) as u8).collect();
        let mut t = vec![0u8; rows * cols / 4 + 32];
        for (r, dst) in t[..rows * cols / 4].chunks_exact_mut(cols / 4).enumerate() {
            i2s::pack_codes(&codes[r * cols..(r + 1) * cols], dst).unwrap();
        }
        t[rows * cols / 4..rows * cols / 4 + 4].copy_from_slice(&scale.to_le_bytes());
        t
    }

    /// The tile GEMM over caller-held columns, split in row blocks as a
    /// linked ggml splits them, gives bit for bit the library's own matmul,
    /// whether the tensor was repacked in place or copied.
    #[test]
    fn tile_gemm_equals_the_matmul_in_place_or_copied() {
        let mut rng = Rng::new(23);
        let (rows, cols, ncols) = (72, 384, 139);
        for flags in [0, GGML_BITNET_STFMA_IN_PLACE] {
            let mut t = tensor(&mut rng, rows, cols, 0.75);
            let orig = t.clone();
            let x: Vec<f32> = (0..cols * ncols)
                .map(|_| (rng.next() % 2001) as f32 / 100.0 - 10.0)
                .collect();
            let mut placed = -1;
            // SAFETY: t outlives the entry and holds the tensor.
            let h = unsafe {
                ggml_bitnet_stfma_cache_tensor_ex(
                    t.as_mut_ptr().cast(),
                    t.len(),
                    rows as i64,
                    cols as i64,
                    flags,
                    &mut placed,
                )
            };
            assert!(!h.is_null());
            assert_eq!(placed, flags);
            assert_eq!(t != orig, flags == GGML_BITNET_STFMA_IN_PLACE);
            let mut want = vec![0f32; rows * ncols];
            // SAFETY: sizes as documented.
            let rc = unsafe {
                ggml_bitnet_stfma_matmul(h, x.as_ptr(), ncols as i64, want.as_mut_ptr(), 2)
            };
            assert_eq!(rc, 0);
            let mut q = vec![0i8; cols * ncols];
            let mut quant = Vec::new();
            for (xc, qc) in x.chunks_exact(cols).zip(q.chunks_exact_mut(cols)) {
                quant.push(kernels::quantize_activations(xc, qc));
            }
            let ptrs: Vec<*const i8> = q.chunks_exact(cols).map(|c| c.as_ptr()).collect();
            let scales: Vec<f32> = quant.iter().map(|a| a.scale).collect();
            let sums: Vec<i32> = quant.iter().map(|a| a.sum).collect();
            let mut got = vec![f32::NAN; rows * ncols];
            for (r0, nr) in [(0, 8), (8, 64)] {
                // SAFETY: sizes as documented.
                let rc = unsafe {
                    ggml_bitnet_stfma_tensor_gemm(
                        h,
                        r0,
                        nr,
                        ncols as i64,
                        ptrs.as_ptr(),
                        scales.as_ptr(),
                        sums.as_ptr(),
                        got.as_mut_ptr().add(r0 as usize),
                        rows as i64,
                    )
                };
                assert_eq!(rc, 0);
            }
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            // A row block off the tile grid is an error, not a wrong result.
            // SAFETY: as above.
            let rc = unsafe {
                ggml_bitnet_stfma_tensor_gemm(
                    h,
                    2,
                    4,
                    1,
                    ptrs.as_ptr(),
                    scales.as_ptr(),
                    sums.as_ptr(),
                    got.as_mut_ptr(),
                    rows as i64,
                )
            };
            assert_eq!(rc, crate::ffi::GGML_BITNET_STFMA_ERR_INVALID);
            ggml_bitnet_stfma_free_cached_weights(h);
        }
    }

    /// A shape the tile layout cannot hold in the same bytes is copied, not
    /// rewritten.
    #[test]
    fn an_odd_row_count_is_copied() {
        let mut rng = Rng::new(5);
        let mut t = tensor(&mut rng, 6, 128, 1.0);
        let orig = t.clone();
        let mut placed = -1;
        // SAFETY: t holds the tensor and outlives the entry.
        let h = unsafe {
            ggml_bitnet_stfma_cache_tensor_ex(
                t.as_mut_ptr().cast(),
                t.len(),
                6,
                128,
                GGML_BITNET_STFMA_IN_PLACE,
                &mut placed,
            )
        };
        assert!(!h.is_null());
        assert_eq!((placed, t == orig), (0, true));
        ggml_bitnet_stfma_free_cached_weights(h);
    }

    #[test]
    fn heap_memory_is_writable_private() {
        let v = vec![0u8; 1 << 20];
        let heap = pages::Region::of(v.as_ptr() as usize, v.len());
        assert_eq!(
            heap.as_ref().is_some_and(pages::Region::writable_private),
            cfg!(target_os = "linux")
        );
        assert!(!heap.as_ref().is_some_and(pages::Region::read_only_file));
        // A string literal lives in a read-only mapping of the executable.
        let s = "read-only";
        let lit = pages::Region::of(s.as_ptr() as usize, s.len());
        assert!(!lit.as_ref().is_some_and(pages::Region::writable_private));
        assert_eq!(
            lit.as_ref().is_some_and(pages::Region::read_only_file),
            cfg!(target_os = "linux")
        );
    }
}
