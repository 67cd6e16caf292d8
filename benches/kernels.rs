//! Kernel throughput at the 2B-4T matrix shapes, single-threaded, reported
//! as elements/s = ternary multiply-accumulates per second.
//!
//! For each kernel this CPU runs:
//! - `raw`: one `ggml_vec_dot_i2_i8_s`-style dot per row on the original
//!   I2_S bytes (uncached);
//! - `raw4`: four raw rows per call, sharing the activation loads;
//! - `cached`: the repacked tile layout (`PackedMatrix`), four rows per call;
//! - `cached_4acts`: one weight row against four activation rows (the
//!   prompt-processing GEMM form), counted as 4 MACs per weight;
//! - `cached_tile8`: a four-row tile against eight activation rows (the
//!   register tile the prompt matmul uses), counted as 8 MACs per weight;
//! - `matmul128`: a whole prompt matmul of 128 columns on one thread
//!   (activations already quantized), counted as 128 MACs per weight.
//!
//! `cargo bench --bench kernels -- avx2/cached` runs a subset.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

use bitnet_stfma::kernels::{self, Kernel};
use bitnet_stfma::matmul::{self, ActBatch};
use bitnet_stfma::packed::{Layout, PackedMatrix};
use bitnet_stfma::quant::i2s;
use bitnet_stfma::threadpool::ThreadPool;

/// (cols = input dim, rows = output dim), ggml order as in the GGUF.
const SHAPES: [(usize, usize); 4] = [(2560, 2560), (2560, 640), (2560, 6912), (6912, 2560)];

fn data(rows: usize, cols: usize) -> (Vec<u8>, Vec<i8>) {
    let mut h = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        h
    };
    let codes: Vec<u8> = (0..rows * cols)
        .map(|_| match next() % 5 {
            0 | 1 => 1, // 40% zeros
            2 | 3 => 0,
            _ => 2,
        })
        .collect();
    let mut packed = vec![0; rows * cols / 4];
    i2s::pack_codes(&codes, &mut packed).unwrap();
    let y = (0..cols).map(|_| (next() % 255) as i8).collect();
    (packed, y)
}

/// A benchmark group counting `elems` MACs per iteration.
fn group<'a>(
    c: &'a mut Criterion,
    name: String,
    elems: usize,
    samples: usize,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(elems as u64));
    g.sample_size(samples)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

fn bench(c: &mut Criterion) {
    for (cols, rows) in SHAPES {
        let (raw, y) = data(rows, cols);
        let packed = PackedMatrix::from_i2s(&raw, rows, cols, 1.0).unwrap();
        let tl3 = PackedMatrix::from_i2s_as(&raw, rows, cols, 1.0, Layout::Tl3).unwrap();
        let ys: Vec<Vec<i8>> = (0..8)
            .map(|j| y.iter().map(|&v| v.wrapping_add(j)).collect())
            .collect();
        let row_bytes = cols / 4;
        let mut out = vec![0i32; rows];
        let mut g = group(c, format!("{cols}x{rows}"), rows * cols, 20);
        for k in Kernel::supported() {
            g.bench_function(BenchmarkId::new(k.name(), "raw"), |b| {
                b.iter(|| {
                    for (r, o) in out.iter_mut().enumerate() {
                        *o = kernels::dot_with(k, &raw[r * row_bytes..(r + 1) * row_bytes], 32, &y);
                    }
                    black_box(&out);
                })
            });
            if k == Kernel::Scalar {
                continue;
            }
            g.bench_function(BenchmarkId::new(k.name(), "raw4"), |b| {
                b.iter(|| {
                    for r in (0..rows).step_by(4) {
                        let w: [&[u8]; 4] = std::array::from_fn(|j| {
                            &raw[(r + j) * row_bytes..(r + j + 1) * row_bytes]
                        });
                        out[r..r + 4].copy_from_slice(&kernels::dot_4rows_with(k, w, 32, &y));
                    }
                    black_box(&out);
                })
            });
            g.bench_function(BenchmarkId::new(k.name(), "cached"), |b| {
                b.iter(|| {
                    packed.dot_rows(k, 0..rows, &y, &mut out);
                    black_box(&out);
                })
            });
            g.bench_function(BenchmarkId::new(k.name(), "tl3"), |b| {
                b.iter(|| {
                    tl3.dot_rows(k, 0..rows, &y, &mut out);
                    black_box(&out);
                })
            });
        }
        g.finish();

        let mut g = group(c, format!("{cols}x{rows}_4acts"), 4 * rows * cols, 20);
        for k in Kernel::supported()
            .into_iter()
            .filter(|&k| k != Kernel::Scalar)
        {
            g.bench_function(BenchmarkId::new(k.name(), "cached_4acts"), |b| {
                let acts = [&ys[0][..], &ys[1][..], &ys[2][..], &ys[3][..]];
                b.iter(|| {
                    for r in 0..rows {
                        black_box(packed.dot_row_4acts(k, r, acts));
                    }
                })
            });
        }
        g.finish();

        let mut g = group(c, format!("{cols}x{rows}_8acts"), 8 * rows * cols, 20);
        for k in Kernel::supported()
            .into_iter()
            .filter(|&k| k != Kernel::Scalar)
        {
            g.bench_function(BenchmarkId::new(k.name(), "cached_tile8"), |b| {
                let acts: [&[i8]; 8] = std::array::from_fn(|j| &ys[j][..]);
                b.iter(|| {
                    for r in (0..rows).step_by(4) {
                        let v: [(&[u8], usize); 4] = std::array::from_fn(|i| packed.row(r + i));
                        black_box(kernels::tile_with(k, v.map(|x| x.0), v[0].1, acts));
                    }
                })
            });
            g.bench_function(BenchmarkId::new(k.name(), "tl3_tile8"), |b| {
                let acts: [&[i8]; 8] = std::array::from_fn(|j| &ys[j][..]);
                b.iter(|| {
                    for r in (0..rows).step_by(4) {
                        black_box(tl3.tile_dots(k, r, acts));
                    }
                })
            });
        }
        g.finish();

        // The whole prompt matmul: 128 f32 columns quantized and finished,
        // on one thread.
        let pool = ThreadPool::new(1);
        let x: Vec<f32> = (0..128 * cols)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let mut acts = ActBatch::new(cols, 128);
        acts.quantize(&x);
        let mut y = vec![0f32; 128 * rows];
        let mut g = group(c, format!("{cols}x{rows}_matmul128"), 128 * rows * cols, 10);
        for k in Kernel::supported()
            .into_iter()
            .filter(|&k| k != Kernel::Scalar)
        {
            g.bench_function(BenchmarkId::new(k.name(), "matmul"), |b| {
                b.iter(|| {
                    matmul::matmul_with(k, &packed, &acts, &mut y, &pool);
                    black_box(&y);
                })
            });
            g.bench_function(BenchmarkId::new(k.name(), "tl3_matmul"), |b| {
                b.iter(|| {
                    matmul::matmul_with(k, &tl3, &acts, &mut y, &pool);
                    black_box(&y);
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
