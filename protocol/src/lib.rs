//! Kiln's vocabulary: what every identifier and message is.
//!
//! Pure: no I/O, no async runtime, no networking. Everything here can be
//! tested and benchmarked on its own, and everything a peer sends is decoded
//! through [`wire::decode`] with a size limit.

pub mod build;
pub mod contrib;
pub mod coord;
pub mod hash;
pub mod messages;
pub mod ranges;
pub mod recipe;
pub mod sign;
pub mod system;
pub mod wire;

#[cfg(test)]
mod decode_fuzz;

pub use build::{build_key, Attestation};
pub use hash::{Hash, ParseHashError};
pub use recipe::{OptionError, OptionSpec, PublisherSignature, Recipe, RecipeError, Source};
pub use sign::{PublicKey, SecretKey, SignError, Signable, Signature, Signed};
pub use system::{Constraint, Requirements, SystemInfo};
pub use wire::WireError;
