//! `Digest`: the sha256 of a model's bytes, hashed on another thread while the model loads and finished there
//! after it, so the load never waits for it (5 MB take ~3 ms to hash, more than the rest of a small model's load).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

/// Bytes hashed between two looks at the stop flag.
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

impl Digest {
    /// Runs `load` while another thread hashes `bytes`. When `load` succeeds first, the bytes not hashed yet
    /// are copied and the thread goes on with them, detached: only [`Digest::hex`] waits for it. Where no
    /// thread can be started the hash is computed in line, after `load`.
    pub(crate) fn during<T, E>(bytes: &[u8], load: impl FnOnce() -> Result<T, E>) -> Result<(T, Digest), E> {
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let hasher = std::thread::Builder::new().name("pupil-sha256".into()).spawn_scoped(scope, || {
                let mut hasher = Sha256::new();
                let mut done = 0;
                for chunk in bytes.chunks(CHUNK) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    hasher.update(chunk);
                    done += chunk.len();
                }
                (hasher, done)
            });
            let loaded = load();
            stop.store(true, Ordering::Relaxed);
            let (hasher, done) = match hasher {
                Ok(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => (Sha256::new(), 0),
            };
            let loaded = loaded?;
            Ok((loaded, Digest::finish(hasher, &bytes[done..])))
        })
    }

    /// The hash of what `hasher` has seen followed by `rest`, finished on a detached thread (in line where
    /// none can be started).
    fn finish(hasher: Sha256, rest: &[u8]) -> Digest {
        let cancel = Arc::new(AtomicBool::new(false));
        let ready = |hasher: Sha256, rest: &[u8]| {
            let mut hasher = hasher;
            hasher.update(rest);
            Digest {
                hex: OnceLock::from(hex(hasher.finalize().as_slice())),
                pending: Mutex::new(None),
                cancel: cancel.clone(),
            }
        };
        if rest.is_empty() {
            return ready(hasher, rest);
        }
        let rest: Arc<[u8]> = Arc::from(rest);
        let (mut state, bytes, stop) = (hasher.clone(), rest.clone(), cancel.clone());
        let spawned = std::thread::Builder::new().name("pupil-sha256".into()).spawn(move || {
            for chunk in bytes.chunks(CHUNK) {
                if stop.load(Ordering::Relaxed) {
                    return String::new();
                }
                state.update(chunk);
            }
            hex(state.finalize().as_slice())
        });
        match spawned {
            Ok(handle) => Digest { hex: OnceLock::new(), pending: Mutex::new(Some(handle)), cancel },
            Err(_) => ready(hasher, &rest),
        }
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
