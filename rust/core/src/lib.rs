//! mdarts-core: the pure-Rust core of mdarts-rs, an implementation of multi-level differentiable
//! architecture search with heuristic entropy (Li, Chen, Sun 2021) on top of DARTS (Liu et al. 2019).
//!
//! This crate knows nothing of Python or torch: search space and α layouts ([`space`]), genotypes
//! ([`genotype`]), derivation ([`derive`]), enumeration and sampling ([`enumerate`]) and the CIFAR-10 data
//! pipeline ([`cifar`], [`augment`], [`loader`]).

pub mod augment;
pub mod cifar;
pub mod derive;
pub mod enumerate;
pub mod error;
pub mod files;
pub mod folder;
pub mod genotype;
mod genotype_text;
pub mod loader;
pub mod rng;
pub mod space;

pub use error::{DataError, DeriveError, GenotypeError, SpaceError};
pub use genotype::{CellGenotype, NetworkGenotype};
pub use space::{AlphaLayout, AlphaMode, PRIMITIVES};
