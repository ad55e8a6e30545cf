//! Proof that a slug is what its manifest says, checked against references the slug's other
//! files cannot forge alone: `verify` hashes what is actually under `.apt` and compares it
//! with the manifest's tree hash, the entry list `.ddslug/tree.json` with the SHA-256 the
//! manifest records for it, and the start script, the shipped binary and the SBOM
//! (`.ddslug/sbom.cdx.json`) with theirs. Paths
//! dyno start writes are taken back by exact name ([`dyno_start`]), nothing by directory.
//! `verify --rebuild` rebuilds the layer from the locked blobs in an empty scratch store and
//! compares it with what is actually in the slug (and says whether the manifest agrees);
//! `diff` compares two slugs or manifests.
//!
//! Outcomes, and `ddslug verify`'s exit codes, as Nix's `store verify`: 0 identical,
//! 1 differs, 2 could not check (no manifest, unreadable, a manifest too old to record
//! something).

mod dyno_start;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::buildpack::classic::{RECIPE, Reuse, build_layer};
use crate::fetch::{Downloaded, FetchOptions, Fetcher};
use crate::hash::Sha256;
use crate::slug::manifest::{Bounded, Manifest, read_bounded, read_manifest};
use crate::report::Reporter;
use crate::store::{Store, remove_any};
use crate::store::treehash::{EntryKind, PathBytes, TreeDiff, TreeEntry, TreeError, TreeHash, diff, hash_entries, scan_tree};

/// The largest entry list read (the real agent's is about 5 MB).
pub const MAX_TREE_JSON_BYTES: u64 = 64 << 20;

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Identical,
    /// Something could not be checked, and nothing checked differs.
    CouldNotCheck,
    Differs,
}

impl Outcome {
    /// The exit code, as Nix's `store verify` gives it: 0 identical, 1 differs, 2 could not
    /// check.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Identical => 0,
            Outcome::Differs => 1,
            Outcome::CouldNotCheck => 2,
        }
    }

    /// The worse of two outcomes: a difference outweighs what could not be checked.
    pub fn and(self, other: Outcome) -> Outcome {
        self.max(other)
    }
}

/// The result of `verify`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyReport {
    pub build_dir: PathBuf,
    pub outcome: Outcome,
    pub identical: bool,
    pub manifest_tree_hash: TreeHash,
    /// The tree hash of `.apt` as found, with what dyno start wrote taken back.
    pub actual_tree_hash: TreeHash,
    /// `.apt` as found against the build's entry list, less what dyno start wrote.
    pub diff: TreeDiff,
    /// Differences outside that list: the list itself, the tree hash, the start script, the
    /// binary, `.ddslug`.
    pub problems: Vec<String>,
    /// What could not be checked, and why.
    pub unchecked: Vec<String>,
    /// Paths dyno start wrote (each by its exact name), not counted.
    pub written_at_dyno_start: Vec<PathBytes>,
    #[serde(skip)]
    pub manifest: Manifest,
    /// `.apt` as found, dyno start's writes taken back (what `--rebuild` compares with).
    #[serde(skip)]
    pub slug_entries: Vec<TreeEntry>,
    /// Whether the tree could be read whole (else `slug_entries` is not what the slug holds).
    #[serde(skip)]
    pub apt_read: bool,
}

/// Checks the slug at `build_dir` against its manifest. `app_datadog` is where dyno start
/// finds the app's configuration (DD_HEROKU_CONF_FOLDER; default `BUILD_DIR/datadog`). An
/// error means nothing could be checked (no readable manifest, an unreadable tree).
pub fn verify(build_dir: &Path, app_datadog: Option<&Path>) -> Result<VerifyReport> {
    let ddslug = build_dir.join(".ddslug");
    let manifest = read_manifest(&ddslug.join("manifest.json"))?;
    let mut problems = Vec::new();
    let mut unchecked = Vec::new();
    let built = read_entry_list(&ddslug.join("tree.json"), &manifest, &mut problems, &mut unchecked)?;

    let layer = is_cnb_layer(build_dir);
    let apt = if layer { build_dir.to_owned() } else { build_dir.join(".apt") };
    // `None`: the tree could not be read whole, so neither its hash nor its paths are compared.
    let found = match scan_tree(&apt) {
        Ok(scan) if layer => Some(beside_the_tree(scan.entries)),
        Ok(scan) => Some(scan.entries),
        Err(TreeError::Io { path, error }) if path == apt && error.kind() == std::io::ErrorKind::NotFound => {
            problems.push(".apt is missing".into());
            Some(Vec::new())
        }
        Err(TreeError::Unsupported { path, reason }) => {
            problems.push(format!("{}: {reason}", path.display()));
            Some(Vec::new())
        }
        Err(TreeError::Io { path, error }) => {
            unchecked.push(format!("could not check {}: could not read {}: {error}", if layer { "the layer" } else { ".apt" }, shown_path(&path)));
            None
        }
    };
    // In a CNB image the app is the working directory (where the launcher runs exec.d).
    let app_dir = if layer { std::env::current_dir().context("reading the working directory (the app)")? } else { build_dir.to_owned() };
    let cx = dyno_start::Context {
        manifest: &manifest,
        built: built.as_deref().unwrap_or_default(),
        app_datadog: app_datadog.map_or_else(|| app_dir.join("datadog"), Path::to_owned),
    };
    let read_whole = found.is_some();
    let mut found: dyno_start::Found = found.unwrap_or_default().into_iter().map(|e| (e.path.clone(), e)).collect();
    // What other buildpacks had put in `.apt` before the compile: taken back where exactly
    // as the build listed it, a difference where not.
    let foreign = read_foreign(&ddslug.join("foreign.json"), &manifest, &mut problems, &mut unchecked);
    let taken = crate::slug::foreign::take_back(&mut found, &foreign, cx.built);
    let agents_lock = PathBytes::from(format!("opt/datadog-agent/run/{}", crate::runtime::launch::AGENTS_LOCK).into_bytes());
    let held = layer && found.get(&agents_lock).is_some_and(|e| matches!(e.kind, EntryKind::File { size: 0, .. }));
    if held {
        found.remove(&agents_lock);
    }
    let mut undone = dyno_start::undo(&cx, found);
    if held {
        undone.written.push(agents_lock);
    }
    unchecked.extend(undone.unchecked);
    let actual_tree_hash = hash_entries(&undone.entries);
    if read_whole && actual_tree_hash != manifest.tree_hash {
        problems.push(format!("the tree hash of .apt is {actual_tree_hash}; the manifest records {}", manifest.tree_hash));
    }
    let mut d = built.as_ref().filter(|_| read_whole).map(|built| diff(built, &undone.entries)).unwrap_or_default();
    if read_whole && !taken.diff.is_empty() {
        problems.push(format!(
            "{} of the {} entries other buildpacks had put in .apt before the compile (.ddslug/foreign.json) are not as they were",
            taken.diff.removed.len() + taken.diff.changed.len(),
            foreign.len()
        ));
        d.removed.extend(taken.diff.removed);
        d.changed.extend(taken.diff.changed);
        d.removed.sort_by(|a, b| a.path.cmp(&b.path));
        d.changed.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    }

    if layer {
        // The start script is inside the binary (the exec.d program); the SBOM is beside the
        // layer (`<layers>/agent.sbom.cdx.json`), where the lifecycle takes it.
        check_file(build_dir, CNB_PROGRAM, "the ddslug binary", manifest.binary_sha256, &mut problems, &mut unchecked)?;
        check_ddslug_dir(&ddslug, &[("manifest.json", false), ("tree.json", false)], &mut problems, &mut unchecked);
    } else {
        check_file(build_dir, ".profile.d/datadog.sh", "the start script", manifest.start_script_sha256, &mut problems, &mut unchecked)?;
        check_file(build_dir, ".ddslug/bin/ddslug", "the ddslug binary", manifest.binary_sha256, &mut problems, &mut unchecked)?;
        check_sbom(build_dir, &manifest, &mut problems, &mut unchecked)?;
        let expected = [
            ("bin", true),
            ("bin/ddslug", false),
            ("foreign.json", false),
            ("manifest.json", false),
            ("tree.json", false),
            (crate::sbom::SLUG_FILE, false),
        ];
        check_ddslug_dir(&ddslug, &expected, &mut problems, &mut unchecked);
    }

    let outcome = if !problems.is_empty() || !d.is_empty() {
        Outcome::Differs
    } else if !unchecked.is_empty() {
        Outcome::CouldNotCheck
    } else {
        Outcome::Identical
    };
    Ok(VerifyReport {
        build_dir: build_dir.to_owned(),
        outcome,
        identical: outcome == Outcome::Identical,
        manifest_tree_hash: manifest.tree_hash,
        actual_tree_hash,
        diff: d,
        problems,
        unchecked,
        written_at_dyno_start: undone.written,
        manifest,
        slug_entries: undone.entries,
        apt_read: read_whole,
    })
}

/// The build's entry list, if usable; what is wrong with it goes to `problems` (or to
/// `unchecked` where the manifest is too old to say).
fn read_entry_list(path: &Path, manifest: &Manifest, problems: &mut Vec<String>, unchecked: &mut Vec<String>) -> Result<Option<Vec<TreeEntry>>> {
    let bytes = match read_bounded(path, MAX_TREE_JSON_BYTES) {
        Ok(bytes) => bytes,
        Err(Bounded::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            problems.push(".ddslug/tree.json is missing".into());
            return Ok(None);
        }
        Err(Bounded::Io(e)) => {
            unchecked.push(format!("could not check .ddslug/tree.json: could not read {}: {e}", shown_path(path)));
            return Ok(None);
        }
        Err(Bounded::TooBig) => {
            problems.push(format!(".ddslug/tree.json is larger than {MAX_TREE_JSON_BYTES} bytes, more than any entry list"));
            return Ok(None);
        }
    };
    let digest = Sha256::of(&bytes);
    let recorded = match manifest.tree_json_sha256 {
        Some(recorded) if recorded != digest => {
            problems.push(format!(".ddslug/tree.json changed: its SHA-256 is {digest}; the manifest records {recorded}"));
            false
        }
        Some(_) => true,
        None => {
            unchecked.push(
                "could not check .ddslug/tree.json against the manifest, which predates tree_json_sha256 \
                 (a compile with this ddslug records it)"
                    .into(),
            );
            false
        }
    };
    let mut entries: Vec<TreeEntry> = match serde_json::from_slice(&bytes) {
        Ok(entries) => entries,
        // The manifest vouches for these bytes: they are a list this ddslug cannot read.
        Err(e) if recorded => {
            unchecked.push(format!("could not read .ddslug/tree.json ({e}); verify with the slug's own ddslug (.ddslug/bin/ddslug)"));
            return Ok(None);
        }
        Err(e) => {
            problems.push(format!(".ddslug/tree.json is not an entry list: {e}"));
            return Ok(None);
        }
    };
    let listed = hash_entries(&entries);
    if listed != manifest.tree_hash {
        problems.push(format!(".ddslug/tree.json lists a tree whose hash is {listed}; the manifest records {}", manifest.tree_hash));
    }
    // A list that is out of order already hashed differently; sorted, it still names paths.
    entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(Some(entries))
}

/// The entries other buildpacks had put in `.apt` ([`crate::slug::foreign`]) as
/// `.ddslug/foreign.json` lists them, if the manifest records that list and it is the one
/// recorded; what is wrong goes to `problems` or `unchecked` (and nothing is taken back).
fn read_foreign(path: &Path, manifest: &Manifest, problems: &mut Vec<String>, unchecked: &mut Vec<String>) -> Vec<TreeEntry> {
    let bytes = match (read_bounded(path, MAX_TREE_JSON_BYTES), manifest.foreign_json_sha256) {
        (Err(Bounded::Io(e)), None) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        (Ok(_), None) => {
            problems.push(".ddslug/foreign.json is there, but the manifest records no entries of other buildpacks".into());
            return Vec::new();
        }
        (Err(Bounded::Io(e)), Some(_)) if e.kind() == std::io::ErrorKind::NotFound => {
            problems.push(".ddslug/foreign.json is missing (the manifest records the entries other buildpacks put in .apt)".into());
            return Vec::new();
        }
        (Err(Bounded::Io(e)), _) => {
            unchecked.push(format!("could not check what other buildpacks put in .apt: could not read {}: {e}", shown_path(path)));
            return Vec::new();
        }
        (Err(Bounded::TooBig), _) => {
            problems.push(format!(".ddslug/foreign.json is larger than {MAX_TREE_JSON_BYTES} bytes, more than any entry list"));
            return Vec::new();
        }
        (Ok(bytes), Some(recorded)) => {
            let digest = Sha256::of(&bytes);
            if digest != recorded {
                problems.push(format!(".ddslug/foreign.json changed: its SHA-256 is {digest}; the manifest records {recorded}"));
                return Vec::new();
            }
            bytes
        }
    };
    match serde_json::from_slice::<Vec<TreeEntry>>(&bytes) {
        Ok(mut entries) => {
            entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
            entries
        }
        // The manifest vouches for these bytes: a list this ddslug cannot read.
        Err(e) => {
            unchecked.push(format!("could not read .ddslug/foreign.json ({e}); verify with the slug's own ddslug (.ddslug/bin/ddslug)"));
            Vec::new()
        }
    }
}

/// Checks one file of the slug outside `.apt` against the SHA-256 the manifest records.
fn check_file(
    build_dir: &Path,
    rel: &str,
    what: &str,
    recorded: Option<Sha256>,
    problems: &mut Vec<String>,
    unchecked: &mut Vec<String>,
) -> Result<()> {
    let path = build_dir.join(rel);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            problems.push(format!("{rel} ({what}) is missing"));
            return Ok(());
        }
        Err(e) => {
            unchecked.push(format!("could not check {rel} ({what}): could not read {}: {e}", shown_path(&path)));
            return Ok(());
        }
        Ok(meta) if !meta.is_file() => {
            problems.push(format!("{rel} ({what}) is not a regular file"));
            return Ok(());
        }
        Ok(_) => {}
    }
    let Some(recorded) = recorded else {
        unchecked.push(format!("could not check {rel} ({what}): the manifest predates its SHA-256 (a compile with this ddslug records it)"));
        return Ok(());
    };
    let digest = match Sha256::of_file(&path) {
        Ok(digest) => digest,
        Err(e) => {
            unchecked.push(format!("could not check {rel} ({what}): could not read {}: {e}", shown_path(&path)));
            return Ok(());
        }
    };
    if digest != recorded {
        problems.push(format!("{rel} ({what}) changed: its SHA-256 is {digest}; the manifest records {recorded}"));
    }
    Ok(())
}

/// The SBOM against the SHA-256 the manifest records. A slug built before SBOMs has neither
/// the digest nor the file.
fn check_sbom(build_dir: &Path, manifest: &Manifest, problems: &mut Vec<String>, unchecked: &mut Vec<String>) -> Result<()> {
    let rel = format!(".ddslug/{}", crate::sbom::SLUG_FILE);
    if manifest.sbom_sha256.is_none() {
        if std::fs::symlink_metadata(build_dir.join(&rel)).is_ok() {
            unchecked.push(format!("could not check {rel} (the SBOM): the manifest predates its SHA-256 (a compile with this ddslug records it)"));
        }
        return Ok(());
    }
    check_file(build_dir, &rel, "the SBOM", manifest.sbom_sha256, problems, unchecked)
}

/// The exec.d program in a CNB agent layer.
const CNB_PROGRAM: &str = "exec.d/ddslug";

/// Whether `dir` is a CNB agent layer (the agent tree at its root, with `.ddslug/` and
/// `exec.d/ddslug` beside it) rather than a slug (`.apt`, `.ddslug`, `.profile.d`).
pub fn is_cnb_layer(dir: &Path) -> bool {
    !dir.join(".apt").exists() && dir.join(CNB_PROGRAM).is_file() && dir.join(".ddslug/manifest.json").is_file()
}

/// A CNB agent layer's entries less what the build puts beside the agent tree, by exact name
/// and kind: `exec.d/ddslug`, `.ddslug/manifest.json`, `.ddslug/tree.json` and their two
/// directories. Anything else there stays, and counts as added.
fn beside_the_tree(entries: Vec<TreeEntry>) -> Vec<TreeEntry> {
    let ours = |e: &TreeEntry| -> bool {
        let dir = matches!(e.kind, EntryKind::Dir);
        let file = matches!(e.kind, EntryKind::File { .. });
        match e.path.as_bytes() {
            b"exec.d" | b".ddslug" => dir,
            b"exec.d/ddslug" | b".ddslug/manifest.json" | b".ddslug/tree.json" => file,
            _ => false,
        }
    };
    entries.into_iter().filter(|e| !ours(e)).collect()
}

/// `.ddslug` holds exactly what a compile puts there, `expected` (path, is a directory); a
/// directory that cannot be listed goes to `unchecked`.
fn check_ddslug_dir(ddslug: &Path, expected: &[(&str, bool)], problems: &mut Vec<String>, unchecked: &mut Vec<String>) {
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        let dir = crate::fsat::join(ddslug, &rel);
        let listed = std::fs::read_dir(&dir).and_then(|entries| {
            let entry = |entry: std::io::Result<std::fs::DirEntry>| entry.and_then(|e| Ok((e.file_name(), e.file_type()?)));
            entries.map(entry).collect::<std::io::Result<Vec<_>>>()
        });
        let entries = match listed {
            Ok(entries) => entries,
            Err(e) => {
                unchecked.push(format!("could not check what .ddslug holds: could not read {}: {e}", shown_path(&dir)));
                continue;
            }
        };
        for (name, kind) in entries {
            let name = name.to_string_lossy().into_owned();
            let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let is_dir = kind.is_dir();
            match expected.iter().find(|(path, _)| *path == child) {
                Some((_, true)) if is_dir => pending.push(child),
                Some((_, false)) if kind.is_file() => {}
                Some(_) => problems.push(format!(".ddslug/{child} is not the {} a compile makes", if is_dir { "file" } else { "directory" })),
                None => problems.push(format!(".ddslug/{child} is not something a compile makes")),
            }
        }
    }
}

/// A path for people, its bytes escaped where they are not printable UTF-8.
fn shown_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    crate::pathbytes::escape_bounded(path.as_os_str().as_bytes(), 1024)
}

/// The result of `verify --rebuild`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RebuildReport {
    pub outcome: Outcome,
    pub rebuilt_tree_hash: TreeHash,
    pub rebuilt_layer_key: Sha256,
    /// `.apt` as found (dyno start's writes taken back).
    pub slug_tree_hash: TreeHash,
    pub manifest_tree_hash: TreeHash,
    pub manifest_layer_key: Sha256,
    /// The rebuilt tree is what the slug holds.
    pub matches_slug: bool,
    /// The rebuilt tree and layer are what the manifest records.
    pub matches_manifest: bool,
    /// Both.
    pub matches: bool,
    /// The rebuilt tree against the slug's.
    pub diff: TreeDiff,
    /// The SBOM of the rebuilt layer is byte for byte the slug's `.ddslug/sbom.cdx.json`;
    /// `None` when not compared (see [`RebuildReport::sbom_note`]).
    pub sbom_matches: Option<bool>,
    /// Why the SBOMs were not compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sbom_note: Option<String>,
}

/// Rebuilds the slug's layer from its locked blobs in an empty scratch store and compares it
/// with what the slug actually holds (`verified.slug_entries`) and with what its manifest
/// records. Blobs come from `cache` when it has them (checked by hash), else from the
/// locked repository. An error means the rebuild could not be made.
pub fn rebuild(verified: &VerifyReport, cache: Option<&Path>, fetch: FetchOptions) -> Result<RebuildReport> {
    let manifest = &verified.manifest;
    if !verified.apt_read {
        anyhow::bail!("{}: the tree could not be read whole (see above): there is nothing to compare a rebuild with", verified.build_dir.display());
    }
    let recipe_sha256 = Sha256::of(RECIPE.as_bytes());
    if manifest.lock.recipe_sha256 != recipe_sha256 {
        anyhow::bail!(
            "the slug was built with recipe {} but this ddslug has recipe {recipe_sha256}; \
             verify --rebuild with the ddslug in the slug (.ddslug/bin/ddslug)",
            manifest.lock.recipe_sha256
        );
    }
    // An unpredictable name, made exclusively: nothing planted in the temp dir is used.
    let scratch_dir = tempfile::Builder::new().prefix("ddslug-rebuild.").tempdir().context("creating a scratch directory")?;
    let scratch_root = scratch_dir.path().to_owned();
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
        let fetcher = Fetcher::new(fetch);
        let built = build_layer(&scratch, &fetcher, &manifest.lock, &Reporter { quiet: true }, Reuse::Never)?;
        let entries_path = crate::store::layer::entries_path(&scratch, &built.info.key);
        let bytes = read_bounded(&entries_path, MAX_TREE_JSON_BYTES).map_err(|e| match e {
            Bounded::Io(e) => anyhow::Error::new(e).context(format!("reading {}", entries_path.display())),
            Bounded::TooBig => anyhow::anyhow!("{} is larger than {MAX_TREE_JSON_BYTES} bytes", entries_path.display()),
        })?;
        let rebuilt: Vec<TreeEntry> = serde_json::from_slice(&bytes).with_context(|| format!("reading {}", entries_path.display()))?;
        let d = diff(&rebuilt, &verified.slug_entries);
        let matches_slug = built.info.tree_hash == verified.actual_tree_hash && d.is_empty();
        let matches_manifest = built.info.tree_hash == manifest.tree_hash && built.info.key == manifest.layer_key;
        let (sbom_matches, sbom_note) = compare_sbom(verified, &built.info);
        let matches = matches_slug && matches_manifest && sbom_matches != Some(false);
        Ok(RebuildReport {
            outcome: if matches { Outcome::Identical } else { Outcome::Differs },
            rebuilt_tree_hash: built.info.tree_hash,
            rebuilt_layer_key: built.info.key,
            slug_tree_hash: verified.actual_tree_hash,
            manifest_tree_hash: manifest.tree_hash,
            manifest_layer_key: manifest.layer_key,
            matches_slug,
            matches_manifest,
            matches,
            diff: d,
            sbom_matches,
            sbom_note,
        })
    })();
    let _ = remove_any(&scratch_root);
    drop(scratch_dir);
    result
}

/// Whether the SBOM of the rebuilt layer is the slug's, byte for byte: a manifest and SBOM
/// forged together still disagree with the rebuild. Not compared (with why) when the slug has
/// no SBOM or another ddslug version wrote it (the SBOM names its writer).
fn compare_sbom(verified: &VerifyReport, rebuilt: &crate::store::layer::LayerInfo) -> (Option<bool>, Option<String>) {
    let manifest = &verified.manifest;
    if is_cnb_layer(&verified.build_dir) {
        return (None, Some(format!("a CNB layer's SBOM is beside it, as <layers>/agent.{}", crate::sbom::SLUG_FILE)));
    }
    if manifest.sbom_sha256.is_none() {
        return (None, Some("the slug has no SBOM (built before SBOMs)".into()));
    }
    if manifest.ddslug_version != env!("CARGO_PKG_VERSION") {
        let why = format!("the SBOM was written by ddslug {}; this is {}", manifest.ddslug_version, env!("CARGO_PKG_VERSION"));
        return (None, Some(why));
    }
    let path = verified.build_dir.join(".ddslug").join(crate::sbom::SLUG_FILE);
    match read_bounded(&path, crate::sbom::MAX_SLUG_SBOM) {
        // The rebuilt layer is fresh: its inventory is in hand.
        Ok(bytes) => (Some(rebuilt.components.as_ref().is_some_and(|inventory| bytes == crate::sbom::for_layer(&manifest.lock, rebuilt, inventory))), None),
        // Missing or unreadable: verify already reports it against the manifest.
        Err(_) => (Some(false), None),
    }
}

/// What differs between two slugs (or manifests).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SlugDiff {
    /// Nothing differs: packages, options, recipe, repository and trees.
    pub identical: bool,
    pub summary: Vec<String>,
    pub tree: Option<TreeDiff>,
}

/// A slug directory or a manifest file, with its entry list when one is beside it and it is
/// the one the manifest records (a note in `notes` when it is not).
fn load_side(path: &Path, label: &str, notes: &mut Vec<String>) -> Result<(Manifest, Option<Vec<TreeEntry>>)> {
    let (manifest_path, tree_path) = if path.is_dir() {
        (path.join(".ddslug/manifest.json"), path.join(".ddslug/tree.json"))
    } else {
        (path.to_owned(), path.with_file_name("tree.json"))
    };
    let manifest = read_manifest(&manifest_path)?;
    let bytes = match read_bounded(&tree_path, MAX_TREE_JSON_BYTES) {
        Ok(bytes) => bytes,
        Err(Bounded::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok((manifest, None)),
        Err(Bounded::Io(e)) => return Err(e).with_context(|| format!("reading {}", tree_path.display())),
        Err(Bounded::TooBig) => anyhow::bail!("{} is larger than {MAX_TREE_JSON_BYTES} bytes, more than any entry list", tree_path.display()),
    };
    let digest = Sha256::of(&bytes);
    if manifest.tree_json_sha256.is_some_and(|recorded| recorded != digest) {
        notes.push(format!("{label}'s tree.json is not the one its manifest records (SHA-256 {digest}); its paths are not compared"));
        return Ok((manifest, None));
    }
    let entries = serde_json::from_slice(&bytes).with_context(|| format!("{} is not a ddslug entry list", tree_path.display()))?;
    Ok((manifest, Some(entries)))
}

/// Compares two slugs or manifests: packages, options, layer, then paths.
pub fn diff_slugs(a: &Path, b: &Path) -> Result<SlugDiff> {
    let mut notes = Vec::new();
    let (ma, ea) = load_side(a, "A", &mut notes)?;
    let (mb, eb) = load_side(b, "B", &mut notes)?;
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
    let mut identical = summary.is_empty() && ma.tree_hash == mb.tree_hash;
    summary.push(if ma.tree_hash == mb.tree_hash {
        format!("trees identical ({})", ma.tree_hash)
    } else {
        format!("trees differ: {} files, {} bytes -> {} files, {} bytes", ma.files, ma.bytes, mb.files, mb.bytes)
    });
    let tree = match (ea, eb) {
        (Some(a), Some(b)) => {
            let d = diff(&a, &b);
            summary.push(format!("{} added, {} removed, {} changed", d.added.len(), d.removed.len(), d.changed.len()));
            identical &= d.is_empty();
            Some(d)
        }
        _ => None,
    };
    summary.extend(notes);
    Ok(SlugDiff { identical, summary, tree })
}

/// Size of an entry for listings.
pub fn entry_size(e: &TreeEntry) -> u64 {
    match e.kind {
        EntryKind::File { size, .. } => size,
        _ => 0,
    }
}
