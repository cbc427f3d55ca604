//! Decoding the image files of a folder dataset into one uint8 array, in worker threads.
//!
//! Each file's format is read from its header, not its extension (a PNG named `.JPEG` decodes as a PNG).
//! Every colour type (grayscale, palette, RGBA, CMYK JPEG, 16-bit) becomes 8-bit RGB: alpha is dropped,
//! 16-bit values are scaled to 8 bits. The EXIF orientation of a JPEG is applied. The shorter side is then
//! resized to `size` with a bilinear (triangle) convolution whose support widens with the downscaling factor,
//! as Pillow's BILINEAR does (`fast_image_resize`, SIMD), and the centre `size`×`size` square is cropped (the
//! larger half of an odd margin on the right and bottom).

use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use fast_image_resize::{images::Image as FirImage, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::error::DataError;

/// Largest decoded image, in pixels (width × height), so that a tiny file claiming a huge size cannot
/// exhaust memory: 100 megapixels (a 10,000 × 10,000 photograph).
pub const MAX_PIXELS: u64 = 100_000_000;

fn format_error(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Format { path: path.to_path_buf(), message: message.into() }
}

/// The image at `path` as RGB8, EXIF orientation applied, before resizing.
pub fn decode_rgb(path: &Path) -> Result<image::RgbImage, DataError> {
    let file = std::fs::File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing { path: path.to_path_buf(), hint: "it was listed but is gone".into() }
        } else {
            DataError::Io { path: path.to_path_buf(), source }
        }
    })?;
    let reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    if reader.format().is_none() {
        return Err(format_error(path, "not an image (no known image format in its first bytes)"));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8);
    let mut decoder = reader.into_decoder().map_err(|e| format_error(path, format!("cannot decode it: {e}")))?;
    decoder.set_limits(limits).map_err(|e| format_error(path, format!("cannot decode it: {e}")))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(format_error(path, format!("an image of {w}×{h} pixels has nothing to resize")));
    }
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(format_error(path, format!("{w}×{h} pixels is above the limit of {MAX_PIXELS} (MAX_PIXELS)")));
    }
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
    let short = w.min(h) as f64;
    // The longer side keeps the aspect ratio, rounded, and is never shorter than `size`.
    let nw = ((w as f64 * size as f64 / short).round() as u32).max(size);
    let nh = ((h as f64 * size as f64 / short).round() as u32).max(size);
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
                decode_rgb(path).map(|img| resize_crop(img, size, &mut resizer))
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
