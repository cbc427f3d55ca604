//! Bindings of `mdarts_core::folder`: decoding image files into a caller's array (a memory-mapped cache).

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;

use mdarts_core::folder::decode_into;
use numpy::{PyArray4, PyArrayMethods};
use pyo3::prelude::*;

use crate::error::DataFormatError;

/// Decode the image files `paths` into `out`, uint8 (len(paths), 3, size, size) and C-contiguous (a
/// memory-mapped cache file, say), with `workers` threads and the GIL released. Each file's format is read
/// from its header; every colour type becomes RGB, the EXIF orientation is applied, the shorter side is
/// resized to `size` (triangle/bilinear filter) and the centre square is cropped. Returns the files that
/// failed as `(index, message)` pairs, the message naming the file; their images are zeros. Only regular
/// files are read; a truncated JPEG and an image above `MAX_PIXELS` (as decoded or as resized) are failures.
#[pyfunction]
#[pyo3(signature = (paths, out, workers = 2))]
pub fn decode_images(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    out: Bound<'_, PyArray4<u8>>,
    workers: usize,
) -> PyResult<Vec<(usize, String)>> {
    // Checked, not assumed: borrowing a read-only array for writing would panic.
    let mut out = out.try_readwrite().map_err(|e| {
        DataFormatError::new_err(format!("out cannot be written ({e}); pass a writable uint8 array, e.g. np.zeros"))
    })?;
    let shape = out.as_array().shape().to_vec();
    if shape[0] != paths.len() || shape[1] != 3 || shape[2] != shape[3] || shape[2] == 0 {
        return Err(DataFormatError::new_err(format!(
            "out must have shape ({}, 3, size, size), got {shape:?}",
            paths.len()
        )));
    }
    let size = u32::try_from(shape[2]).map_err(|_| DataFormatError::new_err("size does not fit 32 bits"))?;
    if workers > mdarts_core::loader::MAX_WORKERS {
        return Err(DataFormatError::new_err(format!(
            "workers = {workers} is above the limit of {} threads (MAX_WORKERS)",
            mdarts_core::loader::MAX_WORKERS
        )));
    }
    let buf = out.as_slice_mut().map_err(|_| DataFormatError::new_err("out must be C-contiguous"))?;
    let done = AtomicUsize::new(0);
    let failed = py.allow_threads(|| decode_into(&paths, size, workers, buf, &done));
    Ok(failed.into_iter().map(|(i, e)| (i, e.to_string())).collect())
}
