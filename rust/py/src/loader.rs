//! Bindings of `mdarts_core::loader`: `BatchLoader` and its per-epoch iterator.

use std::sync::{Arc, Mutex};

use mdarts_core::augment::{Augment, Layout};
use mdarts_core::cifar::{check_image_count, Images};
use mdarts_core::loader::{Batch, EpochIter, Loader, LoaderConfig, Output, Pixels};
use numpy::ndarray::Array1;
use numpy::{IntoPyArray, PyReadonlyArray1, PyReadonlyArray4};
use pyo3::prelude::*;

use crate::cifar::{check_images, norm_of, shaped};
use crate::error::{DataFormatError, IntoPy};

/// Batches of augmented square images (N, C, S, S) (CIFAR's by default), made by Rust worker threads with
/// the GIL released, normalised with `mean` and `std` (CIFAR-10's when neither is given for 3 channels).
/// Every selected label must lie in `0..num_classes` (CIFAR-10's 10 by default).
///
/// Copies the selected images once at construction, so the loader never reads memory Python may change.
/// At most `MAX_IMAGES` selected images; `batch_size`, `workers`, `prefetch`, `crop_padding` and `cutout`
/// are bounded by `MAX_BATCH_SIZE`, `MAX_WORKERS`, `MAX_PREFETCH`, `MAX_CROP_PADDING` and `MAX_CUTOUT`.
#[pyclass(module = "mdarts_rs._core", name = "BatchLoader")]
pub struct BatchLoader {
    inner: Arc<Loader>,
}

#[pymethods]
impl BatchLoader {
    #[new]
    #[pyo3(signature = (images, labels, indices = None, *, batch_size, shuffle = true, drop_last = true, crop_padding = 4, flip = true, cutout = 0, normalize = true, channels_last = false, seed = 0, workers = 2, prefetch = 2, mean = None, std = None, num_classes = 10))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        images: PyReadonlyArray4<'_, u8>,
        labels: PyReadonlyArray1<'_, i64>,
        indices: Option<PyReadonlyArray1<'_, i64>>,
        batch_size: usize,
        shuffle: bool,
        drop_last: bool,
        crop_padding: usize,
        flip: bool,
        cutout: usize,
        normalize: bool,
        channels_last: bool,
        seed: u64,
        workers: usize,
        prefetch: usize,
        mean: Option<Vec<f32>>,
        std: Option<Vec<f32>>,
        num_classes: u32,
    ) -> PyResult<Self> {
        let shape = check_images(&images)?;
        let norm = norm_of(shape, mean, std)?;
        let cfg = LoaderConfig {
            batch_size,
            shuffle,
            drop_last,
            augment: Augment { crop_padding, flip, cutout },
            layout: if channels_last { Layout::Nhwc } else { Layout::Nchw },
            output: if normalize { Output::F32 } else { Output::U8 },
            seed,
            workers,
            prefetch_per_worker: prefetch,
        };
        // Settings first, so that a bad one fails before the images are copied.
        cfg.check(shape.side).py()?;
        let (imgs, labs) = (images.as_array(), labels.as_array());
        let n = imgs.shape()[0];
        if labs.len() != n {
            return Err(DataFormatError::new_err(format!("labels has {} entries for {n} images", labs.len())));
        }
        // The copy below holds one image per index; a broadcast numpy array can claim any length without
        // holding it, so the count is checked before anything is allocated.
        let count = match &indices {
            None => check_image_count("len(images)", n),
            Some(ix) => check_image_count("len(indices)", ix.as_array().len()),
        }
        .py()?;
        let idx: Vec<usize> = match &indices {
            None => (0..n).collect(),
            Some(ix) => ix
                .as_array()
                .iter()
                .enumerate()
                .map(|(k, &i)| {
                    usize::try_from(i).ok().filter(|&i| i < n).ok_or_else(|| {
                        DataFormatError::new_err(format!("indices[{k}] = {i} is out of range for {n} images"))
                    })
                })
                .collect::<PyResult<_>>()?,
        };
        let bytes = count
            .checked_mul(shape.bytes())
            .ok_or_else(|| DataFormatError::new_err(format!("{count} images overflow the address space")))?;
        let mut data = Images { pixels: Vec::with_capacity(bytes), labels: Vec::with_capacity(count), shape };
        for &i in &idx {
            let l = labs[i];
            if !(0..i64::from(num_classes)).contains(&l) {
                let top = i64::from(num_classes) - 1;
                return Err(DataFormatError::new_err(format!(
                    "labels[{i}] = {l} is not a class label (0-{top} for num_classes = {num_classes})"
                )));
            }
            data.labels.push(l as u32);
            data.pixels.extend(imgs.index_axis(numpy::ndarray::Axis(0), i).iter().copied());
        }
        let loader = py.allow_threads(|| Loader::with_norm(Arc::new(data), (0..count).collect(), cfg, norm)).py()?;
        Ok(Self { inner: Arc::new(loader) })
    }

    /// Batches per epoch.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Images the loader serves.
    #[getter]
    fn num_images(&self) -> usize {
        self.inner.epoch_order(0).len()
    }

    /// Images per batch.
    #[getter]
    fn batch_size(&self) -> usize {
        self.inner.config().batch_size
    }

    /// The batches of `epoch` from batch `start` on, in order: `(images, labels)` numpy arrays owned by Rust.
    #[pyo3(signature = (epoch, start = 0))]
    fn epoch(&self, epoch: u64, start: usize) -> EpochIterator {
        let cfg = self.inner.config();
        EpochIterator {
            it: Mutex::new(Some(self.inner.epoch(epoch, start))),
            channels_last: cfg.layout == Layout::Nhwc,
            shape: self.inner.shape(),
        }
    }
}

/// Iterator over one epoch's batches.
#[pyclass(module = "mdarts_rs._core", name = "EpochIterator")]
pub struct EpochIterator {
    // A Mutex only to make the class Sync; `__next__` has `&mut self` and never locks.
    it: Mutex<Option<EpochIter>>,
    channels_last: bool,
    shape: mdarts_core::cifar::ImageShape,
}

#[pymethods]
impl EpochIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
        let slot = self.it.get_mut().unwrap_or_else(|e| e.into_inner());
        let Some(it) = slot.as_mut() else { return Ok(None) };
        let next = py.allow_threads(|| it.next());
        let Some(batch) = next else {
            // Join the workers now rather than at garbage collection.
            *slot = None;
            return Ok(None);
        };
        let Batch { pixels, labels } = batch.py()?;
        let n = labels.len();
        let x = match pixels {
            Pixels::F32(v) => shaped(py, v, n, self.shape, self.channels_last),
            Pixels::U8(v) => shaped(py, v, n, self.shape, self.channels_last),
        };
        Ok(Some((x, Array1::from_vec(labels).into_pyarray(py).into_any())))
    }

    /// Batches not yet returned.
    fn __len__(&self) -> usize {
        self.it.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(0, |it| it.remaining())
    }
}
