//! A persistent thread pool for data-parallel loops: `run(n, f)` calls
//! `f(0..n)` spread over the calling thread and the workers and returns when
//! all calls are done. Workers spin briefly after a job (the next dispatch of
//! a forward pass comes within microseconds) and then park on a condvar, so an
//! idle pool costs nothing.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spin iterations a worker waits for the next job before parking.
const SPIN_ITERS: u32 = 20_000;

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per job; workers watch it.
    generation: AtomicUsize,
    /// The job of the current generation; written only while no worker runs.
    job: UnsafeCell<Option<Job>>,
    n_tasks: AtomicUsize,
    next_task: AtomicUsize,
    /// Workers that have not yet finished the current generation.
    busy: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleep: Mutex<usize>,
    wake: Condvar,
}

// SAFETY: `job` is written by the dispatching thread only while every worker
// is idle (`busy == 0`, serialized by `ThreadPool::dispatch`), and read by
// workers only after they observe the new generation (Acquire), which the
// writer publishes with Release after writing.
unsafe impl Sync for Shared {}
// SAFETY: the raw job pointer is only dereferenced under the protocol above.
unsafe impl Send for Shared {}

/// A fixed set of worker threads plus the caller.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    dispatch: Mutex<()>,
}

impl ThreadPool {
    /// A pool that runs jobs on `threads` threads in all (the caller is one
    /// of them, so `threads - 1` workers are started). `threads == 0` means
    /// the number of available cores.
    pub fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            default_threads()
        } else {
            threads
        };
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            n_tasks: AtomicUsize::new(0),
            next_task: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleep: Mutex::new(0),
            wake: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("bitnet-worker-{i}"))
                    .spawn(move || worker(&s))
                    .expect("failed to spawn a worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            dispatch: Mutex::new(()),
        }
    }

    /// Threads that run a job, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` for every `i` in `0..n`, each exactly once, spread over
    /// the pool; returns when all have returned. A panic in `f` is re-raised
    /// here after the job has drained.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        if self.workers.is_empty() || n == 1 {
            (0..n).for_each(f);
            return;
        }
        let _guard = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: lifetime erasure; the job is only used until `busy` drops to
        // zero below, before this function returns and `f` goes out of scope.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        // SAFETY: no worker reads `job` now: all finished the last generation.
        unsafe { *s.job.get() = Some(job) };
        s.n_tasks.store(n, Ordering::Relaxed);
        s.next_task.store(0, Ordering::Relaxed);
        s.busy.store(self.workers.len(), Ordering::Relaxed);
        s.generation.fetch_add(1, Ordering::Release);
        {
            let sleepers = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            if *sleepers > 0 {
                s.wake.notify_all();
            }
        }
        run_tasks(s, f);
        let mut spins = 0u32;
        while s.busy.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: every worker is done with this generation.
        unsafe { *s.job.get() = None };
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a thread-pool task panicked");
        }
    }
}

fn run_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync)) {
    let n = s.n_tasks.load(Ordering::Relaxed);
    loop {
        let i = s.next_task.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        let gen = loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen || s.shutdown.load(Ordering::Acquire) {
                break g;
            }
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
                continue;
            }
            let mut sleepers = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            *sleepers += 1;
            while s.generation.load(Ordering::Acquire) == seen
                && !s.shutdown.load(Ordering::Acquire)
            {
                sleepers = s.wake.wait(sleepers).unwrap_or_else(|e| e.into_inner());
            }
            *sleepers -= 1;
            spins = 0;
        };
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        seen = gen;
        // SAFETY: the dispatcher wrote the job before publishing `gen` and
        // keeps it alive until `busy` reaches zero.
        if let Some(job) = unsafe { *s.job.get() } {
            // SAFETY: as above.
            run_tasks(s, unsafe { &*job });
        }
        s.busy.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _sleepers = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl ThreadPool {
    /// Runs `f(i, chunk_i)` for every `chunk`-long piece of `buf` (the last
    /// may be shorter), spread over the pool: the safe form of a parallel
    /// loop whose tasks each own one contiguous part of an output.
    pub fn run_chunks<T: Send>(
        &self,
        buf: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        assert!(chunk > 0, "chunk length 0");
        let len = buf.len();
        let d = DisjointMut::new(buf);
        self.run(len.div_ceil(chunk), &|i| {
            let start = i * chunk;
            // SAFETY: task i alone gets elements i*chunk..min((i+1)*chunk,
            // len), inside the buffer, which outlives `run`.
            f(i, unsafe { d.part(start, chunk.min(len - start)) })
        });
    }

    /// [`ThreadPool::run_chunks`] over two buffers at once: task `i` gets
    /// chunk `i` of each. Both must split into the same number of chunks.
    #[allow(clippy::type_complexity)]
    pub fn run_chunks2<A: Send, B: Send>(
        &self,
        a: &mut [A],
        a_chunk: usize,
        b: &mut [B],
        b_chunk: usize,
        f: &(dyn Fn(usize, &mut [A], &mut [B]) + Sync),
    ) {
        assert!(a_chunk > 0 && b_chunk > 0, "chunk length 0");
        let (la, lb) = (a.len(), b.len());
        let n = la.div_ceil(a_chunk);
        assert_eq!(
            n,
            lb.div_ceil(b_chunk),
            "the buffers split into different chunk counts"
        );
        let (da, db) = (DisjointMut::new(a), DisjointMut::new(b));
        self.run(n, &|i| {
            let (sa, sb) = (i * a_chunk, i * b_chunk);
            // SAFETY: as in `run_chunks`, for each buffer.
            let (pa, pb) = unsafe {
                (
                    da.part(sa, a_chunk.min(la - sa)),
                    db.part(sb, b_chunk.min(lb - sb)),
                )
            };
            f(i, pa, pb)
        });
    }
}

/// A mutable buffer shared with pool tasks that each write a disjoint part.
pub struct DisjointMut<T>(*mut T);

// SAFETY: tasks only get at the buffer through `part`, whose contract
// requires disjoint ranges.
unsafe impl<T: Send> Sync for DisjointMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for DisjointMut<T> {}

impl<T> DisjointMut<T> {
    pub fn new(buf: &mut [T]) -> Self {
        DisjointMut(buf.as_mut_ptr())
    }

    /// A buffer given by its address (the contract of [`DisjointMut::part`]
    /// applies to it as to a slice).
    pub fn from_raw(ptr: *mut T) -> Self {
        DisjointMut(ptr)
    }

    /// Elements `start..start + len` of the buffer.
    ///
    /// # Safety
    /// The range is inside the buffer, the buffer outlives the use, and no
    /// other task touches the range meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, start: usize, len: usize) -> &mut [T] {
        // SAFETY: by the function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// The number of cores this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Splits `0..n` into `parts` nearly equal contiguous ranges and returns
/// range `i`.
pub fn split(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    let base = n / parts;
    let extra = n % parts;
    let start = i * base + i.min(extra);
    let len = base + usize::from(i < extra);
    start..(start + len).min(n)
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    #[test]
    fn chunks_cover_the_buffers_once() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads);
            let mut v = vec![0u32; 103];
            pool.run_chunks(&mut v, 10, &|i, c| {
                for (k, x) in c.iter_mut().enumerate() {
                    *x += (i * 10 + k) as u32 + 1;
                }
            });
            assert!(v.iter().enumerate().all(|(k, &x)| x == k as u32 + 1));
            let (mut a, mut b) = (vec![0u8; 12], vec![0u16; 7]);
            pool.run_chunks2(&mut a, 4, &mut b, 3, &|i, x, y| {
                x.fill(i as u8 + 1);
                y.fill(i as u16 + 1);
            });
            assert_eq!(a, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
            assert_eq!(b, [1, 1, 1, 2, 2, 2, 3]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for threads in [1, 2, 3, 8] {
            let pool = ThreadPool::new(threads);
            for n in [0usize, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "threads {threads} n {n}"
                );
            }
        }
    }

    #[test]
    fn pool_survives_parking_and_concurrent_callers() {
        let pool = Arc::new(ThreadPool::new(3));
        let total = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let (pool, total) = (Arc::clone(&pool), Arc::clone(&total));
                std::thread::spawn(move || {
                    for round in 0..50 {
                        if round % 10 == 0 {
                            std::thread::sleep(std::time::Duration::from_millis(2));
                        }
                        pool.run(16, &|_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        assert_eq!(total.load(Ordering::Relaxed), 4 * 50 * 16);
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_lives_on() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|i| assert!(i != 5, "boom"))
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn split_covers_everything() {
        for n in [0, 1, 5, 17, 100] {
            for parts in [1, 2, 3, 7] {
                let mut next = 0;
                for i in 0..parts {
                    let r = split(n, parts, i);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }
}
