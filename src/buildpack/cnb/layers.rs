//! The CNB layer files ddslug writes and reads: `<layers>/<layer>.toml` (Layer Content
//! Metadata, Buildpack API 0.10) and the agent layer's metadata.
//!
//! Contract: every file is written through the layers directory's descriptor, all at once (a
//! temp file renamed over the name: a symlink there is replaced, never followed); a restored
//! `<layer>.toml` is read bounded, and one that cannot be read as ours is no metadata (the
//! layer is rebuilt), never an error.

use std::ffi::OsStr;
use std::io::Read;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::fsat::Dir;
use crate::hash::Sha256;
use crate::slug::manifest::Lock;
use crate::store::treehash::TreeHash;

/// The launch and cache layer holding the agent tree (laid out like a slug's `.apt`), its
/// `.ddslug/` (manifest, entry list) and `exec.d/ddslug`.
pub const AGENT_LAYER: &str = "agent";
/// The cache-only layer holding the store (verified blobs, resolutions, built layers) and the
/// pinned ddslug binary, as CACHE_DIR does on Cedar. The spec reserves `build`, `launch` and
/// `store` (they would collide with `build.toml`, `launch.toml` and `store.toml`).
pub const CACHE_LAYER: &str = "ddslug-cache";
/// Names the spec forbids for layers.
pub const RESERVED: [&str; 3] = ["build", "launch", "store"];

/// The largest `<layer>.toml` read (ours are a few KB).
const LAYER_TOML_LIMIT: u64 = 1 << 20;

/// `[types]` of a Layer Content Metadata file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Types {
    #[serde(default)]
    pub launch: bool,
    #[serde(default)]
    pub build: bool,
    #[serde(default)]
    pub cache: bool,
}

/// A `<layer>.toml`: types and the buildpack's own metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerToml<M> {
    #[serde(default)]
    pub types: Types,
    pub metadata: M,
}

/// What the agent layer's metadata records: enough to decide reuse without opening the layer,
/// and what it was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentMetadata {
    /// The store's layer key: every input that decides the tree.
    pub layer_key: Sha256,
    /// The tree hash of the agent tree (equal to `.apt`'s of a Cedar slug with the same lock).
    pub tree_hash: TreeHash,
    /// SHA-256 of the ddslug binary installed as `exec.d/ddslug`.
    pub ddslug_sha256: Sha256,
    pub lock: Lock,
}

/// The cache layer's metadata: which store layout it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMetadata {
    pub store: String,
}

/// The restored `<name>.toml`, if there and readable as ours. The lifecycle restores it
/// without `[types]`.
pub fn read<M: DeserializeOwned>(layers: &Dir, name: &str) -> Option<LayerToml<M>> {
    let file = layers.open_regular(OsStr::new(&format!("{name}.toml"))).ok()?;
    let mut bytes = Vec::new();
    file.take(LAYER_TOML_LIMIT + 1).read_to_end(&mut bytes).ok()?;
    if bytes.len() as u64 > LAYER_TOML_LIMIT {
        return None;
    }
    toml::from_str(std::str::from_utf8(&bytes).ok()?).ok()
}

/// Writes `<name>.toml` with these types and metadata.
pub fn write<M: Serialize>(layers: &Dir, layers_path: &std::path::Path, name: &str, types: Types, metadata: &M) -> Result<()> {
    let file = format!("{name}.toml");
    let text = toml::to_string(&LayerToml { types, metadata }).with_context(|| format!("writing the metadata of layer {name}"))?;
    layers
        .write_via(OsStr::new(&file), text.as_bytes(), 0o644, layers)
        .with_context(|| format!("writing {}", layers_path.join(&file).display()))?;
    Ok(())
}

/// Removes `<name>.toml`: the layer is not part of this build.
pub fn forget(layers: &Dir, layers_path: &std::path::Path, name: &str) -> Result<()> {
    let file = format!("{name}.toml");
    layers.remove_all(OsStr::new(&file)).with_context(|| format!("removing {}", layers_path.join(&file).display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::recipe::Options;

    fn lock() -> Lock {
        Lock {
            schema: crate::slug::manifest::SCHEMA,
            repository: "http://127.0.0.1:1".into(),
            suite: "stable".into(),
            component: "7".into(),
            architecture: "arm64".into(),
            signed_by: "ABCD".into(),
            packages: Vec::new(),
            recipe_sha256: Sha256::of(b"recipe"),
            options: Options { version: vec![7, 81, 2], major: 7, python: 3, apm: true, process_agent: false },
        }
    }

    #[test]
    fn agent_metadata_round_trips_and_restored_files_without_types_read() {
        let dir = tempfile::tempdir().unwrap();
        let layers = Dir::open_given(dir.path()).unwrap();
        let meta = AgentMetadata {
            layer_key: Sha256::of(b"key"),
            tree_hash: TreeHash(Sha256::of(b"tree")),
            ddslug_sha256: Sha256::of(b"bin"),
            lock: lock(),
        };
        write(&layers, dir.path(), AGENT_LAYER, Types { launch: true, cache: true, build: false }, &meta).unwrap();
        let text = std::fs::read_to_string(dir.path().join("agent.toml")).unwrap();
        assert!(text.starts_with("[types]\nlaunch = true\nbuild = false\ncache = true\n"), "{text}");
        let back: LayerToml<AgentMetadata> = read(&layers, AGENT_LAYER).unwrap();
        assert_eq!((back.types, back.metadata), (Types { launch: true, build: false, cache: true }, meta.clone()));
        // As the lifecycle restores it: no [types].
        let restored = text.split_once("[metadata]").map(|(_, m)| format!("[metadata]{m}")).unwrap();
        std::fs::write(dir.path().join("agent.toml"), restored).unwrap();
        let back: LayerToml<AgentMetadata> = read(&layers, AGENT_LAYER).unwrap();
        assert_eq!((back.types, back.metadata), (Types::default(), meta));
        // Someone else's metadata is no metadata.
        std::fs::write(dir.path().join("agent.toml"), "[metadata]\nversion = 3\n").unwrap();
        assert!(read::<AgentMetadata>(&layers, AGENT_LAYER).is_none());
    }

    #[test]
    fn layer_names_avoid_the_reserved_ones() {
        assert!(!RESERVED.contains(&AGENT_LAYER) && !RESERVED.contains(&CACHE_LAYER));
    }
}
