//! The apt repository client: signed Release files, Packages indexes, Debian versions.

pub mod client;
pub mod deb822;
pub mod datadog_keys;
pub mod packages;
pub mod release;
pub mod resolve;
pub mod signature;
pub mod version;
