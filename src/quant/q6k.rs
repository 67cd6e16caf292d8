//! Q6_K: blocks of 256 six-bit values in 16 groups of 16, each group with
//! an int8 scale, and an f16 super-scale `d`; value `p` is
//! `d · scales[p / 16] · (q6[p] - 32)`.

use half::f16;

use super::q8k::QK_K;
use super::{nearest_int, signed_absmax, Block, F16Le};

/// One Q6_K block as ggml stores it (`block_q6_K`): the low four bits of
/// each value in `ql`, the high two in `qh`, then the group scales and `d`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: F16Le,
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

impl BlockQ6K {
    /// The 256 six-bit values minus 32 (so -32..=31), in order.
    pub fn values(&self) -> [i8; QK_K] {
        let (ql, qh) = (&self.ql, &self.qh);
        let mut q = [0i8; QK_K];
        for half in 0..2 {
            let (ql, qh, q) = (&ql[64 * half..], &qh[32 * half..], &mut q[128 * half..]);
            for l in 0..32 {
                q[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                q[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                q[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                q[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        q
    }

    /// The block of the 256 values `x`, given each group's scale and
    /// levels as ggml's `make_qx_quants` finds them (the group search is a
    /// kernel: `crate::kernels::q6k_group_scales`); the rest as ggml's
    /// `quantize_row_q6_K_ref` (what `llama-quantize --token-embedding-type
    /// q6_k` and bitnet.cpp's `--quant-embd` write). `levels` is rewritten.
    pub fn from_groups(
        x: &[f32; QK_K],
        scales: &[f32; 16],
        levels: &mut [[u8; 16]; 16],
    ) -> BlockQ6K {
        let mut b = BlockQ6K {
            ql: [0; 128],
            qh: [0; 64],
            scales: [0; 16],
            d: F16Le::default(),
        };
        let (max_abs_scale, max_scale) = signed_absmax(scales);
        if max_abs_scale < 1e-15 {
            return b;
        }
        let iscale = -128.0 / max_scale;
        let d = f16::from_f32(1.0 / iscale);
        b.d = F16Le::new(d);
        for (j, (g, l)) in x.chunks_exact(16).zip(levels.iter_mut()).enumerate() {
            let sc = nearest_int(iscale * scales[j]).min(127) as i8;
            b.scales[j] = sc;
            let dg = d.to_f32() * sc as f32;
            if dg == 0.0 {
                continue;
            }
            for (o, &v) in l.iter_mut().zip(g) {
                *o = (nearest_int(v / dg).clamp(-32, 31) + 32) as u8;
            }
        }
        let level = |p: usize| levels[p / 16][p % 16];
        for half in 0..2 {
            let (ql, qh, j) = (&mut b.ql[64 * half..], &mut b.qh[32 * half..], 128 * half);
            for l in 0..32 {
                let q = [
                    level(j + l),
                    level(j + l + 32),
                    level(j + l + 64),
                    level(j + l + 96),
                ];
                ql[l] = (q[0] & 0xF) | (q[2] << 4);
                ql[l + 32] = (q[1] & 0xF) | (q[3] << 4);
                qh[l] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
            }
        }
        b
    }
}

impl Block for BlockQ6K {
    const NAME: &'static str = "Q6_K";
    const VALUES: usize = QK_K;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.get();
        for (p, (y, &q)) in out[..QK_K].iter_mut().zip(self.values().iter()).enumerate() {
            *y = d * self.scales[p / 16] as f32 * q as f32;
        }
    }
}
