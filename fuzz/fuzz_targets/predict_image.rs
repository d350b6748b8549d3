//! Fuzzes image preprocessing: any bytes given as an image decode or fail with a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pupil_runtime::{Layout, PreprocessSpec, preprocess::image_to_input};

fuzz_target!(|data: &[u8]| {
    let spec = PreprocessSpec::mnist(Layout::Nchw);
    if let Ok(v) = image_to_input(data, &spec) {
        assert_eq!(v.len(), 784);
    }
});
