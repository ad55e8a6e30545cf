//! The lock (exact inputs) and the manifest (what a build produced), as stable JSON.
//!
//! Field order is the struct order and never changes within a schema version, so diffs of
//! these files read well and equal inputs give byte-equal files.

use std::path::{Path, PathBuf};

use crate::hash::Sha256;
use crate::recipe::{Options, RuleOutcome};
use crate::treehash::TreeHash;

/// Current schema of locks and manifests.
pub const SCHEMA: u32 = 1;

/// One exact package.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    /// Path in the repository, as in the Packages `Filename` field.
    pub filename: String,
    pub size: u64,
    pub sha256: Sha256,
}

/// Everything needed to rebuild the same layer bit for bit.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lock {
    pub schema: u32,
    pub repository: String,
    pub suite: String,
    pub component: String,
    pub architecture: String,
    /// Fingerprint of the key whose signature vouched for the index.
    pub signed_by: String,
    pub packages: Vec<LockedPackage>,
    pub recipe_sha256: Sha256,
    pub options: Options,
}

/// What one recipe rule removed, in brief.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Removed {
    pub rule: String,
    pub why: String,
    pub paths: usize,
    pub files: u64,
    pub bytes: u64,
}

impl From<&RuleOutcome> for Removed {
    fn from(o: &RuleOutcome) -> Self {
        Removed { rule: o.rule.clone(), why: o.why.clone(), paths: o.paths.len(), files: o.files, bytes: o.bytes }
    }
}

/// `BUILD_DIR/.ddslug/manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub ddslug_version: String,
    pub lock: Lock,
    /// STACK at build time (informational: not an input of the layer).
    pub stack: Option<String>,
    pub layer_key: Sha256,
    /// Tree hash of everything ddslug put under `.apt`.
    pub tree_hash: TreeHash,
    pub files: u64,
    pub bytes: u64,
    pub removed: Vec<Removed>,
    /// pkg-config files whose `prefix=` was made relative to their location.
    pub pkgconfig: Vec<String>,
}

/// A manifest or lock file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a ddslug {what} (schema {SCHEMA}): {reason}")]
    Parse { path: PathBuf, what: &'static str, reason: String },
}

/// Pretty JSON with a trailing newline.
pub fn to_json<T: serde::Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// Reads a manifest.
pub fn read_manifest(path: &Path) -> Result<Manifest, ManifestError> {
    read_json(path, "manifest")
}

/// Reads a lock file.
pub fn read_lock(path: &Path) -> Result<Lock, ManifestError> {
    read_json(path, "lock file")
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &'static str) -> Result<T, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|e| ManifestError::Parse { path: path.into(), what, reason: e.to_string() })
}
