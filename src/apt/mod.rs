//! The apt repository client: signed Release files, Packages indexes, Debian versions.

pub mod packages;
pub mod release;
pub mod version;
