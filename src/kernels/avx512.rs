//! AVX-512 VNNI kernels: `vpdpbusd` multiplies unsigned codes by signed
//! activations and adds groups of four straight into int32 lanes, so there is
//! no int16 stage and nothing to flush. Four-row dots put two weight rows in
//! one 512-bit register and broadcast each 256-bit activation vector to both
//! halves.

use core::arch::x86_64::*;

use super::avx2::{hsum_i32, load4};

#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dot_block(acc: __m256i, x: __m256i, y: [__m256i; 4]) -> __m256i {
    let mask = _mm256_set1_epi8(3);
    let acc = _mm256_dpbusd_epi32(acc, _mm256_and_si256(_mm256_srli_epi16::<6>(x), mask), y[0]);
    let acc = _mm256_dpbusd_epi32(acc, _mm256_and_si256(_mm256_srli_epi16::<4>(x), mask), y[1]);
    let acc = _mm256_dpbusd_epi32(acc, _mm256_and_si256(_mm256_srli_epi16::<2>(x), mask), y[2]);
    _mm256_dpbusd_epi32(acc, _mm256_and_si256(x, mask), y[3])
}

/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI; `w + i*stride` is readable for 32
/// bytes and `y` for `nb * 128` bytes, for every block `i < nb`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot(w: *const u8, stride: usize, y: *const i8, nb: usize) -> i32 {
    let mut acc0 = _mm256_setzero_si256();
    let mut acc1 = _mm256_setzero_si256();
    let mut b = 0;
    while b + 1 < nb {
        // SAFETY: blocks b and b+1 are in bounds by the contract.
        unsafe {
            let x0 = _mm256_loadu_si256(w.add(b * stride) as *const __m256i);
            let x1 = _mm256_loadu_si256(w.add((b + 1) * stride) as *const __m256i);
            acc0 = dot_block(acc0, x0, load4(y.add(b * 128)));
            acc1 = dot_block(acc1, x1, load4(y.add((b + 1) * 128)));
        }
        b += 2;
    }
    if b < nb {
        // SAFETY: block b is in bounds by the contract.
        unsafe {
            let x = _mm256_loadu_si256(w.add(b * stride) as *const __m256i);
            acc0 = dot_block(acc0, x, load4(y.add(b * 128)));
        }
    }
    hsum_i32(_mm256_add_epi32(acc0, acc1))
}

/// # Safety
/// As [`dot`], for each of the four rows.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_4rows(w: [*const u8; 4], stride: usize, y: *const i8, nb: usize) -> [i32; 4] {
    let mask = _mm512_set1_epi8(3);
    let mut acc01 = _mm512_setzero_si512();
    let mut acc23 = _mm512_setzero_si512();
    for b in 0..nb {
        let off = b * stride;
        // SAFETY: block b of each row and of the activations is in bounds.
        let (x01, x23, yv) = unsafe {
            let x01 = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(w[0].add(off) as *const __m256i)),
                _mm256_loadu_si256(w[1].add(off) as *const __m256i),
            );
            let x23 = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(w[2].add(off) as *const __m256i)),
                _mm256_loadu_si256(w[3].add(off) as *const __m256i),
            );
            (x01, x23, load4(y.add(b * 128)))
        };
        let y0 = _mm512_broadcast_i64x4(yv[0]);
        let y1 = _mm512_broadcast_i64x4(yv[1]);
        let y2 = _mm512_broadcast_i64x4(yv[2]);
        let y3 = _mm512_broadcast_i64x4(yv[3]);
        for (acc, x) in [(&mut acc01, x01), (&mut acc23, x23)] {
            let mut a = *acc;
            a = _mm512_dpbusd_epi32(a, _mm512_and_si512(_mm512_srli_epi16::<6>(x), mask), y0);
            a = _mm512_dpbusd_epi32(a, _mm512_and_si512(_mm512_srli_epi16::<4>(x), mask), y1);
            a = _mm512_dpbusd_epi32(a, _mm512_and_si512(_mm512_srli_epi16::<2>(x), mask), y2);
            a = _mm512_dpbusd_epi32(a, _mm512_and_si512(x, mask), y3);
            *acc = a;
        }
    }
    [
        hsum_i32(_mm512_castsi512_si256(acc01)),
        hsum_i32(_mm512_extracti64x4_epi64::<1>(acc01)),
        hsum_i32(_mm512_castsi512_si256(acc23)),
        hsum_i32(_mm512_extracti64x4_epi64::<1>(acc23)),
    ]
}

/// # Safety
/// As [`dot`], for the row and each of the four activation rows.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_4acts(w: *const u8, stride: usize, y: [*const i8; 4], nb: usize) -> [i32; 4] {
    let mut acc = [_mm256_setzero_si256(); 4];
    for b in 0..nb {
        // SAFETY: block b of the row is in bounds.
        let x = unsafe { _mm256_loadu_si256(w.add(b * stride) as *const __m256i) };
        for j in 0..4 {
            // SAFETY: block b of activation row j is in bounds.
            acc[j] = dot_block(acc[j], x, unsafe { load4(y[j].add(b * 128)) });
        }
    }
    [
        hsum_i32(acc[0]),
        hsum_i32(acc[1]),
        hsum_i32(acc[2]),
        hsum_i32(acc[3]),
    ]
}
