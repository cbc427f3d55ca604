//! Property tests of the CIFAR-10 reader, the augmentation and the loader.

use std::path::Path;
use std::sync::Arc;

use mdarts_core::augment::{augment_image, Augment, Draw, Layout, Norm};
use mdarts_core::cifar::{encode_bin, parse_bin, ImageShape, Images, IMAGE_BYTES};
use mdarts_core::loader::{Loader, LoaderConfig, Output};
use proptest::prelude::*;

fn images(max: usize) -> impl Strategy<Value = Images> {
    (1..max).prop_flat_map(|n| {
        (prop::collection::vec(any::<u8>(), n * IMAGE_BYTES), prop::collection::vec(0u32..10, n))
            .prop_map(|(pixels, labels)| Images::cifar(pixels, labels))
    })
}

fn aug() -> impl Strategy<Value = Augment> {
    (0usize..=8, any::<bool>(), prop_oneof![Just(0usize), 1usize..=32]).prop_map(|(p, f, c)| Augment {
        crop_padding: p,
        flip: f,
        cutout: c,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn decode_encode_round_trips(x in images(4)) {
        let mut back = Images::default();
        parse_bin(&encode_bin(&x), Path::new("t.bin"), &mut back).unwrap();
        prop_assert_eq!(back, x);
    }

    #[test]
    fn crops_are_windows_of_the_padded_image(x in images(2), a in aug(), seed in any::<u64>()) {
        let a = Augment { cutout: 0, ..a };
        let src = x.image(0);
        let d = Draw::new(&a, seed, 0, 0, 0);
        prop_assert!(d.dy <= 2 * a.crop_padding && d.dx <= 2 * a.crop_padding);
        let mut out = vec![0u8; IMAGE_BYTES];
        augment_image(src, ImageShape::CIFAR, &d, &a, Layout::Nchw, &Norm::cifar10(), &mut out);
        let p = a.crop_padding as isize;
        for c in 0..3 {
            for y in 0..32isize {
                for x in 0..32isize {
                    let wx = if d.flip { 31 - x } else { x };
                    let (sy, sx) = (y + d.dy as isize - p, wx + d.dx as isize - p);
                    let want = if (0..32).contains(&sy) && (0..32).contains(&sx) {
                        src[(c * 1024) as usize + (sy * 32 + sx) as usize]
                    } else {
                        0
                    };
                    prop_assert_eq!(out[(c * 1024 + y * 32 + x) as usize], want);
                }
            }
        }
    }

    #[test]
    fn augmentation_keeps_shape_and_range(x in images(2), a in aug(), seed in any::<u64>()) {
        let d = Draw::new(&a, seed, 1, 2, 3);
        let mut f = vec![f32::NAN; IMAGE_BYTES];
        augment_image(x.image(0), ImageShape::CIFAR, &d, &a, Layout::Nhwc, &Norm::cifar10(), &mut f);
        // Normalised values of bytes 0..=255 lie in [(0 - mean)/std, (1 - mean)/std].
        prop_assert!(f.iter().all(|v| v.is_finite() && *v >= -2.0 && *v <= 2.2));
        let mut nchw = vec![f32::NAN; IMAGE_BYTES];
        augment_image(x.image(0), ImageShape::CIFAR, &d, &a, Layout::Nchw, &Norm::cifar10(), &mut nchw);
        for c in 0..3 {
            for p in 0..1024 {
                prop_assert_eq!(nchw[c * 1024 + p].to_bits(), f[p * 3 + c].to_bits());
            }
        }
    }

    #[test]
    fn loader_is_deterministic_across_thread_counts(x in images(40), bs in 1usize..9, workers in 1usize..4, seed in any::<u64>()) {
        let data = Arc::new(x);
        let n = data.len();
        let cfg = |w| LoaderConfig {
            batch_size: bs, shuffle: true, drop_last: false, augment: Augment { crop_padding: 4, flip: true, cutout: 8 },
            layout: Layout::Nchw, output: Output::U8, seed, workers: w, prefetch_per_worker: 1,
        };
        let run = |w| {
            let l = Arc::new(Loader::new(Arc::clone(&data), (0..n).collect(), cfg(w)).unwrap());
            l.epoch(2, 0).map(|b| b.unwrap()).collect::<Vec<_>>()
        };
        let a = run(0);
        prop_assert_eq!(a.iter().map(|b| b.len()).sum::<usize>(), n);
        prop_assert_eq!(a, run(workers));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any shape: every output byte is a source byte of its channel, padding (0) or the cutout value, and
    /// float output is finite and the same pixels, normalised.
    #[test]
    fn any_shape_keeps_values_and_layout(
        channels in 1usize..5,
        side in 1usize..40,
        seed in any::<u64>(),
        frac in (0.0f64..=1.0, 0.0f64..=1.0),
        flip in any::<bool>(),
    ) {
        let shape = ImageShape { channels, side };
        let a = Augment { crop_padding: (frac.0 * side as f64) as usize, flip, cutout: (frac.1 * side as f64) as usize };
        prop_assert!(a.check_for(side).is_ok());
        let src: Vec<u8> = (0..shape.bytes()).map(|i| (i * 37 % 251) as u8 | 1).collect(); // never 0
        let mean: Vec<f32> = (0..channels).map(|c| 0.2 + 0.1 * c as f32).collect();
        let std: Vec<f32> = (0..channels).map(|c| 0.25 + 0.05 * c as f32).collect();
        let norm = Norm::new(&mean, &std).unwrap();
        let d = Draw::for_side(&a, side, seed, 3, 1, 4);
        let mut u = vec![7u8; shape.bytes()];
        augment_image(&src, shape, &d, &a, Layout::Nchw, &norm, &mut u);
        for c in 0..channels {
            let plane = &src[c * side * side..(c + 1) * side * side];
            let cut = (mean[c] * 255.0).round() as u8;
            for &v in &u[c * side * side..(c + 1) * side * side] {
                prop_assert!(v == 0 || v == cut || plane.contains(&v));
            }
        }
        let mut f = vec![f32::NAN; shape.bytes()];
        augment_image(&src, shape, &d, &a, Layout::Nhwc, &norm, &mut f);
        prop_assert!(f.iter().all(|v| v.is_finite()));
    }
}
