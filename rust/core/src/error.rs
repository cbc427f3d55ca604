//! Error types of the core, one enum per area; `rust/py/src/error.rs` maps them to Python exceptions.

use std::path::PathBuf;

use thiserror::Error;

/// Errors about the search space and α layouts.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpaceError {
    /// The α mode is neither `shared` nor `multilevel`.
    #[error("unknown alpha mode '{0}' (expected 'shared' or 'multilevel')")]
    UnknownAlphaMode(String),
    /// The network is too shallow for every table to be read by some cell.
    #[error("a {mode} network of {layers} cells has no cell for table '{table}': it needs at least {minimum} cells")]
    TooFewLayers {
        /// Mode name.
        mode: &'static str,
        /// Requested depth.
        layers: usize,
        /// Smallest depth that works.
        minimum: usize,
        /// A table that no cell would read.
        table: String,
    },
    /// A network deeper than [`crate::space::MAX_LAYERS`] cells.
    #[error("layers = {layers} is above the limit of {maximum} cells (MAX_LAYERS); DARTS searches with 8 cells and evaluates with 20")]
    TooManyLayers {
        /// Requested depth.
        layers: usize,
        /// The limit, [`crate::space::MAX_LAYERS`].
        maximum: usize,
    },
    /// A rank outside `[0, size)`.
    #[error("rank {rank} is outside the space [0, {size})")]
    RankOutOfRange {
        /// The rank asked for.
        rank: String,
        /// Size of the space.
        size: String,
    },
}

/// Errors about genotypes: building, validating, parsing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GenotypeError {
    /// A structural problem, located by `at` (e.g. `normal_low.edges[3]`).
    #[error("{at}: {message}")]
    Invalid {
        /// Where in the genotype.
        at: String,
        /// What is wrong.
        message: String,
    },
    /// Text that does not parse (DARTS text or JSON).
    #[error("cannot parse genotype: {0}")]
    Parse(String),
}

impl GenotypeError {
    pub(crate) fn invalid(at: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { at: at.into(), message: message.into() }
    }
}

/// Errors about deriving a genotype from α weights.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeriveError {
    /// The weights table has the wrong shape.
    #[error("{table}: weights must have shape ({rows}, {cols}), got {got}")]
    Shape {
        /// Table name.
        table: String,
        /// Expected rows.
        rows: usize,
        /// Expected columns.
        cols: usize,
        /// Shape received, as text.
        got: String,
    },
    /// A NaN or infinite weight.
    #[error("{table}: weight at edge {edge}, op '{op}' is {value}; derivation needs finite weights")]
    NotFinite {
        /// Table name.
        table: String,
        /// Edge row.
        edge: usize,
        /// Op name.
        op: &'static str,
        /// The bad value, as text.
        value: String,
    },
    /// The set of tables does not match a layout.
    #[error("{0}")]
    Tables(String),
}

/// Errors about reading and serving CIFAR-10.
#[derive(Debug, Error)]
pub enum DataError {
    /// A file that should exist does not.
    #[error("{path}: file not found ({hint})")]
    Missing {
        /// The missing path.
        path: PathBuf,
        /// What the user should do.
        hint: String,
    },
    /// An I/O error while reading a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file whose content is not valid CIFAR-10.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the record where there is one.
        message: String,
    },
    /// A bad argument (batch size, portion, shapes).
    #[error("{0}")]
    Argument(String),
}
