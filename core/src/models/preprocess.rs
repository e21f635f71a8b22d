//! Sample preprocessing: encoded images (PNG, JPEG, WebP, BMP, GIF first frame) decoded with
//! `image`, converted to the project's channels, resized with `fast_image_resize` (bilinear),
//! scaled to `[0, 1]` and normalised per channel; or raw tensors checked against the input shape.

use std::io::Cursor;

use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer, images::Image};
use image::{DynamicImage, ImageReader};

use crate::projects::Preprocessing;

/// Limits on untrusted images (decompression bombs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest encoded image, bytes.
    pub max_encoded_bytes: usize,
    /// Largest decoded image, pixels (width × height).
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self { max_encoded_bytes: 32 * 1024 * 1024, max_pixels: 50_000_000 }
    }
}

/// Why one sample cannot become a model input. Each message names the limit or the expected
/// shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SampleError {
    /// No image bytes and no tensor.
    #[error("empty sample: set image bytes or a tensor")]
    Empty,
    /// Encoded size over the limit.
    #[error("image is {bytes} bytes, over the limit of {limit} bytes (--max-image-bytes)")]
    TooManyBytes {
        /// Encoded size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Decoded size over the limit.
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels (--max-image-pixels)")]
    TooManyPixels {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// width × height.
        pixels: u64,
        /// The limit.
        limit: u64,
    },
    /// Not a decodable image in a supported format.
    #[error("cannot decode image: {0} (supported: PNG, JPEG, WebP, BMP, GIF)")]
    Decode(String),
    /// A raw tensor of the wrong shape.
    #[error("tensor shape {got:?} does not match the model input {expected:?}")]
    TensorShape {
        /// Shape given.
        got: Vec<u64>,
        /// Shape expected, `[C, H, W]`.
        expected: Vec<u64>,
    },
    /// A raw tensor whose values do not fill its shape.
    #[error("tensor has {values} values for shape {shape:?}")]
    TensorSize {
        /// Values given.
        values: usize,
        /// Shape given.
        shape: Vec<u64>,
    },
    /// A raw tensor with NaN or infinity.
    #[error("tensor value {index} is not finite")]
    NonFinite {
        /// Flat index of the first bad value.
        index: usize,
    },
}

/// The model input shape `[C, H, W]` of a project.
pub fn input_shape(p: &Preprocessing) -> [u64; 3] {
    [u64::from(p.channels), u64::from(p.height), u64::from(p.width)]
}

/// Decodes, converts, resizes and normalises an encoded image into `[C, H, W]` f32 values.
///
/// # Errors
/// [`SampleError`] for an empty, oversized, undecodable or over-large image.
pub fn image(bytes: &[u8], p: &Preprocessing, limits: ImageLimits) -> Result<Vec<f32>, SampleError> {
    if bytes.is_empty() {
        return Err(SampleError::Empty);
    }
    if bytes.len() > limits.max_encoded_bytes {
        return Err(SampleError::TooManyBytes { bytes: bytes.len(), limit: limits.max_encoded_bytes });
    }
    let reader =
        || ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| SampleError::Decode(e.to_string()));
    // Read the header first, so an over-large image is refused before anything is allocated.
    let (width, height) = reader()?.into_dimensions().map_err(|e| SampleError::Decode(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(SampleError::TooManyPixels { width, height, pixels, limit: limits.max_pixels });
    }
    let decoded = reader()?.decode().map_err(|e| SampleError::Decode(e.to_string()))?;
    Ok(normalise(&resize(decoded, p)?, p))
}

/// Converts to the project's channels and resizes to its input size; returns interleaved u8.
fn resize(decoded: DynamicImage, p: &Preprocessing) -> Result<Vec<u8>, SampleError> {
    let (width, height) = (decoded.width(), decoded.height());
    let (buffer, pixel_type) = if p.channels == 1 {
        (decoded.into_luma8().into_raw(), PixelType::U8)
    } else {
        (decoded.into_rgb8().into_raw(), PixelType::U8x3)
    };
    if (width, height) == (p.width, p.height) {
        return Ok(buffer);
    }
    let source =
        Image::from_vec_u8(width, height, buffer, pixel_type).map_err(|e| SampleError::Decode(e.to_string()))?;
    let mut target = Image::new(p.width, p.height, pixel_type);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new().resize(&source, &mut target, &options).map_err(|e| SampleError::Decode(e.to_string()))?;
    Ok(target.into_vec())
}

/// Interleaved `[H, W, C]` u8 to planar `[C, H, W]` f32, `(x / 255 - mean[c]) / std[c]`.
fn normalise(interleaved: &[u8], p: &Preprocessing) -> Vec<f32> {
    let channels = p.channels as usize;
    let plane = interleaved.len() / channels;
    let mut planar = vec![0.0f32; interleaved.len()];
    for (i, pixel) in interleaved.chunks_exact(channels).enumerate() {
        for (c, &value) in pixel.iter().enumerate() {
            planar[c * plane + i] = (f32::from(value) / 255.0 - p.mean[c]) / p.std[c];
        }
    }
    planar
}

/// Checks a raw tensor against the project's input shape `[C, H, W]` (a flat `[C·H·W]` is
/// accepted too, for MLP projects) and returns its values unchanged.
///
/// # Errors
/// [`SampleError`] for a wrong shape, a size mismatch or a non-finite value.
pub fn tensor(shape: &[u64], values: Vec<f32>, p: &Preprocessing) -> Result<Vec<f32>, SampleError> {
    let expected = input_shape(p);
    let flat = [expected.iter().product::<u64>()];
    if shape != expected && shape != flat {
        return Err(SampleError::TensorShape { got: shape.to_vec(), expected: expected.to_vec() });
    }
    if values.len() as u64 != flat[0] {
        return Err(SampleError::TensorSize { values: values.len(), shape: shape.to_vec() });
    }
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(SampleError::NonFinite { index }),
        None => Ok(values),
    }
}

#[cfg(test)]
mod tests {
    use image::{ImageFormat, Rgba, RgbaImage};

    use super::*;

    fn preprocessing(channels: u32, size: u32) -> Preprocessing {
        Preprocessing {
            width: size,
            height: size,
            channels,
            mean: vec![0.0; channels as usize],
            std: vec![1.0; channels as usize],
        }
    }

    /// A 4×4 image: left half red, right half blue, fully opaque.
    fn encoded(format: ImageFormat) -> Vec<u8> {
        let image =
            RgbaImage::from_fn(4, 4, |x, _| if x < 2 { Rgba([255, 0, 0, 255]) } else { Rgba([0, 0, 255, 255]) });
        let mut bytes = Cursor::new(Vec::new());
        let dynamic = DynamicImage::ImageRgba8(image);
        let dynamic = if format == ImageFormat::Jpeg || format == ImageFormat::Bmp {
            DynamicImage::ImageRgb8(dynamic.to_rgb8())
        } else {
            dynamic
        };
        dynamic.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn every_supported_format_decodes_to_planar_rgb() {
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Bmp, ImageFormat::Gif] {
            let values = image(&encoded(format), &preprocessing(3, 4), ImageLimits::default()).unwrap();
            assert_eq!(values.len(), 3 * 16, "{format:?}");
            // Pixel (0, 0) is red: R plane high, B plane low (JPEG is lossy, hence the margins).
            assert!(values[0] > 0.8 && values[2 * 16] < 0.2, "{format:?}: {:?}", &values[..4]);
            // Pixel (3, 0) is blue.
            assert!(values[3] < 0.2 && values[2 * 16 + 3] > 0.8, "{format:?}");
        }
    }

    #[test]
    fn grayscale_projects_get_one_channel_and_sizes_are_resized() {
        let values = image(&encoded(ImageFormat::Png), &preprocessing(1, 2), ImageLimits::default()).unwrap();
        assert_eq!(values.len(), 4);
        let upscaled = image(&encoded(ImageFormat::Png), &preprocessing(3, 8), ImageLimits::default()).unwrap();
        assert_eq!(upscaled.len(), 3 * 64);
    }

    #[test]
    fn mean_and_std_are_applied_per_channel() {
        let mut p = preprocessing(3, 4);
        p.mean = vec![0.5, 0.0, 0.0];
        p.std = vec![0.5, 1.0, 1.0];
        let values = image(&encoded(ImageFormat::Png), &p, ImageLimits::default()).unwrap();
        assert!((values[0] - 1.0).abs() < 1e-6, "(1 - 0.5) / 0.5");
        assert!((values[3] + 1.0).abs() < 1e-6, "(0 - 0.5) / 0.5");
    }

    #[test]
    fn bad_images_get_errors_that_name_the_limit() {
        let p = preprocessing(3, 4);
        assert_eq!(image(&[], &p, ImageLimits::default()), Err(SampleError::Empty));
        assert!(matches!(image(b"not an image at all", &p, ImageLimits::default()), Err(SampleError::Decode(_))));
        let png = encoded(ImageFormat::Png);
        let truncated = &png[..png.len() / 2];
        assert!(matches!(image(truncated, &p, ImageLimits::default()), Err(SampleError::Decode(_))));
        let small_bytes = ImageLimits { max_encoded_bytes: 10, ..ImageLimits::default() };
        let error = image(&png, &p, small_bytes).unwrap_err();
        assert!(error.to_string().contains("--max-image-bytes"), "{error}");
        let few_pixels = ImageLimits { max_pixels: 15, ..ImageLimits::default() };
        let error = image(&png, &p, few_pixels).unwrap_err();
        assert!(matches!(error, SampleError::TooManyPixels { pixels: 16, limit: 15, .. }), "{error}");
    }

    #[test]
    fn tensors_must_match_the_input_shape() {
        let p = preprocessing(1, 2);
        assert_eq!(tensor(&[1, 2, 2], vec![0.0; 4], &p).unwrap().len(), 4);
        assert_eq!(tensor(&[4], vec![0.0; 4], &p).unwrap().len(), 4);
        assert!(matches!(tensor(&[2, 2], vec![0.0; 4], &p), Err(SampleError::TensorShape { .. })));
        assert!(matches!(tensor(&[1, 2, 2], vec![0.0; 3], &p), Err(SampleError::TensorSize { .. })));
        assert_eq!(tensor(&[4], vec![0.0, f32::NAN, 0.0, 0.0], &p), Err(SampleError::NonFinite { index: 1 }));
    }
}
