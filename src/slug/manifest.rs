//! The lock (exact inputs) and the manifest (what a build produced), as stable JSON.
//!
//! Field order is the struct order and never changes within a schema version, so diffs of
//! these files read well and equal inputs give byte-equal files.

use std::path::{Path, PathBuf};

use crate::hash::Sha256;
use crate::unpack::recipe::{Options, RuleOutcome};
use crate::store::treehash::TreeHash;

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
    /// SHA-256 of `.ddslug/tree.json`, the entry list: a slug cannot change a file and its
    /// entry together without this disagreeing. (This and the next two are absent from
    /// manifests written before they existed; `verify` then says what it could not check.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_json_sha256: Option<Sha256>,
    /// SHA-256 of `.profile.d/datadog.sh`, the dyno start script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_script_sha256: Option<Sha256>,
    /// SHA-256 of `.ddslug/bin/ddslug`, the binary that runs dyno start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_sha256: Option<Sha256>,
    /// SHA-256 of `.ddslug/sbom.cdx.json`, the CycloneDX SBOM ([`crate::sbom`]). Absent from
    /// manifests of slugs built before SBOMs (they have no such file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sbom_sha256: Option<Sha256>,
    /// SHA-256 of `.ddslug/foreign.json`, the entries other buildpacks had put in `.apt`
    /// before ddslug installed ([`crate::slug::foreign`]); absent when there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_json_sha256: Option<Sha256>,
}

/// The largest manifest or lock file read (a real one is a few KB): a bigger file is not one.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// A manifest or lock file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path} is not a ddslug {what} (schema {SCHEMA}): {reason}")]
    Parse { path: PathBuf, what: &'static str, reason: String },
    #[error("{path} is larger than {limit} bytes, the most a ddslug {what} may be; it is not one")]
    TooBig { path: PathBuf, what: &'static str, limit: u64 },
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
    let bytes = read_bounded(path, MAX_MANIFEST_BYTES).map_err(|e| match e {
        Bounded::Io(error) => ManifestError::Io { path: path.into(), error },
        Bounded::TooBig => ManifestError::TooBig { path: path.into(), what, limit: MAX_MANIFEST_BYTES },
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ManifestError::Parse { path: path.into(), what, reason: e.to_string() })
}

/// Why [`read_bounded`] gave nothing.
#[derive(Debug)]
pub enum Bounded {
    Io(std::io::Error),
    /// The file holds more than the limit.
    TooBig,
}

/// The whole file at `path`, if it holds at most `limit` bytes; never more than `limit + 1`
/// bytes are read, whatever its size says.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, Bounded> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(Bounded::Io)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(Bounded::Io)?;
    if bytes.len() as u64 > limit {
        return Err(Bounded::TooBig);
    }
    Ok(bytes)
}
