//! Image thumbnails drawn with half blocks: each terminal cell shows two
//! pixels, the upper one as the foreground of `▀` and the lower one as its
//! background, in 24-bit colour. Only on terminals that say they have it
//! (`COLORTERM` is `truecolor` or `24bit`); elsewhere an image stays a name
//! and a size.
//!
//! The bytes come from another person: they are decoded with limits (see
//! the constants), and an image that fails any of them shows no thumbnail.

use image::{ImageReader, Limits};

/// The largest image (bytes) fetched and decrypted for a thumbnail.
pub const MAX_SOURCE_BYTES: u64 = 8 << 20;
/// The largest width or height (pixels) decoded.
pub const MAX_PIXELS_SIDE: u32 = 8192;
/// The most memory the decoder may take.
pub const MAX_DECODE_BYTES: u64 = 256 << 20;
/// A thumbnail's width at most, in cells.
pub const COLUMNS: u32 = 32;
/// A thumbnail's height at most, in cells (two pixels each).
pub const ROWS: u32 = 12;

/// A picture in cells: each one an upper and a lower pixel (RGB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumb {
    /// Rows of cells, top first.
    pub cells: Vec<Vec<([u8; 3], [u8; 3])>>,
}

/// Whether this terminal shows 24-bit colour (`COLORTERM`).
#[must_use]
pub fn truecolor(colorterm: Option<&str>) -> bool {
    matches!(colorterm, Some("truecolor" | "24bit"))
}

/// Whether a file of this type and size gets a thumbnail.
#[must_use]
pub fn wanted(mime: &str, size: u64) -> bool {
    mime.starts_with("image/") && size <= MAX_SOURCE_BYTES
}

/// Decodes `bytes` (JPEG, PNG, WebP, GIF) and scales it into at most
/// [`COLUMNS`] × [`ROWS`] cells, keeping its proportions.
///
/// # Errors
/// Not an image this build decodes, or over a limit.
pub fn make(bytes: &[u8]) -> Result<Thumb, String> {
    if bytes.len() as u64 > MAX_SOURCE_BYTES {
        return Err(format!("over {MAX_SOURCE_BYTES} bytes"));
    }
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_PIXELS_SIDE);
    limits.max_image_height = Some(MAX_PIXELS_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| e.to_string())?;
    // `thumbnail` keeps the proportions within the box.
    let small = image.thumbnail(COLUMNS, ROWS * 2).to_rgb8();
    let (w, h) = small.dimensions();
    let pixel = |x: u32, y: u32| -> [u8; 3] {
        if y < h {
            small.get_pixel(x, y).0
        } else {
            [0, 0, 0]
        }
    };
    let cells = (0..h.div_ceil(2))
        .map(|row| {
            (0..w)
                .map(|x| (pixel(x, row * 2), pixel(x, row * 2 + 1)))
                .collect()
        })
        .collect();
    Ok(Thumb { cells })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |_, y| {
            if y < h / 2 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn an_image_becomes_half_block_cells_within_the_box() {
        let t = make(&png(200, 100)).unwrap();
        assert_eq!(t.cells[0].len() as u32, COLUMNS);
        assert_eq!(t.cells.len() as u32, 8);
        assert_eq!(t.cells[0][0].0, [255, 0, 0]);
        assert_eq!(t.cells.last().unwrap()[0].1, [0, 0, 255]);
        // Tall images fit the rows.
        let t = make(&png(10, 400)).unwrap();
        assert!(t.cells.len() as u32 <= ROWS);
    }

    #[test]
    fn what_is_not_a_small_enough_image_gets_none() {
        assert!(make(b"not an image").is_err());
        assert!(!wanted("image/png", MAX_SOURCE_BYTES + 1));
        assert!(wanted("image/png", MAX_SOURCE_BYTES));
        assert!(!wanted("text/plain", 10));
        assert!(truecolor(Some("truecolor")) && truecolor(Some("24bit")));
        assert!(!truecolor(Some("256")) && !truecolor(None));
        // The side limit, at N and N+1.
        assert!(make(&png(MAX_PIXELS_SIDE, 2)).is_ok());
        assert!(make(&png(MAX_PIXELS_SIDE + 1, 2)).is_err());
    }
}
