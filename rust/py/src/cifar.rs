//! Bindings of `mdarts_core::cifar` and `mdarts_core::augment`: reading, splitting, augmenting.

use std::path::PathBuf;

use mdarts_core::augment::{augment_batch, Augment, Layout, MEAN, STD};
use mdarts_core::cifar::{self, check_image_count, Split, IMAGE_BYTES, SIDE};
use numpy::ndarray::{Array1, Array4};
use numpy::{IntoPyArray, PyArray1, PyArray4, PyReadonlyArray4};
use pyo3::prelude::*;

use crate::error::{DataFormatError, IntoPy};

/// Images and labels as numpy arrays.
type ImagesAndLabels<'py> = (Bound<'py, PyArray4<u8>>, Bound<'py, PyArray1<i64>>);
/// Two index arrays (S_train, S_val).
type IndexPair<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>);

/// Parse "train" or "test".
fn split_of(name: &str) -> PyResult<Split> {
    match name {
        "train" => Ok(Split::Train),
        "test" => Ok(Split::Test),
        other => Err(DataFormatError::new_err(format!("split must be 'train' or 'test', got '{other}'"))),
    }
}

/// Labels as int64. Copies: N bytes widened to N int64s.
pub fn labels_i64(labels: &[u8]) -> Vec<i64> {
    labels.iter().map(|&l| l as i64).collect()
}

/// Load a split of the CIFAR-10 binary version from `root` (the `cifar-10-batches-bin` folder or its
/// parent): `(images uint8 (N, 3, 32, 32), labels int64 (N,))`. The arrays are owned by Rust memory moved
/// into numpy, without a copy.
#[pyfunction]
#[pyo3(signature = (root, split = "train"))]
pub fn load_cifar10_bin<'py>(py: Python<'py>, root: PathBuf, split: &str) -> PyResult<ImagesAndLabels<'py>> {
    let split = split_of(split)?;
    let images = py.allow_threads(|| cifar::load(&root, split)).py()?;
    let n = images.len();
    let labels = labels_i64(&images.labels);
    let pixels = Array4::from_shape_vec((n, 3, SIDE, SIDE), images.pixels).expect("reader yields N·3072 bytes");
    Ok((pixels.into_pyarray(py), Array1::from_vec(labels).into_pyarray(py)))
}

/// DARTS' search split of `n` training images: a permutation drawn from `seed`; the first
/// `floor(portion·n/2)` indices are S_train, the next as many S_val.
#[pyfunction]
#[pyo3(signature = (n, portion = 1.0, seed = 0))]
pub fn search_split<'py>(py: Python<'py>, n: usize, portion: f64, seed: u64) -> PyResult<IndexPair<'py>> {
    let (t, v) = cifar::search_split(n, portion, seed).py()?;
    let to = |v: Vec<usize>| Array1::from_vec(v.into_iter().map(|i| i as i64).collect()).into_pyarray(py);
    Ok((to(t), to(v)))
}

/// Check an images array of shape (N, 3, 32, 32).
pub fn check_images(images: &PyReadonlyArray4<'_, u8>) -> PyResult<()> {
    let s = images.as_array().shape().to_vec();
    if s[1..] != [3, SIDE, SIDE] {
        return Err(DataFormatError::new_err(format!("images must have shape (N, 3, 32, 32), got {s:?}")));
    }
    Ok(())
}

/// Augment images as the loader does for (seed, epoch, batch): image `k` uses the draws of position `k`.
/// Returns float32 normalised or uint8, NCHW or, with `channels_last`, NHWC. At most `MAX_IMAGES` images,
/// `crop_padding` at most `MAX_CROP_PADDING`, `cutout` at most `MAX_CUTOUT`.
#[pyfunction]
#[pyo3(signature = (images, seed = 0, epoch = 0, batch = 0, crop_padding = 4, flip = true, cutout = 0, normalize = true, channels_last = false))]
#[allow(clippy::too_many_arguments)]
pub fn augment_images<'py>(
    py: Python<'py>,
    images: PyReadonlyArray4<'py, u8>,
    seed: u64,
    epoch: u64,
    batch: u64,
    crop_padding: usize,
    flip: bool,
    cutout: usize,
    normalize: bool,
    channels_last: bool,
) -> PyResult<Bound<'py, PyAny>> {
    check_images(&images)?;
    let aug = Augment { crop_padding, flip, cutout };
    aug.check().py()?;
    // Checked before the copy: a broadcast numpy array can claim any number of images without holding them.
    let n = check_image_count("len(images)", images.as_array().shape()[0]).py()?;
    // Copies the input once into a contiguous buffer the worker can read without the GIL.
    let pixels: Vec<u8> = images.as_array().iter().copied().collect();
    let layout = if channels_last { Layout::Nhwc } else { Layout::Nchw };
    let idx: Vec<usize> = (0..n).collect();
    Ok(if normalize {
        let mut out = vec![0f32; n * IMAGE_BYTES];
        py.allow_threads(|| augment_batch(&pixels, &idx, &aug, layout, seed, epoch, batch, &mut out));
        shaped(py, out, n, channels_last)
    } else {
        let mut out = vec![0u8; n * IMAGE_BYTES];
        py.allow_threads(|| augment_batch(&pixels, &idx, &aug, layout, seed, epoch, batch, &mut out));
        shaped(py, out, n, channels_last)
    })
}

/// A batch buffer as a numpy array of shape (N, 3, 32, 32), or (N, 32, 32, 3) when channels-last.
pub fn shaped<T: numpy::Element>(py: Python<'_>, v: Vec<T>, n: usize, channels_last: bool) -> Bound<'_, PyAny> {
    let shape = if channels_last { (n, SIDE, SIDE, 3) } else { (n, 3, SIDE, SIDE) };
    // Moves the Vec into numpy without copying its buffer.
    Array4::from_shape_vec(shape, v).expect("a batch holds N·3072 values").into_pyarray(py).into_any()
}

/// Register the data constants.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CIFAR10_MEAN", MEAN.to_vec())?;
    m.add("CIFAR10_STD", STD.to_vec())?;
    Ok(())
}
