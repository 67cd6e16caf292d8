//! The f16 KV cache: keys and values of every layer, head-major
//! (`[layer][kv head][position][head_dim]`), so each head's rows are one
//! contiguous stream for the attention kernels (a position-major layout's
//! row stride of the whole KV width defeats the hardware prefetchers).

use half::f16;

use crate::embedding::f16_bytes;
use crate::error::{Error, Result};

pub struct KvCache {
    k: Vec<u16>,
    v: Vec<u16>,
    n_kv_heads: usize,
    ctx: usize,
    head_dim: usize,
}

impl KvCache {
    /// Room for `ctx` positions of `n_layers` layers of `n_kv_heads` heads.
    pub fn new(n_layers: usize, n_kv_heads: usize, ctx: usize, head_dim: usize) -> Result<Self> {
        let len = n_layers
            .checked_mul(n_kv_heads)
            .and_then(|x| x.checked_mul(ctx))
            .and_then(|x| x.checked_mul(head_dim))
            .filter(|&x| x <= 1 << 34)
            .ok_or_else(|| Error::invalid(format!("a KV cache of {ctx} tokens is too large")))?;
        Ok(KvCache {
            k: vec![0; len],
            v: vec![0; len],
            n_kv_heads,
            ctx,
            head_dim,
        })
    }

    pub fn ctx(&self) -> usize {
        self.ctx
    }

    fn at(&self, layer: usize, head: usize, pos: usize) -> usize {
        ((layer * self.n_kv_heads + head) * self.ctx + pos) * self.head_dim
    }

    /// Stores position `pos` of `layer`: `k` and `v` hold every KV head's
    /// `head_dim` values back to back, rounded to f16 here.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        for h in 0..self.n_kv_heads {
            let at = self.at(layer, h, pos);
            let src = h * hd..(h + 1) * hd;
            for (d, &x) in self.k[at..at + hd].iter_mut().zip(&k[src.clone()]) {
                *d = f16::from_f32(x).to_bits();
            }
            for (d, &x) in self.v[at..at + hd].iter_mut().zip(&v[src]) {
                *d = f16::from_f32(x).to_bits();
            }
        }
    }

    /// The f16 key and value rows of one head of one layer (all `ctx`
    /// positions, `head_dim` values each), as little-endian bytes.
    pub fn head(&self, layer: usize, head: usize) -> (&[u8], &[u8]) {
        let r = self.at(layer, head, 0)..self.at(layer, head, self.ctx);
        (f16_bytes(&self.k[r.clone()]), f16_bytes(&self.v[r]))
    }

    /// Fills positions `0..n` of every layer with arbitrary values in
    /// [-2, 2) (for benchmarks at depth: attention costs the same whatever
    /// the cached values are).
    pub fn fill_arbitrary(&mut self, n: usize) {
        let mut h = 0x2545_F491_4F6C_DD1Du64;
        let rows = self.k.len() / (self.ctx * self.head_dim);
        for lh in 0..rows {
            let range = lh * self.ctx * self.head_dim..(lh * self.ctx + n) * self.head_dim;
            for (k, v) in self.k[range.clone()].iter_mut().zip(&mut self.v[range]) {
                h ^= h << 13;
                h ^= h >> 7;
                h ^= h << 17;
                *k = f16::from_f32(((h & 0xFFFF) as f32 / 65536.0 - 0.5) * 4.0).to_bits();
                *v = f16::from_f32((((h >> 16) & 0xFFFF) as f32 / 65536.0 - 0.5) * 4.0).to_bits();
            }
        }
    }
}
