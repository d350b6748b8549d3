//! Heap allocations per inference, counted by a global allocator: once warm, running an int8 or f32 MLP
//! allocates nothing but the returned output (phone apps call `predict()` in a frame loop, where every allocation
//! is jitter and allocator time is a tenth of a small model's run).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pupil_runtime::kernels::zoo;
use pupil_runtime::quantize::{QuantizeOptions, quantize};
use pupil_runtime::{Model, ModelOptions};

/// The system allocator, counting the allocations of the thread that switched counting on.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn bump() {
    if COUNTING.with(Cell::get) {
        COUNT.with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every call is forwarded to `System`; the counter only reads and writes const thread-locals.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations per call of `f`, over `calls` calls on this thread.
fn allocations_per_call(calls: usize, mut f: impl FnMut()) -> f64 {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    for _ in 0..calls {
        f();
    }
    COUNTING.with(|c| c.set(false));
    COUNT.with(Cell::get) as f64 / calls as f64
}

fn input(len: usize) -> Vec<f32> {
    let mut rng = zoo::Rng::new(5);
    (0..len).map(|_| rng.unit()).collect()
}

#[test]
fn a_warm_int8_mlp_run_allocates_only_its_output() {
    let f32_bytes = zoo::mlp(&[784, 256, 128, 10], 3).to_bytes();
    let calibration = {
        let mut rng = zoo::Rng::new(9);
        (0..32 * 784).map(|_| rng.unit()).collect::<Vec<f32>>()
    };
    let (int8, _) = quantize(&f32_bytes, &QuantizeOptions::default(), Some(&calibration)).unwrap();
    let model = Model::from_bytes(&int8, ModelOptions::default()).unwrap();
    let (x, y) = (input(784), input(784).iter().map(|v| 1.0 - v).collect::<Vec<f32>>());
    let (expected_x, expected_y) = (model.run(&x).unwrap(), model.run(&y).unwrap());
    assert_ne!(expected_x, expected_y);
    let mut last = (vec![], vec![]);
    // Two inputs in turn: each run overwrites the kept tensors the last one wrote.
    let per_run = allocations_per_call(50, || last = (model.run(&x).unwrap(), model.run(&y).unwrap())) / 2.0;
    assert_eq!(last, (expected_x, expected_y), "the kept tensors change no output");
    assert!(per_run <= 1.0, "a warm int8 run allocated {per_run} times, expected only its output vector");
}

#[test]
fn a_warm_f32_mlp_run_allocates_only_its_output() {
    let model = Model::from_bytes(&zoo::mlp(&[784, 256, 128, 10], 3).to_bytes(), ModelOptions::default()).unwrap();
    let (x, y) = (input(784), input(784).iter().map(|v| 1.0 - v).collect::<Vec<f32>>());
    let (expected_x, expected_y) = (model.run(&x).unwrap(), model.run(&y).unwrap());
    let mut last = (vec![], vec![]);
    // Two inputs in turn: each run overwrites the kept tensors the last one wrote.
    let per_run = allocations_per_call(50, || last = (model.run(&x).unwrap(), model.run(&y).unwrap())) / 2.0;
    assert_eq!(last, (expected_x, expected_y), "the kept tensors change no output");
    assert!(per_run <= 1.0, "a warm f32 run allocated {per_run} times, expected only its output vector");
}
