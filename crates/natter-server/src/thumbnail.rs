//! Thumbnails of plaintext images: JPEG, PNG, WebP and GIF (its first frame)
//! are decoded (with limits) and scaled down to a small JPEG. These are the
//! only formats `type=image` accepts: every image is checked here, and one
//! the server cannot check is refused, not stored unchecked. Blocking and CPU-heavy: callers
//! run [`make`] on a blocking thread, a bounded number at a time, with a
//! deadline.
//!
//! A decompression bomb (a small file that declares an enormous picture) is
//! refused from its header, before any pixel is decoded.

use std::io::Cursor;
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::{ImageFormat, ImageReader, Limits};

/// JPEG quality of thumbnails: small files, good enough at thumbnail size.
const JPEG_QUALITY: u8 = 80;

/// Bytes per decoded pixel at most (RGBA with 16-bit channels is 8), plus
/// slack for the decoder's own buffers.
const DECODE_BYTES_PER_PIXEL: u64 = 8;
const DECODE_SLACK_BYTES: u64 = 16 * 1024 * 1024;

/// Why an image gets no thumbnail.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// The header declares more pixels than allowed.
    #[error("the image is {width}×{height} pixels; the most allowed is {max} pixels")]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit.
        max: u64,
    },
    /// The bytes do not decode as the image they claim to be.
    #[error("the image could not be decoded: {0}")]
    Undecodable(String),
}

/// A made thumbnail.
#[derive(Debug, Clone)]
pub struct Thumbnail {
    /// The original's width and height.
    pub dimensions: (u32, u32),
    /// The thumbnail, as JPEG.
    pub jpeg: Vec<u8>,
}

/// Whether the server decodes this format: an image upload of any other
/// format is refused, and only these are served inline.
#[must_use]
pub fn decodable(format: ImageFormat) -> bool {
    matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif
    )
}

/// The format of a known image MIME type the server decodes.
#[must_use]
pub fn format_of(mime: &str) -> Option<ImageFormat> {
    ImageFormat::from_mime_type(mime).filter(|f| decodable(*f))
}

/// Decodes the image at `path` (of `format`) and makes a thumbnail whose
/// longer side is at most `max_side`, refusing images of more than
/// `max_pixels` pixels before decoding them.
///
/// # Errors
/// [`ThumbnailError`].
pub fn make(
    path: &Path,
    format: ImageFormat,
    max_pixels: u64,
    max_side: u32,
) -> Result<Thumbnail, ThumbnailError> {
    let undecodable = |e: &dyn std::fmt::Display| ThumbnailError::Undecodable(e.to_string());
    let open = || -> Result<ImageReader<_>, ThumbnailError> {
        let mut reader = ImageReader::open(path).map_err(|e| undecodable(&e))?;
        reader.set_format(format);
        Ok(reader)
    };
    let (width, height) = open()?.into_dimensions().map_err(|e| undecodable(&e))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels || pixels == 0 {
        return Err(ThumbnailError::TooManyPixels {
            width,
            height,
            max: max_pixels,
        });
    }
    let mut reader = open()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(pixels * DECODE_BYTES_PER_PIXEL + DECODE_SLACK_BYTES);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| undecodable(&e))?;
    let small = image.thumbnail(max_side, max_side).to_rgb8();
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(Cursor::new(&mut jpeg), JPEG_QUALITY)
        .encode_image(&small)
        .map_err(|e| undecodable(&e))?;
    Ok(Thumbnail {
        dimensions: (width, height),
        jpeg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(width, height, image::Rgb([200, 10, 10]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn a_thumbnail_keeps_the_aspect_ratio_within_the_side() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        std::fs::write(&path, png(640, 320)).unwrap();
        let t = make(&path, ImageFormat::Png, 1_000_000, 100).unwrap();
        assert_eq!(t.dimensions, (640, 320));
        let thumb = image::load_from_memory(&t.jpeg).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (100, 50));
    }

    #[test]
    fn pixel_limit_holds_at_n_and_n_plus_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        std::fs::write(&path, png(100, 10)).unwrap();
        assert!(make(&path, ImageFormat::Png, 1000, 32).is_ok());
        assert!(matches!(
            make(&path, ImageFormat::Png, 999, 32),
            Err(ThumbnailError::TooManyPixels { .. })
        ));
    }

    fn gif(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_pixel(width, height, image::Rgba([0, 90, 200, 255]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Gif)
            .unwrap();
        out
    }

    #[test]
    fn gif_pixel_limit_holds_at_n_and_n_plus_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.gif");
        std::fs::write(&path, gif(100, 10)).unwrap();
        assert_eq!(
            make(&path, ImageFormat::Gif, 1000, 32).unwrap().dimensions,
            (100, 10)
        );
        assert!(matches!(
            make(&path, ImageFormat::Gif, 999, 32),
            Err(ThumbnailError::TooManyPixels { .. })
        ));
        // Only the checked formats are served as images.
        assert!(format_of("image/gif").is_some());
        assert!(format_of("image/bmp").is_none());
        assert!(format_of("image/tiff").is_none());
    }

    #[test]
    fn garbage_after_a_valid_signature_is_undecodable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let mut bytes = png(10, 10);
        bytes.truncate(40);
        std::fs::write(&path, bytes).unwrap();
        assert!(make(&path, ImageFormat::Png, 1000, 32).is_err());
    }
}
