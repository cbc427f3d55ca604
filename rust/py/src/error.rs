//! The one place where core errors become Python exceptions.
//!
//! Every custom exception derives from `MdartsError`, itself a `ValueError`; a missing file is a
//! `FileNotFoundError` and other I/O failures an `OSError`.

use mdarts_core::{DataError, DeriveError as CoreDeriveError, GenotypeError as CoreGenotypeError, SpaceError};
use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;

create_exception!(_core, MdartsError, PyValueError, "Base class of every mdarts-rs error; a ValueError.");
create_exception!(_core, SearchSpaceError, MdartsError, "A bad search-space or layout request.");
create_exception!(_core, GenotypeError, MdartsError, "An invalid or unparsable genotype.");
create_exception!(_core, DeriveError, MdartsError, "Weights that cannot be derived into a genotype.");
create_exception!(_core, DataFormatError, MdartsError, "A CIFAR-10 file or data argument that is not valid.");

/// Convert a core result into a Python result.
pub trait IntoPy<T> {
    /// The conversion.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, SpaceError> {
    fn py(self) -> PyResult<T> {
        self.map_err(|e| SearchSpaceError::new_err(e.to_string()))
    }
}

impl<T> IntoPy<T> for Result<T, CoreGenotypeError> {
    fn py(self) -> PyResult<T> {
        self.map_err(|e| GenotypeError::new_err(e.to_string()))
    }
}

impl<T> IntoPy<T> for Result<T, CoreDeriveError> {
    fn py(self) -> PyResult<T> {
        self.map_err(|e| DeriveError::new_err(e.to_string()))
    }
}

impl<T> IntoPy<T> for Result<T, DataError> {
    fn py(self) -> PyResult<T> {
        self.map_err(|e| match e {
            DataError::Missing { .. } => PyFileNotFoundError::new_err(e.to_string()),
            DataError::Io { .. } => PyOSError::new_err(e.to_string()),
            DataError::Format { .. } | DataError::Argument(_) => DataFormatError::new_err(e.to_string()),
        })
    }
}

/// Register the exception classes on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("MdartsError", py.get_type::<MdartsError>())?;
    m.add("SearchSpaceError", py.get_type::<SearchSpaceError>())?;
    m.add("GenotypeError", py.get_type::<GenotypeError>())?;
    m.add("DeriveError", py.get_type::<DeriveError>())?;
    m.add("DataFormatError", py.get_type::<DataFormatError>())?;
    Ok(())
}
