//! Work shared between the calling thread and tract's thread pool without ever waiting for a pool thread to
//! wake: each participant (the caller, then each pool job) claims the chunks of its own consecutive range first,
//! then what is left of the others', and the caller waits only for chunks a pool thread has claimed and not
//! finished (on a loaded machine a pool thread may start late, and then finds its range done by the caller).
//! Own ranges first means a layer's first part is computed on the calling thread run after run, and the next
//! layer's first part reads it from that core's cache.
//!
//! A pool job that has run out of chunks lingers a little ([`LINGER`]), spinning, for the next call on its
//! pool, and joins it without a new job: a pool thread that went to sleep between two layers (or two runs) has
//! to be woken, and on a core that has been idle that wake-up takes tens of microseconds (up to hundreds in a
//! virtual machine), while the caller computes the first layers alone.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

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
    /// Participants that joined so far (the caller is participant 0; each pool job or lingering helper takes the
    /// next number, and any past the last range just helps).
    joined: AtomicUsize,
    panicked: AtomicBool,
    /// The caller's closure, its lifetime erased: see the SAFETY note on the `Send` / `Sync` impls.
    work: *const (dyn Fn(usize) + Sync + 'static),
}

// SAFETY: `work` is only called for a claimed chunk (`next` below `chunks`), and `share` does not return until
// every claimed chunk is done, so the closure (and whatever it borrows) outlives every call. A pool job that
// starts after the last chunk was claimed returns without touching it, and so does a lingering helper that joins
// a call posted to it after that call returned (the `Arc` it holds keeps the counters alive, not the closure).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The first chunk of participant `p`'s range when `chunks` are cut among `parts` participants (evenly, in
    /// order; `p = parts` gives the end of the last range).
    fn start(p: usize, parts: usize, chunks: usize) -> usize {
        p * chunks / parts
    }

    /// Joins as the next participant and runs its chunks ([`Shared::claim`]).
    fn join(&self) {
        let me = self.joined.fetch_add(1, Ordering::Relaxed) % self.next.len();
        self.claim(me);
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

/// How long a pool job spins, after its last chunk, for the next [`share`] call on its pool before it goes back
/// to the pool (where the thread may sleep). `PUPIL_LINGER_US` in the environment overrides it (0: no lingering).
pub(crate) const LINGER: Duration = Duration::from_micros(50);

fn linger_window() -> Duration {
    static WINDOW: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| {
        std::env::var("PUPIL_LINGER_US").ok().and_then(|v| v.parse().ok()).map_or(LINGER, Duration::from_micros)
    });
    *WINDOW
}

/// What the lingering helpers of one pool watch: the latest call posted to them.
struct Hot {
    /// Pool jobs of this pool spinning for the next call.
    lingering: AtomicUsize,
    /// Bumped on every post, so a helper sees a new call without locking.
    posted: AtomicUsize,
    latest: Mutex<Option<Arc<Shared>>>,
    window: Duration,
    /// Pool jobs spawned for this pool's calls (what lingering saves).
    #[cfg(test)]
    spawned: AtomicUsize,
}

/// The state of each live pool that has shared work (an entry whose pool was dropped is let go when a new pool
/// comes).
static POOLS: Mutex<Vec<(Weak<rayon::ThreadPool>, Arc<Hot>)>> = Mutex::new(Vec::new());

impl Hot {
    /// The state of `pool`, made on its first call with a window of [`LINGER`] (or `PUPIL_LINGER_US`).
    fn of(pool: &Arc<rayon::ThreadPool>) -> Arc<Hot> {
        let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        let live = |p: &Weak<rayon::ThreadPool>| p.strong_count() > 0 && std::ptr::eq(p.as_ptr(), Arc::as_ptr(pool));
        if let Some((_, hot)) = pools.iter().find(|(p, _)| live(p)) {
            return hot.clone();
        }
        pools.retain(|(p, _)| p.strong_count() > 0);
        let hot = Arc::new(Hot::new(linger_window()));
        pools.push((Arc::downgrade(pool), hot.clone()));
        hot
    }

    fn new(window: Duration) -> Hot {
        Hot {
            lingering: AtomicUsize::new(0),
            posted: AtomicUsize::new(0),
            latest: Mutex::new(None),
            window,
            #[cfg(test)]
            spawned: AtomicUsize::new(0),
        }
    }

    /// Gives a pool that has not shared work yet its own window (tests: a long one makes lingering observable).
    #[cfg(test)]
    fn with_window(pool: &Arc<rayon::ThreadPool>, window: Duration) -> Arc<Hot> {
        let hot = Arc::new(Hot::new(window));
        POOLS.lock().unwrap().push((Arc::downgrade(pool), hot.clone()));
        hot
    }

    /// Offers `shared` to the helpers lingering now; returns how many there were (none may take it if they all
    /// time out meanwhile: the caller then computes the chunks they would have).
    fn post(&self, shared: &Arc<Shared>) -> usize {
        let lingering = self.lingering.load(Ordering::Acquire);
        if lingering > 0 {
            *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(shared.clone());
            self.posted.fetch_add(1, Ordering::Release);
        }
        lingering
    }

    /// Spins until no call has been posted for `window`, joining each one posted meanwhile, and running the
    /// pool's other jobs if any are waiting (so lingering never holds them up; a job run that way does not
    /// linger in its turn).
    fn linger(&self) {
        thread_local! {
            static LINGERING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        if self.window.is_zero() || LINGERING.get() {
            return;
        }
        LINGERING.set(true);
        // `seen` before counting in: a call posted after the count went up bumps `posted` past `seen`.
        let mut seen = self.posted.load(Ordering::Acquire);
        self.lingering.fetch_add(1, Ordering::AcqRel);
        let mut idle_since = Instant::now();
        loop {
            let now = self.posted.load(Ordering::Acquire);
            if now != seen {
                seen = now;
                let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(shared) = latest {
                    shared.join();
                }
                idle_since = Instant::now();
            } else if rayon::yield_now() == Some(rayon::Yield::Executed) {
                idle_since = Instant::now();
            } else if idle_since.elapsed() >= self.window {
                break;
            } else {
                for _ in 0..16 {
                    std::hint::spin_loop();
                }
            }
        }
        self.lingering.fetch_sub(1, Ordering::AcqRel);
        LINGERING.set(false);
    }
}

/// Runs `work(c)` once for every chunk `c < chunks`, on this thread and on up to `threads − 1` jobs of the
/// executor's thread pool (only this thread when `chunks < 2` or the executor is single-threaded); the chunks
/// are cut into one consecutive range per participant, this thread's first, and each starts with its own.
/// Pool jobs still lingering from an earlier call on the same pool join instead of new jobs ([`LINGER`]).
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
    let joined = AtomicUsize::new(1);
    let shared = Arc::new(Shared { next, done: AtomicUsize::new(0), chunks, joined, panicked: false.into(), work });
    let hot = Hot::of(&pool);
    for _ in hot.post(&shared).min(helpers)..helpers {
        #[cfg(test)]
        hot.spawned.fetch_add(1, Ordering::Relaxed);
        let (shared, hot) = (shared.clone(), hot.clone());
        pool.spawn(move || {
            shared.join();
            drop(shared);
            hot.linger();
        });
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
    fn a_lingering_pool_job_joins_the_next_call_without_a_new_job_then_leaves() {
        let pool = Executor::multithread(2);
        let Executor::MultiThread(rayon_pool) = &pool else { unreachable!() };
        let hot = Hot::with_window(rayon_pool, Duration::from_millis(300));
        let wait_for = |lingering: usize, what: &str| {
            let t0 = Instant::now();
            while hot.lingering.load(Ordering::Acquire) != lingering {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "{what}: still {} lingering",
                    hot.lingering.load(Ordering::Acquire)
                );
                std::thread::sleep(Duration::from_micros(100));
            }
        };
        assert!(share(&pool, 8, &|_| {}));
        assert_eq!(hot.spawned.load(Ordering::Relaxed), 1, "the first call spawns its helper");
        wait_for(1, "after its chunks the pool job lingers");
        let caller = std::thread::current().id();
        let by_helper = AtomicUsize::new(0);
        // Slow chunks (the caller alone would take 40 ms), so even a helper thread the OS runs late gets some.
        assert!(share(&pool, 20, &|_| {
            std::thread::sleep(Duration::from_millis(2));
            if std::thread::current().id() != caller {
                by_helper.fetch_add(1, Ordering::Relaxed);
            }
        }));
        assert_eq!(hot.spawned.load(Ordering::Relaxed), 1, "the second call spawned a job instead of posting");
        assert!(by_helper.load(Ordering::Relaxed) > 0, "the lingering job ran none of the second call's chunks");
        wait_for(0, "300 ms after the last call the job goes back to the pool");
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
