//! `bitnet bench`: prompt and decode speed of a model (by default a
//! synthetic 2B-4T-shaped one, made once and cached on disk), measured
//! beside this machine's memory read bandwidth in the same run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use bitnet_stfma::kernels;
use bitnet_stfma::model::{Session, Timings};
use bitnet_stfma::synthetic;
use bitnet_stfma::threadpool::ThreadPool;

use crate::args::HeadArgs;
use crate::common::{shape_by_name, warn_threads, Progress};
use crate::error::CliResult;
use crate::output::outln;

#[derive(Args)]
pub struct BenchArgs {
    /// Model file or checkpoint directory (default: a synthetic model of --shape, cached on disk).
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Shape of the synthetic model: 2b4t, large, 3b, 8b, falcon3-3b, falcon3-10b, tiny or micro
    /// (see `bitnet gen-model --help`).
    #[arg(long, default_value = "2b4t")]
    shape: String,
    /// Thread counts to measure, comma-separated.
    #[arg(short, long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Prompt tokens (pp).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    n_prompt: usize,
    /// Generated tokens (tg).
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    n_gen: usize,
    /// Tokens already in the KV cache before each measurement, comma-separated.
    #[arg(
        short = 'd',
        long = "depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    depth: Vec<usize>,
    /// Repetitions; medians are reported.
    #[arg(short = 'r', long = "reps", default_value_t = 3)]
    reps: usize,
    /// One JSON object per configuration on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    head: HeadArgs,
    /// Where the synthetic model is cached (default: $XDG_CACHE_HOME/bitnet-stfma or ~/.cache/bitnet-stfma).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

fn cache_dir(a: &BenchArgs) -> PathBuf {
    if let Some(d) = &a.cache_dir {
        return d.clone();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("bitnet-stfma");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/bitnet-stfma")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Memory read bandwidth in GB/s: `threads` threads summing a 1 GiB buffer,
/// the best of 5 runs (a bound should be what the machine can reach).
fn bandwidth(threads: usize, buf: &[u64]) -> f64 {
    let pool = ThreadPool::new(threads);
    let parts = threads * 8;
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let total = std::sync::atomic::AtomicU64::new(0);
        pool.run(parts, &|i| {
            let r = bitnet_stfma::threadpool::split(buf.len(), parts, i);
            let mut acc = [0u64; 8];
            for c in buf[r].chunks_exact(8) {
                for j in 0..8 {
                    acc[j] = acc[j].wrapping_add(c[j]);
                }
            }
            total.fetch_add(
                acc.iter().fold(0, |a, &b| a.wrapping_add(b)),
                std::sync::atomic::Ordering::Relaxed,
            );
        });
        std::hint::black_box(total.load(std::sync::atomic::Ordering::Relaxed));
        runs.push((buf.len() * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    runs.into_iter().fold(0.0, f64::max)
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn ms(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e3 / n.max(1) as f64
}

pub fn bench(a: BenchArgs) -> CliResult {
    let path = match &a.model {
        Some(p) => p.clone(),
        None => {
            let shape = shape_by_name(&a.shape)?;
            let dir = cache_dir(&a);
            let path = dir.join(format!(
                "synthetic-{}-v2.gguf",
                a.shape.to_ascii_lowercase()
            ));
            if !path.exists() {
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let tmp = path.with_extension("gguf.tmp");
                let mut bar = Progress::new("making the synthetic model");
                synthetic::write_model(&tmp, shape, None, 1, &mut |d, t| bar.update(d, t))
                    .map_err(|e| e.to_string())?;
                std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
            }
            path
        }
    };
    eprintln!("loading {} ...", path.display());
    let t = Instant::now();
    let model = crate::common::open_model(&path, a.head.load_options())?;
    let load_s = t.elapsed().as_secs_f64();
    let layout = model.ternary_layout();
    let c = &model.config;
    let head_bytes = model.head_bytes() as f64;
    let bytes_per_token = model.ternary_bytes() as f64 + head_bytes;
    eprintln!(
        "model: {} layers, dim {}, vocab {}, head {}; {:.2} GB read per decoded token; loaded in {load_s:.1} s; kernel {}, ternary weights {}",
        c.n_layers,
        c.dim,
        c.vocab_size,
        if model.has_q8_head() {
            "8-bit (from the file's head)".to_string()
        } else if model.has_q6k_head() {
            format!("Q6_K (from the file's {})", model.head_type())
        } else {
            model.head_type().to_string()
        },
        bytes_per_token / 1e9,
        kernels::active().name(),
        layout.name()
    );

    eprintln!("measuring memory read bandwidth (1 GiB) ...");
    let buf: Vec<u64> = (0..(1usize << 27)).map(|i| i as u64).collect();
    let max_depth = a.depth.iter().copied().max().unwrap_or(0);
    let ctx = (max_depth + a.n_prompt.max(a.n_gen) + 8)
        .min(c.ctx_len.max(max_depth + a.n_prompt.max(a.n_gen) + 8));
    let reps = a.reps.max(1);
    let mut rows = Vec::new();
    for &threads in &a.threads {
        warn_threads(threads);
        let bw = bandwidth(threads.max(1), &buf);
        let mut sess = Session::new(&model, ctx, a.n_prompt.clamp(1, 512), threads)
            .map_err(|e| e.to_string())?;
        sess.set_profiling(true);
        let vocab = c.vocab_size as u64;
        let mut rng = 12345u64;
        let mut token = move || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 33) % vocab) as u32
        };
        for &depth in &a.depth {
            let prompt: Vec<u32> = (0..a.n_prompt).map(|_| token()).collect();
            let mut pp = Vec::new();
            // One untimed run first, as llama-bench does: it touches the
            // session's buffers and warms the caches.
            sess.fill_cache_for_benchmark(depth)
                .map_err(|e| e.to_string())?;
            let warm = if prompt.is_empty() {
                vec![token()]
            } else {
                prompt.clone()
            };
            sess.forward(&warm).map_err(|e| e.to_string())?;
            if a.n_prompt > 0 {
                for _ in 0..reps {
                    sess.fill_cache_for_benchmark(depth)
                        .map_err(|e| e.to_string())?;
                    let t = Instant::now();
                    sess.forward(&prompt).map_err(|e| e.to_string())?;
                    pp.push(a.n_prompt as f64 / t.elapsed().as_secs_f64());
                }
            }
            let mut tg = Vec::new();
            let mut phases = Vec::new();
            for _ in 0..reps {
                sess.fill_cache_for_benchmark(depth)
                    .map_err(|e| e.to_string())?;
                let mut next = token();
                sess.timings = Timings::default();
                let t = Instant::now();
                for _ in 0..a.n_gen {
                    let logits = sess.forward(&[next]).map_err(|e| e.to_string())?;
                    next = logits
                        .iter()
                        .enumerate()
                        .max_by(|x, y| x.1.total_cmp(y.1))
                        .map_or(0, |m| m.0 as u32);
                }
                tg.push(a.n_gen as f64 / t.elapsed().as_secs_f64());
                phases.push(sess.timings);
            }
            let tg_med = median(tg.clone());
            // The breakdown of the repetition closest to the median.
            let ph = phases
                .iter()
                .zip(&tg)
                .min_by(|x, y| (x.1 - tg_med).abs().total_cmp(&(y.1 - tg_med).abs()))
                .map(|p| *p.0)
                .unwrap_or_default();
            let bound = bw * 1e9 / bytes_per_token;
            rows.push(Row {
                threads: sess.threads(),
                depth,
                pp: median(pp),
                tg: tg_med,
                bw,
                bound,
                phases: [
                    ms(ph.ternary, a.n_gen),
                    ms(ph.head, a.n_gen),
                    ms(ph.attention, a.n_gen),
                    ms(ph.other, a.n_gen),
                ],
            });
            let r = rows.last().unwrap();
            eprintln!(
                "threads {} depth {}: pp{} {:.2} tok/s, tg{} {:.2} tok/s ({:.0}% of the {:.1} tok/s bandwidth bound)",
                r.threads,
                depth,
                a.n_prompt,
                r.pp,
                a.n_gen,
                r.tg,
                100.0 * r.tg / r.bound,
                r.bound
            );
        }
    }
    let rss = peak_rss_mb();
    if a.json {
        for r in &rows {
            outln!(
                "{{\"model\":{:?},\"kernel\":\"{}\",\"format\":\"{}\",\"q8_head\":{},\"q6k_head\":{},\"threads\":{},\"depth\":{},\"n_prompt\":{},\"n_gen\":{},\"pp_tok_s\":{:.3},\"tg_tok_s\":{:.3},\"bandwidth_gb_s\":{:.3},\"tg_bound_tok_s\":{:.3},\"bound_fraction\":{:.4},\"ms_per_token\":{{\"ternary\":{:.3},\"lm_head\":{:.3},\"attention\":{:.3},\"other\":{:.3}}},\"peak_rss_mb\":{:.1},\"load_s\":{:.2}}}",
                path.display().to_string(),
                kernels::active().name(),
                layout.name(),
                model.has_q8_head(),
                model.has_q6k_head(),
                r.threads,
                r.depth,
                a.n_prompt,
                a.n_gen,
                r.pp,
                r.tg,
                r.bw,
                r.bound,
                r.tg / r.bound,
                r.phases[0],
                r.phases[1],
                r.phases[2],
                r.phases[3],
                rss,
                load_s
            )?;
        }
    } else {
        outln!(
            "| threads | depth | pp{} tok/s | tg{} tok/s | bandwidth GB/s | tg bound tok/s | of bound | ms/token: ternary | LM head | attention | other |",
            a.n_prompt, a.n_gen
        )?;
        outln!("|---|---|---|---|---|---|---|---|---|---|---|")?;
        for r in &rows {
            outln!(
                "| {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.0}% | {:.1} | {:.1} | {:.1} | {:.1} |",
                r.threads,
                r.depth,
                r.pp,
                r.tg,
                r.bw,
                r.bound,
                100.0 * r.tg / r.bound,
                r.phases[0],
                r.phases[1],
                r.phases[2],
                r.phases[3]
            )?;
        }
        outln!("peak RSS {rss:.0} MB; medians of {reps} repetitions")?;
    }
    Ok(())
}

struct Row {
    threads: usize,
    depth: usize,
    pp: f64,
    tg: f64,
    bw: f64,
    bound: f64,
    phases: [f64; 4],
}
