//! The Omnibus build manifest: Omnibus, which builds the agent package, writes the list of
//! the software it built in (name, locked and described version, licence, source) as
//! `version-manifest.json` into the install directory. Its `software` entries become SBOM
//! components. The manifest names no files, so what the strip recipe did to each is not known.
//!
//! Contract: read through a directory descriptor that never follows a symlink, at most
//! [`MANIFEST_LIMIT`] bytes; a manifest over the limit or in another format is a note in the
//! SBOM, not a failed build.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::collect::{MAX_DISTRIBUTIONS, OmnibusSoftware, Parent, Reader, SbomError, bounded, open_parent};
use crate::fsat::Dir;

/// Where Omnibus writes its build manifest, relative to the layer root.
pub const OMNIBUS_MANIFEST: &str = "opt/datadog-agent/version-manifest.json";
/// The largest Omnibus build manifest read (the agent's is about 100 KB).
pub const MANIFEST_LIMIT: u64 = 16 << 20;

/// The `software` entries of the Omnibus build manifest, if the layer has one.
pub fn software(tree: &Dir, tree_path: &Path, notes: &mut Vec<String>) -> Result<Vec<OmnibusSoftware>, SbomError> {
    let (parent, name) = OMNIBUS_MANIFEST.rsplit_once('/').unwrap_or(("", OMNIBUS_MANIFEST));
    let Parent::Open(dir) = open_parent(tree, tree_path, parent.as_bytes())? else { return Ok(Vec::new()) };
    let read = Reader { tree_path, rel: parent.as_bytes() };
    let Some(f) = read.open(&dir, name, notes) else { return Ok(Vec::new()) };
    let mut bytes = Vec::new();
    f.take(MANIFEST_LIMIT + 1).read_to_end(&mut bytes).map_err(|e| read.io(e))?;
    if bytes.len() as u64 > MANIFEST_LIMIT {
        notes.push(format!("{OMNIBUS_MANIFEST} is larger than {MANIFEST_LIMIT} bytes, ddslug's limit: its components are not listed"));
        return Ok(Vec::new());
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        software: BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        locked_version: Option<serde_json::Value>,
        described_version: Option<serde_json::Value>,
        license: Option<serde_json::Value>,
    }
    let manifest: Manifest = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            notes.push(format!("{OMNIBUS_MANIFEST} is not an Omnibus build manifest ({e}): its components are not listed"));
            return Ok(Vec::new());
        }
    };
    if manifest.software.len() > MAX_DISTRIBUTIONS {
        notes.push(format!("{OMNIBUS_MANIFEST} names more than {MAX_DISTRIBUTIONS} components, ddslug's limit: they are not listed"));
        return Ok(Vec::new());
    }
    let text = |v: &Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(bounded(s)),
        _ => None,
    };
    Ok(manifest
        .software
        .iter()
        .map(|(name, e)| OmnibusSoftware {
            name: bounded(name),
            // A described version ("3.0.15") reads better than a locked git commit.
            version: text(&e.described_version).or_else(|| text(&e.locked_version)),
            license: text(&e.license).filter(|l| l != "Unspecified"),
            manifest: OMNIBUS_MANIFEST.into(),
        })
        .collect())
}
