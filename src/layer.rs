//! Layers: the unpacked, stripped agent tree, stored under a key made of everything that
//! decides its content.
//!
//! The key is the SHA-256 of a canonical JSON description of the inputs: the .deb hashes,
//! the recipe text's hash, the options the recipe reads, the agent-wrapper's hash and
//! [`LAYER_FORMAT`]. Change any of them and the key changes, so a stale layer is never
//! reused and nobody needs to purge the cache. BUILD_DIR, CACHE_DIR and STACK are not inputs.
//!
//! Contract: a layer directory is only ever created by renaming a complete, hashed staging
//! tree into place, and its `<key>.json` is written after it; a layer without its json is
//! debris and is rebuilt.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::fetch::Progress;
use crate::hash::Sha256;
use crate::layerindex::LayerIndex;
use crate::recipe::{Options, Recipe, RuleOutcome, StripFilter, merge_outcomes};
use crate::store::{Store, StoreError, remove_any};
use crate::treehash::{FileId, TreeHash, scan_tree_known};
use crate::xzseek::BlockStats;

/// Bump when the way a layer is produced from the same inputs, or what is stored with it,
/// changes (2: the binary `.index` replaced `.mtimes.json`; 3: directories are stored
/// owner-accessible, their exact modes in the index; 4: the index records each file's xxh3,
/// and `<key>.json` the SHA-256 of `<key>.tree.json`). Older layers get other keys: they are
/// rebuilt, never read with the wrong format.
pub const LAYER_FORMAT: u32 = 4;

/// Why a layer could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Deb(#[from] crate::deb::DebError),
    #[error(transparent)]
    Recipe(#[from] crate::recipe::RecipeError),
    #[error(transparent)]
    Tree(#[from] crate::treehash::TreeError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("{path}: the download did not complete or did not match its SHA-256; nothing was stored. Run the build again (it resumes the download)")]
    Download { path: PathBuf },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> LayerError + '_ {
    move |source| LayerError::Io { path: path.to_owned(), source }
}

/// One .deb that goes into a layer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DebInput {
    pub package: String,
    pub version: String,
    pub sha256: Sha256,
}

/// Everything that decides a layer's content.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerInputs {
    pub format: u32,
    pub debs: Vec<DebInput>,
    pub recipe_sha256: Sha256,
    pub options: Options,
    pub wrapper_sha256: Sha256,
}

impl LayerInputs {
    /// The layer key: SHA-256 of the inputs' canonical JSON (struct order is fixed).
    pub fn key(&self) -> Sha256 {
        let json = serde_json::to_vec(self).unwrap_or_default();
        Sha256::of(&json)
    }
}

/// What a stored layer holds (`layers/<key>.json`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LayerInfo {
    pub key: Sha256,
    pub inputs: LayerInputs,
    pub tree_hash: TreeHash,
    pub files: u64,
    pub bytes: u64,
    pub removed: Vec<RuleOutcome>,
    /// pkg-config files whose prefix was made relative to their own location.
    pub pkgconfig: Vec<String>,
    /// `<key>.tree.json` as it was stored. Slugs get a hard link to it while it still
    /// looks like this (layers stored without it have it copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_file: Option<FileStamp>,
    /// SHA-256 of `<key>.tree.json` as stored: what a slug's manifest records for its copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_sha256: Option<Sha256>,
}

/// The size and mtime of a stored file: an in-place edit changes the mtime. (Not the inode,
/// as [`crate::treehash::FileId`] has: a cache restored from an archive keeps sizes and
/// mtimes, not inodes.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    pub size: u64,
    pub mtime: (i64, i64),
}

impl FileStamp {
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::symlink_metadata(path)?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok(FileStamp { size: meta.len(), mtime: (meta.mtime(), meta.mtime_nsec()) })
    }
}

/// Where the layer with this key lives.
pub fn layer_dir(store: &Store, key: &Sha256) -> PathBuf {
    store.root().join("layers").join(key.hex())
}

fn info_path(store: &Store, key: &Sha256) -> PathBuf {
    store.root().join("layers").join(format!("{}.json", key.hex()))
}

/// The layer's entry list (`layers/<key>.tree.json`), for verification and slug diffs.
pub fn entries_path(store: &Store, key: &Sha256) -> PathBuf {
    store.root().join("layers").join(format!("{}.tree.json", key.hex()))
}

/// The layer's index (`layers/<key>.index`, see [`crate::layerindex`]): its entries by
/// directory with what each looked like on disk when it was stored. Slugs share the layer's
/// files through hard links, so an in-place edit of a slug file shows up against it.
pub fn index_path(store: &Store, key: &Sha256) -> PathBuf {
    store.root().join("layers").join(format!("{}.index", key.hex()))
}

/// A stored layer's index, not checked against the disk yet; `None` when it is missing or
/// damaged.
pub fn load_index(store: &Store, key: &Sha256) -> Option<LayerIndex> {
    LayerIndex::decode(fs::read(index_path(store, key)).ok()?)
}

/// Marks a layer as used now (what `gc` reads).
pub fn touch(store: &Store, key: &Sha256) {
    let now = filetime::FileTime::now();
    let _ = filetime::set_file_mtime(info_path(store, key), now);
}

/// A stored layer, if complete.
pub fn load(store: &Store, key: &Sha256) -> Result<Option<LayerInfo>, LayerError> {
    let path = info_path(store, key);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(&path)(e)),
    };
    if !layer_dir(store, key).is_dir() {
        return Ok(None);
    }
    match serde_json::from_str::<LayerInfo>(&text) {
        Ok(info) if info.key == *key => Ok(Some(info)),
        // A damaged description is treated as no layer: it will be rebuilt.
        _ => Ok(None),
    }
}

/// A package to build a layer from: its blob, verified, or still downloading.
pub struct DebBlob<'a> {
    pub path: PathBuf,
    /// Names the package in errors (its file name; `path` may be a partial download or a blob).
    pub label: String,
    /// Set while the blob is being downloaded into `path`; its bytes are trusted only once
    /// the download has completed and matched.
    pub downloading: Option<&'a Progress>,
}

/// A layer just built.
pub struct Built {
    pub info: LayerInfo,
    /// Its index.
    pub index: LayerIndex,
    /// For each multi-block data.tar.xz: how many blocks were decoded.
    pub xz_blocks: Vec<BlockStats>,
}

/// Unpacks the blobs, applies the recipe, adds the wrapper and stores the result. A blob
/// still downloading is unpacked as it arrives; nothing is stored unless its download
/// completes and matches.
pub fn build(
    store: &Store,
    inputs: &LayerInputs,
    debs: &[DebBlob],
    recipe: &Recipe,
    wrapper: (&str, &[u8]),
) -> Result<Built, LayerError> {
    let key = inputs.key();
    let staging = store.staging_dir("layer")?;
    let tree = staging.join("tree");
    fs::create_dir(&tree).map_err(io_at(&tree))?;
    // Several packages unpack in parallel, each through the recipe's filter so that removed
    // files are never written; later packages win on conflicts, as with dpkg.
    let parts: Vec<PathBuf> = (0..debs.len()).map(|i| staging.join(format!("part{i}"))).collect();
    type Unpacked = (Vec<RuleOutcome>, HashMap<FileId, crate::hash::Digests>, Option<BlockStats>, HashMap<(u64, u64), u32>);
    let unpacked: Vec<Unpacked> = std::thread::scope(|scope| -> Result<Vec<Unpacked>, LayerError> {
        let handles: Vec<_> = debs
            .iter()
            .zip(&parts)
            .map(|(deb, part)| {
                scope.spawn(move || -> Result<Unpacked, LayerError> {
                    let mut filter = StripFilter::new(recipe, &inputs.options)?;
                    // Stored blobs were verified against the lock's SHA-256; a downloading one
                    // is checked at the end (below).
                    let integrity = match deb.downloading {
                        Some(progress) => crate::deb::Integrity::Downloading(progress),
                        None => crate::deb::Integrity::Verified,
                    };
                    let report = crate::deb::unpack_deb_filtered(&deb.path, &deb.label, part, Some(&mut filter), integrity)?;
                    Ok((filter.outcomes, report.digests, report.xz_blocks, report.dir_modes))
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            all.push(
                handle.join().map_err(|_| LayerError::Json { path: staging.clone(), reason: "unpack thread panicked".into() })??,
            );
        }
        Ok(all)
    })?;
    // What was unpacked while it downloaded counts only once the download matched.
    if let Some(deb) = debs.iter().find(|d| d.downloading.is_some_and(|p| !p.wait_done())) {
        return Err(LayerError::Download { path: deb.path.clone() });
    }
    for part in &parts {
        crate::materialize::merge_into(part, &tree).map_err(|e| LayerError::Io { path: e.path, source: e.source })?;
    }
    let mut removed = recipe.apply(&tree, &inputs.options)?;
    // What each file holds, as hashed while it was written. Files changed since (renamed
    // files keep theirs) no longer match their recorded identity and are read again.
    let mut digests = HashMap::new();
    let (mut xz_blocks, mut dir_modes) = (Vec::new(), HashMap::new());
    for (outcome, written, blocks, modes) in unpacked {
        merge_outcomes(&mut removed, &outcome);
        digests.extend(written);
        xz_blocks.extend(blocks);
        dir_modes.extend(modes);
    }
    let pkgconfig = relocate_pkgconfig(&tree)?;
    let (wrapper_path, wrapper_text) = wrapper;
    let wrapper_dest = tree.join(wrapper_path);
    if let Some(parent) = wrapper_dest.parent() {
        fs::create_dir_all(parent).map_err(io_at(parent))?;
    }
    fs::write(&wrapper_dest, wrapper_text).map_err(io_at(&wrapper_dest))?;
    set_mode(&wrapper_dest, 0o755)?;
    let (scan, mtimes) = scan_tree_known(&tree, &digests, &dir_modes)?;
    let mut info = LayerInfo {
        key,
        inputs: inputs.clone(),
        tree_hash: scan.hash,
        files: scan.files,
        bytes: scan.bytes,
        removed,
        pkgconfig,
        entries_file: None,
        entries_sha256: None,
    };
    let dest = layer_dir(store, &key);
    // A layer dir without json is debris from an interrupted build.
    remove_any(&dest)?;
    fs::rename(&tree, &dest).map_err(io_at(&dest))?;
    let index_bytes = LayerIndex::encode(&scan.entries, &mtimes)
        .ok_or_else(|| LayerError::Json { path: dest.clone(), reason: "a scanned entry has no directory entry".into() })?;
    let tmp_index = staging.join("index");
    fs::write(&tmp_index, &index_bytes).map_err(io_at(&tmp_index))?;
    let index = LayerIndex::decode(index_bytes)
        .ok_or_else(|| LayerError::Json { path: tmp_index.clone(), reason: "the index just written does not read back".into() })?;
    let index_dest = index_path(store, &key);
    fs::rename(&tmp_index, &index_dest).map_err(io_at(&index_dest))?;
    let tmp_entries = staging.join("tree.json");
    let entries_json = serde_json::to_vec(&scan.entries).map_err(|e| LayerError::Json { path: dest.clone(), reason: e.to_string() })?;
    fs::write(&tmp_entries, &entries_json).map_err(io_at(&tmp_entries))?;
    info.entries_sha256 = Some(Sha256::of(&entries_json));
    info.entries_file = Some(FileStamp::of(&tmp_entries).map_err(io_at(&tmp_entries))?);
    let entries_dest = entries_path(store, &key);
    fs::rename(&tmp_entries, &entries_dest).map_err(io_at(&entries_dest))?;
    let json = serde_json::to_vec_pretty(&info).map_err(|e| LayerError::Json { path: dest.clone(), reason: e.to_string() })?;
    let tmp_info = staging.join("info.json");
    fs::write(&tmp_info, json).map_err(io_at(&tmp_info))?;
    let info_dest = info_path(store, &key);
    fs::rename(&tmp_info, &info_dest).map_err(io_at(&info_dest))?;
    remove_any(&staging)?;
    Ok(Built { info, index, xz_blocks })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), LayerError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_at(path))
}

/// Rewrites absolute `prefix=` lines of pkg-config files under the agent's embedded tree to
/// `${pcfiledir}`-relative ones, so the layer holds no install location and pkg-config
/// still resolves to wherever the slug ends up.
fn relocate_pkgconfig(tree: &Path) -> Result<Vec<String>, LayerError> {
    let mut changed = Vec::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io_at(&path))?;
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            if !kind.is_file() || path.extension().is_none_or(|e| e != "pc") {
                continue;
            }
            let rel = path.strip_prefix(tree).map_err(|_| LayerError::Json { path: path.clone(), reason: "outside tree".into() })?;
            let text = fs::read_to_string(&path).map_err(io_at(&path))?;
            if let Some(new) = relocate_pc_text(&text, rel) {
                fs::write(&path, new).map_err(io_at(&path))?;
                changed.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    changed.sort();
    Ok(changed)
}

/// The relocated text of a .pc file at `rel` (relative to the root of the tree), if its
/// `prefix=` is an absolute path.
pub fn relocate_pc_text(text: &str, rel: &Path) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 32);
    let mut changed = false;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        if let Some(prefix) = body.strip_prefix("prefix=")
            && let Some(abs) = prefix.strip_prefix('/') {
                // The prefix is a path inside the tree (the tree is the slug's .apt root):
                // walk from the .pc file's directory to it.
                let from: Vec<String> = rel
                    .parent()
                    .map(|p| p.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                let to: Vec<&str> = abs.split('/').filter(|c| !c.is_empty()).collect();
                let common = from.iter().zip(&to).take_while(|(a, b)| a.as_str() == **b).count();
                let mut parts: Vec<&str> = vec![".."; from.len() - common];
                parts.extend(&to[common..]);
                let target = if parts.is_empty() { String::new() } else { format!("/{}", parts.join("/")) };
                out.push_str(&format!("prefix=${{pcfiledir}}{target}\n"));
                changed = true;
                continue;
            }
        out.push_str(line);
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkgconfig_prefix_becomes_relative() {
        let text = "prefix=/opt/datadog-agent/embedded\nlibdir=${prefix}/lib\n";
        let rel = Path::new("opt/datadog-agent/embedded/lib/pkgconfig/libffi.pc");
        let new = relocate_pc_text(text, rel).unwrap();
        assert_eq!(
            new,
            "prefix=${pcfiledir}/../..\nlibdir=${prefix}/lib\n"
        );
        assert!(relocate_pc_text("prefix=${pcfiledir}/..\n", rel).is_none());
        let usr = relocate_pc_text("prefix=/usr\n", rel).unwrap();
        assert_eq!(usr, "prefix=${pcfiledir}/../../../../../usr\n");
    }

    #[test]
    fn key_changes_with_every_input() {
        let base = LayerInputs {
            format: LAYER_FORMAT,
            debs: vec![DebInput { package: "a".into(), version: "1".into(), sha256: Sha256::of(b"a") }],
            recipe_sha256: Sha256::of(b"recipe"),
            options: Options { version: vec![7, 1], major: 7, python: 3, apm: true, process_agent: false },
            wrapper_sha256: Sha256::of(b"w"),
        };
        let mut variants = vec![base.clone()];
        let mut v = base.clone();
        v.debs[0].sha256 = Sha256::of(b"b");
        variants.push(v);
        let mut v = base.clone();
        v.recipe_sha256 = Sha256::of(b"recipe2");
        variants.push(v);
        let mut v = base.clone();
        v.options.apm = false;
        variants.push(v);
        let mut v = base.clone();
        v.format += 1;
        variants.push(v);
        let mut v = base.clone();
        v.wrapper_sha256 = Sha256::of(b"w2");
        variants.push(v);
        let keys: std::collections::BTreeSet<_> = variants.iter().map(|v| v.key()).collect();
        assert_eq!(keys.len(), variants.len());
        assert_eq!(base.key(), base.clone().key());
    }
}
