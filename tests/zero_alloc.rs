//! Decoding a token allocates nothing on the heap: a counting global
//! allocator watches every thread of this process (this binary holds this
//! one test, so nothing else runs beside it) while a warmed-up session
//! decodes tokens, with 1 and 2 threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bitnet_stfma::model::{Model, Session};
use bitnet_stfma::synthetic::{self, Shape};

struct Counting;
static ARMED: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decoding_a_token_allocates_nothing() {
    let path = std::env::temp_dir().join(format!("bitnet-zero-alloc-{}.gguf", std::process::id()));
    synthetic::write_model(&path, Shape::MICRO, None, 3, &mut |_, _| {}).unwrap();
    let model = Model::load(&path).unwrap();
    std::fs::remove_file(&path).ok();
    for threads in [1, 2] {
        let mut s = Session::new(&model, 64, 8, threads).unwrap();
        let mut next = 1u32;
        let mut step = |s: &mut Session| {
            let logits = s.forward(&[next]).unwrap();
            next = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |m| m.0 as u32);
        };
        s.forward(&[256, 5, 6, 7]).unwrap(); // a prompt batch, then warm up decoding
        for _ in 0..4 {
            step(&mut s);
        }
        COUNT.store(0, Ordering::Relaxed);
        ARMED.store(true, Ordering::Relaxed);
        for _ in 0..16 {
            step(&mut s);
        }
        ARMED.store(false, Ordering::Relaxed);
        let n = COUNT.load(Ordering::Relaxed);
        assert_eq!(
            n, 0,
            "{n} heap allocations while decoding 16 tokens on {threads} threads"
        );
    }
}
