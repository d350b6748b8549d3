//! Image preprocessing: decode PNG/JPEG, convert colour, resize, normalise and lay out as the model's spec says.

use image::imageops::FilterType;

use crate::error::{Error, Result};
use crate::meta::{ColorMode, Layout, PreprocessSpec, ResizeMode};

/// Decodes `bytes` and turns the image into `spec.len()` input values.
pub fn image_to_input(bytes: &[u8], spec: &PreprocessSpec) -> Result<Vec<f32>> {
    spec.validate()?;
    let img = image::load_from_memory(bytes).map_err(|e| Error::UndecodableImage { reason: e.to_string() })?;
    let (w, h) = (img.width(), img.height());
    if (w, h) != (spec.width, spec.height) && spec.resize == ResizeMode::Exact {
        return Err(Error::ImageSize {
            expected_width: spec.width,
            expected_height: spec.height,
            got_width: w,
            got_height: h,
        });
    }
    let img = if (w, h) != (spec.width, spec.height) {
        img.resize_exact(spec.width, spec.height, FilterType::Triangle)
    } else {
        img
    };
    let channels = spec.color.channels();
    let pixels: Vec<u8> = match spec.color {
        ColorMode::Gray => img.to_luma8().into_raw(),
        ColorMode::Rgb => img.to_rgb8().into_raw(),
    };
    Ok(pixels_to_input(&pixels, spec, channels))
}

/// Normalises interleaved (HWC) 8-bit pixels into the spec's layout.
pub fn pixels_to_input(pixels: &[u8], spec: &PreprocessSpec, channels: usize) -> Vec<f32> {
    let (w, h) = (spec.width as usize, spec.height as usize);
    let pick = |v: &Vec<f32>, c: usize| if v.len() == 1 { v[0] } else { v[c] };
    let mut out = vec![0f32; w * h * channels];
    for y in 0..h {
        for x in 0..w {
            for c in 0..channels {
                let mut p = pixels[(y * w + x) * channels + c] as f32;
                if spec.invert {
                    p = 255.0 - p;
                }
                let v = (p * spec.scale - pick(&spec.mean, c)) / pick(&spec.std, c);
                let idx = match spec.layout {
                    Layout::Nchw => c * h * w + y * w + x,
                    Layout::Nhwc => (y * w + x) * channels + c,
                };
                out[idx] = v;
            }
        }
    }
    out
}
