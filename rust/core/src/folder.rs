//! Decoding the image files of a folder dataset into one uint8 array, in worker threads.
//!
//! Each file's format is read from its header, not its extension (a PNG named `.JPEG` decodes as a PNG).
//! Every colour type (grayscale, palette, RGBA, CMYK JPEG, 16-bit) becomes 8-bit RGB: alpha is dropped,
//! 16-bit values are scaled to 8 bits. The EXIF orientation of a JPEG is applied. The shorter side is then
//! resized to `size` with a bilinear (triangle) convolution whose support widens with the downscaling factor,
//! as Pillow's BILINEAR does (`fast_image_resize`, SIMD), and the centre `size`×`size` square is cropped (the
//! larger half of an odd margin on the right and bottom).
//!
//! Only regular files are read. A JPEG whose data ends before its end-of-image marker is refused (decoders
//! would fill the missing part with grey), and so is an image whose decoded or resized size would exceed
//! [`MAX_PIXELS`], from its header, before any pixel is decoded.

use std::io::{BufReader, Cursor};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use fast_image_resize::{images::Image as FirImage, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use crate::error::DataError;
use crate::files::open_regular;

/// Largest image, in pixels (width × height), both as decoded and as resized (the shorter side to the image
/// size, the longer side in proportion), so that a tiny file claiming a huge size or a long thin strip cannot
/// exhaust memory: 100 megapixels (a 10,000 × 10,000 photograph; a 1 × 20,000,000 strip resized to 32 pixels
/// would be 640,000,000 × 32).
pub const MAX_PIXELS: u64 = 100_000_000;

fn format_error(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Format { path: path.to_path_buf(), message: message.into() }
}

/// The size `(width, height)` of a `w`×`h` image whose shorter side is resized to `size`: the longer side keeps
/// the aspect ratio, rounded, and is never shorter than `size`.
pub fn resized_dims(w: u32, h: u32, size: u32) -> (u64, u64) {
    let short = f64::from(w.min(h));
    let side = |v: u32| ((f64::from(v) * f64::from(size) / short).round() as u64).max(u64::from(size));
    (side(w), side(h))
}

/// `Ok` when a `w`×`h` image can be decoded and resized to `size` within [`MAX_PIXELS`]; the reason otherwise.
pub fn check_dims(w: u32, h: u32, size: u32) -> Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("an image of {w}×{h} pixels has nothing to resize"));
    }
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(format!("{w}×{h} pixels is above the limit of {MAX_PIXELS} (MAX_PIXELS)"));
    }
    let (nw, nh) = resized_dims(w, h, size);
    if nw.saturating_mul(nh) > MAX_PIXELS {
        return Err(format!(
            "{w}×{h} pixels: its shorter side resized to {size} makes it {nw}×{nh}, above the limit of {MAX_PIXELS} \
             pixels (MAX_PIXELS); crop it closer to a square"
        ));
    }
    Ok(())
}

/// Where a JPEG stream stops short: `None` when its markers lead from the start of image to an end-of-image
/// marker (EOI), else the reason. Segments are skipped by their lengths (an EXIF thumbnail's own EOI is inside
/// one); entropy-coded data is scanned for the next marker, past stuffed bytes (0xFF00) and restart markers.
pub fn jpeg_truncation(b: &[u8]) -> Option<String> {
    let cut = |at: usize, what: &str| Some(format!("truncated: the JPEG data ends at byte {at} {what}"));
    let mut i = 2; // past the start-of-image marker, which identified the format
    loop {
        // The next marker: 0xFF (any number of fill bytes), then a byte that is not 0x00 (stuffing) nor RSTn.
        let Some(p) = b[i.min(b.len())..].iter().position(|&x| x == 0xFF) else {
            return cut(b.len(), "before its end-of-image marker (EOI)");
        };
        i += p;
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&m) = b.get(i) else { return cut(b.len(), "before its end-of-image marker (EOI)") };
        i += 1;
        match m {
            0xD9 => return None,
            0x00 | 0x01 | 0xD0..=0xD8 => {}
            _ => {
                let Some(len) = b.get(i..i + 2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else {
                    return cut(b.len(), "inside a segment's header");
                };
                if i + len > b.len() {
                    return cut(b.len(), &format!("inside a segment of {len} bytes starting at byte {}", i - 2));
                }
                i += len;
            }
        }
    }
}

/// The image at `path` as RGB8, EXIF orientation applied, before resizing to `size` (whose result must stay
/// within [`MAX_PIXELS`], like the image itself).
pub fn decode_rgb(path: &Path, size: u32) -> Result<image::RgbImage, DataError> {
    let (file, _) = open_regular(path, "removed or renamed since it was listed?")?;
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let reader = ImageReader::new(BufReader::new(file)).with_guessed_format().map_err(io)?;
    if reader.format() == Some(ImageFormat::Jpeg) {
        // The JPEG decoder reads the whole file into memory anyway: read it here, to check that it is whole.
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut reader.into_inner(), &mut bytes).map_err(io)?;
        if let Some(why) = jpeg_truncation(&bytes) {
            return Err(format_error(path, why));
        }
        return decode_from(path, ImageReader::with_format(Cursor::new(bytes), ImageFormat::Jpeg), size);
    }
    if reader.format().is_none() {
        return Err(format_error(path, "not an image (no known image format in its first bytes)"));
    }
    decode_from(path, reader, size)
}

fn decode_from<R: std::io::BufRead + std::io::Seek>(
    path: &Path,
    reader: ImageReader<R>,
    size: u32,
) -> Result<image::RgbImage, DataError> {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8);
    let mut decoder = reader.into_decoder().map_err(|e| format_error(path, format!("cannot decode it: {e}")))?;
    decoder.set_limits(limits).map_err(|e| format_error(path, format!("cannot decode it: {e}")))?;
    let (w, h) = decoder.dimensions();
    check_dims(w, h, size).map_err(|why| format_error(path, why))?;
    // A broken EXIF block is no reason to refuse the pixels: it reads as "no rotation".
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| format_error(path, format!("cannot decode it: {e}")))?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// `img` with its shorter side resized to `size` (bilinear convolution) and its centre `size`×`size` square
/// cropped, as planes R, G, B (`3·size²` bytes).
pub fn resize_crop(img: image::RgbImage, size: u32, resizer: &mut Resizer) -> Vec<u8> {
    let (w, h) = img.dimensions();
    let (nw, nh) = resized_dims(w, h, size);
    let (nw, nh) =
        (u32::try_from(nw).expect("checked by check_dims"), u32::try_from(nh).expect("checked by check_dims"));
    let resized = if (nw, nh) == (w, h) {
        img.into_raw()
    } else {
        let src = FirImage::from_vec_u8(w, h, img.into_raw(), PixelType::U8x3).expect("an RGB8 buffer of w·h pixels");
        let mut dst = FirImage::new(nw, nh, PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        resizer.resize(&src, &mut dst, &options).expect("same pixel types, non-empty images");
        dst.into_vec()
    };
    let (left, top) = (((nw - size) / 2) as usize, ((nh - size) / 2) as usize);
    let (s, row) = (size as usize, nw as usize * 3);
    let mut out = vec![0u8; 3 * s * s];
    for y in 0..s {
        let line = &resized[(top + y) * row + left * 3..][..s * 3];
        for (x, p) in line.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * s * s + y * s + x] = p[c];
            }
        }
    }
    out
}

/// Decode `paths` into `out` (`paths.len()` images of `3·size²` bytes, planes R, G, B) with `workers`
/// threads (0 or 1: the calling thread). Returns the files that could not be decoded, as (index, error),
/// sorted by index; their images in `out` are left as zeros. `progress` counts the files done.
pub fn decode_into<P: AsRef<Path> + Sync>(
    paths: &[P],
    size: u32,
    workers: usize,
    out: &mut [u8],
    progress: &AtomicUsize,
) -> Vec<(usize, DataError)> {
    let bytes = 3 * (size as usize) * (size as usize);
    assert_eq!(out.len(), paths.len() * bytes, "out holds one image per path");
    let jobs = Mutex::new(out.chunks_mut(bytes).enumerate());
    let failed = Mutex::new(Vec::new());
    let work = || {
        let mut resizer = Resizer::new();
        loop {
            let Some((i, dst)) = jobs.lock().unwrap_or_else(|e| e.into_inner()).next() else { break };
            let path = paths[i].as_ref();
            // A decoder bug on a crafted file must not take the process down: it becomes that file's error.
            let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                decode_rgb(path, size).map(|img| resize_crop(img, size, &mut resizer))
            }))
            .unwrap_or_else(|_| Err(format_error(path, "the image decoder crashed on it (a damaged or unusual file)")));
            match made {
                Ok(pixels) => dst.copy_from_slice(&pixels),
                Err(e) => {
                    dst.fill(0);
                    failed.lock().unwrap_or_else(|e| e.into_inner()).push((i, e));
                }
            }
            progress.fetch_add(1, Ordering::Relaxed);
        }
    };
    let workers = workers.clamp(1, paths.len().max(1));
    if workers == 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(work);
            }
        });
    }
    let mut failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    failed.sort_by_key(|(i, _)| *i);
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
        img.save_with_format(path, image::ImageFormat::Png).unwrap();
    }

    #[test]
    fn a_same_size_image_is_kept_exactly_as_planes() {
        let dir = std::env::temp_dir().join(format!("mdarts-folder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.jpeg"); // a PNG under a JPEG name: the header decides
        write_png(&p, 4, 4, |x, y| [(x * 10) as u8, (y * 10) as u8, 7]);
        let mut out = vec![1u8; 48];
        let done = AtomicUsize::new(0);
        let failed = decode_into(std::slice::from_ref(&p), 4, 1, &mut out, &done);
        assert!(failed.is_empty());
        assert_eq!(&out[..4], &[0, 10, 20, 30]);
        assert_eq!(&out[16..20], &[0, 0, 0, 0]);
        assert_eq!(out[32..].to_vec(), vec![7; 16]);
        assert_eq!(done.load(Ordering::Relaxed), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_jpeg_is_whole_only_up_to_its_end_of_image_marker() {
        let img = image::RgbImage::from_fn(40, 24, |x, y| image::Rgb([(x * 6) as u8, (y * 9) as u8, 50]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&img).unwrap();
        assert_eq!(jpeg_truncation(&jpeg), None);
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"bytes after the end are ignored");
        assert_eq!(jpeg_truncation(&trailing), None);
        // Cut in the image data (the header intact), in a segment, and just before the EOI marker.
        let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        for cut in [jpeg.len() / 2 + sos / 2, jpeg.len() - 2, sos + 5, 20, 3] {
            let why = jpeg_truncation(&jpeg[..cut]).unwrap_or_else(|| panic!("cut at {cut} accepted"));
            assert!(why.starts_with(&format!("truncated: the JPEG data ends at byte {cut} ")), "{why}");
        }
    }

    #[test]
    fn sizes_are_checked_before_decoding_and_after_resizing() {
        assert_eq!(resized_dims(160, 120, 32), (43, 32));
        assert_eq!(resized_dims(1, 1, 32), (32, 32));
        assert!(check_dims(10_000, 10_000, 512).is_ok());
        assert!(check_dims(300, 1, 512).is_ok()); // 153,600 × 512 pixels once resized
        assert!(check_dims(400, 1, 512).is_err()); // 204,800 × 512
        let e = check_dims(100_000, 100_000, 32).unwrap_err();
        assert_eq!(e, "100000×100000 pixels is above the limit of 100000000 (MAX_PIXELS)");
        let e = check_dims(1, 20_000_000, 32).unwrap_err();
        assert!(e.starts_with("1×20000000 pixels: its shorter side resized to 32 makes it 32×640000000"), "{e}");
        assert!(check_dims(0, 5, 32).unwrap_err().contains("nothing to resize"));
        assert!(check_dims(1, u32::MAX, 512).is_err());
    }

    #[test]
    fn bad_files_are_reported_by_index_and_left_zero() {
        let dir = std::env::temp_dir().join(format!("mdarts-folder-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.png");
        write_png(&good, 8, 6, |_, _| [200, 100, 50]);
        let text = dir.join("text.png");
        std::fs::write(&text, "not an image at all").unwrap();
        let paths = vec![good.clone(), text.clone(), dir.join("gone.png"), good];
        let mut out = vec![9u8; 4 * 3 * 16];
        let failed = decode_into(&paths, 4, 3, &mut out, &AtomicUsize::new(0));
        let idx: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![1, 2]);
        assert!(failed[0].1.to_string().contains("not an image"), "{}", failed[0].1);
        assert!(out[48..96].iter().all(|&v| v == 0));
        assert_eq!(out[0], 200);
        assert_eq!(&out[..48], &out[144..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
