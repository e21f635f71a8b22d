//! Image decoding and preprocessing: any bytes give an error or exactly `C·H·W` finite values,
//! within tight limits (so a decompression bomb is refused, never allocated). The input size
//! picks the target shape, so the seed corpus can be plain image files.

#![no_main]

use alps_core::{
    models::preprocess::{self, ImageLimits, SampleError},
    projects::Preprocessing,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let channels = if bytes.len() % 2 == 0 { 1 } else { 3 };
    let (width, height) = (1 + (bytes.len() % 13) as u32, 1 + (bytes.len() % 7) as u32);
    let p = Preprocessing {
        width,
        height,
        channels,
        mean: vec![0.5; channels as usize],
        std: vec![0.25; channels as usize],
    };
    let limits = ImageLimits { max_encoded_bytes: 1 << 20, max_pixels: 1 << 20 };
    match preprocess::image(bytes, &p, limits) {
        Ok(values) => {
            assert_eq!(values.len(), (channels * width * height) as usize);
            assert!(values.iter().all(|v| v.is_finite()));
        }
        Err(SampleError::TooManyPixels { pixels, limit, .. }) => assert!(pixels > limit),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
