//! Bindings of `mdarts_core::cifar` and `mdarts_core::augment`: reading, splitting, augmenting.

use std::path::PathBuf;

use mdarts_core::augment::{augment_batch, Augment, Layout, Norm, MEAN, STD};
use mdarts_core::cifar::{self, check_image_count, ImageShape, Label100, Split, SIDE};
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

/// Labels as int64. Copies: N labels widened to N int64s.
pub fn labels_i64(labels: &[u32]) -> Vec<i64> {
    labels.iter().map(|&l| i64::from(l)).collect()
}

/// CIFAR-shaped images and labels as numpy arrays, the pixels moved without a copy.
fn cifar_arrays(py: Python<'_>, images: cifar::Images) -> ImagesAndLabels<'_> {
    let n = images.len();
    let labels = labels_i64(&images.labels);
    let pixels = Array4::from_shape_vec((n, 3, SIDE, SIDE), images.pixels).expect("reader yields N·3072 bytes");
    (pixels.into_pyarray(py), Array1::from_vec(labels).into_pyarray(py))
}

/// Load a split of the CIFAR-10 binary version from `root` (the `cifar-10-batches-bin` folder or its
/// parent): `(images uint8 (N, 3, 32, 32), labels int64 (N,))`. The arrays are owned by Rust memory moved
/// into numpy, without a copy.
#[pyfunction]
#[pyo3(signature = (root, split = "train"))]
pub fn load_cifar10_bin<'py>(py: Python<'py>, root: PathBuf, split: &str) -> PyResult<ImagesAndLabels<'py>> {
    let split = split_of(split)?;
    let images = py.allow_threads(|| cifar::load(&root, split)).py()?;
    Ok(cifar_arrays(py, images))
}

/// Load a split of the CIFAR-100 binary version from `root` (the `cifar-100-binary` folder or its parent):
/// `(images uint8 (N, 3, 32, 32), labels int64 (N,))`, the labels `"fine"` (100 classes) or `"coarse"` (20
/// superclasses). Every record's two labels are checked; errors name the file and record.
#[pyfunction]
#[pyo3(signature = (root, split = "train", label = "fine"))]
pub fn load_cifar100_bin<'py>(
    py: Python<'py>,
    root: PathBuf,
    split: &str,
    label: &str,
) -> PyResult<ImagesAndLabels<'py>> {
    let split = split_of(split)?;
    let label = match label {
        "fine" => Label100::Fine,
        "coarse" => Label100::Coarse,
        other => return Err(DataFormatError::new_err(format!("label must be 'fine' or 'coarse', got '{other}'"))),
    };
    let images = py.allow_threads(|| cifar::load100(&root, split, label)).py()?;
    Ok(cifar_arrays(py, images))
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

/// The shape of an images array (N, C, S, S): square images within `MAX_CHANNELS` and `MAX_SIDE`.
pub fn check_images(images: &PyReadonlyArray4<'_, u8>) -> PyResult<ImageShape> {
    let s = images.as_array().shape().to_vec();
    if s[2] != s[3] {
        return Err(DataFormatError::new_err(format!(
            "images must have shape (N, C, S, S) (square images), got {s:?}"
        )));
    }
    ImageShape::new(s[1], s[2]).py()
}

/// The normalisation of `shape`'s channels: `mean` and `std` (pixel / 255), or CIFAR-10's for 3-channel
/// images when neither is given.
pub fn norm_of(shape: ImageShape, mean: Option<Vec<f32>>, std: Option<Vec<f32>>) -> PyResult<Norm> {
    let norm = match (mean, std) {
        (None, None) if shape.channels == 3 => Norm::cifar10(),
        (None, None) => {
            return Err(DataFormatError::new_err(format!(
                "images have {} channels: give their mean and std (CIFAR-10's are for 3 channels)",
                shape.channels
            )))
        }
        (Some(m), Some(s)) => Norm::new(&m, &s).py()?,
        _ => return Err(DataFormatError::new_err("give both mean and std, or neither")),
    };
    if norm.channels() != shape.channels {
        return Err(DataFormatError::new_err(format!(
            "mean and std have {} channels, the images {}",
            norm.channels(),
            shape.channels
        )));
    }
    Ok(norm)
}

/// Augment images (N, C, S, S) as the loader does for (seed, epoch, batch): image `k` uses the draws of
/// position `k`. Returns float32 normalised with `mean` and `std` (CIFAR-10's by default) or uint8, NCHW
/// or, with `channels_last`, NHWC. At most `MAX_IMAGES` images, `crop_padding` and `cutout` at most the
/// image side (`MAX_CROP_PADDING` and `MAX_CUTOUT` for 32-pixel images).
#[pyfunction]
#[pyo3(signature = (images, seed = 0, epoch = 0, batch = 0, crop_padding = 4, flip = true, cutout = 0, normalize = true, channels_last = false, mean = None, std = None))]
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
    mean: Option<Vec<f32>>,
    std: Option<Vec<f32>>,
) -> PyResult<Bound<'py, PyAny>> {
    let shape = check_images(&images)?;
    let aug = Augment { crop_padding, flip, cutout };
    aug.check_for(shape.side).py()?;
    let norm = norm_of(shape, mean, std)?;
    // Checked before the copy: a broadcast numpy array can claim any number of images without holding them.
    let n = check_image_count("len(images)", images.as_array().shape()[0]).py()?;
    // Copies the input once into a contiguous buffer the worker can read without the GIL.
    let pixels: Vec<u8> = images.as_array().iter().copied().collect();
    let layout = if channels_last { Layout::Nhwc } else { Layout::Nchw };
    let idx: Vec<usize> = (0..n).collect();
    let len = n * shape.bytes();
    Ok(if normalize {
        let mut out = vec![0f32; len];
        py.allow_threads(|| augment_batch(&pixels, shape, &idx, &aug, layout, &norm, seed, epoch, batch, &mut out));
        shaped(py, out, n, shape, channels_last)
    } else {
        let mut out = vec![0u8; len];
        py.allow_threads(|| augment_batch(&pixels, shape, &idx, &aug, layout, &norm, seed, epoch, batch, &mut out));
        shaped(py, out, n, shape, channels_last)
    })
}

/// A batch buffer as a numpy array of shape (N, C, S, S), or (N, S, S, C) when channels-last.
pub fn shaped<T: numpy::Element>(
    py: Python<'_>,
    v: Vec<T>,
    n: usize,
    shape: ImageShape,
    channels_last: bool,
) -> Bound<'_, PyAny> {
    let (c, s) = (shape.channels, shape.side);
    let dims = if channels_last { (n, s, s, c) } else { (n, c, s, s) };
    // Moves the Vec into numpy without copying its buffer.
    Array4::from_shape_vec(dims, v).expect("a batch holds N·C·S² values").into_pyarray(py).into_any()
}

/// Register the data constants.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CIFAR10_MEAN", MEAN.to_vec())?;
    m.add("CIFAR10_STD", STD.to_vec())?;
    m.add("MAX_SIDE", cifar::MAX_SIDE)?;
    m.add("MAX_IMAGE_CHANNELS", cifar::MAX_CHANNELS)?;
    Ok(())
}
