//! Sample preprocessing: encoded images (PNG, JPEG, WebP, BMP, GIF first frame) decoded with
//! `image`, converted to the project's channels, resized with `fast_image_resize` (bilinear),
//! scaled to `[0, 1]` and normalised per channel; or raw tensors checked against the input shape.

use std::io::Cursor;

use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer, images::Image};
use image::{DynamicImage, GrayImage, ImageFormat, ImageReader, RgbImage};

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
    #[error("tensor element {index} (flat index) is NaN or infinite")]
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
    let format = reader()?.format().ok_or_else(|| SampleError::Decode("unrecognised image format".to_owned()))?;
    // Decoders pad or stop early on missing data; a cut-off image must be an error, never a
    // prediction on made-up pixels. The container structure says whether every byte is there.
    complete(format, bytes).map_err(SampleError::Decode)?;
    // Read the header first, so an over-large image is refused before anything is allocated.
    let (width, height) = reader()?.into_dimensions().map_err(|e| SampleError::Decode(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(SampleError::TooManyPixels { width, height, pixels, limit: limits.max_pixels });
    }
    let decoded = if format == ImageFormat::Jpeg {
        strict_jpeg(bytes)?
    } else {
        reader()?.decode().map_err(|e| SampleError::Decode(e.to_string()))?
    };
    Ok(normalise(&resize(decoded, p)?, p))
}

/// Decodes a JPEG with the decoder in strict mode: corrupt entropy-coded data and data that ends
/// early are errors (`image` runs the same decoder leniently, filling missing blocks with grey).
fn strict_jpeg(bytes: &[u8]) -> Result<DynamicImage, SampleError> {
    use zune_jpeg::{
        JpegDecoder,
        zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions},
    };
    let error = |e: zune_jpeg::errors::DecodeErrors| SampleError::Decode(format!("JPEG: {e}"));
    // The pixel limit was checked on the header already; the decoder's own size caps stay off.
    let options = DecoderOptions::default().set_strict_mode(true).set_max_width(usize::MAX).set_max_height(usize::MAX);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(error)?;
    let grey = matches!(decoder.input_colorspace(), Some(ColorSpace::Luma | ColorSpace::LumaA));
    decoder.set_options(options.jpeg_set_out_colorspace(if grey { ColorSpace::Luma } else { ColorSpace::RGB }));
    let pixels = decoder.decode().map_err(error)?;
    let (width, height) = decoder.dimensions().unwrap_or_default();
    let (width, height) = (u32::try_from(width).unwrap_or(0), u32::try_from(height).unwrap_or(0));
    let decoded = if grey {
        GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8)
    } else {
        RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8)
    };
    decoded.ok_or_else(|| SampleError::Decode(format!("JPEG: decoder output does not fill {width}x{height}")))
}

/// Checks that an encoded image holds every byte its structure announces, up to its end marker:
/// the `EOI` marker after the last scan (JPEG), the `IEND` chunk (PNG), the trailer (GIF), the
/// RIFF size (WebP), the file size and pixel array (BMP). Bytes after the end are ignored.
fn complete(format: ImageFormat, bytes: &[u8]) -> Result<(), String> {
    let (name, checked) = match format {
        ImageFormat::Jpeg => ("JPEG", jpeg_complete(bytes)),
        ImageFormat::Png => ("PNG", png_complete(bytes)),
        ImageFormat::Gif => ("GIF", gif_complete(bytes)),
        ImageFormat::WebP => ("WebP", webp_complete(bytes)),
        ImageFormat::Bmp => ("BMP", bmp_complete(bytes)),
        _ => ("image", Ok(())),
    };
    checked.map_err(|problem| format!("truncated or corrupt {name}: {problem}"))
}

/// The `N` bytes at `at`, or `None` past the end.
fn bytes_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

const ENDS_EARLY: &str = "data ends before the end of the image";

/// Walks the marker segments; inside a scan, skips entropy-coded bytes (`FF 00` stuffing, `RSTn`)
/// to the next marker, until `EOI`.
fn jpeg_complete(bytes: &[u8]) -> Result<(), String> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err("no start-of-image marker".to_owned());
    }
    let mut at = 2;
    loop {
        if *bytes.get(at).ok_or(ENDS_EARLY)? != 0xFF {
            return Err(format!("byte {at}: expected a marker"));
        }
        while bytes.get(at) == Some(&0xFF) {
            at += 1; // fill bytes before a marker
        }
        let marker = *bytes.get(at).ok_or(ENDS_EARLY)?;
        at += 1;
        match marker {
            0xD9 => return Ok(()),
            // Markers without a segment: TEM and RST0..7.
            0x01 | 0xD0..=0xD7 => continue,
            0x00 | 0xD8 => return Err(format!("byte {}: unexpected marker {marker:#04X}", at - 1)),
            _ => {}
        }
        let length = usize::from(u16::from_be_bytes(bytes_at(bytes, at).ok_or(ENDS_EARLY)?));
        if length < 2 {
            return Err(format!("byte {at}: segment length {length} is below 2"));
        }
        at += length;
        if at > bytes.len() {
            return Err(ENDS_EARLY.to_owned());
        }
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker other than stuffing and RSTn.
            loop {
                let next =
                    at + bytes.get(at..).unwrap_or_default().iter().position(|&b| b == 0xFF).ok_or(ENDS_EARLY)?;
                match *bytes.get(next + 1).ok_or(ENDS_EARLY)? {
                    0x00 | 0xD0..=0xD7 => at = next + 2,
                    _ => {
                        at = next;
                        break;
                    }
                }
            }
        }
    }
}

/// Walks the chunks (length, type, data, CRC) after the signature up to `IEND`.
fn png_complete(bytes: &[u8]) -> Result<(), String> {
    let mut at = 8;
    loop {
        let length = u32::from_be_bytes(bytes_at(bytes, at).ok_or(ENDS_EARLY)?);
        let kind: [u8; 4] = bytes_at(bytes, at + 4).ok_or(ENDS_EARLY)?;
        let end = usize::try_from(length).ok().and_then(|length| (at + 12).checked_add(length)).ok_or(ENDS_EARLY)?;
        if end > bytes.len() {
            return Err(ENDS_EARLY.to_owned());
        }
        if &kind == b"IEND" {
            return Ok(());
        }
        at = end;
    }
}

/// Walks the blocks (extensions, images with their sub-blocks) after the screen descriptor up to
/// the trailer.
fn gif_complete(bytes: &[u8]) -> Result<(), String> {
    let table = |packed: u8| if packed & 0x80 != 0 { 3 << ((packed & 0x07) + 1) } else { 0 };
    let byte = |at: usize| bytes.get(at).copied().ok_or(ENDS_EARLY);
    // Sub-blocks from `at` to the zero-length terminator; returns the position after it.
    let sub_blocks = |mut at: usize| -> Result<usize, &'static str> {
        loop {
            let size = usize::from(byte(at)?);
            at += 1 + size;
            if size == 0 {
                return Ok(at);
            }
        }
    };
    let mut at = 13 + table(byte(10)?);
    loop {
        at = match byte(at)? {
            0x3B => return Ok(()),
            0x21 => sub_blocks(at + 2)?,
            0x2C => {
                let local = table(byte(at + 9)?);
                sub_blocks(at + 10 + local + 1)?
            }
            other => return Err(format!("byte {at}: unknown block {other:#04X}")),
        };
    }
}

/// The RIFF container must hold the size its header announces.
fn webp_complete(bytes: &[u8]) -> Result<(), String> {
    let size = u32::from_le_bytes(bytes_at(bytes, 4).ok_or(ENDS_EARLY)?);
    match usize::try_from(size).ok().and_then(|size| size.checked_add(8)) {
        Some(end) if end <= bytes.len() => Ok(()),
        _ => Err(ENDS_EARLY.to_owned()),
    }
}

/// The file must be as long as its header says and hold the pixel array it points to.
fn bmp_complete(bytes: &[u8]) -> Result<(), String> {
    let size = u32::from_le_bytes(bytes_at(bytes, 2).ok_or(ENDS_EARLY)?);
    let offset = u32::from_le_bytes(bytes_at(bytes, 10).ok_or(ENDS_EARLY)?);
    let needed = usize::try_from(size.max(offset)).map_err(|_| ENDS_EARLY)?;
    if needed > bytes.len() || offset as usize >= bytes.len() {
        return Err(ENDS_EARLY.to_owned());
    }
    Ok(())
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
pub(super) mod tests {
    use image::{Rgba, RgbaImage};

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

    /// A `width`×`height` RGB image with a pattern and noise, so every compressor emits a
    /// few hundred bytes of image data (truncations then land inside it).
    pub(super) fn patterned(width: u32, height: u32, seed: u64) -> DynamicImage {
        let mut rng = fastrand::Rng::with_seed(seed);
        DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 10) as u8, (y * 15) as u8, rng.u8(..)])
        }))
    }

    pub(super) fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    /// Encoder variants `image` does not write: progressive, restart intervals, greyscale JPEG,
    /// lossy WebP, an animated GIF, a palette BMP (made once with Pillow).
    pub(super) const FIXTURES: [(&str, &[u8]); 6] = [
        ("progressive.jpg", include_bytes!("../../tests/fixtures/progressive.jpg")),
        ("restart.jpg", include_bytes!("../../tests/fixtures/restart.jpg")),
        ("grey.jpg", include_bytes!("../../tests/fixtures/grey.jpg")),
        ("lossy.webp", include_bytes!("../../tests/fixtures/lossy.webp")),
        ("animated.gif", include_bytes!("../../tests/fixtures/animated.gif")),
        ("palette.bmp", include_bytes!("../../tests/fixtures/palette.bmp")),
    ];

    pub(super) const FORMATS: [ImageFormat; 5] =
        [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Bmp, ImageFormat::Gif];

    /// Every accepted format, from `image`'s encoders and the fixtures.
    fn whole_images() -> Vec<(String, Vec<u8>)> {
        let source = patterned(24, 16, 1);
        let mut all: Vec<(String, Vec<u8>)> =
            FORMATS.iter().map(|&format| (format!("{format:?}"), encode(&source, format))).collect();
        all.extend(FIXTURES.iter().map(|(name, bytes)| ((*name).to_owned(), bytes.to_vec())));
        all
    }

    #[test]
    fn whole_images_decode_in_every_variant() {
        for (name, bytes) in whole_images() {
            let values = image(&bytes, &preprocessing(3, 8), ImageLimits::default());
            assert_eq!(values.map(|v| v.len()), Ok(3 * 64), "{name}");
        }
    }

    /// Regression: a JPEG cut anywhere after its header used to be predicted, its missing
    /// blocks filled with grey by the lenient decoder.
    #[test]
    fn an_image_truncated_at_any_byte_is_an_error() {
        let p = preprocessing(3, 8);
        for (name, bytes) in whole_images() {
            for cut in 1..bytes.len() {
                let result = image(&bytes[..cut], &p, ImageLimits::default());
                assert!(
                    matches!(result, Err(SampleError::Decode(_))),
                    "{name} cut at {cut}/{}: {result:?}",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn a_truncated_image_says_so() {
        let jpeg = encode(&patterned(24, 16, 2), ImageFormat::Jpeg);
        let error = image(&jpeg[..jpeg.len() - 40], &preprocessing(3, 8), ImageLimits::default()).unwrap_err();
        assert!(error.to_string().contains("truncated or corrupt JPEG"), "{error}");
    }

    #[test]
    fn corrupt_jpeg_entropy_data_is_an_error() {
        let jpeg = encode(&patterned(48, 48, 4), ImageFormat::Jpeg);
        let scan = jpeg.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
        let mut corrupt = jpeg.clone();
        // An unexpected marker in the middle of the entropy-coded data.
        corrupt[scan + 40] = 0xFF;
        corrupt[scan + 41] = 0xC4;
        assert!(image(&corrupt, &preprocessing(3, 8), ImageLimits::default()).is_err());
    }

    #[test]
    fn bytes_after_the_end_of_an_image_are_ignored() {
        for (name, mut bytes) in whole_images() {
            bytes.extend_from_slice(b"trailing bytes");
            let result = image(&bytes, &preprocessing(1, 4), ImageLimits::default());
            assert!(result.is_ok(), "{name}: {result:?}");
        }
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

#[cfg(test)]
mod properties {
    use image::ImageReader;
    use proptest::prelude::*;

    use super::{tests::*, *};

    fn preprocessing(channels: u32, width: u32, height: u32) -> Preprocessing {
        Preprocessing {
            width,
            height,
            channels,
            mean: vec![0.5; channels as usize],
            std: vec![0.25; channels as usize],
        }
    }

    /// Every outcome must be an error or `C·H·W` finite values; and whatever was accepted was
    /// within both limits.
    fn check(bytes: &[u8], p: &Preprocessing, limits: ImageLimits) -> Result<(), TestCaseError> {
        if let Ok(values) = image(bytes, p, limits) {
            prop_assert_eq!(values.len(), (p.channels * p.width * p.height) as usize);
            prop_assert!(values.iter().all(|v| v.is_finite()));
            prop_assert!(bytes.len() <= limits.max_encoded_bytes);
            let (width, height) =
                ImageReader::new(Cursor::new(bytes)).with_guessed_format().unwrap().into_dimensions().unwrap();
            prop_assert!(u64::from(width) * u64::from(height) <= limits.max_pixels);
        }
        Ok(())
    }

    /// A whole image of each format or fixture, by index.
    fn base(index: usize) -> Vec<u8> {
        match FORMATS.get(index) {
            Some(&format) => encode(&patterned(20, 12, index as u64), format),
            None => FIXTURES[index - FORMATS.len()].1.to_vec(),
        }
    }

    const BASES: usize = FORMATS.len() + FIXTURES.len();

    /// Signatures of the accepted formats, so random bodies reach the decoders.
    const MAGIC: [&[u8]; 6] =
        [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x40\x00\x00\x00WEBPVP8 ", b"BM", b"GIF89a", b""];

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(256) })]

        #[test]
        fn arbitrary_bytes_never_panic(
            magic in 0..MAGIC.len(),
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let bytes = [MAGIC[magic], &body].concat();
            check(&bytes, &preprocessing(3, 4, 4), ImageLimits::default())?;
        }

        /// Overwritten bytes (header fields included) under tight limits: never a panic, never
        /// an image over the limits.
        #[test]
        fn mutated_images_never_panic_or_exceed_the_limits(
            index in 0..BASES,
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
            max_pixels in 1u64..1000,
        ) {
            let mut bytes = base(index);
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            let limits = ImageLimits { max_encoded_bytes: 4096, max_pixels };
            check(&bytes, &preprocessing(1, 3, 5), limits)?;
        }

        #[test]
        fn truncated_images_are_errors(index in 0..BASES, cut in any::<proptest::sample::Index>()) {
            let bytes = base(index);
            let cut = cut.index(bytes.len());
            prop_assert!(image(&bytes[..cut], &preprocessing(3, 4, 4), ImageLimits::default()).is_err());
        }

        /// Any source size, any target size and channels: exactly `C·H·W` finite values.
        #[test]
        fn valid_images_give_the_exact_shape(
            format in 0..FORMATS.len(),
            (width, height) in (1u32..40, 1u32..40),
            (target_width, target_height) in (1u32..40, 1u32..40),
            grey in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let bytes = encode(&patterned(width, height, seed), FORMATS[format]);
            let p = preprocessing(if grey { 1 } else { 3 }, target_width, target_height);
            let values = image(&bytes, &p, ImageLimits::default());
            prop_assert!(values.is_ok(), "{:?} {width}x{height}: {values:?}", FORMATS[format]);
            check(&bytes, &p, ImageLimits::default())?;
        }

        #[test]
        fn images_over_the_pixel_limit_are_refused(
            format in 0..FORMATS.len(),
            (width, height) in (1u32..24, 1u32..24),
            max_pixels in 1u64..600,
        ) {
            let bytes = encode(&patterned(width, height, 0), FORMATS[format]);
            let limits = ImageLimits { max_pixels, ..ImageLimits::default() };
            let result = image(&bytes, &preprocessing(3, 4, 4), limits);
            let pixels = u64::from(width * height);
            if pixels > max_pixels {
                prop_assert_eq!(result, Err(SampleError::TooManyPixels { width, height, pixels, limit: max_pixels }));
            } else {
                prop_assert!(result.is_ok());
            }
        }
    }
}
