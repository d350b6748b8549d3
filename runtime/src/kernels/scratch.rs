//! Scratch buffers an operator keeps from one run to the next (padded planes, staged outputs), so that a run
//! neither allocates nor re-fills them: whatever a run writes outside the image cells (the padding) stays as the
//! first run left it. Also the tensors a run hands on ([`KeptTensor`]): an operator's output, the model's input.

use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::format_err;

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

    /// The kept value when no other run holds it.
    pub(crate) fn take(&self) -> Option<T> {
        self.0.try_lock().ok().and_then(|mut kept| kept.take())
    }

    /// Keeps `value` for the next run (dropped if another run is keeping its own right now).
    pub(crate) fn keep(&self, value: T) {
        if let Ok(mut kept) = self.0.try_lock() {
            *kept = Some(value);
        }
    }
}

/// A tensor handed on by each run (an operator's output, a model's input) and reused by the next once every
/// holder of the last one has dropped it: tract drops a value after its last consumer ran, and a model's caller
/// copies the outputs out, so a warm run at a fixed shape allocates none. A tensor still held elsewhere, or of
/// another type or shape, is left alone and a new one is made.
#[derive(Debug, Default)]
pub(crate) struct KeptTensor(Kept<Arc<Tensor>>);

impl KeptTensor {
    pub(crate) fn new() -> KeptTensor {
        KeptTensor(Kept::new())
    }

    /// A tensor of `dt` and `shape` that nothing else holds: the kept one (holding the last run's values) when it
    /// qualifies, else a new uninitialised one.
    ///
    /// # Safety
    /// As [`Tensor::uninitialized_dt`]: the caller writes every value before anything reads it.
    pub(crate) unsafe fn take(&self, dt: DatumType, shape: &[usize]) -> TractResult<Arc<Tensor>> {
        if let Some(mut kept) = self.0.take()
            && kept.datum_type() == dt
            && kept.shape() == shape
            && Arc::get_mut(&mut kept).is_some()
        {
            return Ok(kept);
        }
        // SAFETY: the caller writes every value (this function's contract).
        Ok(Arc::new(unsafe { Tensor::uninitialized_dt(dt, shape)? }))
    }

    /// Hands `tensor` on as a run's value, keeping a reference for the next run.
    pub(crate) fn hand_on(&self, tensor: Arc<Tensor>) -> TValue {
        self.0.keep(tensor.clone());
        tensor.into_tvalue()
    }
}

/// The writable tensor of an exclusive `Arc` (as [`KeptTensor::take`] returns).
pub(crate) fn exclusive(tensor: &mut Arc<Tensor>) -> TractResult<&mut Tensor> {
    Arc::get_mut(tensor).ok_or_else(|| format_err!("a kept tensor is shared"))
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

    #[test]
    fn a_kept_tensor_is_reused_only_when_nothing_else_holds_it_and_it_fits() {
        let kept = KeptTensor::new();
        // SAFETY (each take): every value is written before it is read.
        let mut first = unsafe { kept.take(DatumType::F32, &[2, 3]) }.unwrap();
        exclusive(&mut first).unwrap().try_as_plain_ram_mut().unwrap().as_slice_mut::<f32>().unwrap().fill(1.0);
        let ptr = Arc::as_ptr(&first);
        let handed = kept.hand_on(first);
        let held = unsafe { kept.take(DatumType::F32, &[2, 3]) }.unwrap();
        assert_ne!(Arc::as_ptr(&held), ptr, "still held by the last run's consumer: a new tensor");
        drop(held);
        kept.hand_on(handed.into_arc_tensor());
        let again = unsafe { kept.take(DatumType::F32, &[2, 3]) }.unwrap();
        assert_eq!(Arc::as_ptr(&again), ptr, "dropped by every holder: the same tensor");
        kept.hand_on(again);
        let other_shape = unsafe { kept.take(DatumType::F32, &[3, 2]) }.unwrap();
        assert_eq!(other_shape.shape(), &[3, 2], "another shape: a new tensor");
        kept.hand_on(Arc::new(Tensor::zero::<f32>(&[2, 3]).unwrap()));
        let other_type = unsafe { kept.take(DatumType::I32, &[2, 3]) }.unwrap();
        assert_eq!(other_type.datum_type(), DatumType::I32, "another type: a new tensor");
    }
}
