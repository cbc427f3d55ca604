//! `mdarts_rs._core`: the PyO3 layer over `mdarts_core`. It converts arguments, calls the core and converts
//! results; errors cross into Python in `error.rs` alone.

use pyo3::prelude::*;

mod cifar;
mod derive;
mod enumerate;
mod error;
mod folder;
mod genotype;
mod kernels;
mod loader;
mod space;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    error::register(m)?;
    m.add("PRIMITIVES", mdarts_core::PRIMITIVES.to_vec())?;
    m.add("NUM_EDGES", mdarts_core::space::NUM_EDGES)?;
    m.add("STEPS", mdarts_core::space::STEPS)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_LAYERS", mdarts_core::space::MAX_LAYERS)?;
    m.add("MAX_IMAGES", mdarts_core::cifar::MAX_IMAGES)?;
    m.add("MAX_BATCH_SIZE", mdarts_core::loader::MAX_BATCH_SIZE)?;
    m.add("MAX_WORKERS", mdarts_core::loader::MAX_WORKERS)?;
    m.add("MAX_PREFETCH", mdarts_core::loader::MAX_PREFETCH)?;
    m.add("MAX_CROP_PADDING", mdarts_core::augment::MAX_CROP_PADDING)?;
    m.add("MAX_CUTOUT", mdarts_core::augment::MAX_CUTOUT)?;
    m.add("MAX_PIXELS", mdarts_core::folder::MAX_PIXELS)?;
    m.add_class::<space::AlphaLayout>()?;
    m.add_class::<genotype::CellGenotype>()?;
    m.add_class::<genotype::Genotype>()?;
    m.add_class::<genotype::MultiLevelGenotype>()?;
    m.add_function(wrap_pyfunction!(space::search_space_size, m)?)?;
    m.add_function(wrap_pyfunction!(space::derived_cell_count, m)?)?;
    m.add_function(wrap_pyfunction!(space::reduction_indices, m)?)?;
    m.add_function(wrap_pyfunction!(space::edge_index, m)?)?;
    m.add_function(wrap_pyfunction!(genotype::parse_genotype, m)?)?;
    m.add_function(wrap_pyfunction!(derive::derive_cell, m)?)?;
    m.add_function(wrap_pyfunction!(derive::derive_genotype, m)?)?;
    m.add_function(wrap_pyfunction!(enumerate::rank_cell, m)?)?;
    m.add_function(wrap_pyfunction!(enumerate::unrank_cell, m)?)?;
    m.add_function(wrap_pyfunction!(enumerate::rank_genotype, m)?)?;
    m.add_function(wrap_pyfunction!(enumerate::unrank_genotype, m)?)?;
    m.add_function(wrap_pyfunction!(enumerate::sample_cell, m)?)?;
    m.add_function(wrap_pyfunction!(enumerate::sample_genotype, m)?)?;
    cifar::register(m)?;
    m.add_function(wrap_pyfunction!(cifar::load_cifar10_bin, m)?)?;
    m.add_function(wrap_pyfunction!(cifar::load_cifar100_bin, m)?)?;
    m.add_function(wrap_pyfunction!(cifar::search_split, m)?)?;
    m.add_function(wrap_pyfunction!(cifar::augment_images, m)?)?;
    m.add_function(wrap_pyfunction!(folder::decode_images, m)?)?;
    m.add_class::<loader::BatchLoader>()?;
    m.add_class::<loader::EpochIterator>()?;
    m.add_function(wrap_pyfunction!(kernels::kernel_sources, m)?)?;
    Ok(())
}
