//! CIFAR-10 training augmentation: zero-pad and random crop, random horizontal flip, optional cutout
//! (DeVries & Taylor 2017, as in DARTS' evaluation), and normalisation with the CIFAR-10 mean and std.
//!
//! Every image draws its randomness from its own generator keyed by (seed, epoch, batch, position in
//! batch), so a batch is the same whatever thread makes it. Draw order per image: crop row offset, crop
//! column offset (each uniform in `0..=2·pad`), flip (p = 1/2), cutout centre row and column (uniform in
//! `0..32`). The crop is a 32×32 window of the zero-padded image; the flip mirrors the cropped image; the
//! cutout zeroes a `size`×`size` square (clipped at the borders) of the normalised image. In uint8 output
//! the cutout square holds the channel mean rounded to a byte (what normalises to about 0).

use std::sync::OnceLock;

use crate::cifar::{CHANNELS, IMAGE_BYTES, SIDE};
use crate::error::DataError;
use crate::rng::{mix, Rng};

/// Largest crop padding: with more than the image side, every crop window could be all padding.
pub const MAX_CROP_PADDING: usize = SIDE;
/// Largest cutout square side: a 32-pixel square already covers the whole 32×32 image.
pub const MAX_CUTOUT: usize = SIDE;

/// CIFAR-10 training-set channel means (pixel / 255).
pub const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 training-set channel standard deviations (pixel / 255).
pub const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// Which augmentations to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding before the random 32×32 crop; 0 disables cropping.
    pub crop_padding: usize,
    /// Random horizontal flip with probability 1/2.
    pub flip: bool,
    /// Side of the cutout square; 0 disables cutout.
    pub cutout: usize,
}

impl Augment {
    /// No augmentation (evaluation batches).
    pub const NONE: Self = Self { crop_padding: 0, flip: false, cutout: 0 };
    /// DARTS' search and training augmentation: pad 4, crop, flip.
    pub const STANDARD: Self = Self { crop_padding: 4, flip: true, cutout: 0 };

    /// Check the sizes against [`MAX_CROP_PADDING`] and [`MAX_CUTOUT`], naming the offending field.
    pub fn check(&self) -> Result<(), DataError> {
        if self.crop_padding > MAX_CROP_PADDING {
            return Err(DataError::Argument(format!(
                "crop_padding = {} is above the limit of {MAX_CROP_PADDING} pixels (MAX_CROP_PADDING)",
                self.crop_padding
            )));
        }
        if self.cutout > MAX_CUTOUT {
            return Err(DataError::Argument(format!(
                "cutout = {} is above the limit of {MAX_CUTOUT} pixels (MAX_CUTOUT)",
                self.cutout
            )));
        }
        Ok(())
    }
}

/// Memory layout of a float batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `(N, C, H, W)`.
    Nchw,
    /// `(N, H, W, C)`, i.e. channels-last.
    Nhwc,
}

/// The random draws of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draw {
    /// Row offset of the crop window in the padded image.
    pub dy: usize,
    /// Column offset of the crop window in the padded image.
    pub dx: usize,
    /// Whether the crop is mirrored.
    pub flip: bool,
    /// Centre (row, column) of the cutout square.
    pub cut: Option<(usize, usize)>,
}

impl Draw {
    /// The draws of the image at `position` of batch `batch` in `epoch`.
    pub fn new(aug: &Augment, seed: u64, epoch: u64, batch: u64, position: u64) -> Self {
        let mut rng = Rng::new(mix(&[seed, epoch, batch, position]));
        // Saturating so that an unchecked padding cannot wrap to a span of 0 (which `below` refuses);
        // [`Augment::check`] keeps real paddings far below the saturation point.
        let span = (aug.crop_padding as u64).saturating_mul(2).saturating_add(1);
        let dy = rng.below(span) as usize;
        let dx = rng.below(span) as usize;
        let flip = aug.flip && rng.below(2) == 1;
        let cut = (aug.cutout > 0).then(|| (rng.below(SIDE as u64) as usize, rng.below(SIDE as u64) as usize));
        Self { dy, dx, flip, cut }
    }

    fn in_cut(&self, size: usize, y: usize, x: usize) -> bool {
        match self.cut {
            // The square covers rows [cy - size/2, cy + size/2) clipped to the image, as DARTS' Cutout.
            Some((cy, cx)) => {
                let (h, yy, xx) = (size / 2, y + size, x + size);
                yy >= cy + size - h && yy < cy + size + (size - h) && xx >= cx + size - h && xx < cx + size + (size - h)
            }
            None => false,
        }
    }
}

/// A pixel type that a batch can be written in.
pub trait Pixel: Copy + Default + Send + 'static {
    /// The output value of source byte `v` of channel `c`.
    fn from_byte(c: usize, v: u8) -> Self;
    /// The value of a cut-out pixel of channel `c`.
    fn cut(c: usize) -> Self;
}

fn lut() -> &'static [[f32; 256]; CHANNELS] {
    static LUT: OnceLock<[[f32; 256]; CHANNELS]> = OnceLock::new();
    LUT.get_or_init(|| {
        let mut t = [[0.0; 256]; CHANNELS];
        for (c, row) in t.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - MEAN[c]) / STD[c];
            }
        }
        t
    })
}

impl Pixel for f32 {
    fn from_byte(c: usize, v: u8) -> Self {
        lut()[c][v as usize]
    }
    fn cut(_: usize) -> Self {
        0.0
    }
}

impl Pixel for u8 {
    fn from_byte(_: usize, v: u8) -> Self {
        v
    }
    fn cut(c: usize) -> Self {
        (MEAN[c] * 255.0).round() as u8
    }
}

/// Augment one `(3, 32, 32)` image `src` into `out` (3072 values in `layout`). `aug` must pass
/// [`Augment::check`] (the cutout test adds the cutout size to pixel coordinates).
pub fn augment_image<P: Pixel>(src: &[u8], draw: &Draw, aug: &Augment, layout: Layout, out: &mut [P]) {
    debug_assert!(aug.check().is_ok(), "augmentation sizes above the limits");
    debug_assert_eq!(src.len(), IMAGE_BYTES, "an image is 3072 bytes");
    debug_assert_eq!(out.len(), IMAGE_BYTES, "an output image is 3072 values");
    let pad = aug.crop_padding;
    for c in 0..CHANNELS {
        let plane = &src[c * SIDE * SIDE..(c + 1) * SIDE * SIDE];
        for y in 0..SIDE {
            // Source row in the unpadded image, if the window row is not padding.
            // Checked so that a hand-made `Draw` with absurd offsets reads padding instead of overflowing.
            let sy = y.checked_add(draw.dy).and_then(|r| r.checked_sub(pad)).filter(|&r| r < SIDE);
            for x in 0..SIDE {
                let wx = if draw.flip { SIDE - 1 - x } else { x };
                let sx = wx.checked_add(draw.dx).and_then(|s| s.checked_sub(pad)).filter(|&s| s < SIDE);
                let v = if draw.cut.is_some() && draw.in_cut(aug.cutout, y, x) {
                    P::cut(c)
                } else {
                    match (sy, sx) {
                        (Some(r), Some(s)) => P::from_byte(c, plane[r * SIDE + s]),
                        _ => P::from_byte(c, 0),
                    }
                };
                let o = match layout {
                    Layout::Nchw => c * SIDE * SIDE + y * SIDE + x,
                    Layout::Nhwc => (y * SIDE + x) * CHANNELS + c,
                };
                out[o] = v;
            }
        }
    }
}

/// Augment a batch: image `k` of the output is `images[indices[k]]` with the draws of
/// (seed, epoch, batch, k). `out` holds `indices.len() · 3072` values.
#[allow(clippy::too_many_arguments)]
pub fn augment_batch<P: Pixel>(
    pixels: &[u8],
    indices: &[usize],
    aug: &Augment,
    layout: Layout,
    seed: u64,
    epoch: u64,
    batch: u64,
    out: &mut [P],
) {
    debug_assert_eq!(out.len(), indices.len() * IMAGE_BYTES, "output holds one image per index");
    for (k, (&i, dst)) in indices.iter().zip(out.chunks_exact_mut(IMAGE_BYTES)).enumerate() {
        let draw = Draw::new(aug, seed, epoch, batch, k as u64);
        augment_image(&pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES], &draw, aug, layout, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Vec<u8> {
        (0..IMAGE_BYTES).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn no_augmentation_is_plain_normalisation() {
        let src = ramp();
        let mut out = vec![0f32; IMAGE_BYTES];
        let d = Draw::new(&Augment::NONE, 1, 0, 0, 0);
        augment_image(&src, &d, &Augment::NONE, Layout::Nchw, &mut out);
        for (i, (&s, &o)) in src.iter().zip(&out).enumerate() {
            let c = i / 1024;
            assert!((o - (s as f32 / 255.0 - MEAN[c]) / STD[c]).abs() < 1e-6);
        }
        let mut u = vec![0u8; IMAGE_BYTES];
        augment_image(&src, &d, &Augment::NONE, Layout::Nchw, &mut u);
        assert_eq!(u, src);
    }

    #[test]
    fn crop_offsets_shift_the_image() {
        let src = ramp();
        let aug = Augment { crop_padding: 4, flip: false, cutout: 0 };
        let d = Draw { dy: 0, dx: 8, flip: false, cut: None };
        let mut u = vec![0u8; IMAGE_BYTES];
        augment_image(&src, &d, &aug, Layout::Nchw, &mut u);
        // Window starts 4 rows above the image (padding) and 4 columns right of its left edge.
        assert!(u[..4 * 32].iter().all(|&v| v == 0));
        assert_eq!(u[4 * 32], src[4]);
        assert_eq!(u[4 * 32 + 27], src[31]);
        assert_eq!(u[4 * 32 + 28], 0);
    }

    #[test]
    fn cutout_square_is_clipped_and_sized() {
        let aug = Augment { crop_padding: 0, flip: false, cutout: 16 };
        let d = Draw { dy: 0, dx: 0, flip: false, cut: Some((0, 31)) };
        let cut: usize =
            (0..32).flat_map(|y| (0..32).map(move |x| (y, x))).filter(|&(y, x)| d.in_cut(16, y, x)).count();
        assert_eq!(cut, 8 * 9); // rows 0..8, columns 23..32
        let d = Draw { cut: Some((16, 16)), ..d };
        let cut: usize =
            (0..32).flat_map(|y| (0..32).map(move |x| (y, x))).filter(|&(y, x)| d.in_cut(16, y, x)).count();
        assert_eq!(cut, 16 * 16);
        assert!(d.in_cut(16, 8, 8) && !d.in_cut(16, 24, 24) && d.in_cut(16, 23, 23));
        let _ = aug;
    }

    #[test]
    fn sizes_above_the_limits_are_named() {
        assert!(Augment { crop_padding: MAX_CROP_PADDING, flip: true, cutout: MAX_CUTOUT }.check().is_ok());
        let e = Augment { crop_padding: usize::MAX, ..Augment::NONE }.check().unwrap_err().to_string();
        assert_eq!(e, format!("crop_padding = {} is above the limit of 32 pixels (MAX_CROP_PADDING)", usize::MAX));
        let e = Augment { cutout: 33, ..Augment::NONE }.check().unwrap_err().to_string();
        assert_eq!(e, "cutout = 33 is above the limit of 32 pixels (MAX_CUTOUT)");
        // Drawing with an unchecked padding neither overflows nor panics.
        let d = Draw::new(&Augment { crop_padding: usize::MAX, ..Augment::NONE }, 1, 2, 3, 4);
        assert!(d.cut.is_none());
    }
}
