//! `Digest`: the sha256 of a model's bytes, hashed on another thread while the model loads and finished there
//! after it, so the load never waits for it (5 MB take ~3 ms to hash, more than the rest of a small model's load).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

/// Bytes hashed between two looks at the stop flag (and, while the load runs, per hold of the lock).
const CHUNK: usize = 64 * 1024;

/// sha256 of some bytes as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(Sha256::digest(bytes).as_slice())
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A sha256 being computed, or computed: [`Digest::hex`] waits for it the first time it is asked for.
pub(crate) struct Digest {
    hex: OnceLock<String>,
    /// The thread finishing the hash (`None` once joined, or when the hash was finished in line).
    pending: Mutex<Option<JoinHandle<String>>>,
    /// Set when the digest is dropped unread: the thread stops hashing.
    cancel: Arc<AtomicBool>,
}

/// What the hashing thread reads, and how far it got.
struct Progress {
    hasher: Sha256,
    /// Bytes of the source hashed so far.
    done: usize,
    /// The thread has finished the hash (all the lent bytes hashed before the load ended).
    finished: bool,
    source: Source,
}

enum Source {
    /// The caller's bytes, lent for the duration of [`Digest::during`], which replaces them (under the
    /// [`Progress`] lock) before it returns or unwinds.
    Lent(Lent),
    /// The bytes not hashed yet when the load ended, copied (the hash goes on from `done`).
    Owned(Arc<[u8]>),
    /// The load failed: nothing more to hash.
    Revoked,
}

/// The hashing thread's state and the flag that asks it to let the loader take the lock.
struct Shared {
    progress: Mutex<Progress>,
    handing: AtomicBool,
}

/// `bytes` of [`Source::Lent`] as a pointer and a length.
struct Lent {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the pointer is only read by the hashing thread while it holds the `Progress` lock and the source is
// still `Lent`, i.e. while `Digest::during`'s borrow of the bytes is alive (see `Revoke`).
unsafe impl Send for Lent {}

/// Takes the lent bytes back from the hashing thread when [`Digest::during`] ends, however it ends.
struct Revoke<'a>(&'a Mutex<Progress>);

impl Drop for Revoke<'_> {
    fn drop(&mut self) {
        let mut p = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(p.source, Source::Lent(_)) {
            p.source = Source::Revoked;
        }
    }
}

impl Digest {
    /// Runs `load` while another thread hashes `bytes`. The load never waits for that thread (it may not even
    /// have started: a new thread often first runs after its parent blocks): when `load` succeeds, the bytes
    /// not hashed yet are copied and handed to the thread, and only [`Digest::hex`] waits for it. Where no
    /// thread can be started the hash is computed in line, after `load`.
    pub(crate) fn during<T, E>(bytes: &[u8], load: impl FnOnce() -> Result<T, E>) -> Result<(T, Digest), E> {
        let lent = Source::Lent(Lent { ptr: bytes.as_ptr(), len: bytes.len() });
        let progress = Progress { hasher: Sha256::new(), done: 0, finished: false, source: lent };
        let shared = Arc::new(Shared { progress: Mutex::new(progress), handing: AtomicBool::new(false) });
        let cancel = Arc::new(AtomicBool::new(false));
        let (thread_shared, stop) = (shared.clone(), cancel.clone());
        let revoke = Revoke(&shared.progress);
        let spawned =
            std::thread::Builder::new().name("pupil-sha256".into()).spawn(move || hash(&thread_shared, &stop));
        let Ok(handle) = spawned else {
            drop(revoke);
            let loaded = load()?;
            let digest = Digest { hex: OnceLock::from(sha256_hex(bytes)), pending: Mutex::new(None), cancel };
            return Ok((loaded, digest));
        };
        let loaded = match load() {
            Ok(v) => v,
            Err(e) => {
                cancel.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        // The thread lets go of the lock between chunks; `handing` keeps it from taking it straight back.
        shared.handing.store(true, Ordering::Release);
        {
            let mut p = shared.progress.lock().unwrap_or_else(PoisonError::into_inner);
            if !p.finished {
                p.source = Source::Owned(Arc::from(&bytes[p.done..]));
            }
        }
        shared.handing.store(false, Ordering::Release);
        drop(revoke);
        Ok((loaded, Digest { hex: OnceLock::new(), pending: Mutex::new(Some(handle)), cancel }))
    }

    /// The sha256 as lowercase hex, waiting for the hashing thread the first time.
    pub(crate) fn hex(&self) -> &str {
        self.hex.get_or_init(|| {
            let handle = self.pending.lock().unwrap_or_else(PoisonError::into_inner).take();
            // Set exactly once (`get_or_init`), and the handle is only taken here: it is always there.
            handle.map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).unwrap_or_default()
        })
    }
}

impl Drop for Digest {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// The hashing thread: the lent bytes a chunk at a time under the lock, then the copied rest; an empty string
/// when the load failed or the digest was dropped unread.
fn hash(shared: &Shared, cancel: &AtomicBool) -> String {
    loop {
        while shared.handing.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        let mut p = shared.progress.lock().unwrap_or_else(PoisonError::into_inner);
        if cancel.load(Ordering::Relaxed) {
            return String::new();
        }
        let rest = match &p.source {
            Source::Lent(lent) => {
                let (at, len) = (p.done, lent.len);
                let n = CHUNK.min(len - at);
                // SAFETY: `Source::Lent` under the lock: `during` still borrows the `len` bytes at `ptr`.
                let chunk = unsafe { std::slice::from_raw_parts(lent.ptr.add(at), n) };
                p.hasher.update(chunk);
                p.done += n;
                if p.done == len {
                    p.finished = true;
                    return hex(std::mem::take(&mut p.hasher).finalize().as_slice());
                }
                continue;
            }
            Source::Owned(rest) => rest.clone(),
            Source::Revoked => return String::new(),
        };
        let mut hasher = std::mem::take(&mut p.hasher);
        drop(p);
        for chunk in rest.chunks(CHUNK) {
            if cancel.load(Ordering::Relaxed) {
                return String::new();
            }
            hasher.update(chunk);
        }
        return hex(hasher.finalize().as_slice());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    #[test]
    fn the_digest_is_the_sha256_however_far_the_load_let_the_thread_go() {
        for len in [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 17, 9 << 20] {
            let data = bytes(len);
            let expected = sha256_hex(&data);
            // A load that returns at once (the hash finishes after it, on a copy of the rest) and one that lasts
            // (the hash is done by then).
            for wait in [std::time::Duration::ZERO, std::time::Duration::from_millis(30)] {
                let (value, digest) = Digest::during(&data, || {
                    std::thread::sleep(wait);
                    Ok::<_, ()>(7)
                })
                .unwrap();
                assert_eq!(value, 7);
                assert_eq!(digest.hex(), expected, "{len} bytes, load of {wait:?}");
                assert_eq!(digest.hex(), expected, "asked twice");
            }
        }
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn a_failed_load_returns_its_error() {
        let data = bytes(5 << 20);
        let r: Result<((), Digest), &str> = Digest::during(&data, || Err("bad model"));
        assert_eq!(r.err(), Some("bad model"));
    }
}
