//! Fuzzes `Model::from_bytes`: any byte string must load or fail with a typed error, never panic or abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pupil_runtime::{Model, ModelOptions};

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = Model::from_bytes(data, ModelOptions::default()) {
        let _ = model.run(&vec![0.5; model.example_len()]);
    }
});
