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
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};

use crate::fetch::Progress;
use crate::hash::Sha256;
use crate::store::layerindex::LayerIndex;
use crate::unpack::recipe::{Options, Recipe, RuleOutcome, StripFilter, merge_outcomes};
use crate::store::{Store, StoreError};
use crate::store::treehash::{FileId, TreeHash, scan_tree_known};
use crate::unpack::xzseek::BlockStats;

/// Bump when the way a layer is produced from the same inputs, or what is stored with it,
/// changes (2: the binary `.index` replaced `.mtimes.json`; 3: directories are stored
/// owner-accessible, their exact modes in the index; 4: the index records each file's xxh3,
/// and `<key>.json` the SHA-256 of `<key>.tree.json`; 5: `<key>.sbom.json` holds the SBOM's
/// inventory). Older layers get other keys: they are rebuilt, never read with the wrong format.
pub const LAYER_FORMAT: u32 = 5;

/// Why a layer could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Deb(#[from] crate::unpack::deb::DebError),
    #[error(transparent)]
    Recipe(#[from] crate::unpack::recipe::RecipeError),
    #[error(transparent)]
    Tree(#[from] crate::store::treehash::TreeError),
    #[error(transparent)]
    Sbom(#[from] crate::sbom::SbomError),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("{path}: the download did not complete or did not match its SHA-256; nothing was stored. Run the build again (it resumes the download)")]
    Download { path: PathBuf },
    #[error("layer {key}: its tree hash is {actual}, not {expected} as recorded; it was not stored")]
    TreeMismatch { key: Sha256, expected: TreeHash, actual: TreeHash },
    #[error(
        "package {package} ships a symlink at {link} (to {target}) where ddslug {writes}; ddslug never \
         writes through a symlink, so the package is refused. Use another version of the package, or ask \
         its publisher to ship a directory there"
    )]
    SymlinkInTheWay { package: String, link: String, target: String, writes: String },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> LayerError + '_ {
    move |source| LayerError::Io { path: path.to_owned(), error: source }
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
    /// What the package's files declare about the software inside it, gathered while the
    /// layer was built (what [`crate::sbom::for_layer`] renders): here only for a layer just
    /// built; stored beside the record as `<key>.sbom.json`, read only when an SBOM has to be
    /// rendered again ([`crate::sbom::for_stored_layer`]).
    #[serde(skip)]
    pub components: Option<crate::sbom::Inventory>,
}

/// The size and mtime of a stored file: an in-place edit changes the mtime. (Not the inode,
/// as [`crate::store::treehash::FileId`] has: a cache restored from an archive keeps sizes and
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

/// The layer's index (`layers/<key>.index`, see [`crate::store::layerindex`]): its entries by
/// directory with what each looked like on disk when it was stored. Slugs share the layer's
/// files through hard links, so an in-place edit of a slug file shows up against it.
pub fn index_path(store: &Store, key: &Sha256) -> PathBuf {
    store.root().join("layers").join(format!("{}.index", key.hex()))
}

/// A stored layer's index, not checked against the disk yet; `None` when it is missing or
/// damaged.
pub fn load_index(store: &Store, key: &Sha256) -> Option<LayerIndex> {
    LayerIndex::decode(read_stored(store, &format!("{}.index", key.hex()), INDEX_LIMIT).ok()??)
}

/// Marks a layer as used now (what `gc` reads).
pub fn touch(store: &Store, key: &Sha256) {
    let now = filetime::FileTime::now();
    if let Ok(layers) = store.dir("layers") {
        let _ = layers.set_mtime_of(OsStr::new(&format!("{}.json", key.hex())), (now.unix_seconds(), i64::from(now.nanoseconds())));
    }
}

/// The largest `<key>.json` read; a real one is a few KB.
const INFO_LIMIT: u64 = 16 << 20;
/// The largest `<key>.index` read; the real agent's is about 2 MB.
const INDEX_LIMIT: u64 = 512 << 20;

/// The regular file `name` in the store's `layers/`, if there (a symlink is not), read
/// whole up to `limit` bytes.
pub(crate) fn read_stored(store: &Store, name: &str, limit: u64) -> Result<Option<Vec<u8>>, LayerError> {
    use std::io::Read;
    let path = store.root().join("layers").join(name);
    let file = match store.dir("layers")?.open_regular(OsStr::new(name)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(io_at(&path)(e)),
        // Missing, or not a regular file: no usable layer.
        Err(_) => return Ok(None),
    };
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io_at(&path))?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// A stored layer, if complete.
pub fn load(store: &Store, key: &Sha256) -> Result<Option<LayerInfo>, LayerError> {
    let Some(text) = read_stored(store, &format!("{}.json", key.hex()), INFO_LIMIT)? else { return Ok(None) };
    // The layer itself must be a directory, not a symlink to one, and its SBOM inventory
    // a regular file.
    let layers = store.dir("layers")?;
    if layers.kind(OsStr::new(&key.hex())).ok() != Some(crate::fsat::Kind::Dir)
        || layers.kind(OsStr::new(&crate::sbom::inventory_file(key))).ok() != Some(crate::fsat::Kind::File)
    {
        return Ok(None);
    }
    match serde_json::from_slice::<LayerInfo>(&text) {
        Ok(info) if info.key == *key => Ok(Some(info)),
        // A damaged description is treated as no layer: it will be rebuilt.
        _ => Ok(None),
    }
}

/// A package to build a layer from: its blob, verified, or still downloading.
pub struct DebBlob<'a> {
    pub path: PathBuf,
    /// The blob as the store checked it or the download writes it: read through this
    /// descriptor, never by `path` again.
    pub file: &'a std::fs::File,
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
    let staging = store.staging("layer")?;
    let result = build_in(store, &staging, inputs, debs, recipe, wrapper);
    staging.remove()?;
    let (info, index, xz_blocks) = result?;
    Ok(Built { info, index, xz_blocks })
}

/// [`build`] in a staging directory (which the caller removes).
fn build_in(
    store: &Store,
    staging: &crate::store::Staging,
    inputs: &LayerInputs,
    debs: &[DebBlob],
    recipe: &Recipe,
    wrapper: (&str, &[u8]),
) -> Result<(LayerInfo, LayerIndex, Vec<BlockStats>), LayerError> {
    let tree = staging.path.join("tree");
    staging.dir.make_dirs_beneath(Path::new("tree")).map_err(io_at(&tree))?;
    // Several packages unpack in parallel, each through the recipe's filter so that removed
    // files are never written; later packages win on conflicts, as with dpkg.
    let parts: Vec<PathBuf> = (0..debs.len()).map(|i| staging.path.join(format!("part{i}"))).collect();
    type Unpacked = (Vec<RuleOutcome>, HashMap<FileId, crate::hash::Digests>, Option<BlockStats>, HashMap<(u64, u64), u32>, Distributions);
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
                        Some(progress) => crate::unpack::deb::Integrity::Downloading(progress),
                        None => crate::unpack::deb::Integrity::Verified,
                    };
                    // The SBOM's collector notes the Python distributions passing by (names only).
                    let mut collector = crate::sbom::Collector::new(&mut filter);
                    // Made in the staging directory without following any symlink, and
                    // written through that descriptor only.
                    let name = part.file_name().unwrap_or_default();
                    let target = staging.dir.make_dirs_beneath(Path::new(name)).map_err(io_at(part))?;
                    let report = crate::unpack::deb::unpack_deb_filtered(deb.file, &deb.label, (target, part), Some(&mut collector), integrity)?;
                    let seen = collector.finish()?;
                    Ok((filter.outcomes, report.digests, report.xz_blocks, report.dir_modes, seen))
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            all.push(
                handle.join().map_err(|_| LayerError::Json { path: staging.path.clone(), reason: "unpack thread panicked".into() })??,
            );
        }
        Ok(all)
    })?;
    // What was unpacked while it downloaded counts only once the download matched.
    if let Some(deb) = debs.iter().find(|d| d.downloading.is_some_and(|p| !p.wait_done())) {
        return Err(LayerError::Download { path: deb.path.clone() });
    }
    // Where ddslug itself writes after unpacking, no package may have put a symlink.
    let writes = paths_written(recipe, &inputs.options, wrapper.0)?;
    for (i, deb) in debs.iter().enumerate() {
        let name = OsString::from(format!("part{i}"));
        let part = staging.dir.dir_beneath(Path::new(&name)).map_err(io_at(&parts[i]))?;
        refuse_symlinks(&part, &deb.label, &writes)?;
        let tree_dir = staging.dir.dir_beneath(Path::new("tree")).map_err(io_at(&tree))?;
        crate::slug::materialize::merge_into(&part, &parts[i], &tree_dir, &tree).map_err(|e| LayerError::Io { path: e.path, error: e.error })?;
    }
    let mut removed = recipe.apply(&tree, &inputs.options)?;
    // What each file holds, as hashed while it was written. Files changed since (renamed
    // files keep theirs) no longer match their recorded identity and are read again.
    let mut digests = HashMap::new();
    let (mut xz_blocks, mut dir_modes, mut distributions) = (Vec::new(), HashMap::new(), Distributions::new());
    for (outcome, written, blocks, modes, seen) in unpacked {
        merge_outcomes(&mut removed, &outcome);
        digests.extend(written);
        xz_blocks.extend(blocks);
        dir_modes.extend(modes);
        for (path, kept) in seen {
            *distributions.entry(path).or_default() |= kept;
        }
    }
    let tree_dir = staging.dir.dir_beneath(Path::new("tree")).map_err(io_at(&tree))?;
    let pkgconfig = relocate_pkgconfig(&tree_dir, &tree)?;
    let (wrapper_path, wrapper_text) = wrapper;
    let wrapper_rel = Path::new(wrapper_path);
    let (parent, name) = (wrapper_rel.parent().unwrap_or(Path::new("")), wrapper_rel.file_name().unwrap_or_default());
    let in_the_way = |source| match tree_dir.symlink_on(wrapper_rel) {
        Some((link, target)) => LayerError::SymlinkInTheWay {
            package: debs.iter().map(|d| d.label.as_str()).collect::<Vec<_>>().join(" or "),
            link: shown(&link),
            target: shown(&target),
            writes: format!("writes {wrapper_path}"),
        },
        None => io_at(&tree.join(wrapper_path))(source),
    };
    let wrapper_dir = tree_dir.make_dirs_beneath(parent).map_err(in_the_way)?;
    wrapper_dir.write_via(name, wrapper_text, 0o755, &wrapper_dir).map_err(in_the_way)?;
    let components = crate::sbom::inventory(&tree_dir, &tree, &distributions, &removed)?;
    let (info, index) = store_tree(store, staging, inputs, removed, pkgconfig, components, &digests, &dir_modes, None)?;
    Ok((info, index, xz_blocks))
}

/// Hashes the finished tree `tree` of `staging` and stores it as the layer of `inputs`: the
/// tree renamed into `layers/<key>`, then its index, its entry list, its SBOM inventory
/// (`components`) and, last, `<key>.json`. `digests` and `dir_modes` are what the unpacker
/// recorded (see [`scan_tree_known`]). With `expected`, a tree whose hash differs is not
/// stored (a layer pulled from a registry must be the tree its signer hashed).
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_tree(
    store: &Store,
    staging: &crate::store::Staging,
    inputs: &LayerInputs,
    removed: Vec<RuleOutcome>,
    pkgconfig: Vec<String>,
    components: crate::sbom::Inventory,
    digests: &HashMap<FileId, crate::hash::Digests>,
    dir_modes: &HashMap<(u64, u64), u32>,
    expected: Option<TreeHash>,
) -> Result<(LayerInfo, LayerIndex), LayerError> {
    let key = inputs.key();
    let tree = staging.path.join("tree");
    let (scan, mtimes) = scan_tree_known(&tree, digests, dir_modes)?;
    if let Some(expected) = expected
        && expected != scan.hash
    {
        return Err(LayerError::TreeMismatch { key, expected, actual: scan.hash });
    }
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
        components: None,
    };
    let dest = layer_dir(store, &key);
    let layers = store.dir("layers")?;
    let hex = key.hex();
    // A layer dir without json is debris from an interrupted build.
    layers.remove_all(OsStr::new(&hex)).map_err(io_at(&dest))?;
    staging.dir.rename(OsStr::new("tree"), &layers, OsStr::new(&hex)).map_err(io_at(&dest))?;
    let index_bytes = LayerIndex::encode(&scan.entries, &mtimes)
        .ok_or_else(|| LayerError::Json { path: dest.clone(), reason: "a scanned entry has no directory entry".into() })?;
    let index_dest = index_path(store, &key);
    let index = LayerIndex::decode(index_bytes.clone())
        .ok_or_else(|| LayerError::Json { path: index_dest.clone(), reason: "the index just made does not read back".into() })?;
    layers.write_via(OsStr::new(&format!("{hex}.index")), &index_bytes, 0o644, &staging.dir).map_err(io_at(&index_dest))?;
    let entries_json = serde_json::to_vec(&scan.entries).map_err(|e| LayerError::Json { path: dest.clone(), reason: e.to_string() })?;
    let entries_dest = entries_path(store, &key);
    let stamp = layers.write_via(OsStr::new(&format!("{hex}.tree.json")), &entries_json, 0o644, &staging.dir).map_err(io_at(&entries_dest))?;
    info.entries_sha256 = Some(Sha256::of(&entries_json));
    info.entries_file = Some(FileStamp { size: stamp.size, mtime: stamp.mtime });
    let inventory = serde_json::to_vec(&components).map_err(|e| LayerError::Json { path: dest.clone(), reason: e.to_string() })?;
    let inventory_name = crate::sbom::inventory_file(&key);
    layers.write_via(OsStr::new(&inventory_name), &inventory, 0o644, &staging.dir).map_err(io_at(&dest.with_file_name(&inventory_name)))?;
    info.components = Some(components);
    let json = serde_json::to_vec_pretty(&info).map_err(|e| LayerError::Json { path: dest.clone(), reason: e.to_string() })?;
    let info_dest = info_path(store, &key);
    layers.write_via(OsStr::new(&format!("{hex}.json")), &json, 0o644, &staging.dir).map_err(io_at(&info_dest))?;
    Ok((info, index))
}

/// Python distribution records seen while unpacking, by path, and whether any of each was
/// written ([`crate::sbom::Collector`]).
type Distributions = std::collections::BTreeMap<Vec<u8>, bool>;

/// What ddslug writes in an unpacked tree, and where, in the order it does: for each active
/// rename the directories above both ends, then the wrapper (the path itself and every
/// directory above it).
fn paths_written(recipe: &Recipe, options: &crate::unpack::recipe::Options, wrapper: &str) -> Result<Vec<(PathBuf, String)>, LayerError> {
    let mut writes = Vec::new();
    for rule in recipe.active_rules(options)? {
        for [from, to] in &rule.rename {
            let what = format!("renames {from} to {to} (recipe rule {:?})", rule.name);
            for end in [from, to] {
                if let Some(parent) = Path::new(end).parent() {
                    writes.push((parent.to_owned(), what.clone()));
                }
            }
        }
    }
    writes.push((PathBuf::from(wrapper), format!("writes {wrapper}")));
    Ok(writes)
}

/// A path as errors show it: bytes that are not printable UTF-8 escaped.
fn shown(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    crate::pathbytes::escape(path.as_os_str().as_bytes())
}

/// Refuses a package whose tree has a symlink on a path in `writes`.
fn refuse_symlinks(part: &crate::fsat::Dir, package: &str, writes: &[(PathBuf, String)]) -> Result<(), LayerError> {
    for (path, what) in writes {
        if let Some((link, target)) = part.symlink_on(path) {
            return Err(LayerError::SymlinkInTheWay {
                package: package.into(),
                link: shown(&link),
                target: shown(&target),
                writes: what.clone(),
            });
        }
    }
    Ok(())
}

/// The largest pkg-config file relocated (they are a few hundred bytes).
const PC_LIMIT: u64 = 1 << 20;

/// Rewrites absolute `prefix=` lines of pkg-config files under the agent's embedded tree to
/// `${pcfiledir}`-relative ones, so the layer holds no install location and pkg-config
/// still resolves to wherever the slug ends up. Walks and writes through directory
/// descriptors: a symlink is never followed.
fn relocate_pkgconfig(tree: &crate::fsat::Dir, tree_path: &Path) -> Result<Vec<String>, LayerError> {
    use crate::fsat::Kind;
    use std::io::{Read, Write};
    let mut changed = Vec::new();
    // Relative paths, not open directories, wait on the stack: a wide tree would hold too
    // many descriptors.
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = tree_path.join(&rel);
        let dir = tree.dir_beneath(&rel).map_err(io_at(&here))?;
        for (name, kind) in dir.entries().map_err(io_at(&here))? {
            let child = rel.join(&name);
            match kind {
                Kind::Dir => stack.push(child),
                Kind::File if Path::new(&name).extension().is_some_and(|e| e == "pc") => {
                    let path = here.join(&name);
                    let mut text = String::new();
                    dir.open_regular(&name).map_err(io_at(&path))?.take(PC_LIMIT + 1).read_to_string(&mut text).map_err(io_at(&path))?;
                    if text.len() as u64 > PC_LIMIT {
                        let reason = format!("a pkg-config file larger than {PC_LIMIT} bytes; such files are small text files");
                        return Err(LayerError::Json { path, reason });
                    }
                    if let Some(new) = relocate_pc_text(&text, &child) {
                        dir.open_file_to_rewrite(&name).and_then(|mut f| f.write_all(new.as_bytes())).map_err(io_at(&path))?;
                        changed.push(child.to_string_lossy().into_owned());
                    }
                }
                _ => {}
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
