//! Scratch buffers an operator keeps from one run to the next (padded planes, staged outputs), so that a run
//! neither allocates nor re-fills them: whatever a run writes outside the image cells (the padding) stays as the
//! first run left it.

use std::sync::Mutex;

/// A value kept between runs; a run that finds it taken by a concurrent one (two threads running the same plan)
/// makes its own.
#[derive(Debug, Default)]
pub(crate) struct Kept<T>(Mutex<Option<T>>);

impl<T> Kept<T> {
    pub(crate) fn new() -> Kept<T> {
        Kept(Mutex::new(None))
    }

    /// The kept value when no other run holds it, else `make()`.
    pub(crate) fn take_or(&self, make: impl FnOnce() -> T) -> T {
        self.0.try_lock().ok().and_then(|mut kept| kept.take()).unwrap_or_else(make)
    }

    /// Keeps `value` for the next run (dropped if another run is keeping its own right now).
    pub(crate) fn keep(&self, value: T) {
        if let Ok(mut kept) = self.0.try_lock() {
            *kept = Some(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_value_comes_back_once_and_a_concurrent_run_makes_its_own() {
        let kept = Kept::new();
        assert_eq!(kept.take_or(|| vec![1]), vec![1], "nothing kept yet: made");
        kept.keep(vec![2]);
        assert_eq!(kept.take_or(|| vec![3]), vec![2], "the kept value");
        assert_eq!(kept.take_or(|| vec![4]), vec![4], "taken: made again");
        let guard = kept.0.lock().unwrap();
        assert_eq!(kept.take_or(|| vec![5]), vec![5], "held by another run: made");
        kept.keep(vec![6]);
        drop(guard);
        assert_eq!(kept.take_or(|| vec![7]), vec![7], "a value kept while held is dropped");
    }
}
