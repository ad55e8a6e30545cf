//! The install step of a compile: the layer, the start script, the binary, the SBOM and the
//! manifest go into a staging directory inside BUILD_DIR, then into place by renames.
//!
//! Contract: BUILD_DIR comes from the app and is never trusted. Every write goes through
//! directory descriptors ([`crate::fsat::Dir`]): `.apt` and `.profile.d` (which other
//! buildpacks share) are refused when they are symlinks, `.ddslug` (ours alone) is
//! replaced, a symlink inside `.apt` where the agent's directory goes is replaced by it, the
//! link itself; nothing is written through a symlink. The staging directory has an
//! unpredictable name and is locked (`flock`) while its build lives, so that the next build
//! removes a killed build's leftovers and leaves a live one alone. A failed install leaves
//! BUILD_DIR as it was.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::buildpack::classic::{BuiltLayer, CompileArgs, PROFILE_SCRIPT, seal_manifest};
use crate::fsat::{Dir, Kind, Stat};
use crate::store::layer;
use crate::slug::manifest::{Manifest, to_json};
use crate::slug::materialize::{Materialize, Materialized, materialize_index, merge_into};
use crate::store::{Store, seen};

/// The parts of BUILD_DIR that other buildpacks may share: a symlink there is refused
/// (merging into it would write wherever it points). `.ddslug` is ours alone: whatever is
/// there, a symlink included (the link itself), is replaced.
const SHARED_DIRS: [&str; 2] = [".apt", ".profile.d"];

/// Refuses a BUILD_DIR whose `.apt` or `.profile.d` is a symlink or a file: nothing of the
/// slug may be written through it.
pub fn check_build_dir(build: &Dir, build_dir: &Path) -> Result<()> {
    for name in SHARED_DIRS {
        match build.kind(OsStr::new(name)) {
            Ok(Kind::Symlink) => {
                let target = build.read_link(OsStr::new(name)).unwrap_or_default();
                anyhow::bail!(
                    "BUILD_DIR {}: {name} is a symlink (to {}); ddslug installs into a real {name} directory and never \
                     writes through a symlink. Remove the symlink from the app (or make {name} a directory) and build again",
                    build_dir.display(),
                    target.display()
                );
            }
            Ok(Kind::Dir) => {}
            Ok(_) => anyhow::bail!(
                "BUILD_DIR {}: {name} is not a directory; ddslug installs into a {name} directory. Remove it from the app and build again",
                build_dir.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("BUILD_DIR {}: reading {name}", build_dir.display())),
        }
    }
    Ok(())
}

/// Names of staging directories in BUILD_DIR: `.ddslug-staging.<random>`.
const STAGING_PREFIX: &str = ".ddslug-staging.";

/// A staging directory in BUILD_DIR, locked (`flock`) for as long as its build lives: the
/// lock is how a later build tells a dead build's leftovers from a live build's work.
struct BuildStaging {
    path: PathBuf,
    name: std::ffi::OsString,
    dir: Dir,
}

impl BuildStaging {
    /// Makes and locks a fresh one (an unpredictable name, made exclusively).
    fn make(build: &Dir, build_dir: &Path) -> Result<BuildStaging> {
        loop {
            let path = tempfile::Builder::new()
                .prefix(STAGING_PREFIX)
                .tempdir_in(build_dir)
                .with_context(|| format!("creating a staging directory in BUILD_DIR {}", build_dir.display()))?
                .keep();
            let name = path.file_name().map(OsStr::to_owned).unwrap_or_default();
            let dir = match build.open_dir_readable(&name) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                opened => opened.with_context(|| format!("opening {}", path.display()))?,
            };
            // Another build may have taken it for a dead build's leftover between the mkdir
            // and the lock: it is removing it, so make another.
            if dir.try_lock()? && dir.is_linked()? {
                return Ok(BuildStaging { path, name, dir });
            }
        }
    }
}

/// Removes staging directories that builds killed before they finished left in BUILD_DIR
/// (they would ship in the slug); one a live build holds locked is left alone. Returns how
/// many were removed.
pub fn remove_stale_staging(build: &Dir, build_dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for (name, kind) in build.entries().with_context(|| format!("listing BUILD_DIR {}", build_dir.display()))? {
        if !name.as_encoded_bytes().starts_with(STAGING_PREFIX.as_bytes()) {
            continue;
        }
        // A symlink or a file of that name goes (the link itself); a directory only when no
        // live build holds its lock, which is then held until the directory is gone.
        let _held = if kind == Kind::Dir {
            let dir = build.open_dir_readable(&name).with_context(|| format!("checking {}", build_dir.join(&name).display()))?;
            if !dir.try_lock()? {
                continue;
            }
            Some(dir)
        } else {
            None
        };
        build.remove_all(&name).with_context(|| format!("removing {}", build_dir.join(&name).display()))?;
        removed += 1;
    }
    Ok(removed)
}

/// Assembles the slug's files in a staging directory inside BUILD_DIR, then moves them
/// into place. Returns `false`, with BUILD_DIR untouched, when the layer's files turn out
/// not to be what its record says (checked on the way when the layer was reused). Every
/// write goes through directory descriptors: nothing follows a symlink.
pub fn install(args: &CompileArgs, store: &Store, built: &BuiltLayer, manifest: &mut Manifest) -> Result<bool> {
    let key = built.info.key;
    let (layer_dir, entries_file) = (layer::layer_dir(store, &key), layer::entries_path(store, &key));
    let build = Dir::open_given(&args.build_dir).with_context(|| format!("opening BUILD_DIR {}", args.build_dir.display()))?;
    check_build_dir(&build, &args.build_dir)?;
    let staging = BuildStaging::make(&build, &args.build_dir)?;
    let at = |rel: &str| staging.path.join(rel);
    // This build's run starts before anything is checked or linked; files unchanged since
    // the last run that installed this layer are linked without being read.
    let started = seen::start(store).ok();
    let seen = started.filter(|_| built.unchecked).and_then(|started| seen::load(store, &key, started));
    let mut hashed = Vec::new();
    let result = (|| -> Result<bool> {
        // The entry list is shared with slugs like the layer's files, on the same terms: a
        // changed one is a changed layer. (Layers stored without a stamp copy it unchecked.)
        if built.info.entries_file.is_some_and(|stamp| layer::FileStamp::of(&entries_file).ok() != Some(stamp)) {
            return Ok(false);
        }
        let how = Materialize::from_env();
        if let Materialized::SourceChanged = materialize_index(&layer_dir, &at("apt"), &built.index, how, built.unchecked, seen.as_ref())? {
            return Ok(false);
        }
        let profile = staging.dir.make_dirs_beneath(Path::new("profile")).with_context(|| at("profile").display().to_string())?;
        profile.write_via(OsStr::new("datadog.sh"), PROFILE_SCRIPT.as_bytes(), 0o644, &profile).with_context(|| at("profile/datadog.sh").display().to_string())?;
        let bin = staging.dir.make_dirs_beneath(Path::new("ddslug/bin")).with_context(|| at("ddslug/bin").display().to_string())?;
        // Builds replace the buildpack's binary, they never edit it in place: a hard link
        // is as good as a copy and costs nothing (a copy is a few MB on every build).
        let self_exe = fs::symlink_metadata(&args.self_exe).map(|m| Stat::of_metadata(&m));
        let plain_file = self_exe.as_ref().is_ok_and(Stat::is_file);
        let linked = how == Materialize::Link && plain_file && bin.link_in(&args.self_exe, OsStr::new("ddslug")).is_ok();
        if !linked {
            bin.copy_in(&args.self_exe, OsStr::new("ddslug"))
                .with_context(|| format!("copying the ddslug binary from {}", args.self_exe.display()))?;
        }
        let ddslug = staging.dir.dir_beneath(Path::new("ddslug")).with_context(|| at("ddslug").display().to_string())?;
        let layers = store.dir("layers")?;
        let entries_name = entries_file.file_name().unwrap_or_default();
        // SHA-256s the last run computed, of files unchanged since, looked up before these
        // links move their ctimes.
        let known: Vec<(u64, crate::hash::Sha256)> = [self_exe.ok(), layers.lstat(entries_name).ok()]
            .into_iter()
            .flatten()
            .filter_map(|st| Some((st.ino, seen.as_ref()?.sha256_of(&st)?)))
            .collect();
        let tree_json = OsStr::new("tree.json");
        let linked = how == Materialize::Link && built.info.entries_file.is_some() && layers.hard_link(entries_name, &ddslug, tree_json).is_ok();
        if !linked {
            layers.copy_file(entries_name, &ddslug, tree_json, 0o644).context("copying the layer's entry list")?;
        }
        let sbom = crate::sbom::for_stored_layer(store, &manifest.lock, &built.info)?;
        let sbom_name = OsStr::new(crate::sbom::SLUG_FILE);
        ddslug.write_via(sbom_name, &sbom, 0o644, &ddslug).with_context(|| at("ddslug").join(sbom_name).display().to_string())?;
        // What other buildpacks put in `.apt` before us, as it will be once ours is merged in.
        manifest.foreign_json_sha256 = record_foreign(&args.build_dir, built, &ddslug, &at("ddslug/foreign.json"))?;
        let Some((sealed, digests)) = seal_manifest(manifest, built, &at("ddslug"), &known)? else { return Ok(false) };
        *manifest = sealed;
        hashed = digests;
        ddslug.write_via(OsStr::new("manifest.json"), to_json(manifest).as_bytes(), 0o644, &ddslug).with_context(|| at("ddslug/manifest.json").display().to_string())?;
        Ok(true)
    })();
    match result {
        Ok(true) => {}
        other => {
            let _ = build.remove_all(&staging.name);
            return other;
        }
    }
    // From here on only renames: BUILD_DIR changes all at once, as far as a filesystem allows.
    place(&staging, "apt", &build, &args.build_dir, ".apt")?;
    place(&staging, "profile", &build, &args.build_dir, ".profile.d")?;
    let ddslug_dir = args.build_dir.join(".ddslug");
    build.remove_all(OsStr::new(".ddslug")).with_context(|| format!("replacing {}", ddslug_dir.display()))?;
    staging.dir.rename(OsStr::new("ddslug"), &build, OsStr::new(".ddslug")).with_context(|| format!("moving {} into place", ddslug_dir.display()))?;
    build.remove_all(&staging.name).with_context(|| format!("removing {}", staging.path.display()))?;
    // The run ends when the slug is in place (after every link and unlink this build made).
    // The record is only a shortcut: without it, the next build reads every file.
    if let Some(started) = started {
        let _ = seen::record(store, &key, started, &hashed);
    }
    Ok(true)
}

/// Lists in `foreign.json` in `ddslug` (the staging `.ddslug`; `path` names the file in
/// errors) the entries of BUILD_DIR's `.apt` that will still be there once ddslug's tree is
/// merged in, and returns the list's SHA-256 for the manifest; `None`, writing nothing,
/// when there are none (the usual case: then this costs one lookup).
fn record_foreign(build_dir: &Path, built: &BuiltLayer, ddslug: &Dir, path: &Path) -> Result<Option<crate::hash::Sha256>> {
    let apt = build_dir.join(".apt");
    // `.apt` was checked to be a directory or missing (check_build_dir); reading only.
    let existing = match crate::store::treehash::scan_tree(&apt) {
        Ok(scan) => scan.entries,
        Err(crate::store::treehash::TreeError::Io { path, error }) if path == apt && error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "reading what other buildpacks put in {} (ddslug lists it so that `ddslug verify` checks it too); \
                     make it readable to the build's user, or have that buildpack install elsewhere",
                    apt.display()
                )
            });
        }
    };
    let survivors = crate::slug::foreign::survivors(existing, &crate::slug::foreign::kinds_of(&built.index));
    if survivors.is_empty() {
        return Ok(None);
    }
    let json = serde_json::to_vec(&survivors).context("listing what other buildpacks put in .apt")?;
    ddslug.write_via(OsStr::new("foreign.json"), &json, 0o644, ddslug).with_context(|| path.display().to_string())?;
    Ok(Some(crate::hash::Sha256::of(&json)))
}

/// Moves the staging directory `from` to `to` in BUILD_DIR, merging it into what is there
/// (another buildpack's files are kept). `to` was checked to be no symlink; opening it
/// refuses one again, so a symlink swapped in meanwhile is an error, not a way out.
fn place(staging: &BuildStaging, from: &str, build: &Dir, build_dir: &Path, to: &str) -> Result<()> {
    let (from_path, to_path) = (staging.path.join(from), build_dir.join(to));
    match build.dir_beneath(Path::new(to)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            staging.dir.rename(OsStr::new(from), build, OsStr::new(to)).with_context(|| format!("moving {} into place", to_path.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("{}: not a directory (a symlink?); ddslug never writes through one", to_path.display())),
        Ok(to_dir) => {
            let from_dir = staging.dir.dir_beneath(Path::new(from)).with_context(|| from_path.display().to_string())?;
            merge_into(&from_dir, &from_path, &to_dir, &to_path)?;
        }
    }
    Ok(())
}
