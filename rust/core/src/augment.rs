//! Training augmentation for square images of any side and channel count: zero-pad and random crop,
//! random horizontal flip, optional cutout (DeVries & Taylor 2017, as in DARTS' evaluation), and per-channel
//! normalisation with the dataset's mean and std (CIFAR-10's by default).
//!
//! Every image draws its randomness from its own generator keyed by (seed, epoch, batch, position in
//! batch), so a batch is the same whatever thread makes it. Draw order per image: crop row offset, crop
//! column offset (each uniform in `0..=2·pad`), flip (p = 1/2), cutout centre row and column (uniform in
//! `0..side`). The crop is a side×side window of the zero-padded image; the flip mirrors the cropped image;
//! the cutout zeroes a `size`×`size` square (clipped at the borders) of the normalised image. In uint8
//! output the cutout square holds the channel mean rounded to a byte (what normalises to about 0).

use crate::cifar::{ImageShape, SIDE};
use crate::error::DataError;
use crate::rng::{mix, Rng};

/// Largest crop padding of CIFAR's 32-pixel images; in general the limit is the image side (with more,
/// every crop window could be all padding).
pub const MAX_CROP_PADDING: usize = SIDE;
/// Largest cutout square side of CIFAR's 32-pixel images; in general the limit is the image side (such a
/// square already covers the whole image).
pub const MAX_CUTOUT: usize = SIDE;

/// CIFAR-10 training-set channel means (pixel / 255).
pub const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 training-set channel standard deviations (pixel / 255).
pub const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// Which augmentations to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding before the random side×side crop; 0 disables cropping.
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

    /// Check the sizes against the limits of 32-pixel images ([`MAX_CROP_PADDING`], [`MAX_CUTOUT`]).
    pub fn check(&self) -> Result<(), DataError> {
        self.check_for(SIDE)
    }

    /// Check the sizes against images of `side` pixels (each at most the side), naming the offending field.
    pub fn check_for(&self, side: usize) -> Result<(), DataError> {
        let name = if side == SIDE { " (MAX_CROP_PADDING)" } else { " (the image side)" };
        if self.crop_padding > side {
            return Err(DataError::Argument(format!(
                "crop_padding = {} is above the limit of {side} pixels{name}",
                self.crop_padding
            )));
        }
        let name = if side == SIDE { " (MAX_CUTOUT)" } else { " (the image side)" };
        if self.cutout > side {
            return Err(DataError::Argument(format!(
                "cutout = {} is above the limit of {side} pixels{name}",
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

/// Per-channel normalisation `(v / 255 - mean) / std`, tabulated for every byte.
#[derive(Clone, Debug, PartialEq)]
pub struct Norm {
    lut: Vec<[f32; 256]>,
    cut: Vec<u8>,
}

impl Norm {
    /// The normalisation of `mean.len()` channels; `std` as long, every value finite and each std positive.
    pub fn new(mean: &[f32], std: &[f32]) -> Result<Self, DataError> {
        if mean.is_empty() || mean.len() != std.len() {
            return Err(DataError::Argument(format!(
                "mean and std must give one value per channel, got {} and {}",
                mean.len(),
                std.len()
            )));
        }
        if let Some((c, m)) = mean.iter().enumerate().find(|(_, m)| !(m.is_finite() && (0.0..=1.0).contains(*m))) {
            return Err(DataError::Argument(format!("mean[{c}] = {m} is not in [0, 1] (pixel / 255)")));
        }
        if let Some((c, s)) = std.iter().enumerate().find(|(_, s)| !(s.is_finite() && **s > 0.0)) {
            return Err(DataError::Argument(format!("std[{c}] = {s} must be a positive finite number")));
        }
        let lut = mean
            .iter()
            .zip(std)
            .map(|(&m, &s)| {
                let mut row = [0f32; 256];
                for (v, out) in row.iter_mut().enumerate() {
                    *out = (v as f32 / 255.0 - m) / s;
                }
                row
            })
            .collect();
        let cut = mean.iter().map(|m| (m * 255.0).round() as u8).collect();
        Ok(Self { lut, cut })
    }

    /// CIFAR-10's normalisation ([`MEAN`], [`STD`]).
    pub fn cifar10() -> Self {
        Self::new(&MEAN, &STD).expect("CIFAR-10's statistics are valid")
    }

    /// Channels normalised.
    pub fn channels(&self) -> usize {
        self.lut.len()
    }
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
    /// The draws of the image at `position` of batch `batch` in `epoch`, for 32-pixel images.
    pub fn new(aug: &Augment, seed: u64, epoch: u64, batch: u64, position: u64) -> Self {
        Self::for_side(aug, SIDE, seed, epoch, batch, position)
    }

    /// The draws of the image at `position` of batch `batch` in `epoch`, for images of `side` pixels.
    pub fn for_side(aug: &Augment, side: usize, seed: u64, epoch: u64, batch: u64, position: u64) -> Self {
        let mut rng = Rng::new(mix(&[seed, epoch, batch, position]));
        // Saturating so that an unchecked padding cannot wrap to a span of 0 (which `below` refuses);
        // [`Augment::check`] keeps real paddings far below the saturation point.
        let span = (aug.crop_padding as u64).saturating_mul(2).saturating_add(1);
        let dy = rng.below(span) as usize;
        let dx = rng.below(span) as usize;
        let flip = aug.flip && rng.below(2) == 1;
        let side = side.max(1) as u64;
        let cut = (aug.cutout > 0).then(|| (rng.below(side) as usize, rng.below(side) as usize));
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
    fn from_byte(norm: &Norm, c: usize, v: u8) -> Self;
    /// The value of a cut-out pixel of channel `c`.
    fn cut(norm: &Norm, c: usize) -> Self;
}

impl Pixel for f32 {
    fn from_byte(norm: &Norm, c: usize, v: u8) -> Self {
        norm.lut[c][v as usize]
    }
    fn cut(_: &Norm, _: usize) -> Self {
        0.0
    }
}

impl Pixel for u8 {
    fn from_byte(_: &Norm, _: usize, v: u8) -> Self {
        v
    }
    fn cut(norm: &Norm, c: usize) -> Self {
        norm.cut[c]
    }
}

/// Augment one image `src` of `shape` into `out` (as many values, in `layout`). `aug` must pass
/// [`Augment::check_for`] the side (the cutout test adds the cutout size to pixel coordinates), and `norm`
/// must have the image's channels.
pub fn augment_image<P: Pixel>(
    src: &[u8],
    shape: ImageShape,
    draw: &Draw,
    aug: &Augment,
    layout: Layout,
    norm: &Norm,
    out: &mut [P],
) {
    let (ch, side) = (shape.channels, shape.side);
    debug_assert!(aug.check_for(side).is_ok(), "augmentation sizes above the limits");
    debug_assert_eq!(src.len(), shape.bytes(), "an image is C·side² bytes");
    debug_assert_eq!(out.len(), shape.bytes(), "an output image is C·side² values");
    debug_assert_eq!(norm.channels(), ch, "one normalisation per channel");
    let pad = aug.crop_padding;
    for c in 0..ch {
        let plane = &src[c * side * side..(c + 1) * side * side];
        for y in 0..side {
            // Source row in the unpadded image, if the window row is not padding.
            // Checked so that a hand-made `Draw` with absurd offsets reads padding instead of overflowing.
            let sy = y.checked_add(draw.dy).and_then(|r| r.checked_sub(pad)).filter(|&r| r < side);
            for x in 0..side {
                let wx = if draw.flip { side - 1 - x } else { x };
                let sx = wx.checked_add(draw.dx).and_then(|s| s.checked_sub(pad)).filter(|&s| s < side);
                let v = if draw.cut.is_some() && draw.in_cut(aug.cutout, y, x) {
                    P::cut(norm, c)
                } else {
                    match (sy, sx) {
                        (Some(r), Some(s)) => P::from_byte(norm, c, plane[r * side + s]),
                        _ => P::from_byte(norm, c, 0),
                    }
                };
                let o = match layout {
                    Layout::Nchw => c * side * side + y * side + x,
                    Layout::Nhwc => (y * side + x) * ch + c,
                };
                out[o] = v;
            }
        }
    }
}

/// Augment a batch: image `k` of the output is `images[indices[k]]` with the draws of
/// (seed, epoch, batch, k). `out` holds `indices.len() · shape.bytes()` values.
#[allow(clippy::too_many_arguments)]
pub fn augment_batch<P: Pixel>(
    pixels: &[u8],
    shape: ImageShape,
    indices: &[usize],
    aug: &Augment,
    layout: Layout,
    norm: &Norm,
    seed: u64,
    epoch: u64,
    batch: u64,
    out: &mut [P],
) {
    let bytes = shape.bytes();
    debug_assert_eq!(out.len(), indices.len() * bytes, "output holds one image per index");
    for (k, (&i, dst)) in indices.iter().zip(out.chunks_exact_mut(bytes)).enumerate() {
        let draw = Draw::for_side(aug, shape.side, seed, epoch, batch, k as u64);
        augment_image(&pixels[i * bytes..(i + 1) * bytes], shape, &draw, aug, layout, norm, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cifar::IMAGE_BYTES;

    fn ramp() -> Vec<u8> {
        (0..IMAGE_BYTES).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn no_augmentation_is_plain_normalisation() {
        let src = ramp();
        let mut out = vec![0f32; IMAGE_BYTES];
        let d = Draw::new(&Augment::NONE, 1, 0, 0, 0);
        augment_image(&src, ImageShape::CIFAR, &d, &Augment::NONE, Layout::Nchw, &Norm::cifar10(), &mut out);
        for (i, (&s, &o)) in src.iter().zip(&out).enumerate() {
            let c = i / 1024;
            assert!((o - (s as f32 / 255.0 - MEAN[c]) / STD[c]).abs() < 1e-6);
        }
        let mut u = vec![0u8; IMAGE_BYTES];
        augment_image(&src, ImageShape::CIFAR, &d, &Augment::NONE, Layout::Nchw, &Norm::cifar10(), &mut u);
        assert_eq!(u, src);
    }

    #[test]
    fn crop_offsets_shift_the_image() {
        let src = ramp();
        let aug = Augment { crop_padding: 4, flip: false, cutout: 0 };
        let d = Draw { dy: 0, dx: 8, flip: false, cut: None };
        let mut u = vec![0u8; IMAGE_BYTES];
        augment_image(&src, ImageShape::CIFAR, &d, &aug, Layout::Nchw, &Norm::cifar10(), &mut u);
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
        let e = Augment { cutout: 65, ..Augment::NONE }.check_for(64).unwrap_err().to_string();
        assert_eq!(e, "cutout = 65 is above the limit of 64 pixels (the image side)");
        assert!(Augment { crop_padding: 64, flip: true, cutout: 64 }.check_for(64).is_ok());
    }

    #[test]
    fn norm_of_cifar10_is_the_published_one_and_checks_its_values() {
        let n = Norm::cifar10();
        assert_eq!(n.channels(), 3);
        assert_eq!(n.cut, vec![125, 123, 114]);
        assert!(Norm::new(&[0.5], &[0.0]).unwrap_err().to_string().contains("std[0]"));
        assert!(Norm::new(&[0.5, 0.5], &[0.2]).is_err());
        assert!(Norm::new(&[f32::NAN], &[0.2]).is_err());
    }

    #[test]
    fn any_side_and_channel_count_is_augmented_within_the_image() {
        let shape = ImageShape { channels: 1, side: 5 };
        let src: Vec<u8> = (1..=25).collect();
        let aug = Augment { crop_padding: 1, flip: true, cutout: 0 };
        let norm = Norm::new(&[0.5], &[0.25]).unwrap();
        let d = Draw { dy: 1, dx: 1, flip: true, cut: None };
        let mut u = vec![0u8; 25];
        augment_image(&src, shape, &d, &aug, Layout::Nchw, &norm, &mut u);
        assert_eq!(&u[..5], &[5, 4, 3, 2, 1]);
        let d = Draw { dy: 0, dx: 0, flip: false, cut: None };
        augment_image(&src, shape, &d, &aug, Layout::Nchw, &norm, &mut u);
        assert_eq!(&u[..6], &[0, 0, 0, 0, 0, 0]);
        assert_eq!(u[6], 1);
    }
}
