//! The I2_S × I8_S dot kernels, one module per instruction set, behind one
//! dispatcher that picks the best kernel the CPU supports once, at run time.
//!
//! Every kernel computes the exact integer `Σ code·q` over whole 128-weight
//! blocks (codes 0..=3 as stored, no int16 wrap-around). A weight row is a
//! sequence of 32-byte blocks, block `i` at byte `i * stride`: the raw I2_S
//! layout has `stride = 32`, the repacked layout of [`crate::packed`] has
//! `stride = 32 * tile_rows`.
//!
//! Beside the ternary kernels, every other SIMD routine of the library lives
//! here too, each beside its scalar twin: activation quantization, and the
//! float kernels of the LM head and attention ([`FloatKernels`]: f16 dots,
//! the grouped attention score and weighted sum, the attention softmax, the
//! int8 dot of the 8-bit head), one table per instruction set.
//!
//! `BITNET_STFMA_KERNEL=auto|scalar|avx2|avx512|neon|neon-dotprod` in the
//! environment, read at first use, or [`force`], selects a kernel family
//! explicitly, for the ternary kernels and the float table alike: `scalar`
//! makes the whole model scalar.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{Error, Result};
use crate::quant::i2s::{ActQuant, BLOCK_BYTES, QK_I2_S};
use crate::quant::tl3;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod scalar;

/// `$f::<G>(args)` for the head-group size `$g` (1..=8; larger is 8): the
/// float kernels keep a group's sums in registers by its size.
#[cfg(target_arch = "x86_64")]
macro_rules! by_group {
    ($g:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $g {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            _ => $f::<8>($($arg),*),
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use by_group;

/// A kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kernel {
    Scalar = 1,
    Avx2 = 2,
    /// AVX-512 F/BW/VL with VNNI (`vpdpbusd`).
    Avx512 = 3,
    Neon = 4,
    /// NEON with the dotprod extension (`sdot`).
    NeonDotprod = 5,
}

/// Environment variable that forces a kernel.
pub const KERNEL_ENV: &str = "BITNET_STFMA_KERNEL";

impl Kernel {
    pub const ALL: [Kernel; 5] = [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::Avx512,
        Kernel::Neon,
        Kernel::NeonDotprod,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
            Kernel::Neon => "neon",
            Kernel::NeonDotprod => "neon-dotprod",
        }
    }

    pub fn from_name(name: &str) -> Option<Kernel> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name.trim()))
    }

    #[inline]
    fn from_u8(v: u8) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| *k as u8 == v)
    }

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                Kernel::Avx2.is_supported()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => true,
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonDotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The kernels this CPU can run, best last.
    pub fn supported() -> Vec<Kernel> {
        Kernel::ALL
            .into_iter()
            .filter(|k| k.is_supported())
            .collect()
    }

    /// The fastest kernel this CPU supports.
    pub fn best() -> Kernel {
        [
            Kernel::Avx512,
            Kernel::Avx2,
            Kernel::NeonDotprod,
            Kernel::Neon,
        ]
        .into_iter()
        .find(|k| k.is_supported())
        .unwrap_or(Kernel::Scalar)
    }
}

static SELECTED: AtomicU8 = AtomicU8::new(0);

/// The kernel in use: forced by [`force`], else by `BITNET_STFMA_KERNEL`
/// (an unknown or unsupported name falls back to the best kernel, with a
/// warning on stderr), else the best one.
#[inline]
pub fn active() -> Kernel {
    if let Some(k) = Kernel::from_u8(SELECTED.load(Ordering::Relaxed)) {
        return k;
    }
    choose()
}

#[cold]
fn choose() -> Kernel {
    let k = match std::env::var(KERNEL_ENV) {
        Ok(name) if !name.trim().is_empty() && !name.trim().eq_ignore_ascii_case("auto") => {
            match Kernel::from_name(&name) {
                Some(k) if k.is_supported() => k,
                _ => {
                    let best = Kernel::best();
                    eprintln!(
                        "bitnet-stfma: {KERNEL_ENV}={name:?} is not a kernel this CPU runs; using {}",
                        best.name()
                    );
                    best
                }
            }
        }
        _ => Kernel::best(),
    };
    // Another thread may have raced us; keep whichever was stored first.
    match SELECTED.compare_exchange(0, k as u8, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => k,
        Err(v) => Kernel::from_u8(v).unwrap_or(k),
    }
}

/// Forces a kernel (`None`: back to the best one). Fails if the CPU cannot
/// run it.
pub fn force(kernel: Option<Kernel>) -> Result<()> {
    let k = kernel.unwrap_or_else(Kernel::best);
    if !k.is_supported() {
        return Err(Error::unsupported(format!(
            "kernel {} is not supported on this CPU",
            k.name()
        )));
    }
    SELECTED.store(k as u8, Ordering::Relaxed);
    Ok(())
}

/// Blocks in `y` and a check that `w` holds that many blocks at `stride`.
fn blocks(w_len: usize, stride: usize, y_len: usize) -> usize {
    assert!(
        y_len.is_multiple_of(QK_I2_S),
        "activation length {y_len} is not a multiple of {QK_I2_S}"
    );
    assert!(
        stride >= BLOCK_BYTES,
        "block stride {stride} is below {BLOCK_BYTES}"
    );
    let nb = y_len / QK_I2_S;
    if nb > 0 {
        let need = (nb - 1) * stride + BLOCK_BYTES;
        assert!(w_len >= need, "weight row has {w_len} bytes, {need} needed");
    }
    nb
}

/// Exact `Σ code·q` of one weight row (block `i` at `w[i*stride..]`) and one
/// activation row, with the active kernel.
///
/// # Panics
/// If `y.len()` is not a multiple of 128 or `w` is too short.
pub fn dot(w: &[u8], stride: usize, y: &[i8]) -> i32 {
    dot_with(active(), w, stride, y)
}

/// [`dot`] with an explicit kernel (falls back to scalar if unsupported).
pub fn dot_with(k: Kernel, w: &[u8], stride: usize, y: &[i8]) -> i32 {
    let nb = blocks(w.len(), stride, y.len());
    // SAFETY: the kernel is supported; `blocks` checked both lengths.
    unsafe { dot_raw(supported_or_scalar(k), w.as_ptr(), stride, y.as_ptr(), nb) }
}

/// Four weight rows against one activation row.
pub fn dot_4rows_with(k: Kernel, w: [&[u8]; 4], stride: usize, y: &[i8]) -> [i32; 4] {
    let nb = blocks(
        w.iter().map(|r| r.len()).min().unwrap_or(0),
        stride,
        y.len(),
    );
    // SAFETY: the kernel is supported; `blocks` checked the shortest row.
    unsafe {
        dot_4rows_raw(
            supported_or_scalar(k),
            w.map(|r| r.as_ptr()),
            stride,
            y.as_ptr(),
            nb,
        )
    }
}

/// One weight row against four activation rows.
pub fn dot_4acts_with(k: Kernel, w: &[u8], stride: usize, y: [&[i8]; 4]) -> [i32; 4] {
    let len = y[0].len();
    assert!(
        y.iter().all(|a| a.len() == len),
        "activation rows differ in length"
    );
    let nb = blocks(w.len(), stride, len);
    // SAFETY: the kernel is supported; `blocks` checked the lengths.
    unsafe {
        dot_4acts_raw(
            supported_or_scalar(k),
            w.as_ptr(),
            stride,
            y.map(|a| a.as_ptr()),
            nb,
        )
    }
}

/// Four weight rows (a packed tile) against `N` activation rows, the prompt
/// GEMM's register tile: `out[j][r]` is row `r` against activation row `j`.
pub fn tile_with<const N: usize>(
    k: Kernel,
    w: [&[u8]; 4],
    stride: usize,
    y: [&[i8]; N],
) -> [[i32; 4]; N] {
    let len = y.first().map_or(0, |a| a.len());
    assert!(
        y.iter().all(|a| a.len() == len),
        "activation rows differ in length"
    );
    let nb = blocks(w.iter().map(|r| r.len()).min().unwrap_or(0), stride, len);
    // SAFETY: the kernel is supported; `blocks` checked the shortest row.
    unsafe {
        tile_raw(
            supported_or_scalar(k),
            w.map(|r| r.as_ptr()),
            stride,
            y.map(|a| a.as_ptr()),
            nb,
        )
    }
}

fn supported_or_scalar(k: Kernel) -> Kernel {
    if k.is_supported() {
        k
    } else {
        Kernel::Scalar
    }
}

/// The slices a raw call covers, for the scalar kernel.
///
/// # Safety
/// As [`dot_raw`].
unsafe fn raw_slices<'a>(
    w: *const u8,
    stride: usize,
    y: *const i8,
    nb: usize,
) -> (&'a [u8], &'a [i8]) {
    if nb == 0 {
        return (&[], &[]);
    }
    // SAFETY: by the caller's contract these ranges are readable.
    unsafe {
        (
            std::slice::from_raw_parts(w, (nb - 1) * stride + BLOCK_BYTES),
            std::slice::from_raw_parts(y, nb * QK_I2_S),
        )
    }
}

/// [`dot_with`] on raw pointers, without the length checks: the entry point
/// of callers that have already validated their arguments (the C ABI).
///
/// # Safety
/// `k` is supported by this CPU (every kernel [`active`] returns is); for
/// every block `i < nb`, `w + i*stride` is readable for 32 bytes; `y` is
/// readable for `nb * 128` bytes.
#[inline]
pub unsafe fn dot_raw(k: Kernel, w: *const u8, stride: usize, y: *const i8, nb: usize) -> i32 {
    // SAFETY (every arm): by the function's contract.
    match k {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { avx2::dot(w, stride, y, nb) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { avx512::dot(w, stride, y, nb) },
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => unsafe { neon::dot(w, stride, y, nb) },
        #[cfg(target_arch = "aarch64")]
        Kernel::NeonDotprod => unsafe { neon::dot_dp(w, stride, y, nb) },
        _ => {
            let (w, y) = unsafe { raw_slices(w, stride, y, nb) };
            scalar::dot(w, stride, y)
        }
    }
}

/// [`dot_4rows_with`] on raw pointers.
///
/// # Safety
/// As [`dot_raw`], for each of the four rows.
#[inline]
pub unsafe fn dot_4rows_raw(
    k: Kernel,
    w: [*const u8; 4],
    stride: usize,
    y: *const i8,
    nb: usize,
) -> [i32; 4] {
    // SAFETY (every arm): by the function's contract.
    match k {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { avx2::dot_4rows(w, stride, y, nb) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { avx512::dot_4rows(w, stride, y, nb) },
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => unsafe { neon::dot_4rows(w, stride, y, nb) },
        #[cfg(target_arch = "aarch64")]
        Kernel::NeonDotprod => unsafe { neon::dot_4rows_dp(w, stride, y, nb) },
        _ => {
            let rows = w.map(|r| unsafe { raw_slices(r, stride, y, nb) });
            scalar::dot_4rows(rows.map(|(r, _)| r), stride, rows[0].1)
        }
    }
}

/// [`dot_4acts_with`] on raw pointers.
///
/// # Safety
/// As [`dot_raw`], for each of the four activation rows.
#[inline]
pub unsafe fn dot_4acts_raw(
    k: Kernel,
    w: *const u8,
    stride: usize,
    y: [*const i8; 4],
    nb: usize,
) -> [i32; 4] {
    // SAFETY (every arm): by the function's contract.
    match k {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { avx2::dot_4acts(w, stride, y, nb) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { avx512::dot_4acts(w, stride, y, nb) },
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => unsafe { neon::dot_4acts(w, stride, y, nb) },
        #[cfg(target_arch = "aarch64")]
        Kernel::NeonDotprod => unsafe { neon::dot_4acts_dp(w, stride, y, nb) },
        _ => {
            let acts = y.map(|a| unsafe { raw_slices(w, stride, a, nb) });
            scalar::dot_4acts(acts[0].0, stride, acts.map(|(_, a)| a))
        }
    }
}

/// bitnet.cpp's `quantize_row_i8_s` of one row with the active kernel:
/// `scale = 127 / max(1e-5, max|x|)` (computed in f64, stored as f32),
/// `q = round_half_even(x * scale)` in f32, clamped to [-128, 127]. NaN
/// inputs are ignored by the maximum and give 0.
pub fn quantize_activations(x: &[f32], q: &mut [i8]) -> ActQuant {
    let (scale, sum) = quantize_activations_with(active(), x, q);
    ActQuant { scale, sum }
}

/// [`quantize_activations`] with kernel `k`: returns the scale and `Σ q`.
/// Every kernel gives bit-identical results.
pub fn quantize_activations_with(k: Kernel, x: &[f32], q: &mut [i8]) -> (f32, i32) {
    assert_eq!(x.len(), q.len(), "quantize_activations: size mismatch");
    let max = match supported_or_scalar(k) {
        // SAFETY: the CPU supports AVX2 (every x86 kernel but scalar needs it).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Avx512 => unsafe { avx2::act_max(x) },
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon | Kernel::NeonDotprod => neon::act_max(x),
        _ => scalar::act_max(x),
    };
    let scale = (127.0 / max) as f32;
    let sum = match supported_or_scalar(k) {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Avx512 => unsafe { avx2::act_round(x, scale, q) },
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon | Kernel::NeonDotprod => neon::act_round(x, scale, q),
        _ => scalar::act_round(x, scale, q),
    };
    (scale, sum)
}

/// The float kernels of one instruction set. Every entry takes the checked
/// arguments of the public wrappers below ([`dot_f16`] and the rest).
pub struct FloatKernels {
    pub dot_f16: fn(&[u8], &[f32]) -> f32,
    /// Two `dot_f16`s of one row, each bit-identical to `dot_f16`'s.
    #[allow(clippy::type_complexity)]
    pub dot_f16_pair: fn(&[u8], &[f32], &[f32]) -> (f32, f32),
    /// Where there is one: a row against 1 to 8 vectors stored back to
    /// back, each result bit-identical to `dot_f16`'s (`dim` a multiple of
    /// 32).
    #[allow(clippy::type_complexity)]
    pub dot_f16_cols: Option<fn(&[u8], &[f32], usize, &mut [f32])>,
    /// With `dot_f16_cols`: two rows (back to back) against 1 to 4 vectors,
    /// `out` holding the first row's results then the second's.
    #[allow(clippy::type_complexity)]
    pub dot_f16_cols2: Option<fn(&[u8], &[f32], usize, &mut [f32])>,
    pub axpy_f16: fn(f32, &[u8], &mut [f32]),
    pub dot_i8: fn(&[i8], &[i8]) -> i32,
    pub dot_q8_0: fn(&[u8], &[i8], &[f32]) -> f32,
    pub dot_q6k_q8k: fn(&[u8], &[i8], &[f32]) -> f32,
    /// The 16 group scales and levels of a Q6_K block being quantized.
    #[allow(clippy::type_complexity)]
    pub q6k_group_scales: fn(&[f32; 256], &mut [f32; 16], &mut [[u8; 16]; 16]),
    /// Requires `hd` (the key row's length) to be a multiple of 8.
    pub dot_f16_group: fn(&[u8], &[f32], &mut [f32]),
    /// Requires `hd` to be a multiple of 8.
    #[allow(clippy::type_complexity)]
    pub weighted_sum: fn(&[f32], usize, usize, &[u8], usize, usize, usize, &mut [f32]),
    pub softmax_round_f16: fn(&mut [f32]),
    pub softmax_exp: fn(&mut [f32], f32) -> f64,
    pub scale_round_f16: fn(&mut [f32], f32),
    /// Requires `hd` to be a multiple of 8.
    #[allow(clippy::type_complexity)]
    pub attn_scores: fn(&[u8], usize, usize, &[f32], usize, usize, f32, &mut [f32], usize),
}

static SCALAR_FLOAT: FloatKernels = FloatKernels {
    dot_f16: scalar::dot_f16,
    dot_f16_pair: scalar::dot_f16_pair,
    dot_f16_cols: None,
    dot_f16_cols2: None,
    axpy_f16: scalar::axpy_f16,
    dot_i8: scalar::dot_i8,
    dot_q8_0: scalar::dot_q8_0,
    dot_q6k_q8k: scalar::dot_q6k_q8k,
    q6k_group_scales: scalar::q6k_group_scales,
    dot_f16_group: scalar::dot_f16_group,
    weighted_sum: scalar::weighted_sum,
    softmax_round_f16: scalar::softmax_round_f16,
    softmax_exp: scalar::softmax_exp,
    scale_round_f16: scalar::scale_round_f16,
    attn_scores: scalar::attn_scores,
};

// SAFETY (every entry): this table is only returned by `float_kernels` for
// a kernel family the CPU supports, and AVX2 support includes FMA and F16C.
#[cfg(target_arch = "x86_64")]
static AVX2_FLOAT: FloatKernels = FloatKernels {
    dot_f16: |r, x| unsafe { avx2::dot_f16(r, x) },
    dot_f16_pair: |r, a, b| unsafe { avx2::dot_f16_pair(r, a, b) },
    dot_f16_cols: None,
    dot_f16_cols2: None,
    axpy_f16: |a, v, o| unsafe { avx2::axpy_f16(a, v, o) },
    dot_i8: |a, b| unsafe { avx2::dot_i8(a, b) },
    dot_q8_0: |r, q, d| unsafe { avx2::dot_q8_0(r, q, d) },
    dot_q6k_q8k: |r, q, d| unsafe { avx2::dot_q6k_q8k(r, q, d) },
    q6k_group_scales: |x, s, l| unsafe { avx2::q6k_group_scales(x, s, l) },
    dot_f16_group: |k, q, o| unsafe { avx2::dot_f16_group(k, q, o) },
    weighted_sum: |a, st, g, v, rs, n, hd, o| unsafe {
        avx2::weighted_sum(a, st, g, v, rs, n, hd, o)
    },
    softmax_round_f16: |v| unsafe { avx2::softmax_round_f16(v) },
    softmax_exp: |v, m| unsafe { avx2::softmax_exp(v, m) },
    scale_round_f16: |v, i| unsafe { avx2::scale_round_f16(v, i) },
    attn_scores: |k, rs, n, q, g, hd, sc, o, os| unsafe {
        avx2::attn_scores(k, rs, n, q, g, hd, sc, o, os)
    },
};

// SAFETY (every entry): as for AVX2_FLOAT; this table is only returned for
// the avx512 family, whose support includes AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
static AVX512_FLOAT: FloatKernels = FloatKernels {
    dot_q6k_q8k: |r, q, d| unsafe { avx512::dot_q6k_q8k(r, q, d) },
    dot_f16_cols: Some(|r, x, d, o| unsafe { avx512::dot_f16_cols(r, x, d, o) }),
    dot_f16_cols2: Some(|r, x, d, o| unsafe { avx512::dot_f16_cols2(r, x, d, o) }),
    weighted_sum: |a, st, g, v, rs, n, hd, o| unsafe {
        avx512::weighted_sum(a, st, g, v, rs, n, hd, o)
    },
    attn_scores: |k, rs, n, q, g, hd, sc, o, os| unsafe {
        avx512::attn_scores(k, rs, n, q, g, hd, sc, o, os)
    },
    ..AVX2_FLOAT
};

#[cfg(target_arch = "aarch64")]
static NEON_FLOAT: FloatKernels = FloatKernels {
    dot_f16: neon::dot_f16,
    dot_f16_pair: |r, a, b| (neon::dot_f16(r, a), neon::dot_f16(r, b)),
    dot_f16_cols: None,
    dot_f16_cols2: None,
    axpy_f16: neon::axpy_f16,
    dot_i8: neon::dot_i8,
    dot_q8_0: scalar::dot_q8_0,
    dot_q6k_q8k: neon::dot_q6k_q8k,
    q6k_group_scales: scalar::q6k_group_scales,
    dot_f16_group: neon::dot_f16_group,
    weighted_sum: neon::weighted_sum,
    softmax_round_f16: neon::softmax_round_f16,
    softmax_exp: neon::softmax_exp,
    scale_round_f16: neon::scale_round_f16,
    attn_scores: neon::attn_scores,
};

/// The float table of kernel family `k` (scalar if the CPU cannot run it).
pub fn float_kernels(k: Kernel) -> &'static FloatKernels {
    match supported_or_scalar(k) {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => &AVX2_FLOAT,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => &AVX512_FLOAT,
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon | Kernel::NeonDotprod => &NEON_FLOAT,
        _ => &SCALAR_FLOAT,
    }
}

/// The float table of the active kernel family.
#[inline]
pub fn float() -> &'static FloatKernels {
    float_kernels(active())
}

/// Dot of a row of little-endian f16 values with f32 `x` (the shorter length).
pub fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    (float().dot_f16)(row, x)
}

/// [`dot_f16`] of one row with two vectors (the row read once), each
/// result bit-identical to `dot_f16`'s.
pub fn dot_f16_pair(row: &[u8], x0: &[f32], x1: &[f32]) -> (f32, f32) {
    (float().dot_f16_pair)(row, x0, x1)
}

/// `out += a * v` for a row of little-endian f16 values `v`.
pub fn axpy_f16(a: f32, v: &[u8], out: &mut [f32]) {
    (float().axpy_f16)(a, v, out)
}

/// Exact `Σ a·b` of two int8 vectors (the shorter length; values in
/// -127..=127).
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    (float().dot_i8)(a, b)
}

/// A Q8_0 row (ggml blocks of an f16 scale and 32 int8) against Q8_0
/// activations `xq` with block scales `xd` (see [`scalar::dot_q8_0`]).
pub fn dot_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    (float().dot_q8_0)(row, xq, xd)
}

/// The scales and levels of the 16 groups of a Q6_K block being quantized
/// (see [`scalar::q6k_group_scales`]; every kernel bit-identical).
pub fn q6k_group_scales(x: &[f32; 256], scales: &mut [f32; 16], levels: &mut [[u8; 16]; 16]) {
    (float().q6k_group_scales)(x, scales, levels)
}

/// A Q6_K row against Q8_K activations `xq` with block scales `xd` (see
/// [`scalar::dot_q6k_q8k`]); on x86 in the order of ggml's AVX2 kernel,
/// elsewhere bit-identical to the scalar one.
pub fn dot_q6k_q8k(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    (float().dot_q6k_q8k)(row, xq, xd)
}

/// Most query heads that one attention kernel call serves.
pub const MAX_GROUP: usize = 8;

/// Attention scores of one f16 key row against `g = out.len()` query
/// vectors stored back to back in `qs` (`g * k.len()/2` floats):
/// `out[j] = k · qs[j]`. The key row is converted once for all of them.
pub fn dot_f16_group(k: &[u8], qs: &[f32], out: &mut [f32]) {
    let hd = k.len() / 2;
    assert!(out.len() <= MAX_GROUP && qs.len() >= out.len() * hd);
    if hd.is_multiple_of(8) {
        (float().dot_f16_group)(k, qs, out)
    } else {
        scalar::dot_f16_group(k, qs, out)
    }
}

/// Attention output for a group of `g` heads sharing one V: for every head
/// `j` and dimension `d`, `outs[j*hd + d] = Σ_{s<n} a[j*a_stride + s] * v_s[d]`
/// where row `s` of V is `hd` f16 values at byte `s * row_stride` of `v`.
/// Sums run over positions in order.
#[allow(clippy::too_many_arguments)]
pub fn weighted_sum(
    a: &[f32],
    a_stride: usize,
    g: usize,
    v: &[u8],
    row_stride: usize,
    n: usize,
    hd: usize,
    outs: &mut [f32],
) {
    assert!((1..=MAX_GROUP).contains(&g) && n >= 1 && outs.len() >= g * hd);
    assert!(a.len() >= (g - 1) * a_stride + n && v.len() >= (n - 1) * row_stride + 2 * hd);
    assert!(row_stride >= 2 * hd || n == 1);
    let hd8 = hd & !7;
    if hd8 == hd {
        (float().weighted_sum)(a, a_stride, g, v, row_stride, n, hd, outs)
    } else if hd8 == 0 || hd > 512 {
        scalar::weighted_sum(a, a_stride, g, v, row_stride, n, hd, outs)
    } else {
        // A head size that is not whole vectors (bitnet_b1_58-3B's 100):
        // the vector kernel over the first `hd8` dimensions, the rest here.
        let mut buf = [0f32; 512 * MAX_GROUP];
        let part = &mut buf[..g * hd8];
        (float().weighted_sum)(a, a_stride, g, v, row_stride, n, hd8, part);
        for j in 0..g {
            let o = &mut outs[j * hd..(j + 1) * hd];
            o[..hd8].copy_from_slice(&part[j * hd8..(j + 1) * hd8]);
            o[hd8..].fill(0.0);
            for (s, &w) in a[j * a_stride..j * a_stride + n].iter().enumerate() {
                let row = &v[s * row_stride + 2 * hd8..s * row_stride + 2 * hd];
                scalar::axpy_f16(w, row, &mut o[hd8..]);
            }
        }
    }
}

/// The softmax's first half: `v = exp(v - max)`; returns `Σ v` in f64.
/// [`softmax_round_f16`] is `softmax_exp` with the row's maximum, then
/// [`scale_round_f16`] with `1/Σ`; a row split in pieces (positions over
/// threads) runs the halves per piece with the whole row's maximum and sum.
pub fn softmax_exp(v: &mut [f32], max: f32) -> f64 {
    (float().softmax_exp)(v, max)
}

/// The softmax's second half: `v = f16(v * inv)` (kept as f32).
pub fn scale_round_f16(v: &mut [f32], inv: f32) {
    (float().scale_round_f16)(v, inv)
}

/// Scaled attention scores of `g` query heads (stored back to back in `qs`,
/// `hd` floats each) against `n` f16 key rows, row `s` being `hd` values at
/// byte `s * row_stride` of `k`: `out[j*out_stride + s] = scale * (k_s · q_j)`.
#[allow(clippy::too_many_arguments)]
pub fn attn_scores(
    k: &[u8],
    row_stride: usize,
    n: usize,
    qs: &[f32],
    g: usize,
    hd: usize,
    scale: f32,
    out: &mut [f32],
    out_stride: usize,
) {
    assert!((1..=MAX_GROUP).contains(&g) && hd > 0 && qs.len() >= g * hd);
    if n == 0 {
        return;
    }
    assert!(k.len() >= (n - 1) * row_stride + 2 * hd && (row_stride >= 2 * hd || n == 1));
    assert!(out_stride >= n && out.len() >= (g - 1) * out_stride + n);
    let hd8 = hd & !7;
    if hd8 == hd {
        (float().attn_scores)(k, row_stride, n, qs, g, hd, scale, out, out_stride)
    } else if hd8 == 0 || hd > 512 {
        scalar::attn_scores(k, row_stride, n, qs, g, hd, scale, out, out_stride)
    } else {
        // As in `weighted_sum`: whole vectors in the kernel (the queries
        // repacked to its stride), the last `hd - hd8` dimensions here.
        let mut buf = [0f32; 512 * MAX_GROUP];
        let q8 = &mut buf[..g * hd8];
        for j in 0..g {
            q8[j * hd8..(j + 1) * hd8].copy_from_slice(&qs[j * hd..j * hd + hd8]);
        }
        (float().attn_scores)(k, row_stride, n, q8, g, hd8, scale, out, out_stride);
        for s in 0..n {
            let row = &k[s * row_stride + 2 * hd8..s * row_stride + 2 * hd];
            for j in 0..g {
                let tail = scalar::dot_f16(row, &qs[j * hd + hd8..(j + 1) * hd]);
                out[j * out_stride + s] += tail * scale;
            }
        }
    }
}

/// The attention softmax as ggml computes it, then rounded to f16 (as the
/// weights are before they multiply V): `v = f16(exp(v - max) * (1/Σ))`,
/// the sum accumulated in f64.
pub fn softmax_round_f16(v: &mut [f32]) {
    (float().softmax_round_f16)(v)
}

/// [`tile_with`] on raw pointers. Kernels without a register tile of their
/// own compose it from their four-activation (groups of four) and four-row
/// forms.
///
/// # Safety
/// As [`dot_raw`], for each of the four rows and the `N` activation rows.
#[inline]
pub unsafe fn tile_raw<const N: usize>(
    k: Kernel,
    w: [*const u8; 4],
    stride: usize,
    y: [*const i8; N],
    nb: usize,
) -> [[i32; 4]; N] {
    if N == 0 {
        return [[0; 4]; N];
    }
    #[cfg(target_arch = "x86_64")]
    if k == Kernel::Avx512 {
        // SAFETY: by the function's contract.
        return unsafe { avx512::tile(w, stride, y, nb) };
    }
    if k == Kernel::Scalar {
        // SAFETY: by the function's contract.
        let rows = w.map(|r| unsafe { raw_slices(r, stride, y[0], nb).0 });
        let acts = y.map(|a| unsafe { raw_slices(w[0], stride, a, nb).1 });
        return scalar::tile(rows, stride, acts);
    }
    let mut out = [[0i32; 4]; N];
    let mut j = 0;
    #[cfg(target_arch = "x86_64")]
    if k == Kernel::Avx2 {
        while j + 4 <= N {
            let a = [y[j], y[j + 1], y[j + 2], y[j + 3]];
            for r in [0, 2] {
                // SAFETY: by the function's contract.
                let d = unsafe { avx2::tile_2x4([w[r], w[r + 1]], stride, a, nb) };
                for (i, v) in d.into_iter().enumerate() {
                    out[j + i][r..r + 2].copy_from_slice(&v);
                }
            }
            j += 4;
        }
    }
    while j + 4 <= N {
        let a = [y[j], y[j + 1], y[j + 2], y[j + 3]];
        for (r, &row) in w.iter().enumerate() {
            // SAFETY: by the function's contract.
            let d = unsafe { dot_4acts_raw(k, row, stride, a, nb) };
            for (i, v) in d.into_iter().enumerate() {
                out[j + i][r] = v;
            }
        }
        j += 4;
    }
    while j < N {
        // SAFETY: by the function's contract.
        out[j] = unsafe { dot_4rows_raw(k, w, stride, y[j], nb) };
        j += 1;
    }
    out
}

/// One TL3 tile ([`crate::quant::tl3`], `shape.tile_bytes()` bytes) against
/// `N` activation rows of `shape`'s row length: `out[j][r]` is the exact
/// `Σ code·q` of row `r` and activation row `j`, bit-identical to the I2_S
/// kernels on the same weights.
///
/// # Panics
/// If `tile` or an activation row is shorter than the shape needs.
pub fn tl3_tile_with<const N: usize>(
    k: Kernel,
    tile: &[u8],
    shape: tl3::Shape,
    y: [&[i8]; N],
) -> [[i32; 4]; N] {
    let cols = shape.supers * tl3::SUPER + shape.tail * QK_I2_S;
    assert!(tile.len() >= shape.tile_bytes(), "TL3 tile too short");
    assert!(
        y.iter().all(|a| a.len() >= cols),
        "activation rows shorter than {cols}"
    );
    let k = supported_or_scalar(k);
    if k == Kernel::Scalar || N == 0 {
        return scalar::tl3_tile(tile, shape, y);
    }
    let t = tile.as_ptr();
    let p = y.map(|a| a.as_ptr());
    #[cfg(target_arch = "x86_64")]
    if k == Kernel::Avx512 && has_vbmi() {
        // SAFETY: the CPU has the features; the lengths were checked above.
        return unsafe { avx512::tl3_tile(t, shape.supers, shape.tail, p) };
    }
    // SAFETY (every call): the kernel is supported and the lengths were
    // checked above; each covers the super-blocks, then the tail.
    let mut out = unsafe { tl3_supers(k, t, shape.supers, p) };
    if shape.tail > 0 {
        let e0 = shape.supers * tl3::SUPER;
        let rows: [*const u8; 4] =
            std::array::from_fn(|r| t.wrapping_add(shape.tail_at() + r * BLOCK_BYTES));
        let tail = unsafe {
            tile_raw(
                k,
                rows,
                4 * BLOCK_BYTES,
                p.map(|a| a.wrapping_add(e0)),
                shape.tail,
            )
        };
        for (o, t) in out.iter_mut().zip(tail) {
            for r in 0..4 {
                o[r] += t[r];
            }
        }
    }
    out
}

/// Whether the ternary weights are stored as TL3 ([`crate::quant::tl3`])
/// rather than I2_S tiles when kernel `k` runs them: the dispatcher's choice
/// of format, made once at load for both forms (prompt tiles and the decode
/// row), from the measurements in docs/benchmarks.md ("TL3").
pub fn prefers_tl3(k: Kernel) -> bool {
    match k {
        Kernel::Avx512 => has_vbmi(),
        _ => false,
    }
}

/// Whether a prompt GEMM over TL3 tiles with kernel `k` first rewrites each
/// tile as the I2_S tile of the same rows ([`tl3_expand_with`]: decoded once,
/// then the I2_S tile kernel for every column) instead of decoding the TL3
/// tile again for each group of columns.
pub fn tl3_expands(k: Kernel) -> bool {
    k == Kernel::Avx512 && has_vbmi()
}

/// A TL3 tile rewritten as the I2_S tile of the same four rows: block `b` of
/// row `r` at `out[128b + 32r..]`, `shape`'s row length / 128 blocks.
///
/// # Panics
/// If `tile` or `out` is shorter than the shape needs.
pub fn tl3_expand_with(k: Kernel, tile: &[u8], shape: tl3::Shape, out: &mut [u8]) {
    let nb = 3 * shape.supers + shape.tail;
    assert!(tile.len() >= shape.tile_bytes(), "TL3 tile too short");
    assert!(
        out.len() >= nb * 4 * BLOCK_BYTES,
        "I2_S tile room too short"
    );
    #[cfg(target_arch = "x86_64")]
    if supported_or_scalar(k) == Kernel::Avx512 && has_vbmi() {
        let main = 3 * shape.supers * 4 * BLOCK_BYTES;
        // SAFETY: the CPU has the features; both lengths were checked.
        unsafe { avx512::tl3_expand(tile.as_ptr(), shape.supers, out.as_mut_ptr()) };
        out[main..nb * 4 * BLOCK_BYTES].copy_from_slice(&tile[shape.tail_at()..shape.tile_bytes()]);
        return;
    }
    let _ = k;
    let cols = nb * QK_I2_S;
    let mut codes = vec![0u8; cols];
    for r in 0..4 {
        tl3::unpack_row(tile, shape, r, &mut codes);
        for (b, block) in codes.chunks_exact(QK_I2_S).enumerate() {
            let at = (4 * b + r) * BLOCK_BYTES;
            crate::quant::i2s::pack_codes(block, &mut out[at..at + BLOCK_BYTES])
                .expect("one whole block of codes");
        }
    }
}

/// Whether this CPU has the AVX-512 kernel's `vpermb` for TL3 (AVX-512
/// VBMI; Cascade Lake has VNNI without it).
pub fn has_vbmi() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The super-blocks of a TL3 tile with kernel `k` (not scalar).
///
/// # Safety
/// `k` is supported; `t` is readable for `supers * 320` bytes and each
/// `y[j]` for `supers * 384`.
unsafe fn tl3_supers<const N: usize>(
    k: Kernel,
    t: *const u8,
    supers: usize,
    y: [*const i8; N],
) -> [[i32; 4]; N] {
    // SAFETY (every arm): by the function's contract.
    match k {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Avx512 => {
            // Four columns a call (the kernel's most), one decode for them.
            let mut out = [[0i32; 4]; N];
            let mut j = 0;
            while j < N {
                let n = (N - j).min(4);
                let o = &mut out[j..j + n];
                match n {
                    1 => o.copy_from_slice(&unsafe { avx2::tl3_tile(t, supers, [y[j]]) }),
                    2 => o.copy_from_slice(&unsafe { avx2::tl3_tile(t, supers, [y[j], y[j + 1]]) }),
                    3 => o.copy_from_slice(&unsafe {
                        avx2::tl3_tile(t, supers, [y[j], y[j + 1], y[j + 2]])
                    }),
                    _ => o.copy_from_slice(&unsafe {
                        avx2::tl3_tile(t, supers, [y[j], y[j + 1], y[j + 2], y[j + 3]])
                    }),
                }
                j += n;
            }
            out
        }
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => unsafe { neon::tl3_tile(t, supers, y) },
        #[cfg(target_arch = "aarch64")]
        Kernel::NeonDotprod => unsafe { neon::tl3_tile_dp(t, supers, y) },
        _ => {
            let shape = tl3::Shape { supers, tail: 0 };
            let tile = unsafe { std::slice::from_raw_parts(t, shape.tile_bytes()) };
            let acts = y.map(|a| unsafe { std::slice::from_raw_parts(a, supers * tl3::SUPER) });
            scalar::tl3_tile(tile, shape, acts)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::quant::i2s::{golden_activation, golden_code, pack_codes};

    /// A small deterministic generator (xorshift) for test data.
    pub(crate) struct Rng(u64);
    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn random_case(rng: &mut Rng, n: usize, max_code: u64) -> (Vec<u8>, Vec<i8>) {
        let codes: Vec<u8> = (0..n)
            .map(|_| (rng.next() % (max_code + 1)) as u8)
            .collect();
        let mut packed = vec![0; n / 4];
        pack_codes(&codes, &mut packed).unwrap();
        (packed, (0..n).map(|_| rng.next() as i8).collect())
    }

    fn exact(packed: &[u8], y: &[i8]) -> i32 {
        (0..y.len())
            .map(|e| crate::quant::i2s::code_at(packed, e) as i32 * y[e] as i32)
            .sum()
    }

    fn tl3_case<const N: usize>(rng: &mut Rng, cols: usize) {
        let rows: Vec<Vec<u8>> = (0..4)
            .map(|_| (0..cols).map(|_| (rng.next() % 3) as u8).collect())
            .collect();
        let shape = tl3::Shape::new(cols);
        let mut tile = vec![0u8; shape.tile_bytes()];
        tl3::pack_tile(std::array::from_fn(|r| &rows[r][..]), shape, &mut tile);
        // Extremes included: the kernels must hold -128 and 127 exactly.
        let acts: Vec<Vec<i8>> = (0..N)
            .map(|j| {
                (0..cols)
                    .map(|e| match (e + j) % 97 {
                        0 => -128,
                        1 => 127,
                        _ => rng.next() as i8,
                    })
                    .collect()
            })
            .collect();
        let want: [[i32; 4]; N] = std::array::from_fn(|j| {
            std::array::from_fn(|r| {
                (0..cols)
                    .map(|e| i32::from(rows[r][e]) * i32::from(acts[j][e]))
                    .sum()
            })
        });
        let y: [&[i8]; N] = std::array::from_fn(|j| &acts[j][..]);
        let mut i2s_tile = vec![0u8; cols];
        tl3_expand_with(Kernel::Scalar, &tile, shape, &mut i2s_tile);
        for k in Kernel::supported() {
            let mut expanded = vec![0xA5u8; cols];
            tl3_expand_with(k, &tile, shape, &mut expanded);
            assert_eq!(expanded, i2s_tile, "{} expands cols {cols}", k.name());
            let rows: [&[u8]; 4] = std::array::from_fn(|r| &expanded[32 * r..]);
            assert_eq!(tile_with(k, rows, 128, y), want, "{} expanded", k.name());
            assert_eq!(
                tl3_tile_with(k, &tile, shape, y),
                want,
                "{} cols {cols} N {N}",
                k.name()
            );
        }
    }

    #[test]
    fn tl3_tiles_are_exact_on_every_kernel() {
        let mut rng = Rng::new(77);
        for cols in [128, 256, 384, 512, 640, 768, 1152, 2560, 6912] {
            tl3_case::<1>(&mut rng, cols);
            tl3_case::<2>(&mut rng, cols);
            tl3_case::<3>(&mut rng, cols);
            tl3_case::<4>(&mut rng, cols);
            tl3_case::<8>(&mut rng, cols);
        }
        // All codes 2 against all 127 / all -128: the largest sums.
        for (code, act) in [(2u8, 127i8), (2, -128), (0, -128)] {
            let cols = 6912;
            let row = vec![code; cols];
            let shape = tl3::Shape::new(cols);
            let mut tile = vec![0u8; shape.tile_bytes()];
            tl3::pack_tile([&row[..]; 4], shape, &mut tile);
            let a = vec![act; cols];
            let want = i32::from(code) * i32::from(act) * cols as i32;
            for k in Kernel::supported() {
                assert_eq!(
                    tl3_tile_with(k, &tile, shape, [&a[..]]),
                    [[want; 4]],
                    "{}",
                    k.name()
                );
            }
        }
    }

    #[test]
    fn every_supported_kernel_matches_scalar() {
        let names: Vec<&str> = Kernel::supported().iter().map(|k| k.name()).collect();
        println!("kernels checked on this CPU: {}", names.join(", "));
        let mut rng = Rng::new(7);
        for k in Kernel::supported() {
            for &n in &[128usize, 256, 384, 1024, 2048, 2176, 2560, 4096, 6912] {
                for max_code in [2, 3] {
                    let (w, y) = random_case(&mut rng, n, max_code);
                    let want = exact(&w, &y);
                    assert_eq!(scalar::dot(&w, 32, &y), want);
                    assert_eq!(dot_with(k, &w, 32, &y), want, "{} n={n}", k.name());
                }
            }
        }
    }

    #[test]
    fn extremes_do_not_wrap() {
        for k in Kernel::supported() {
            for &n in &[4096usize, 8192] {
                let w = vec![0xAAu8; n / 4]; // all code 2
                let t = n as i32 * 2;
                assert_eq!(
                    dot_with(k, &w, 32, &vec![127i8; n]),
                    127 * t,
                    "{}",
                    k.name()
                );
                assert_eq!(
                    dot_with(k, &w, 32, &vec![-128i8; n]),
                    -128 * t,
                    "{}",
                    k.name()
                );
                let w3 = vec![0xFFu8; n / 4]; // code 3, never written but must not wrap
                let neg = vec![-128i8; n];
                let want = -128 * 3 * n as i32;
                assert_eq!(dot_with(k, &w3, 32, &neg), want);
                // The multi-row and multi-activation forms flush on their own schedules.
                assert_eq!(dot_4rows_with(k, [&w3[..]; 4], 32, &neg), [want; 4]);
                assert_eq!(dot_4acts_with(k, &w3, 32, [&neg[..]; 4]), [want; 4]);
                assert_eq!(
                    tile_with(k, [&w3[..]; 4], 32, [&neg[..]; 8]),
                    [[want; 4]; 8],
                    "{}",
                    k.name()
                );
            }
            assert_eq!(
                dot_with(k, &vec![0xAAu8; 1024], 32, &vec![127i8; 4096]),
                1040384
            );
        }
    }

    #[test]
    fn golden_vectors() {
        for k in Kernel::supported() {
            for &(n, want) in &[
                (128usize, -30),
                (256, 220),
                (4096, 1322),
                (4224, 1043),
                (6912, 1829),
                (8192, 2121),
            ] {
                let codes: Vec<u8> = (0..n).map(golden_code).collect();
                let mut w = vec![0; n / 4];
                pack_codes(&codes, &mut w).unwrap();
                let y: Vec<i8> = (0..n).map(golden_activation).collect();
                assert_eq!(dot_with(k, &w, 32, &y), want, "{} n={n}", k.name());
            }
        }
    }

    #[test]
    fn multi_row_forms_and_strides() {
        let mut rng = Rng::new(11);
        for k in Kernel::supported() {
            for &n in &[128usize, 640, 2560, 6912] {
                let nb = n / 128;
                // Four rows interleaved block by block (stride 128), as `PackedMatrix` packs them.
                let rows: Vec<(Vec<u8>, Vec<i8>)> =
                    (0..4).map(|_| random_case(&mut rng, n, 2)).collect();
                let mut tile = vec![0u8; 4 * n / 4];
                for b in 0..nb {
                    for (r, (w, _)) in rows.iter().enumerate() {
                        tile[b * 128 + r * 32..b * 128 + r * 32 + 32]
                            .copy_from_slice(&w[b * 32..b * 32 + 32]);
                    }
                }
                let y = &rows[0].1;
                let want: Vec<i32> = rows.iter().map(|(w, _)| exact(w, y)).collect();
                let views = [&tile[..], &tile[32..], &tile[64..], &tile[96..]];
                assert_eq!(
                    dot_4rows_with(k, views, 128, y).to_vec(),
                    want,
                    "{} n={n}",
                    k.name()
                );
                for r in 0..4 {
                    assert_eq!(dot_with(k, views[r], 128, y), want[r]);
                }
                let raw = [
                    &rows[0].0[..],
                    &rows[1].0[..],
                    &rows[2].0[..],
                    &rows[3].0[..],
                ];
                assert_eq!(dot_4rows_with(k, raw, 32, y).to_vec(), want);
                let acts = [
                    &rows[0].1[..],
                    &rows[1].1[..],
                    &rows[2].1[..],
                    &rows[3].1[..],
                ];
                let want: Vec<i32> = acts.iter().map(|a| exact(&rows[0].0, a)).collect();
                assert_eq!(
                    dot_4acts_with(k, &rows[0].0, 32, acts).to_vec(),
                    want,
                    "{}",
                    k.name()
                );
            }
        }
    }

    fn check_tile<const N: usize>(k: Kernel, rng: &mut Rng, n: usize, max_code: u64) {
        let rows: Vec<(Vec<u8>, Vec<i8>)> = (0..4).map(|_| random_case(rng, n, max_code)).collect();
        let acts: Vec<Vec<i8>> = (0..N).map(|_| random_case(rng, n, max_code).1).collect();
        let y: [&[i8]; N] = std::array::from_fn(|j| &acts[j][..]);
        let raw: [&[u8]; 4] = std::array::from_fn(|r| &rows[r].0[..]);
        let want: [[i32; 4]; N] =
            std::array::from_fn(|j| std::array::from_fn(|r| exact(raw[r], y[j])));
        assert_eq!(tile_with(k, raw, 32, y), want, "{} N={N} n={n}", k.name());
        let mut tiled = vec![0u8; n];
        for b in 0..n / 128 {
            for r in 0..4 {
                tiled[b * 128 + r * 32..b * 128 + r * 32 + 32]
                    .copy_from_slice(&raw[r][b * 32..b * 32 + 32]);
            }
        }
        let views = [&tiled[..], &tiled[32..], &tiled[64..], &tiled[96..]];
        assert_eq!(
            tile_with(k, views, 128, y),
            want,
            "{} N={N} n={n} tiled",
            k.name()
        );
    }

    fn f16_row(n: usize, f: impl Fn(usize) -> f32) -> Vec<u8> {
        (0..n)
            .flat_map(|i| half::f16::from_f32(f(i)).to_bits().to_le_bytes())
            .collect()
    }

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    /// Q6_K rows against Q8_K values: every kernel within rounding of the
    /// exact sum, and the x86 kernels bit-identical to ggml's AVX2 order
    /// (int32 lane `k` of a block sums bytes `4k..4k+4` of each 32-value
    /// chunk; lanes FMA'd with the block's scale product, then
    /// `hsum_float_8`).
    #[test]
    fn q6k_dot_matches_definition_and_ggml_order() {
        use crate::quant::{q6k::BlockQ6K, Block};
        const Q6K_BLOCK: usize = BlockQ6K::BYTES;
        let mut rng = Rng::new(66);
        for blocks in [1usize, 2, 10] {
            for extreme in [false, true] {
                let mut row = vec![0u8; blocks * Q6K_BLOCK];
                for (b, blk) in row.chunks_exact_mut(Q6K_BLOCK).enumerate() {
                    for v in blk.iter_mut() {
                        // Extreme: every value -32, every scale -128.
                        *v = if extreme { 0x80 } else { rng.next() as u8 };
                    }
                    if extreme {
                        blk[..192].fill(0);
                    }
                    let d = half::f16::from_f32(0.003 * (b as f32 - 0.7));
                    blk[208..].copy_from_slice(&d.to_bits().to_le_bytes());
                }
                let xq: Vec<i8> = (0..blocks * 256)
                    .map(|_| if extreme { -128 } else { rng.next() as i8 })
                    .collect();
                let xd: Vec<f32> = (0..blocks).map(|b| 0.01 + b as f32 * 1e-3).collect();
                let (mut want, mut mag) = (0f64, 0f64);
                let mut acc = [0f32; 8];
                for (b, blk) in row.chunks_exact(Q6K_BLOCK).enumerate() {
                    let q = BlockQ6K::first(blk).values();
                    let dw = half::f16::from_le_bytes([blk[208], blk[209]]).to_f32();
                    let mut lanes = [0i64; 8];
                    for p in 0..256 {
                        let t =
                            blk[192 + p / 16] as i8 as i64 * q[p] as i64 * xq[b * 256 + p] as i64;
                        lanes[(p % 32) / 4] += t;
                        want += dw as f64 * xd[b] as f64 * t as f64;
                        mag += (dw as f64 * xd[b] as f64 * t as f64).abs();
                    }
                    let d = xd[b] * dw;
                    for (a, &l) in acc.iter_mut().zip(&lanes) {
                        *a = d.mul_add(l as f32, *a);
                    }
                }
                let s4: [f32; 4] = std::array::from_fn(|i| acc[i] + acc[i + 4]);
                let ggml = (s4[0] + s4[2]) + (s4[1] + s4[3]);
                for k in Kernel::supported() {
                    let got = (float_kernels(k).dot_q6k_q8k)(&row, &xq, &xd);
                    let what = format!("{} blocks={blocks} extreme={extreme}", k.name());
                    assert!(
                        (got as f64 - want).abs() <= 1e-5 * mag,
                        "{what}: {got} {want}"
                    );
                    if matches!(k.name(), "avx2" | "avx512") {
                        assert_eq!(got.to_bits(), ggml.to_bits(), "{what}: {got} {ggml}");
                    } else {
                        let sc = (float_kernels(Kernel::Scalar).dot_q6k_q8k)(&row, &xq, &xd);
                        assert_eq!(got.to_bits(), sc.to_bits(), "{what}: {got} {sc}");
                    }
                }
            }
        }
    }

    /// The Q6_K quantizer's group search: every kernel bit-identical to
    /// the scalar one, on random blocks and on blocks with all-zero,
    /// denormal-sized, constant, tied-rounding and huge groups.
    #[test]
    fn q6k_group_scales_match_scalar() {
        let mut rng = Rng::new(6);
        let mut blocks: Vec<[f32; 256]> = Vec::new();
        for _ in 0..64 {
            blocks.push(std::array::from_fn(|_| {
                (rng.next() as i32 as f32) / 2f32.powi(31) * (1 + rng.next() % 4) as f32
            }));
        }
        let mut special = [0f32; 256];
        for (i, v) in special.iter_mut().enumerate() {
            *v = match i / 16 {
                0 => 0.0,
                1 => 1e-20 * i as f32,
                2 => 0.5,
                3 => -0.25,
                4 => (i % 16) as f32 * 0.5 - 4.0,
                5 => 1e30 * ((i % 7) as f32 - 3.0),
                6 => {
                    if i % 16 == 3 {
                        -1.0
                    } else {
                        0.0
                    }
                }
                7 => (i % 16) as f32 / 31.5,
                _ => ((i * 37 % 101) as f32 - 50.0) * 0.01,
            };
        }
        blocks.push(special);
        blocks.push([0.0; 256]);
        let s = float_kernels(Kernel::Scalar);
        for k in Kernel::supported() {
            for (n, x) in blocks.iter().enumerate() {
                let (mut sa, mut la) = ([0f32; 16], [[0u8; 16]; 16]);
                let (mut sb, mut lb) = ([0f32; 16], [[0u8; 16]; 16]);
                (s.q6k_group_scales)(x, &mut sa, &mut la);
                (float_kernels(k).q6k_group_scales)(x, &mut sb, &mut lb);
                assert_eq!(
                    sa.map(f32::to_bits),
                    sb.map(f32::to_bits),
                    "{} block {n}",
                    k.name()
                );
                assert_eq!(la, lb, "{} block {n}", k.name());
            }
        }
        // The scalar search itself: a group of 0..15 / 31.5 keeps its
        // levels on the grid of the best scale, all within 0..=63.
        let (mut sc, mut lv) = ([0f32; 16], [[0u8; 16]; 16]);
        (s.q6k_group_scales)(&special, &mut sc, &mut lv);
        assert_eq!((sc[0], lv[0]), (0.0, [0; 16]));
        assert!(lv.iter().flatten().all(|&l| l <= 63));
        assert!(sc[2] != 0.0 && sc[7] != 0.0);
    }

    /// Runs `check(name, table, scalar)` for every float table this CPU runs
    /// (the scalar one too, against itself).
    fn for_each_float_table(check: impl Fn(&str, &FloatKernels, &FloatKernels)) {
        let s = float_kernels(Kernel::Scalar);
        for k in Kernel::supported() {
            check(k.name(), float_kernels(k), s);
        }
    }

    /// The row lengths of the f16 and i8 dot and axpy checks.
    const FLOAT_ROW_LENGTHS: [usize; 7] = [1, 7, 8, 31, 32, 100, 2560];

    /// An f16 row of `n` and an f32 vector of `n` for the dot and axpy checks.
    fn f16_row_and_vector(n: usize) -> (Vec<u8>, Vec<f32>) {
        let w = f16_row(n, |i| (i as f32 * 0.37).sin());
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        (w, x)
    }

    #[test]
    fn float_dot_f16_matches_scalar() {
        for_each_float_table(|name, t, s| {
            for n in FLOAT_ROW_LENGTHS {
                let (w, x) = f16_row_and_vector(n);
                assert!(
                    close((t.dot_f16)(&w, &x), (s.dot_f16)(&w, &x), 1e-4),
                    "{name} dot_f16 n={n}"
                );
            }
        });
    }

    /// The pair form is bit-identical to the single one, per table.
    #[test]
    fn float_dot_f16_pair_is_two_single_dots() {
        for_each_float_table(|name, t, _| {
            for n in FLOAT_ROW_LENGTHS {
                let (w, x) = f16_row_and_vector(n);
                let x1: Vec<f32> = x.iter().map(|v| v * -0.7 + 0.1).collect();
                let (p0, p1) = (t.dot_f16_pair)(&w, &x, &x1);
                assert_eq!(
                    (p0.to_bits(), p1.to_bits()),
                    (
                        (t.dot_f16)(&w, &x).to_bits(),
                        (t.dot_f16)(&w, &x1).to_bits()
                    ),
                    "{name} dot_f16_pair n={n}"
                );
            }
        });
    }

    /// So is the several-vectors form, 1 to 8 at once.
    #[test]
    fn float_dot_f16_cols_is_one_single_dot_per_column() {
        for_each_float_table(|name, t, _| {
            for n in FLOAT_ROW_LENGTHS {
                let (w, x) = f16_row_and_vector(n);
                if let Some(cols) = t.dot_f16_cols.filter(|_| n % 32 == 0) {
                    for c in 1..=8usize {
                        let xs: Vec<f32> = (0..c)
                            .flat_map(|j| {
                                x.iter()
                                    .map(move |v| v * (j as f32 * 0.3 - 1.1) + 0.01 * j as f32)
                            })
                            .collect();
                        let mut out = vec![0f32; c];
                        cols(&w, &xs, n, &mut out);
                        for (j, o) in out.iter().enumerate() {
                            let want = (t.dot_f16)(&w, &xs[j * n..(j + 1) * n]);
                            assert_eq!(
                                o.to_bits(),
                                want.to_bits(),
                                "{name} dot_f16_cols n={n} c={c} col {j}"
                            );
                        }
                    }
                }
            }
        });
    }

    #[test]
    fn float_axpy_f16_matches_scalar() {
        for_each_float_table(|name, t, s| {
            for n in FLOAT_ROW_LENGTHS {
                let (w, x) = f16_row_and_vector(n);
                let (mut a, mut b) = (x.clone(), x.clone());
                (t.axpy_f16)(0.7, &w, &mut a);
                (s.axpy_f16)(0.7, &w, &mut b);
                assert!(
                    a.iter().zip(&b).all(|(p, q)| close(*p, *q, 1e-6)),
                    "{name} axpy n={n}"
                );
            }
        });
    }

    #[test]
    fn float_dot_i8_matches_scalar() {
        for_each_float_table(|name, t, s| {
            for n in FLOAT_ROW_LENGTHS {
                let qa: Vec<i8> = (0..n)
                    .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
                    .collect();
                let qb: Vec<i8> = (0..n)
                    .map(|i| ((i * 91 % 255) as i32 - 127) as i8)
                    .collect();
                assert_eq!(
                    (t.dot_i8)(&qa, &qb),
                    (s.dot_i8)(&qa, &qb),
                    "{name} dot_i8 n={n}"
                );
            }
        });
    }

    /// Q8_0 rows (weights -128..=127, scales of both signs) against Q8_0
    /// activations: the scalar twin, and its definition in f64.
    #[test]
    fn float_dot_q8_0_matches_scalar_and_its_definition() {
        for_each_float_table(|name, t, s| {
            for blocks in [1usize, 3, 80] {
                let row: Vec<u8> = (0..blocks)
                    .flat_map(|b| {
                        let d = half::f16::from_f32(0.01 * (b as f32 - 1.5));
                        let mut blk = d.to_bits().to_le_bytes().to_vec();
                        blk.extend((0..32).map(|i| ((b * 31 + i * 57) % 256) as u8));
                        blk
                    })
                    .collect();
                let xq: Vec<i8> = (0..blocks * 32)
                    .map(|i| ((i * 91 % 255) as i32 - 127) as i8)
                    .collect();
                let xd: Vec<f32> = (0..blocks).map(|b| 0.02 + b as f32 * 1e-3).collect();
                let want: f64 = (0..blocks)
                    .map(|b| {
                        let blk = &row[b * 34..(b + 1) * 34];
                        let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f64();
                        let s: i64 = (0..32)
                            .map(|i| blk[2 + i] as i8 as i64 * xq[b * 32 + i] as i64)
                            .sum();
                        dw * xd[b] as f64 * s as f64
                    })
                    .sum();
                let (got, sc) = ((t.dot_q8_0)(&row, &xq, &xd), (s.dot_q8_0)(&row, &xq, &xd));
                let tol = 1e-5;
                assert!(
                    close(got, sc, tol) && close(sc, want as f32, tol),
                    "{name} dot_q8_0 blocks={blocks}: {got} {sc} {want}"
                );
            }
        });
    }

    /// Special f16 values convert exactly (NaN compares as NaN).
    #[test]
    fn float_f16_specials_convert_exactly() {
        for_each_float_table(|name, t, _| {
            let specials = [
                0.0f32,
                -0.0,
                1.0,
                -2.5,
                65504.0,
                6.0e-8,
                -6.1e-5,
                f32::INFINITY,
                f32::NEG_INFINITY,
            ];
            let w = f16_row(16, |i| specials[i % specials.len()]);
            for i in 0..16 {
                let mut o = vec![0f32; 16];
                (t.axpy_f16)(1.0, &w, &mut o);
                let want = half::f16::from_f32(specials[i % specials.len()]).to_f32();
                assert_eq!(
                    o[i].to_bits(),
                    (want + 0.0).to_bits(),
                    "{name} f16 special {want}"
                );
            }
        });
    }

    #[test]
    fn float_dot_f16_group_matches_scalar() {
        for_each_float_table(|name, t, s| {
            for (hd, g) in [(128usize, 4usize), (64, 1), (40, 3), (128, 8)] {
                let kr = f16_row(hd, |i| (i as f32 * 0.3).cos());
                let qs: Vec<f32> = (0..g * hd).map(|i| (i as f32 * 0.07).sin()).collect();
                let (mut o1, mut o2) = (vec![0f32; g], vec![0f32; g]);
                let f = if hd % 8 == 0 {
                    t.dot_f16_group
                } else {
                    s.dot_f16_group
                };
                f(&kr, &qs, &mut o1);
                (s.dot_f16_group)(&kr, &qs, &mut o2);
                assert!(
                    o1.iter().zip(&o2).all(|(p, q)| close(*p, *q, 1e-4)),
                    "{name} group hd={hd} g={g}"
                );
            }
        });
    }

    #[test]
    fn float_weighted_sum_matches_scalar() {
        for_each_float_table(|name, t, s| {
            for (g, hd, n) in [
                (4usize, 128usize, 37usize),
                (1, 64, 1),
                (2, 40, 5),
                (8, 128, 300),
            ] {
                let stride = 2 * hd + 6;
                let v = f16_row(n * stride / 2, |i| ((i * 37) % 61) as f32 / 17.0 - 1.7);
                let a: Vec<f32> = (0..g * (n + 3))
                    .map(|i| ((i * 13) % 29) as f32 / 29.0)
                    .collect();
                let (mut o1, mut o2) = (vec![f32::NAN; g * hd], vec![f32::NAN; g * hd]);
                let f = if hd % 8 == 0 {
                    t.weighted_sum
                } else {
                    s.weighted_sum
                };
                f(&a, n + 3, g, &v, stride, n, hd, &mut o1);
                (s.weighted_sum)(&a, n + 3, g, &v, stride, n, hd, &mut o2);
                assert!(
                    o1.iter().zip(&o2).all(|(p, q)| close(*p, *q, 1e-5)),
                    "{name} weighted g={g} hd={hd} n={n}"
                );
            }
        });
    }

    /// Scores: every group size, positions not a multiple of the kernels'
    /// position blocks, rows longer than a key (strided), head sizes of the
    /// 16-lane, 8-lane and scalar paths.
    #[test]
    fn float_attn_scores_match_scalar() {
        for_each_float_table(|name, t, s| {
            for (g, hd, n) in [
                (4usize, 128usize, 37usize),
                (1, 64, 1),
                (2, 40, 5),
                (3, 16, 11),
                (5, 96, 7),
                (6, 128, 3),
                (7, 32, 9),
                (8, 128, 300),
                (4, 100, 6),
            ] {
                let stride = 2 * hd + 6;
                let k = f16_row(n * stride / 2, |i| ((i * 37) % 61) as f32 / 17.0 - 1.7);
                let qs: Vec<f32> = (0..g * hd).map(|i| (i as f32 * 0.07).sin()).collect();
                let os = n + 3;
                let (mut o1, mut o2) = (vec![f32::NAN; g * os], vec![f32::NAN; g * os]);
                let f = if hd % 8 == 0 {
                    t.attn_scores
                } else {
                    s.attn_scores
                };
                f(&k, stride, n, &qs, g, hd, 0.125, &mut o1, os);
                (s.attn_scores)(&k, stride, n, &qs, g, hd, 0.125, &mut o2, os);
                for j in 0..g {
                    for p in 0..os {
                        let (x, y) = (o1[j * os + p], o2[j * os + p]);
                        if p < n {
                            assert!(close(x, y, 1e-4), "{name} scores g={g} hd={hd} n={n}");
                        } else {
                            assert!(x.is_nan(), "{name} scores g={g} wrote past n");
                        }
                    }
                }
            }
        });
    }

    #[test]
    fn float_softmax_round_f16_matches_scalar() {
        for_each_float_table(|name, t, s| {
            for n in [1usize, 5, 8, 100, 2049] {
                let x: Vec<f32> = (0..n)
                    .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
                    .collect();
                let (mut a, mut b) = (x.clone(), x.clone());
                (t.softmax_round_f16)(&mut a);
                (s.softmax_round_f16)(&mut b);
                // Equal up to one f16 step of rounding (exp differs by about an ulp).
                assert!(
                    a.iter()
                        .zip(&b)
                        .all(|(p, q)| (p - q).abs() <= q.abs() / 1024.0 + 1e-7),
                    "{name} softmax n={n}"
                );
                assert!((a.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 2e-3);
            }
        });
    }

    /// Head sizes that are not whole vectors (bitnet_b1_58-3B's 100) take
    /// the vector kernels for the whole vectors and finish the rest: the
    /// public entry points against the scalar twins.
    #[test]
    fn odd_head_sizes_match_scalar() {
        for (g, hd, n) in [
            (1usize, 100usize, 37usize),
            (4, 100, 5),
            (2, 12, 9),
            (3, 36, 64),
        ] {
            let stride = 2 * hd + 4;
            let kv = f16_row(n * stride / 2, |i| ((i * 37) % 61) as f32 / 17.0 - 1.7);
            let qs: Vec<f32> = (0..g * hd).map(|i| (i as f32 * 0.07).sin()).collect();
            let (mut o1, mut o2) = (vec![0f32; g * n], vec![0f32; g * n]);
            attn_scores(&kv, stride, n, &qs, g, hd, 0.1, &mut o1, n);
            scalar::attn_scores(&kv, stride, n, &qs, g, hd, 0.1, &mut o2, n);
            assert!(
                o1.iter().zip(&o2).all(|(p, q)| close(*p, *q, 1e-4)),
                "scores g={g} hd={hd}"
            );
            let a: Vec<f32> = (0..g * n).map(|i| ((i * 13) % 29) as f32 / 29.0).collect();
            let (mut w1, mut w2) = (vec![f32::NAN; g * hd], vec![f32::NAN; g * hd]);
            weighted_sum(&a, n, g, &kv, stride, n, hd, &mut w1);
            scalar::weighted_sum(&a, n, g, &kv, stride, n, hd, &mut w2);
            assert!(
                w1.iter().zip(&w2).all(|(p, q)| close(*p, *q, 1e-5)),
                "weighted g={g} hd={hd}"
            );
        }
    }

    /// The softmax halves round exactly as the scalar twin (f16, ties to
    /// even), subnormal f16 results and ties included.
    #[test]
    fn softmax_halves_match_scalar_exactly() {
        let mut x: Vec<f32> = (0..4000)
            .map(|i| {
                let e = (i % 40) - 30; // 2^-30 .. 2^9
                let m = 1.0 + ((i * 7919) % 1024) as f32 / 1024.0 + ((i / 40) % 2) as f32 / 2048.0;
                m * 2f32.powi(e)
            })
            .collect();
        x.extend([
            0.0,
            1.0,
            65504.0,
            6.0e-8,
            5.96e-8,
            2.98e-8,
            3.0e-8,
            6.1035156e-5,
            6.1e-5,
            1e-30,
        ]);
        for k in Kernel::supported() {
            let (t, sc) = (float_kernels(k), float_kernels(Kernel::Scalar));
            for inv in [1.0f32, 0.37, 3.0] {
                let (mut a, mut b) = (x.clone(), x.clone());
                (t.scale_round_f16)(&mut a, inv);
                (sc.scale_round_f16)(&mut b, inv);
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(
                        p.to_bits(),
                        q.to_bits(),
                        "{} x={} inv={inv}",
                        k.name(),
                        x[i]
                    );
                }
            }
            let v: Vec<f32> = (0..1003)
                .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
                .collect();
            let (mut a, mut b) = (v.clone(), v.clone());
            let (sa, sb) = (
                (t.softmax_exp)(&mut a, 14.0),
                (sc.softmax_exp)(&mut b, 14.0),
            );
            assert!(
                (sa - sb).abs() <= 1e-5 * sb,
                "{} sum {sa} vs {sb}",
                k.name()
            );
            for (p, q) in a.iter().zip(&b) {
                assert!(
                    (p - q).abs() <= 4.0 * f32::EPSILON * q.abs() + 1e-37,
                    "{} exp {p} vs {q}",
                    k.name()
                );
            }
        }
    }

    #[test]
    fn activation_quantization_matches_scalar() {
        let mut rng = Rng::new(5);
        for n in [0usize, 1, 7, 31, 32, 33, 128, 2560, 2563] {
            for mode in 0..4 {
                let x: Vec<f32> = (0..n)
                    .map(|i| {
                        let u = (rng.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0;
                        match (mode, i % 17) {
                            (1, 3) => f32::NAN,
                            (2, _) => u * 1e-7,
                            // exact ties after scaling: multiples of 0.5/scale
                            (3, _) => (rng.next() % 509) as f32 * 0.5 - 127.0,
                            _ => u * 3.0,
                        }
                    })
                    .collect();
                let mut want = vec![0i8; n];
                let w = quantize_activations_with(Kernel::Scalar, &x, &mut want);
                for k in Kernel::supported() {
                    let mut got = vec![0i8; n];
                    let g = quantize_activations_with(k, &x, &mut got);
                    assert_eq!(
                        (g.0.to_bits(), g.1),
                        (w.0.to_bits(), w.1),
                        "{} n={n} mode {mode}",
                        k.name()
                    );
                    assert_eq!(got, want, "{} n={n} mode {mode}", k.name());
                }
            }
        }
    }

    #[test]
    fn register_tiles_match_scalar() {
        let mut rng = Rng::new(21);
        for k in Kernel::supported() {
            for &n in &[128usize, 384, 2560] {
                for max_code in [2, 3] {
                    check_tile::<1>(k, &mut rng, n, max_code);
                    check_tile::<2>(k, &mut rng, n, max_code);
                    check_tile::<3>(k, &mut rng, n, max_code);
                    check_tile::<4>(k, &mut rng, n, max_code);
                    check_tile::<5>(k, &mut rng, n, max_code);
                    check_tile::<8>(k, &mut rng, n, max_code);
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for k in Kernel::ALL {
            assert_eq!(Kernel::from_name(k.name()), Some(k));
        }
        assert_eq!(Kernel::from_name("AVX2"), Some(Kernel::Avx2));
        assert_eq!(Kernel::from_name("sse"), None);
        assert!(Kernel::best().is_supported());
    }

    #[test]
    #[should_panic(expected = "not a multiple of 128")]
    fn dot_rejects_partial_blocks() {
        dot(&[0; 32], 32, &[0; 100]);
    }

    #[test]
    #[should_panic(expected = "needed")]
    fn dot_rejects_short_rows() {
        dot(&[0; 32], 32, &[0; 256]);
    }

    /// bitnet.cpp's `quantize_row_i8_s` with the active kernel: ties to
    /// even, the 1e-5 floor, NaN ignored.
    #[test]
    fn activation_quantization() {
        let x = [1.0f32, -2.0, 0.5, 0.0, 2.0 * 0.5 / 127.0 * 127.0];
        let mut q = [0i8; 5];
        let a = quantize_activations(&x, &mut q);
        assert_eq!(a.scale, 63.5);
        // 0.5 * 63.5 = 31.75 -> 32; 1.0 * 63.5 = 63.5 -> 64 (ties to even)
        assert_eq!(q, [64, -127, 32, 0, 64]);
        assert_eq!(a.sum, 64 - 127 + 32 + 64);
        // ties to even: 2.5 -> 2, 3.5 -> 4
        let x = [2.5f32 / 127.0 * 127.0, 127.0, 3.5, -2.5];
        let mut q = [0i8; 4];
        let a = quantize_activations(&x, &mut q);
        assert_eq!(a.scale, 1.0);
        assert_eq!(q, [2, 127, 4, -2]);
        // all zero: scale from the 1e-5 floor
        let mut q = [1i8; 3];
        let a = quantize_activations(&[0.0; 3], &mut q);
        assert_eq!(a.scale, (127.0f64 / 0.00001) as f32);
        assert_eq!((q, a.sum), ([0; 3], 0));
        // NaN does not poison the row
        let mut q = [0i8; 2];
        let a = quantize_activations(&[f32::NAN, 1.0], &mut q);
        assert_eq!((q, a.scale), ([0, 127], 127.0));
    }
}
