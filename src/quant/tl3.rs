//! TL3: the load-time ternary format of 1.67 bits a weight.
//!
//! Three ternary weights make one of 27 combinations. Each combination and
//! its negation share an index of 4 bits (14 values) and differ by a sign
//! bit, so three weights take 5 bits. The kernels turn an index back into
//! the three I2_S codes with one table lookup per weight position
//! (`vpermb`, `pshufb`, `tbl`) and multiply as the I2_S kernels do, so every
//! sum is the exact integer `Σ code·q`, bit-identical to I2_S.
//!
//! A row is cut into super-blocks of [`SUPER`] = 384 weights; the rest of
//! the row (0, 128 or 256 weights) stays in I2_S blocks. In super-block `s`,
//! group `g` (0..128) holds the weights at `384s + g`, `384s + 128 + g` and
//! `384s + 256 + g` (positions k = 0, 1, 2), so a vector of group indices
//! lines up with a contiguous run of activations for each position.
//!
//! Rows are stored in tiles of four, as the I2_S tiles of
//! [`crate::packed`]: per super-block a tile holds [`SUPER_TILE_BYTES`] =
//! 320 bytes, then its tail blocks as interleaved I2_S blocks (4 × 32
//! bytes each). The 320 bytes are four 64-byte index chunks and four 16-byte
//! sign chunks; chunk `c = 2h + p` (half `h`, row pair `p`) holds:
//!
//! - index bytes: `[row 2p: bytes 32h..32h+32 | row 2p+1: same]`, where a
//!   row's index byte `i` (0..64) holds group `i` in its low nibble and group
//!   `64 + i` in its high nibble;
//! - sign bytes (at 256 + 16c): a little-endian u64 of the low-nibble groups'
//!   signs (bit `i` for row 2p's group `32h + i`, bit `32 + i` for row
//!   2p+1's), then the same for the high-nibble groups (`64 + 32h + i`).
//!
//! A 512-bit register then holds two rows' 32 groups, as the I2_S tile's
//! register holds two rows' 32-byte blocks, and each activation load serves
//! both rows.

use crate::quant::i2s::{BLOCK_BYTES, QK_I2_S};

/// Weights per super-block (three 128-weight positions).
pub const SUPER: usize = 3 * QK_I2_S;
/// Groups of three weights per super-block.
pub const GROUPS: usize = QK_I2_S;
/// Bytes of one row's super-block: 64 index bytes and 16 sign bytes.
pub const SUPER_ROW_BYTES: usize = GROUPS / 2 + GROUPS / 8;
/// Bytes of one four-row tile's super-block.
pub const SUPER_TILE_BYTES: usize = 4 * SUPER_ROW_BYTES;
/// Offset of the sign chunks in a tile's super-block.
pub const SIGNS_AT: usize = 4 * 64;

/// Indices (0..14) and whether the group is negated, of codes `c` (each
/// 0..=2, code 1 = weight 0).
#[inline]
pub fn encode(c: [u8; 3]) -> (u8, bool) {
    let v = 9 * c[0] + 3 * c[1] + c[2];
    if v > 13 {
        (26 - v, true)
    } else {
        (v, false)
    }
}

/// The codes of index `idx` (0..14; others give code 1, weight 0) with
/// sign `neg`.
#[inline]
pub fn decode(idx: u8, neg: bool) -> [u8; 3] {
    let c = if idx < 14 {
        [idx / 9, idx / 3 % 3, idx % 3]
    } else {
        [1, 1, 1]
    };
    if neg {
        c.map(|x| 2 - x)
    } else {
        c
    }
}

/// The lookup table of position `k` over the 5-bit index `idx + 16·neg`:
/// entry `i` is the code of position `k`.
pub const fn table(k: usize) -> [u8; 32] {
    let mut t = [1u8; 32];
    let mut i = 0;
    while i < 14 {
        let c = match k {
            0 => i / 9,
            1 => i / 3 % 3,
            _ => i % 3,
        } as u8;
        t[i] = c;
        t[16 + i] = 2 - c;
        i += 1;
    }
    t
}

/// The three position tables.
pub const TABLES: [[u8; 32]; 3] = [table(0), table(1), table(2)];

/// The layout of one matrix's rows of `cols` weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Super-blocks per row.
    pub supers: usize,
    /// I2_S blocks after them (0..=2).
    pub tail: usize,
}

impl Shape {
    pub fn new(cols: usize) -> Shape {
        debug_assert!(cols.is_multiple_of(QK_I2_S));
        Shape {
            supers: cols / SUPER,
            tail: cols % SUPER / QK_I2_S,
        }
    }
    /// Bytes of one four-row tile.
    pub fn tile_bytes(self) -> usize {
        self.supers * SUPER_TILE_BYTES + self.tail * 4 * BLOCK_BYTES
    }
    /// Offset of the tail blocks in a tile.
    pub fn tail_at(self) -> usize {
        self.supers * SUPER_TILE_BYTES
    }
}

/// Writes one tile of TL3 from the codes of its four rows (`codes[r]`: one
/// code per weight, `cols` of them), into `out` (`shape.tile_bytes()`).
pub fn pack_tile(codes: [&[u8]; 4], shape: Shape, out: &mut [u8]) {
    out.fill(0);
    for s in 0..shape.supers {
        let base = s * SUPER_TILE_BYTES;
        for (r, row) in codes.iter().enumerate() {
            let (p, odd) = (r / 2, r % 2);
            for g in 0..GROUPS {
                let e = s * SUPER + g;
                let (idx, neg) = encode([row[e], row[e + QK_I2_S], row[e + 2 * QK_I2_S]]);
                let (byte, high) = (g % 64, g >= 64);
                let h = byte / 32;
                let c = 2 * h + p;
                let at = base + 64 * c + 32 * odd + byte % 32;
                out[at] |= if high { idx << 4 } else { idx };
                if neg {
                    let bit = 32 * odd + byte % 32;
                    let sb = base + SIGNS_AT + 16 * c + 8 * usize::from(high) + bit / 8;
                    out[sb] |= 1 << (bit % 8);
                }
            }
        }
    }
    let tail = shape.tail_at();
    for b in 0..shape.tail {
        for (r, row) in codes.iter().enumerate() {
            let e0 = shape.supers * SUPER + b * QK_I2_S;
            let at = tail + (4 * b + r) * BLOCK_BYTES;
            crate::quant::i2s::pack_codes(&row[e0..e0 + QK_I2_S], &mut out[at..at + BLOCK_BYTES])
                .expect("one whole block of codes");
        }
    }
}

/// Writes one tile of TL3 straight from the I2_S bytes of its four rows
/// (`rows[r]`: `cols / 4` bytes; a missing row of a last, partial tile is
/// `None` and stored as zero bytes), into `out` (`shape.tile_bytes()`): the
/// load-time conversion, the bytes of [`pack_tile`] without unpacking codes.
pub fn pack_tile_from_i2s(rows: [Option<&[u8]>; 4], shape: Shape, out: &mut [u8]) {
    out.fill(0);
    for s in 0..shape.supers {
        let base = s * SUPER_TILE_BYTES;
        for (r, row) in rows.iter().enumerate() {
            let Some(row) = row else { continue };
            let (p, odd) = (r / 2, r % 2);
            let blk = |k: usize| -> &[u8; BLOCK_BYTES] {
                let at = (3 * s + k) * BLOCK_BYTES;
                row[at..at + BLOCK_BYTES].try_into().expect("one block")
            };
            let (b0, b1, b2) = (blk(0), blk(1), blk(2));
            // Plane q of a block holds its elements 32q..32q+32, that is
            // groups 32q + j of the super-block.
            let mut idx = [[0u8; 32]; 4];
            let mut neg = [0u32; 4];
            for q in 0..4 {
                let shift = 6 - 2 * q;
                let mut n = [0u8; 32];
                for j in 0..32 {
                    let c0 = (b0[j] >> shift) & 3;
                    let c1 = (b1[j] >> shift) & 3;
                    let c2 = (b2[j] >> shift) & 3;
                    let v = 9 * c0 + 3 * c1 + c2;
                    let flip = u8::from(v > 13);
                    idx[q][j] = if v > 13 { 26 - v } else { v };
                    n[j] = flip;
                }
                neg[q] = n
                    .iter()
                    .enumerate()
                    .fold(0u32, |acc, (j, &f)| acc | u32::from(f) << j);
            }
            for h in 0..2 {
                let c = 2 * h + p;
                let at = base + 64 * c + 32 * odd;
                for j in 0..32 {
                    out[at + j] = idx[h][j] | idx[h + 2][j] << 4;
                }
                for high in 0..2 {
                    let sb = base + SIGNS_AT + 16 * c + 8 * high + 4 * odd;
                    out[sb..sb + 4].copy_from_slice(&neg[h + 2 * high].to_le_bytes());
                }
            }
        }
    }
    let tail = shape.tail_at();
    for b in 0..shape.tail {
        for (r, row) in rows.iter().enumerate() {
            if let Some(row) = row {
                let src = (3 * shape.supers + b) * BLOCK_BYTES;
                let at = tail + (4 * b + r) * BLOCK_BYTES;
                out[at..at + BLOCK_BYTES].copy_from_slice(&row[src..src + BLOCK_BYTES]);
            }
        }
    }
}

/// The codes of row `r` (0..4) of a TL3 tile, one per byte.
pub fn unpack_row(tile: &[u8], shape: Shape, r: usize, out: &mut [u8]) {
    let (p, odd) = (r / 2, r % 2);
    for s in 0..shape.supers {
        let base = s * SUPER_TILE_BYTES;
        for g in 0..GROUPS {
            let (byte, high) = (g % 64, g >= 64);
            let c = 2 * (byte / 32) + p;
            let v = tile[base + 64 * c + 32 * odd + byte % 32];
            let idx = if high { v >> 4 } else { v & 15 };
            let bit = 32 * odd + byte % 32;
            let sb = tile[base + SIGNS_AT + 16 * c + 8 * usize::from(high) + bit / 8];
            let codes = decode(idx, sb >> (bit % 8) & 1 == 1);
            for (k, &code) in codes.iter().enumerate() {
                out[s * SUPER + k * QK_I2_S + g] = code;
            }
        }
    }
    for b in 0..shape.tail {
        let at = shape.tail_at() + (4 * b + r) * BLOCK_BYTES;
        let e0 = shape.supers * SUPER + b * QK_I2_S;
        crate::quant::i2s::unpack_codes(&tile[at..at + BLOCK_BYTES], &mut out[e0..e0 + QK_I2_S]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_combination_round_trips() {
        for v in 0..27u8 {
            let c = [v / 9, v / 3 % 3, v % 3];
            let (idx, neg) = encode(c);
            assert!(idx < 14);
            assert_eq!(decode(idx, neg), c);
            for k in 0..3 {
                assert_eq!(TABLES[k][usize::from(idx) + 16 * usize::from(neg)], c[k]);
            }
        }
    }

    #[test]
    fn tiles_round_trip() {
        let mut seed = 7u32;
        for cols in [128usize, 256, 384, 640, 768, 2560] {
            let rows: Vec<Vec<u8>> = (0..4)
                .map(|_| {
                    (0..cols)
                        .map(|_| {
                            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                            ((seed >> 16) % 3) as u8
                        })
                        .collect()
                })
                .collect();
            let shape = Shape::new(cols);
            let mut tile = vec![0u8; shape.tile_bytes()];
            pack_tile(std::array::from_fn(|r| &rows[r][..]), shape, &mut tile);
            // 5 bits per three weights in super-blocks, 2 bits a weight after.
            assert_eq!(
                tile.len() * 8,
                4 * (shape.supers * SUPER * 5 / 3 + shape.tail * 256)
            );
            for (r, row) in rows.iter().enumerate() {
                let mut got = vec![9u8; cols];
                unpack_row(&tile, shape, r, &mut got);
                assert_eq!(&got, row, "cols {cols} row {r}");
            }
            // The load-time conversion from I2_S bytes writes the same tile.
            let packed: Vec<Vec<u8>> = rows
                .iter()
                .map(|row| {
                    let mut p = vec![0u8; cols / 4];
                    crate::quant::i2s::pack_codes(row, &mut p).unwrap();
                    p
                })
                .collect();
            let mut fast = vec![0xA5u8; shape.tile_bytes()];
            pack_tile_from_i2s(
                std::array::from_fn(|r| Some(&packed[r][..])),
                shape,
                &mut fast,
            );
            assert_eq!(fast, tile, "cols {cols}");
        }
    }
}
