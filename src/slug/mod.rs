//! The slug stage: a layer becomes BUILD_DIR's `.apt`, and the proof that it is exact.
//!
//! `materialize` links (or copies) a layer's tree, checking each reused file by content;
//! `install` moves the staged result into BUILD_DIR atomically; `manifest` is the lock and
//! the record of what was built; `verify` re-hashes a slug against references it cannot
//! forge.

pub mod install;
pub mod manifest;
pub mod materialize;
pub mod foreign;
pub mod verify;
