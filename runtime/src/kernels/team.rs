//! Work shared between the calling thread and tract's thread pool without ever waiting for a pool thread to
//! wake: each participant (the caller, then each pool job) claims the chunks of its own consecutive range first,
//! then what is left of the others', and the caller waits only for chunks a pool thread has claimed and not
//! finished (on a loaded machine a pool thread may start late, and then finds its range done by the caller).
//! Own ranges first means a layer's first part is computed on the calling thread run after run, and the next
//! layer's first part reads it from that core's cache.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tract_linalg::multithread::Executor;
use tract_onnx::prelude::TVec;

/// The threads of an executor (1 when it is single-threaded).
pub(crate) fn threads(executor: &Executor) -> usize {
    match executor {
        #[allow(unreachable_patterns)]
        Executor::MultiThread(pool) => pool.current_num_threads(),
        _ => 1,
    }
}

/// How many chunks to cut `units` independent pieces of work into: up to [`CHUNKS_PER_THREAD`] per thread of the
/// executor when `worth_it` (the work is large enough to pay for waking the pool), else 1 (all on this thread).
pub(crate) fn chunks(executor: &Executor, units: usize, worth_it: bool) -> usize {
    let threads = threads(executor);
    if threads > 1 && worth_it { units.min(CHUNKS_PER_THREAD * threads).max(1) } else { 1 }
}

/// Chunks per thread: enough that a thread the pool wakes late still finds work, few enough that claiming costs
/// nothing (8 per thread measured the same as 4 on MobileNet).
pub(crate) const CHUNKS_PER_THREAD: usize = 4;

/// An output pointer the chunks of one [`share`] call write through, each to its own part.
#[derive(Clone, Copy)]
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    pub(crate) fn new(slice: &mut [T]) -> Out<T> {
        Out(slice.as_mut_ptr())
    }
    /// The start of the slice given to [`Out::new`], for kernels that write their own part through it.
    pub(crate) fn ptr(&self) -> *mut T {
        self.0
    }
    /// The part `start .. start + len` of the slice given to [`Out::new`].
    ///
    /// # Safety
    /// The part lies inside that slice, the slice is still borrowed by the caller of [`share`], and no other
    /// chunk touches the part while this one uses it.
    pub(crate) unsafe fn part<'a>(&self, start: usize, len: usize) -> &'a mut [T] {
        // SAFETY: the caller's contract above.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

// SAFETY: the chunks of one `share` call write disjoint parts (its caller's contract), and the pointee outlives
// the call.
unsafe impl<T> Send for Out<T> {}
unsafe impl<T> Sync for Out<T> {}

/// The chunk counter and the work, shared with the pool jobs.
struct Shared {
    /// Per participant (this thread first, then each pool job), the next chunk of its own range to claim
    /// (inline up to 4 participants: no allocation per call beyond the `Arc`).
    next: TVec<AtomicUsize>,
    done: AtomicUsize,
    chunks: usize,
    panicked: AtomicBool,
    /// The caller's closure, its lifetime erased: see the SAFETY note on the `Send` / `Sync` impls.
    work: *const (dyn Fn(usize) + Sync + 'static),
}

// SAFETY: `work` is only called for a claimed chunk (`next` below `chunks`), and `share` does not return until
// every claimed chunk is done, so the closure (and whatever it borrows) outlives every call. A pool job that
// starts after the last chunk was claimed returns without touching it.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The first chunk of participant `p`'s range when `chunks` are cut among `parts` participants (evenly, in
    /// order; `p = parts` gives the end of the last range).
    fn start(p: usize, parts: usize, chunks: usize) -> usize {
        p * chunks / parts
    }

    /// Runs the chunks of participant `me`'s own range, then whatever is left of the others' (each range from
    /// its start: the owner, if it is late, finds its first chunks taken and goes on after them).
    fn claim(&self, me: usize) {
        let n = self.next.len();
        for p in (0..n).map(|i| (me + i) % n) {
            let end = Shared::start(p + 1, n, self.chunks);
            loop {
                let c = self.next[p].fetch_add(1, Ordering::Relaxed);
                if c >= end {
                    break;
                }
                // SAFETY: chunk `c` is claimed and not done, so `share` is still waiting and `work` is alive.
                let work = unsafe { &*self.work };
                if catch_unwind(AssertUnwindSafe(|| work(c))).is_err() {
                    self.panicked.store(true, Ordering::Relaxed);
                }
                self.done.fetch_add(1, Ordering::Release);
            }
        }
    }
}

/// Runs `work(c)` once for every chunk `c < chunks`, on this thread and on up to `threads − 1` jobs of the
/// executor's thread pool (only this thread when `chunks < 2` or the executor is single-threaded); the chunks
/// are cut into one consecutive range per participant, this thread's first, and each starts with its own.
/// Chunks may run in any order and at the same time: `work` must make them independent (disjoint outputs).
/// Returns `false` when a chunk panicked (the panic is caught on whichever thread ran it; the other chunks still
/// run).
pub(crate) fn share(executor: &Executor, chunks: usize, work: &(dyn Fn(usize) + Sync)) -> bool {
    let helpers = match executor {
        #[allow(unreachable_patterns)]
        Executor::MultiThread(pool) if chunks > 1 => Some((pool.clone(), pool.current_num_threads().min(chunks) - 1)),
        _ => None,
    };
    let Some((pool, helpers)) = helpers.filter(|(_, n)| *n > 0) else {
        // Every chunk runs even after one panicked (as on the pool), so no `all`.
        let failed = (0..chunks).filter(|&c| catch_unwind(AssertUnwindSafe(|| work(c))).is_err()).count();
        return failed == 0;
    };
    let work: *const (dyn Fn(usize) + Sync + '_) = work;
    // SAFETY: only the lifetime changes; `Shared` documents why the closure outlives its uses.
    let work: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(work) };
    let parts = helpers + 1;
    let next = (0..parts).map(|p| AtomicUsize::new(Shared::start(p, parts, chunks))).collect();
    let shared = Arc::new(Shared { next, done: AtomicUsize::new(0), chunks, panicked: false.into(), work });
    for h in 1..=helpers {
        let shared = shared.clone();
        pool.spawn(move || shared.claim(h));
    }
    shared.claim(0);
    let mut spins = 0u32;
    while shared.done.load(Ordering::Acquire) < chunks {
        spins += 1;
        if spins < 1 << 12 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    !shared.panicked.load(Ordering::Relaxed)
}

/// A 2-thread executor shared by the kernels' tests (one pool for the whole test binary instead of one per
/// test case).
#[cfg(test)]
pub(crate) fn test_pool() -> &'static Executor {
    static POOL: std::sync::LazyLock<Executor> = std::sync::LazyLock::new(|| Executor::multithread(2));
    &POOL
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn every_chunk_runs_once_on_a_pool_or_without_one() {
        for threads in [1, 2, 3] {
            let run = || {
                let seen = Mutex::new(vec![0u32; 37]);
                let executor = tract_linalg::multithread::current_tract_executor();
                assert!(share(&executor, 37, &|c| seen.lock().unwrap()[c] += 1));
                seen.into_inner().unwrap()
            };
            let seen = if threads == 1 {
                run()
            } else {
                tract_linalg::multithread::multithread_tract_scope(Executor::multithread(threads), run)
            };
            assert_eq!(seen, vec![1; 37], "{threads} threads");
        }
    }

    #[test]
    fn each_participant_starts_with_its_own_range() {
        // Slow chunks, so the pool job starts while the caller is still in its range: each thread's first chunk
        // is the start of its range (the job's, unless the caller got there first: then later in that range).
        let caller = std::thread::current().id();
        let firsts = Mutex::new((None, None));
        let pool = Executor::multithread(2);
        assert!(share(&pool, 20, &|c| {
            std::thread::sleep(std::time::Duration::from_micros(300));
            let mut f = firsts.lock().unwrap();
            let first = if std::thread::current().id() == caller { &mut f.0 } else { &mut f.1 };
            first.get_or_insert(c);
        }));
        let (mine, job) = firsts.into_inner().unwrap();
        assert_eq!(mine, Some(0), "the caller starts at its range's first chunk");
        if let Some(job) = job {
            assert!((10..20).contains(&job), "the pool job starts in its own range, 10..20, not at chunk {job}");
        }
    }

    #[test]
    fn work_is_cut_into_chunks_only_for_a_pool_and_when_worth_it() {
        let pool = Executor::multithread(2);
        assert_eq!(chunks(&Executor::SingleThread, 100, true), 1);
        assert_eq!(chunks(&pool, 100, false), 1);
        assert_eq!(chunks(&pool, 100, true), 2 * CHUNKS_PER_THREAD);
        assert_eq!(chunks(&pool, 3, true), 3, "never more chunks than units");
        assert_eq!(chunks(&pool, 0, true), 1);
    }

    #[test]
    fn a_panicking_chunk_is_reported_not_propagated() {
        let done = AtomicUsize::new(0);
        let ok = share(&Executor::SingleThread, 8, &|c| {
            if c == 3 {
                panic!("chunk 3 fails");
            }
            done.fetch_add(1, Ordering::Relaxed);
        });
        assert!(!ok);
        assert_eq!(done.load(Ordering::Relaxed), 7);
    }
}
