use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::error::Result;
use crate::gguf::{self, TensorSpec};
use crate::gguf::{Gguf, Value};
use crate::synthetic::{self, Shape};

/// `g` rewritten with `edit` applied to its metadata and `extra` tensors
/// (spec, bytes) appended.
fn rewrite(
    g: &Gguf,
    edit: impl Fn(&mut Vec<(String, Value)>),
    extra: &[(TensorSpec, Vec<u8>)],
) -> Result<Gguf> {
    let mut md = g.metadata().to_vec();
    edit(&mut md);
    let mut specs: Vec<TensorSpec> = g
        .tensors()
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
        })
        .collect();
    specs.extend(extra.iter().map(|(s, _)| s.clone()));
    let n = g.tensors().len();
    let mut bytes = Vec::new();
    gguf::write(&mut bytes, &md, &specs, 32, &mut |i, w| {
        if i < n {
            w.write_all(g.tensor_data(&g.tensors()[i]))
        } else {
            w.write_all(&extra[i - n].1)
        }
    })
    .unwrap();
    Gguf::from_bytes(bytes)
}

/// A micro synthetic model, rewritten with `edit` applied to its metadata.
fn micro_with(edit: impl Fn(&mut Vec<(String, Value)>)) -> Result<Model> {
    let path = std::env::temp_dir().join(format!(
        "bitnet-bad-{}-{:?}.gguf",
        std::process::id(),
        std::thread::current().id()
    ));
    synthetic::write_model(&path, Shape::MICRO, None, 1, &mut |_, _| {}).unwrap();
    let g = Gguf::open(&path).unwrap();
    std::fs::remove_file(&path).ok();
    Model::from_gguf(Arc::new(rewrite(&g, edit, &[])?))
}

/// The metadata of another architecture (its keys renamed to match).
fn rename_arch(md: &mut [(String, Value)], arch: &str) {
    for (k, v) in md.iter_mut() {
        if let Some(rest) = k.strip_prefix("bitnet-b1.58.") {
            *k = format!("{arch}.{rest}");
        }
        if k == "general.architecture" {
            *v = Value::String(arch.into());
        }
    }
}

fn set(md: &mut [(String, Value)], key: &str, v: Value) {
    md.iter_mut().find(|(k, _)| k == key).unwrap().1 = v;
}

/// A micro model, edited, refused with a message that names what is wrong.
mod bad_models {
    use super::*;

    /// The error of loading the micro model with `edit` applied to its metadata.
    fn load_error(edit: impl Fn(&mut Vec<(String, Value)>)) -> crate::error::Error {
        micro_with(edit)
            .err()
            .expect("the edited model was refused")
    }

    #[test]
    fn the_unedited_micro_model_loads() {
        assert!(micro_with(|_| {}).is_ok());
    }

    #[test]
    fn a_feed_forward_length_off_the_tensors_names_the_tensor() {
        let e = load_error(|md| set(md, "bitnet-b1.58.feed_forward_length", Value::U32(512)));
        assert!(
            e.message.contains("blk.0.ffn_gate.weight") && e.message.contains("shape"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_bos_token() {
        let e = load_error(|md| md.retain(|(k, _)| k != "tokenizer.ggml.bos_token_id"));
        assert!(e.message.contains("BOS"), "{e}");
    }

    #[test]
    fn an_eos_token_outside_the_vocabulary() {
        let e = load_error(|md| set(md, "tokenizer.ggml.eos_token_id", Value::U32(1 << 20)));
        assert!(e.message.contains("eos_token_id"), "{e}");
    }

    /// Another family: the llama graph has no sub-norms, so their tensors are refused.
    #[test]
    fn sub_norms_in_a_llama_graph() {
        let e = load_error(|md| rename_arch(md, "llama"));
        assert!(
            e.message.contains("attn_sub_norm") && e.message.contains("not part of"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_architecture() {
        let e = load_error(|md| set(md, "general.architecture", Value::String("gpt2".into())));
        assert!(e.message.contains("'gpt2'"), "{e}");
    }

    #[test]
    fn a_missing_architecture() {
        let e = load_error(|md| md.retain(|(k, _)| k != "general.architecture"));
        assert!(e.message.contains("architecture"), "{e}");
    }

    /// The 1bitLLM graph reads the same tensors (its keys under its own name).
    #[test]
    fn the_bitnet_architecture_reads_the_same_tensors() {
        let m = micro_with(|md| rename_arch(md, "bitnet")).unwrap();
        assert_eq!(m.config.family, Family::BitNet);
    }

    #[test]
    fn yarn_rope_scaling() {
        let e = load_error(|md| {
            md.push((
                "bitnet-b1.58.rope.scaling.type".into(),
                Value::String("yarn".into()),
            ))
        });
        assert!(e.message.contains("yarn"), "{e}");
    }

    #[test]
    fn a_missing_block_count() {
        let e = load_error(|md| md.retain(|(k, _)| k != "bitnet-b1.58.block_count"));
        assert!(
            e.message.contains("block_count") && e.message.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn a_head_count_off_the_tensors() {
        let e = load_error(|md| set(md, "bitnet-b1.58.attention.head_count", Value::U32(3)));
        assert!(e.message.contains("heads"), "{e}");
    }

    #[test]
    fn more_blocks_than_tensors() {
        let e = load_error(|md| set(md, "bitnet-b1.58.block_count", Value::U32(2)));
        assert!(
            e.message.contains("blk.1.") && e.message.contains("missing"),
            "{e}"
        );
    }
}

/// The 8-bit head's effect on the reference logits (reported, loosely bounded).
#[test]
fn q8_head_effect_on_reference_logits() {
    let Some(dir) = crate::testdata_dir() else {
        eprintln!(
            "SKIPPED model::q8_head_effect_on_reference_logits: ../shared/testdata not found"
        );
        return;
    };
    let model = Model::load_with(
        dir.join("bitnet-tiny.gguf"),
        LoadOptions {
            q8_head: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(model.has_q8_head() && model.head_bytes() < 128256 * 256 * 2 * 6 / 10);
    let (mut diffs, mut agree, mut confident) = (Vec::new(), 0, 0);
    for case in reference_cases(&dir, "bitnet-tiny.ref.jsonl") {
        let mut s = Session::new(&model, 256, 64, 2).unwrap();
        s.forward_all(&case.seq, &mut |i, logits| {
            let pairs = &case.tops[i];
            diffs.extend(pairs.iter().map(|&(id, want)| (logits[id] - want).abs()));
            if pairs[0].1 - pairs[1].1 > 1.0 {
                confident += 1;
                agree += usize::from(argmax(logits) == pairs[0].0);
            }
        })
        .unwrap();
    }
    let (median, p95, max) = quantiles(diffs);
    println!(
            "q8 head vs bitnet.cpp: median {median:.4}, p95 {p95:.4}, max {max:.4}; top-1 agrees at {agree} of {confident} confident positions"
        );
    assert!(
        // Achieved: median 0.065, p95 0.21, max 0.59.
        median <= 0.08 && p95 <= 0.27 && max <= 0.75,
        "the 8-bit head strays too far: median {median} p95 {p95} max {max}"
    );
    assert_eq!(agree, confident, "top-1 differs at a confident position");
}

/// The Q6_K head made at load is byte for byte what bitnet.cpp's
/// `llama-quantize --allow-requantize --token-embedding-type q6_k
/// bitnet-tiny.gguf out.gguf i2_s` writes (its token_embd.weight, FNV-1a
/// below; bitnet.cpp built with clang 16 for x86-64 with FMA), and greedy
/// text matches bitnet.cpp's on that file.
#[test]
fn q6k_head_is_llama_quantizes() {
    let Some(dir) = crate::testdata_dir() else {
        eprintln!("SKIPPED model::q6k_head_is_llama_quantizes: ../shared/testdata not found");
        return;
    };
    let opts = LoadOptions {
        q6k_head: true,
        ..Default::default()
    };
    let model = Model::load_with(dir.join("bitnet-tiny.gguf"), opts).unwrap();
    assert!(model.has_q6k_head() && model.head_is_tied());
    let q = model.head().matrix(&model.gguf).data;
    let fnv = q.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    assert_eq!((q.len(), fnv), (26_933_760, 0xd20c_e27a_c006_f800));
    assert_eq!(model.head_bytes(), q.len());
    // bitnet.cpp's llama-cli on that file (-n 16 --temp 0, 1 thread): the
    // same greedy text. (Q6_K moves this fixture's large logits by up to
    // ~40 from the F16 reference, so the comparison is with that file.)
    for (prompt, want) in [
        (
            "The capital of France is",
            " Diameter streetHen.listFiles Uploaded fishes \u{8d77} tcp \u{25b3} novels km\u{6258}\u{c138}\u{b300}atLng`;\n-sectional",
        ),
        (
            "Once upon a time",
            " \u{4e86}orangeAPPED\u{7b97}bindings\u{0442}\u{0456}\u{0432} DESCTextarea=targetEntities nem\u{016f}\u{017e}e.IOExceptionmyModalLabel<Texture eager Sanders",
        ),
    ] {
        let mut s = Session::new(&model, 64, 64, 1).unwrap();
        let mut next = argmax(s.forward(&model.tokenizer.encode(prompt, true, false)).unwrap());
        let mut out = vec![];
        for _ in 0..16 {
            out.push(next as u32);
            next = argmax(s.forward(&[next as u32]).unwrap());
        }
        assert_eq!(model.tokenizer.decode(&out, false), want, "{prompt}");
    }
    let both = LoadOptions {
        q8_head: true,
        q6k_head: true,
    };
    assert!(Model::load_with(dir.join("bitnet-tiny.gguf"), both).is_err());
}

/// A session of 16 positions (batch 4) on a micro model refuses what
/// cannot be run, with a message that says why.
mod bad_prompts {
    use super::*;

    fn micro() -> Model {
        micro_with(|_| {}).unwrap()
    }

    #[test]
    fn an_empty_prompt() {
        let model = micro();
        let mut s = Session::new(&model, 16, 4, 1).unwrap();
        assert!(s.forward(&[]).unwrap_err().message.contains("empty"));
    }

    #[test]
    fn a_prompt_longer_than_the_context() {
        let model = micro();
        let mut s = Session::new(&model, 16, 4, 1).unwrap();
        assert!(s
            .forward(&[1; 17])
            .unwrap_err()
            .message
            .contains("do not fit"));
    }

    #[test]
    fn a_token_outside_the_vocabulary() {
        let model = micro();
        let mut s = Session::new(&model, 16, 4, 1).unwrap();
        assert!(s
            .forward(&[100_000])
            .unwrap_err()
            .message
            .contains("outside the vocabulary"));
    }

    /// The refused prompts leave the session as it was: the whole context
    /// still takes 16 tokens.
    #[test]
    fn refused_prompts_take_no_room() {
        let model = micro();
        let mut s = Session::new(&model, 16, 4, 1).unwrap();
        assert!(s.forward(&[]).is_err());
        assert!(s.forward(&[1; 17]).is_err());
        assert!(s.forward(&[100_000]).is_err());
        s.forward(&[1; 16]).unwrap();
    }

    #[test]
    fn a_full_context_refuses_more() {
        let model = micro();
        let mut s = Session::new(&model, 16, 4, 1).unwrap();
        s.forward(&[1; 16]).unwrap();
        assert!(
            s.forward(&[1]).unwrap_err().message.contains("do not fit"),
            "a full context refuses more"
        );
    }

    #[test]
    fn an_absurd_context() {
        let model = micro();
        assert!(
            Session::new(&model, usize::MAX / 4, 4, 1).is_err(),
            "absurd context"
        );
    }
}

/// One reference prompt of `bitnet-tiny.ref.jsonl`: bitnet.cpp's tokens,
/// the teacher-forced sequence (prompt and greedy continuation) and, for
/// every position of it, bitnet.cpp's top-10 `(id, logit)`.
struct RefCase {
    prompt: String,
    tokens: Vec<u32>,
    seq: Vec<u32>,
    tops: Vec<Vec<(usize, f32)>>,
}

fn reference_cases(dir: &Path, file: &str) -> Vec<RefCase> {
    let top = |v: &serde_json::Value| -> Vec<(usize, f32)> {
        let pairs = v["top"].as_array().unwrap().iter();
        pairs
            .map(|p| {
                (
                    p[0].as_u64().unwrap() as usize,
                    p[1].as_f64().unwrap() as f32,
                )
            })
            .collect()
    };
    let refs = std::fs::read_to_string(dir.join(file)).unwrap();
    let mut cases = Vec::new();
    for line in refs.lines().filter(|l| !l.trim().is_empty()) {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let tokens: Vec<u32> = r["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut seq = tokens.clone();
        let mut tops: Vec<_> = r["prompt_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(top)
            .collect();
        for g in r["greedy"].as_array().unwrap() {
            seq.push(g["token"].as_u64().unwrap() as u32);
            tops.push(top(&g["next"]));
        }
        assert_eq!(tops.len(), seq.len());
        cases.push(RefCase {
            prompt: r["prompt"].as_str().unwrap().to_string(),
            tokens,
            seq,
            tops,
        });
    }
    cases
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

/// (median, p95, max) of the values.
fn quantiles(mut v: Vec<f32>) -> (f32, f32, f32) {
    v.sort_by(f32::total_cmp);
    let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
    (q(0.5), q(0.95), *v.last().unwrap())
}

/// |logit difference| statistics against bitnet.cpp's top-10 at every
/// position, teacher-forced over each reference prompt and its greedy
/// continuation, for one fixture model: (median, p95, max).
fn compare_with_reference(dir: &Path, model_file: &str, ref_file: &str) -> (f32, f32, f32) {
    let model = Model::load(dir.join(model_file)).unwrap();
    let (mut diffs, mut checked_top1, mut positions) = (Vec::new(), 0, 0);
    for case in reference_cases(dir, ref_file) {
        let prompt = &case.prompt;
        assert_eq!(
            model
                .tokenizer
                .encode(prompt, model.tokenizer.add_bos, false),
            case.tokens,
            "{model_file}: tokens of {prompt:?}"
        );
        // (batch, threads, attention tasks per thread, split from): the
        // fourth runs whole head groups through the grouped attention
        // kernels, the fifth splits every decoded token's positions over
        // the threads.
        for (batch, threads, per_thread, split) in [
            (1usize, 2usize, 4usize, 512usize),
            (7, 2, 4, 512),
            (64, 2, 4, 512),
            (5, 1, 1, 512),
            (1, 2, 4, 1),
        ] {
            let mut s = Session::new(&model, 256, batch, threads).unwrap();
            s.attn_tasks_per_thread = per_thread;
            s.attn_split_min = split;
            s.forward_all(&case.seq, &mut |i, logits| {
                let pairs = &case.tops[i];
                diffs.extend(pairs.iter().map(|&(id, want)| (logits[id] - want).abs()));
                positions += 1;
                if pairs[0].1 - pairs[1].1 > 1.0 {
                    let ctx = format!(
                        "{model_file}: position {i} of {prompt:?}, batch {batch}, {threads} threads"
                    );
                    assert_eq!(argmax(logits), pairs[0].0, "top-1 at {ctx}");
                    checked_top1 += 1;
                }
            })
            .unwrap();
        }
    }
    let n = diffs.len();
    let q = quantiles(diffs);
    println!(
        "{model_file}: {positions} positions over 5 batch/thread settings, {n} comparisons: median {:.4}, p95 {:.4}, max {:.4}; top-1 checked at {checked_top1}",
        q.0, q.1, q.2
    );
    assert!(checked_top1 > 0);
    q
}

#[test]
fn reproduces_bitnet_cpp_logits() {
    let Some(dir) = crate::testdata_dir() else {
        eprintln!("SKIPPED model::reproduces_bitnet_cpp_logits: ../shared/testdata not found");
        return;
    };
    let (median, p95, max) =
        compare_with_reference(&dir, "bitnet-tiny.gguf", "bitnet-tiny.ref.jsonl");
    assert!(
        // Achieved: median 0.0000, p95 0.172, max 0.54 (f16 KV cache and
        // f32 summation order differ from ggml's); just above that.
        median <= 0.01 && p95 <= 0.22 && max <= 0.7,
        "median {median} p95 {p95} max {max}"
    );
}

/// The other families bitnet.cpp runs, one test each: `name`'s fixture
/// against bitnet.cpp's logits on it, within the bounds given.
fn reproduces_bitnet_cpp_logits_of(name: &str, p95_bound: f32, max_bound: f32) {
    let Some(dir) = crate::testdata_dir() else {
        eprintln!(
            "SKIPPED model::reproduces_bitnet_cpp_logits_of {name}: ../shared/testdata not found"
        );
        return;
    };
    let (median, p95, max) =
        compare_with_reference(&dir, &format!("{name}.gguf"), &format!("{name}.ref.jsonl"));
    assert!(
        median <= 0.01 && p95 <= p95_bound && max <= max_bound,
        "{name}: median {median} p95 {p95} max {max}"
    );
}

// The p95 and max bounds: just above what is achieved (medians 0; p95
// 0.174 / 0.000 / 0.036; max 1.34 / 0.068 / 0.77), inside the median
// 0.05 and p95 0.5.

/// Arch `bitnet` with a SentencePiece vocabulary.
#[test]
fn reproduces_bitnet_cpp_logits_of_bitnet_spm() {
    reproduces_bitnet_cpp_logits_of("bitnet-spm-tiny", 0.22, 1.7);
}

/// Arch `llama` with I2_S weights and an untied Q8_0 head.
#[test]
fn reproduces_bitnet_cpp_logits_of_llama_i2s() {
    reproduces_bitnet_cpp_logits_of("llama-i2s-tiny", 0.01, 0.1);
}

/// A Falcon3-like `llama` with a Q8_0 embedding and head size 128.
#[test]
fn reproduces_bitnet_cpp_logits_of_falcon3_i2s() {
    reproduces_bitnet_cpp_logits_of("falcon3-i2s-tiny", 0.06, 1.0);
}

/// Arch `bitnet`'s optional `blk.N.*.scale` tensors multiply the matmul
/// outputs: scales of 1 change nothing, and with the output and down
/// projections scaled by 0 every block adds nothing, so the logits are the
/// head applied to the normed embedding, computed here independently.
#[test]
fn bitnet_scale_tensors_multiply_the_matmul_outputs() {
    let Some(dir) = crate::testdata_dir() else {
        eprintln!("SKIPPED model::bitnet_scale_tensors_multiply_the_matmul_outputs: ../shared/testdata not found");
        return;
    };
    let g = Gguf::open(dir.join("bitnet-spm-tiny.gguf")).unwrap();
    let with_scales = |f: &dyn Fn(&str) -> f32| {
        let extra: Vec<_> = (0..2)
            .flat_map(|l| {
                super::weights::MATRICES.map(|m| {
                    let spec = TensorSpec {
                        name: format!("blk.{l}.{m}.scale"),
                        dims: vec![1],
                        ty: crate::gguf::GgmlType::F32,
                    };
                    (spec, f(m).to_le_bytes().to_vec())
                })
            })
            .collect();
        Model::from_gguf(Arc::new(rewrite(&g, |_| {}, &extra).unwrap())).unwrap()
    };
    let tokens = [1u32, 450, 7483, 310, 3444, 338];
    let logits = |m: &Model| {
        let mut s = Session::new(m, 64, 8, 2).unwrap();
        s.forward(&tokens).unwrap().to_vec()
    };
    let plain = Model::from_gguf(Arc::new(rewrite(&g, |_| {}, &[]).unwrap())).unwrap();
    assert_eq!(logits(&plain), logits(&with_scales(&|_| 1.0)));
    // (V alone would be normed away by the attention sub-norm; Q sets the
    // softmax temperature.)
    let halved = logits(&with_scales(&|m| if m == "attn_q" { 0.5 } else { 1.0 }));
    assert!(
        logits(&plain) != halved,
        "a scale of 0.5 on Q changes the logits"
    );

    let zeroed = with_scales(&|m| {
        if m == "attn_output" || m == "ffn_down" {
            0.0
        } else {
            1.0
        }
    });
    let got = logits(&zeroed);
    let c = &zeroed.config;
    let (mut e, mut h) = (vec![0f32; c.dim], vec![0f32; c.dim]);
    zeroed
        .embed_matrix()
        .dequantize_row(*tokens.last().unwrap() as usize, &mut e);
    super::ops::rmsnorm(&mut h, &e, &zeroed.output_norm, c.eps);
    let mut want = vec![0f32; c.vocab_size];
    zeroed.head().matrix(&zeroed.gguf).matvec(
        &h,
        &mut crate::embedding::Activations::new(c.dim),
        &mut want,
        &crate::threadpool::ThreadPool::new(1),
    );
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-3,
        "logits differ from the head of the embedding by {worst}"
    );
}

/// Several sequences fed together give, bit for bit, the logits each gives
/// alone with the same chunks: the continuous batching of `bitnet serve`
/// changes no sequence's result.
#[test]
fn batched_sequences_match_each_alone() {
    let Some(dir) = crate::testdata_dir() else {
        eprintln!(
            "SKIPPED model::batched_sequences_match_each_alone: ../shared/testdata not found"
        );
        return;
    };
    for (name, q8_head) in [
        ("bitnet-tiny", false),
        ("bitnet-tiny", true),
        ("falcon3-i2s-tiny", false),
    ] {
        let model = Model::load_with(
            dir.join(format!("{name}.gguf")),
            LoadOptions {
                q8_head,
                ..Default::default()
            },
        )
        .unwrap();
        // Per sequence: the chunks it is fed in, step by step (None: idle).
        let a: Vec<Vec<u32>> = vec![vec![1, 2, 3, 4, 5], vec![6], vec![7], vec![8]];
        let b: Vec<Vec<u32>> = vec![vec![9, 10, 11], vec![12, 13], vec![14], vec![15]];
        let c: Vec<Vec<u32>> = vec![vec![], vec![16, 17, 18, 19], vec![20], vec![21]];
        let seqs = [a, b, c];
        let alone: Vec<Vec<Vec<f32>>> = seqs
            .iter()
            .map(|steps| {
                let mut s = Session::new(&model, 64, 8, 2).unwrap();
                steps
                    .iter()
                    .filter(|t| !t.is_empty())
                    .map(|t| s.forward(t).unwrap().to_vec())
                    .collect()
            })
            .collect();
        let mut s = Session::with_slots(&model, 64, 8, 2, 3).unwrap();
        let mut got: Vec<Vec<Vec<f32>>> = vec![vec![]; 3];
        for step in 0..4 {
            let segs: Vec<Segment> = seqs
                .iter()
                .enumerate()
                .filter(|(_, chunks)| !chunks[step].is_empty())
                .map(|(q, chunks)| Segment {
                    slot: q,
                    tokens: &chunks[step],
                    all_logits: false,
                })
                .collect();
            s.forward_segments(&segs, &mut |i, _, logits| {
                got[segs[i].slot].push(logits.to_vec())
            })
            .unwrap();
        }
        assert_eq!(got, alone, "{name}");
        assert_eq!((s.slot_pos(0), s.slot_pos(1), s.slot_pos(2)), (8, 7, 6));
        // Bad steps are refused.
        let t = [1u32; 9];
        let mut err = |segs: &[Segment]| {
            s.forward_segments(segs, &mut |_, _, _| {})
                .unwrap_err()
                .message
        };
        assert!(err(&[Segment {
            slot: 0,
            tokens: &t,
            all_logits: false,
        }])
        .contains("exceed"));
        assert!(err(&[Segment {
            slot: 3,
            tokens: &t[..1],
            all_logits: false,
        }])
        .contains("no slot"));
        assert!(err(&[
            Segment {
                slot: 1,
                tokens: &t[..1],
                all_logits: false,
            },
            Segment {
                slot: 1,
                tokens: &t[..1],
                all_logits: false,
            }
        ])
        .contains("twice"));
        s.reset_slot(2);
        assert_eq!(s.slot_pos(2), 0);
    }
}
