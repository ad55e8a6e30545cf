//! Proof that a slug is what its manifest says: `verify` re-hashes `.apt` against the entry
//! list recorded at build time; `verify --rebuild` rebuilds the layer from the locked blobs
//! in an empty scratch store and compares tree hashes (what a cache purge would produce);
//! `diff` compares two slugs or manifests.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::compile::{RECIPE, Reuse, build_layer};
use crate::fetch::{Downloaded, FetchOptions, Fetcher};
use crate::hash::Sha256;
use crate::manifest::{Manifest, read_manifest};
use crate::report::Reporter;
use crate::store::{Store, remove_any};
use crate::treehash::{EntryKind, PathBytes, TreeDiff, TreeEntry, TreeHash, diff, scan_tree};

/// The result of `verify`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyReport {
    pub build_dir: PathBuf,
    pub manifest_tree_hash: TreeHash,
    pub actual_tree_hash: TreeHash,
    /// Differences that dyno start does not explain.
    pub diff: TreeDiff,
    /// Paths dyno start writes (datadog.yaml, conf.d, logs, restored symlinks): reported,
    /// not counted as differences.
    pub written_at_dyno_start: Vec<PathBytes>,
    pub identical: bool,
}

/// Where the slug's ddslug files are.
fn slug_files(build_dir: &Path) -> (PathBuf, PathBuf) {
    (build_dir.join(".ddslug/manifest.json"), build_dir.join(".ddslug/tree.json"))
}

fn read_entries(path: &Path) -> Result<Vec<TreeEntry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a ddslug entry list", path.display()))
}

/// Re-hashes `BUILD_DIR/.apt` and lists every added, missing or changed path.
pub fn verify(build_dir: &Path) -> Result<VerifyReport> {
    let (manifest_path, tree_path) = slug_files(build_dir);
    let manifest = read_manifest(&manifest_path)?;
    let expected = read_entries(&tree_path)?;
    let scan = scan_tree(&build_dir.join(".apt")).with_context(|| format!("scanning {}/.apt", build_dir.display()))?;
    let mut d = diff(&expected, &scan.entries);
    let mut runtime = Vec::new();
    d.added.retain(|e| {
        let keep = !written_at_dyno_start(&e.path, e);
        if !keep {
            runtime.push(e.path.clone());
        }
        keep
    });
    let added_paths: Vec<PathBytes> = runtime.clone();
    d.removed.retain(|e| {
        // DD_DISABLE_HOST_METRICS renames conf.yaml.default to conf.yaml.default_disabled.
        let disabled = PathBytes::from([e.path.as_bytes(), b"_disabled"].concat());
        let renamed = added_paths.contains(&disabled);
        if renamed {
            runtime.push(e.path.clone());
        }
        !renamed
    });
    // The restored symlinks replace nothing the build kept; a changed entry is always real.
    let identical = d.is_empty();
    Ok(VerifyReport {
        build_dir: build_dir.to_owned(),
        manifest_tree_hash: manifest.tree_hash,
        actual_tree_hash: scan.hash,
        diff: d,
        written_at_dyno_start: runtime,
        identical,
    })
}

/// Whether an entry that is not in the build's list is one dyno start writes.
fn written_at_dyno_start(path: &[u8], e: &TreeEntry) -> bool {
    const DIRS: [&str; 4] = ["etc/datadog-agent/", "var/log/datadog", "opt/datadog-agent/run/", "var/"];
    const LINKS: [&str; 5] = [
        "opt/datadog-agent/embedded/ssl/cert.pem",
        "opt/datadog-agent/embedded/bin/python",
        "opt/datadog-agent/embedded/bin/python-config",
        "opt/datadog-agent/embedded/bin/pip",
        "opt/datadog-agent/bin/agent/process-agent",
    ];
    let is_link = matches!(e.kind, EntryKind::Symlink { .. });
    (is_link && LINKS.iter().any(|l| l.as_bytes() == path))
        || DIRS.iter().any(|d| path.starts_with(d.as_bytes()) || path == d.trim_end_matches('/').as_bytes())
}

/// The result of `verify --rebuild`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RebuildReport {
    pub manifest_tree_hash: TreeHash,
    pub rebuilt_tree_hash: TreeHash,
    pub rebuilt_layer_key: Sha256,
    pub matches: bool,
}

/// Rebuilds the slug's layer from its locked blobs in an empty scratch store. Blobs come
/// from `cache` when it has them (checked by hash), else from the locked repository.
pub fn rebuild(build_dir: &Path, cache: Option<&Path>, offline: Option<String>) -> Result<RebuildReport> {
    let (manifest_path, _) = slug_files(build_dir);
    let manifest: Manifest = read_manifest(&manifest_path)?;
    let recipe_sha256 = Sha256::of(RECIPE.as_bytes());
    if manifest.lock.recipe_sha256 != recipe_sha256 {
        anyhow::bail!(
            "the slug was built with recipe {} but this ddslug has recipe {recipe_sha256}; \
             verify --rebuild with the ddslug in the slug (.ddslug/bin/ddslug)",
            manifest.lock.recipe_sha256
        );
    }
    let scratch_root = std::env::temp_dir().join(format!("ddslug-rebuild.{}", std::process::id()));
    remove_any(&scratch_root)?;
    let result = (|| -> Result<RebuildReport> {
        let scratch = Store::open(&scratch_root)?;
        let _lock = scratch.lock()?;
        if let Some(cache) = cache {
            let source = Store::open(cache)?;
            for p in &manifest.lock.packages {
                let expected = Downloaded { sha256: p.sha256, size: p.size };
                if source.check_blob(expected)? {
                    std::fs::copy(source.blob_path(&p.sha256), scratch.blob_path(&p.sha256))
                        .context("copying a blob into the scratch store")?;
                }
            }
        }
        let fetcher = Fetcher::new(FetchOptions { offline, ..FetchOptions::default() });
        let built = build_layer(&scratch, &fetcher, &manifest.lock, &Reporter { quiet: true }, Reuse::Never)?;
        Ok(RebuildReport {
            manifest_tree_hash: manifest.tree_hash,
            rebuilt_tree_hash: built.info.tree_hash,
            rebuilt_layer_key: built.info.key,
            matches: built.info.tree_hash == manifest.tree_hash && built.info.key == manifest.layer_key,
        })
    })();
    let _ = remove_any(&scratch_root);
    result
}

/// What differs between two slugs (or manifests).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SlugDiff {
    pub summary: Vec<String>,
    pub tree: Option<TreeDiff>,
}

/// A slug directory or a manifest file, with its entry list when one is beside it.
fn load_side(path: &Path) -> Result<(Manifest, Option<Vec<TreeEntry>>)> {
    let (manifest_path, tree_path) = if path.is_dir() {
        slug_files(path)
    } else {
        (path.to_owned(), path.with_file_name("tree.json"))
    };
    let manifest = read_manifest(&manifest_path)?;
    let entries = if tree_path.exists() { Some(read_entries(&tree_path)?) } else { None };
    Ok((manifest, entries))
}

/// Compares two slugs or manifests: packages, options, layer, then paths.
pub fn diff_slugs(a: &Path, b: &Path) -> Result<SlugDiff> {
    let (ma, ea) = load_side(a)?;
    let (mb, eb) = load_side(b)?;
    let mut summary = Vec::new();
    let pa: Vec<String> = ma.lock.packages.iter().map(|p| format!("{} {}", p.name, p.version)).collect();
    let pb: Vec<String> = mb.lock.packages.iter().map(|p| format!("{} {}", p.name, p.version)).collect();
    if pa != pb {
        summary.push(format!("packages: {} -> {}", pa.join(", "), pb.join(", ")));
    }
    if ma.lock.options != mb.lock.options {
        summary.push(format!(
            "options: python {} apm {} process_agent {} -> python {} apm {} process_agent {}",
            ma.lock.options.python,
            ma.lock.options.apm,
            ma.lock.options.process_agent,
            mb.lock.options.python,
            mb.lock.options.apm,
            mb.lock.options.process_agent
        ));
    }
    if ma.lock.recipe_sha256 != mb.lock.recipe_sha256 {
        summary.push(format!("recipe: {} -> {}", ma.lock.recipe_sha256, mb.lock.recipe_sha256));
    }
    if ma.lock.repository != mb.lock.repository {
        summary.push(format!("repository: {} -> {}", ma.lock.repository, mb.lock.repository));
    }
    summary.push(if ma.tree_hash == mb.tree_hash {
        format!("trees identical ({})", ma.tree_hash)
    } else {
        format!(
            "trees differ: {} files, {} bytes -> {} files, {} bytes",
            ma.files, ma.bytes, mb.files, mb.bytes
        )
    });
    let tree = match (ea, eb) {
        (Some(a), Some(b)) => {
            let d = diff(&a, &b);
            summary.push(format!("{} added, {} removed, {} changed", d.added.len(), d.removed.len(), d.changed.len()));
            Some(d)
        }
        _ => None,
    };
    Ok(SlugDiff { summary, tree })
}

/// Size of an entry for listings.
pub fn entry_size(e: &TreeEntry) -> u64 {
    match e.kind {
        EntryKind::File { size, .. } => size,
        _ => 0,
    }
}
