//! What dyno start writes into `.apt`, by exact name, so that `verify` can tell it from a
//! change to the slug.
//!
//! `ddslug dyno prepare` and `dyno start` (src/runtime/) write, below `.apt`:
//! - `etc/datadog-agent/datadog.yaml`, always, first of all; the Postgres and Redis
//!   integrations' `conf.d/postgres.d/conf.yaml` and `conf.d/redisdb.d/conf.yaml` when they are
//!   enabled (their content comes from the dyno's settings: only their type is checked);
//! - `etc/datadog-agent/install_info`, whose content is fixed by the ddslug version;
//! - the directories `etc/datadog-agent/conf.d`, `etc/datadog-agent/checks.d`,
//!   `opt/datadog-agent/run`, `var`, `var/log`, `var/log/datadog` where the build has none;
//!   and on `etc/datadog-agent`, `opt/datadog-agent/run` and `var/log/datadog`, which the
//!   agents write into later, u+rwx added (a non-root dyno user on a package that ships them
//!   without it);
//! - copies of the app's `datadog/conf.d` and `datadog/checks.d` files (names from the app's
//!   files, content equal to the app's), and the directories that hold them;
//! - `conf.yaml.default` files renamed to `conf.yaml.default_disabled`
//!   (DD_DISABLE_HOST_METRICS), content and mode unchanged;
//! - symlinks the build removed, each to its one relative target beside it, where that
//!   exists: `embedded/ssl/cert.pem` (to `certs/cacert.pem`), `embedded/bin/pip` (to `pip3`
//!   or `pip2`) and for Python 3 `embedded/bin/python` and `python-config`, and for agents
//!   6.52–7.67 with the process agent `bin/agent/process-agent` (to `agent`).
//!
//! None of these is accepted unless `datadog.yaml` is there (dyno start writes it before
//! anything else): a slug that never started has nothing to excuse. Everything else found
//! below `.apt` counts: nothing is excused by directory.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use crate::hash::Sha256;
use crate::slug::manifest::Manifest;
use crate::unpack::recipe::cmp_version;
use crate::store::treehash::{EntryKind, PathBytes, TreeEntry};

const CONF: &str = "etc/datadog-agent";
const DD: &str = "opt/datadog-agent";
/// Entries of the app's datadog folder looked at, at most.
pub const MAX_APP_ENTRIES: usize = 10_000;

/// The tree as found, by path (in path-byte order).
pub type Found = BTreeMap<PathBytes, TreeEntry>;

/// What [`undo`] made of the tree as found.
pub struct Undone {
    /// The tree with dyno start's writes taken back: what the build left, if nothing else
    /// changed.
    pub entries: Vec<TreeEntry>,
    /// The paths dyno start wrote (or renamed), in order.
    pub written: Vec<PathBytes>,
    /// What could not be checked (the app's folder could not be read...).
    pub unchecked: Vec<String>,
}

/// What dyno start's writes depend on.
pub struct Context<'a> {
    pub manifest: &'a Manifest,
    /// What the build listed (empty when the entry list is unusable).
    pub built: &'a [TreeEntry],
    /// The app's datadog folder (DD_HEROKU_CONF_FOLDER, else `BUILD_DIR/datadog`).
    pub app_datadog: PathBuf,
}

/// Takes back from `found` what dyno start wrote (see the module doc): accepted entries are
/// replaced by what the build listed at their path, or dropped where it listed nothing.
pub fn undo(cx: &Context, mut found: Found) -> Undone {
    let mut written = Vec::new();
    let mut unchecked = Vec::new();
    if !found.get(&path(&format!("{CONF}/datadog.yaml"))).is_some_and(is_file) {
        return Undone { entries: found.into_values().collect(), written, unchecked };
    }
    let built: HashMap<&[u8], &TreeEntry> = cx.built.iter().map(|e| (e.path.as_bytes(), e)).collect();
    let accept = |found: &mut Found, path: &PathBytes, written: &mut Vec<PathBytes>| {
        found.remove(path);
        if let Some(e) = built.get(path.as_bytes()) {
            found.insert(path.clone(), (*e).clone());
        }
        written.push(path.clone());
    };

    // Files whose content comes from the dyno's settings.
    for rel in ["datadog.yaml", "conf.d/postgres.d/conf.yaml", "conf.d/redisdb.d/conf.yaml"] {
        let path = path(&format!("{CONF}/{rel}"));
        if found.get(&path).is_some_and(is_file) {
            accept(&mut found, &path, &mut written);
        }
    }
    let info = path(&format!("{CONF}/install_info"));
    let info_text = crate::runtime::yaml::install_info(&format!("ddslug-{}", cx.manifest.ddslug_version)).ok();
    if info_text.is_some_and(|text| found.get(&info).is_some_and(|e| file_sha256(e) == Some(Sha256::of(text.as_bytes())))) {
        accept(&mut found, &info, &mut written);
    }

    // The app's configuration, copied; then DD_DISABLE_HOST_METRICS's renames.
    let (copies, mut dirs) = match app_copies(&cx.app_datadog) {
        Ok(found) => found,
        Err(why) => {
            unchecked.push(why);
            (BTreeMap::new(), Vec::new())
        }
    };
    for (dest, source) in &copies {
        for path in [path(dest), path(&format!("{dest}_disabled"))] {
            if path.as_bytes() != dest.as_bytes() && !dest.ends_with("/conf.yaml.default") {
                continue;
            }
            let Some(e) = found.get(&path) else { continue };
            if file_sha256(e).is_some_and(|got| sha256_of_file(source).is_some_and(|want| want == got)) {
                accept(&mut found, &path, &mut written);
            }
        }
    }
    let renamed: Vec<&TreeEntry> = cx
        .built
        .iter()
        .filter(|e| is_file(e) && e.path.starts_with(format!("{CONF}/conf.d/").as_bytes()) && e.path.ends_with(b"/conf.yaml.default"))
        .collect();
    for original in renamed {
        let disabled = PathBytes::from([original.path.as_bytes(), b"_disabled"].concat());
        let back = found.get(&disabled).filter(|_| !found.contains_key(&original.path) && !built.contains_key(disabled.as_bytes()));
        if let Some(e) = back.filter(|e| is_file(e)) {
            // Put back under its old name: the comparison with the build then checks its
            // content and mode.
            let moved = TreeEntry { path: original.path.clone(), ..e.clone() };
            found.remove(&disabled);
            found.insert(original.path.clone(), moved);
            written.push(disabled);
        }
    }

    // Directories made where the build had none.
    dirs.extend(
        ["conf.d", "checks.d", "conf.d/postgres.d", "conf.d/redisdb.d"].iter().map(|d| format!("{CONF}/{d}")).chain(
            [format!("{DD}/run"), "var".into(), "var/log".into(), "var/log/datadog".into()],
        ),
    );
    for dir in dirs.iter().map(|d| path(d)) {
        if !built.contains_key(dir.as_bytes()) && found.get(&dir).is_some_and(|e| e.kind == EntryKind::Dir) {
            accept(&mut found, &dir, &mut written);
        }
    }
    // The directories the agents write into keep the u+rwx dyno start may have added.
    for dir in [CONF.to_owned(), format!("{DD}/run"), "var/log/datadog".to_owned()].iter().map(|d| path(d)) {
        let (Some(b), Some(f)) = (built.get(dir.as_bytes()), found.get(&dir)) else { continue };
        if b.kind == EntryKind::Dir && f.kind == EntryKind::Dir && f.mode != b.mode && f.mode == b.mode | 0o700 {
            accept(&mut found, &dir, &mut written);
        }
    }

    // Symlinks to their one target each.
    for (link, target) in symlinks(cx, &found) {
        let exact = |e: &TreeEntry| matches!(&e.kind, EntryKind::Symlink { target: t } if t.as_bytes() == target.as_bytes());
        let link = path(&link);
        if found.get(&link).is_some_and(exact) {
            accept(&mut found, &link, &mut written);
        }
    }
    Undone { entries: found.into_values().collect(), written, unchecked }
}

fn path(text: &str) -> PathBytes {
    PathBytes::from(text.as_bytes().to_vec())
}

fn is_file(e: &TreeEntry) -> bool {
    matches!(e.kind, EntryKind::File { .. })
}

fn file_sha256(e: &TreeEntry) -> Option<Sha256> {
    match e.kind {
        EntryKind::File { sha256, .. } => Some(sha256),
        _ => None,
    }
}

/// The SHA-256 of what reading `path` gives (following symlinks, as dyno start's copy does).
fn sha256_of_file(path: &Path) -> Option<Sha256> {
    Sha256::of_file(path).ok()
}

/// The symlinks dyno start may have made: each link's path and its target (relative to the
/// link's directory).
fn symlinks(cx: &Context, found: &Found) -> Vec<(String, String)> {
    // (directory, link name, target)
    let mut links: Vec<(String, &str, &str)> = Vec::new();
    // As `restore_symlinks`: only with a Python directory, and only to targets that exist.
    if let Some(python) = python_dir(found) {
        let bin = format!("{DD}/embedded/bin");
        links.push((format!("{DD}/embedded/ssl"), "cert.pem", "certs/cacert.pem"));
        if python.starts_with("python3") {
            for (name, to) in [("python", "python3"), ("python-config", "python3-config"), ("pip", "pip3")] {
                links.push((bin.clone(), name, to));
            }
        } else {
            links.push((bin, "pip", "pip2"));
        }
    }
    let mut links: Vec<(String, String)> = links
        .into_iter()
        .filter(|(dir, _, target)| found.contains_key(&path(&format!("{dir}/{target}"))))
        .map(|(dir, name, target)| (format!("{dir}/{name}"), target.to_owned()))
        .collect();
    // As `launches`: the combined binary runs as the process agent through a link, for
    // agents from 6.52 / 7.52 that still start a separate process agent.
    let options = &cx.manifest.lock.options;
    let (version, major) = (&options.version, options.major);
    let combined = cmp_version(version, if major == 6 { &[6, 52] } else { &[7, 52] }).is_ge();
    if combined && (major == 6 || cmp_version(version, &[7, 68]).is_lt()) {
        links.push((format!("{DD}/bin/agent/process-agent"), "agent".to_owned()));
    }
    links
}

/// `python2.7` or `python3.12`: the Python directory dyno start picks (the last by name).
fn python_dir(found: &Found) -> Option<String> {
    let lib = format!("{DD}/embedded/lib/");
    found
        .range(path(&lib)..)
        .take_while(|(p, _)| p.starts_with(lib.as_bytes()))
        .filter(|(_, e)| e.kind == EntryKind::Dir)
        .filter_map(|(p, _)| std::str::from_utf8(&p[lib.len()..]).ok())
        .filter(|name| {
            name.strip_prefix("python").is_some_and(|v| {
                let mut parts = v.split('.');
                matches!(parts.next(), Some("2" | "3")) && parts.next().is_some_and(|m| m.chars().all(|c| c.is_ascii_digit()))
            })
        })
        .map(str::to_owned)
        .max()
}

/// Where dyno start copies the app's files (`copy_app_configs`): destination below `.apt`
/// → the app file whose content it must hold (the last one copied there), and the
/// directories it makes for them.
fn app_copies(app: &Path) -> Result<(BTreeMap<String, PathBuf>, Vec<String>), String> {
    let mut copies = BTreeMap::new();
    let mut dirs = Vec::new();
    let mut seen = 0usize;
    let conf_d = format!("{CONF}/conf.d");
    let entries = sorted_entries(&app.join("conf.d"), &mut seen)?;
    // Directories first, then the older `<name>.yaml` form (which wins where both write).
    for path in entries.iter().filter(|p| p.is_dir()) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        copy_dir(path, format!("{conf_d}/{name}"), &mut copies, &mut dirs, &mut seen)?;
    }
    for path in entries.into_iter().filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml")) {
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        dirs.push(format!("{conf_d}/{stem}.d"));
        copies.insert(format!("{conf_d}/{stem}.d/conf.yaml"), path);
    }
    for path in sorted_entries(&app.join("checks.d"), &mut seen)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") => copies.insert(format!("{conf_d}/{name}"), path),
            Some("py") => copies.insert(format!("{CONF}/checks.d/{name}"), path),
            _ => continue,
        };
    }
    Ok((copies, dirs))
}

fn copy_dir(from: &Path, to: String, copies: &mut BTreeMap<String, PathBuf>, dirs: &mut Vec<String>, seen: &mut usize) -> Result<(), String> {
    for path in sorted_entries(from, seen)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let dest = format!("{to}/{name}");
        if path.is_dir() {
            copy_dir(&path, dest, copies, dirs, seen)?;
        } else {
            copies.insert(dest, path);
        }
    }
    dirs.push(to);
    Ok(())
}

/// A directory's entries sorted, as dyno start reads them (none when it cannot be read);
/// an error past [`MAX_APP_ENTRIES`] in all.
fn sorted_entries(dir: &Path, seen: &mut usize) -> Result<Vec<PathBuf>, String> {
    let Ok(read) = fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut paths = Vec::new();
    for entry in read.flatten() {
        *seen += 1;
        if *seen > MAX_APP_ENTRIES {
            return Err(format!(
                "could not check the copies of the app's configuration: {} has more than {MAX_APP_ENTRIES} entries",
                dir.display()
            ));
        }
        paths.push(entry.path());
    }
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8]) -> TreeEntry {
        TreeEntry { path: path.into(), mode: 0o644, kind: EntryKind::File { sha256: Sha256::of(content), size: content.len() as u64 } }
    }
    fn dir(path: &str) -> TreeEntry {
        TreeEntry { path: path.into(), mode: 0o755, kind: EntryKind::Dir }
    }
    fn link(path: &str, target: &str) -> TreeEntry {
        TreeEntry { path: path.into(), mode: 0o777, kind: EntryKind::Symlink { target: target.into() } }
    }

    fn manifest(version: &[u64]) -> Manifest {
        use crate::slug::manifest::{Lock, SCHEMA};
        let zero = Sha256::of(b"");
        let options = crate::unpack::recipe::Options { version: version.to_vec(), major: version[0], python: 3, apm: true, process_agent: true };
        let lock = Lock {
            schema: SCHEMA,
            repository: "http://127.0.0.1/".into(),
            suite: "stable".into(),
            component: "7".into(),
            architecture: "amd64".into(),
            signed_by: String::new(),
            packages: Vec::new(),
            recipe_sha256: zero,
            options,
        };
        Manifest {
            schema: SCHEMA,
            ddslug_version: "1.2.3".into(),
            lock,
            stack: None,
            layer_key: zero,
            tree_hash: crate::store::treehash::TreeHash(zero),
            files: 0,
            bytes: 0,
            removed: Vec::new(),
            pkgconfig: Vec::new(),
            tree_json_sha256: None,
            start_script_sha256: None,
            binary_sha256: None,
            sbom_sha256: None,
            foreign_json_sha256: None,
        }
    }

    #[test]
    fn the_process_agent_link_only_for_agents_that_make_it() {
        let found: Found = [file("opt/datadog-agent/bin/agent/agent", b"")].into_iter().map(|e| (e.path.clone(), e)).collect();
        let app = PathBuf::from("/nonexistent");
        for (version, expected) in [(&[7, 67, 0][..], true), (&[7, 52], true), (&[7, 51, 9], false), (&[7, 68], false), (&[6, 52], true), (&[6, 51], false)] {
            let m = manifest(version);
            let cx = Context { manifest: &m, built: &[], app_datadog: app.clone() };
            let has = symlinks(&cx, &found).iter().any(|(link, _)| link == "opt/datadog-agent/bin/agent/process-agent");
            assert_eq!(has, expected, "{version:?}");
        }
    }

    #[test]
    fn the_directories_agents_write_into_may_have_gained_u_rwx_and_nothing_else() {
        let manifest = manifest(&[7, 81, 2]);
        let locked = |mode| TreeEntry { mode, ..dir("etc/datadog-agent") };
        let built = vec![dir("etc"), locked(0o555), dir("opt")];
        let cx = Context { manifest: &manifest, built: &built, app_datadog: PathBuf::from("/nonexistent") };
        let with = |conf_mode, opt_mode| -> Found {
            let mut found: Found = [dir("etc"), locked(conf_mode), TreeEntry { mode: opt_mode, ..dir("opt") }].into_iter().map(|e| (e.path.clone(), e)).collect();
            found.insert(path("etc/datadog-agent/datadog.yaml"), file("etc/datadog-agent/datadog.yaml", b""));
            found
        };
        assert_eq!(undo(&cx, with(0o755, 0o755)).entries, built);
        assert_ne!(undo(&cx, with(0o777, 0o755)).entries, built, "more than u+rwx");
        assert_ne!(undo(&cx, with(0o755, 0o777)).entries, built, "another directory");
    }

    #[test]
    fn python_dir_is_the_last_python_by_name() {
        let found: Found = [
            dir("opt/datadog-agent/embedded/lib/python2.7"),
            dir("opt/datadog-agent/embedded/lib/python3.8"),
            dir("opt/datadog-agent/embedded/lib/pythonx"),
            file("opt/datadog-agent/embedded/lib/python3.9", b""),
            dir("opt/datadog-agent/embedded/lib/python3.8/site-packages"),
        ]
        .into_iter()
        .map(|e| (e.path.clone(), e))
        .collect();
        assert_eq!(python_dir(&found).as_deref(), Some("python3.8"));
    }

    #[test]
    fn app_copies_follow_dyno_starts_rules() {
        let app = tempfile::tempdir().unwrap();
        let a = app.path();
        fs::create_dir_all(a.join("conf.d/nginx.d/deep")).unwrap();
        fs::write(a.join("conf.d/nginx.d/conf.yaml"), "n").unwrap();
        fs::write(a.join("conf.d/nginx.d/deep/x"), "x").unwrap();
        fs::write(a.join("conf.d/legacy.yaml"), "l").unwrap();
        fs::write(a.join("conf.d/notes.txt"), "skipped").unwrap();
        fs::create_dir_all(a.join("checks.d")).unwrap();
        fs::write(a.join("checks.d/c.py"), "py").unwrap();
        fs::write(a.join("checks.d/c.yaml"), "y").unwrap();
        fs::write(a.join("checks.d/c.txt"), "skipped").unwrap();
        let (copies, dirs) = app_copies(a).unwrap();
        let dests: Vec<&str> = copies.keys().map(String::as_str).collect();
        assert_eq!(
            dests,
            [
                "etc/datadog-agent/checks.d/c.py",
                "etc/datadog-agent/conf.d/c.yaml",
                "etc/datadog-agent/conf.d/legacy.d/conf.yaml",
                "etc/datadog-agent/conf.d/nginx.d/conf.yaml",
                "etc/datadog-agent/conf.d/nginx.d/deep/x",
            ]
        );
        assert_eq!(copies["etc/datadog-agent/conf.d/legacy.d/conf.yaml"], a.join("conf.d/legacy.yaml"));
        let mut dirs = dirs;
        dirs.sort();
        assert_eq!(dirs, ["etc/datadog-agent/conf.d/legacy.d", "etc/datadog-agent/conf.d/nginx.d", "etc/datadog-agent/conf.d/nginx.d/deep"]);
        assert!(app_copies(&a.join("missing")).unwrap().0.is_empty());
    }

    #[test]
    fn nothing_is_excused_before_dyno_start_and_only_exact_writes_after() {
        let manifest = manifest(&[7, 81, 2]);
        let built = vec![
            dir("etc"),
            dir("etc/datadog-agent"),
            dir("etc/datadog-agent/conf.d"),
            dir("etc/datadog-agent/conf.d/cpu.d"),
            file("etc/datadog-agent/conf.d/cpu.d/conf.yaml.default", b"cpu"),
            dir("opt"),
            dir("opt/datadog-agent"),
            dir("opt/datadog-agent/embedded"),
            dir("opt/datadog-agent/embedded/bin"),
            file("opt/datadog-agent/embedded/bin/pip3", b"pip"),
            dir("opt/datadog-agent/embedded/lib"),
            dir("opt/datadog-agent/embedded/lib/python3.12"),
        ];
        let app = tempfile::tempdir().unwrap();
        let cx = Context { manifest: &manifest, built: &built, app_datadog: app.path().to_owned() };
        let mut found: Found = built.iter().map(|e| (e.path.clone(), e.clone())).collect();
        let add = |found: &mut Found, e: TreeEntry| found.insert(e.path.clone(), e);
        add(&mut found, dir("var"));
        add(&mut found, link("opt/datadog-agent/embedded/bin/pip", "pip3"));
        // Before dyno start (no datadog.yaml), both count.
        let undone = undo(&cx, found.clone());
        assert!(undone.written.is_empty());
        assert_eq!(undone.entries.len(), built.len() + 2);
        // After it, they are its writes; a link elsewhere, a file below var/ and a renamed
        // file whose content changed are not.
        add(&mut found, file("etc/datadog-agent/datadog.yaml", b"any"));
        let undone = undo(&cx, found.clone());
        assert_eq!(undone.entries, built);
        assert_eq!(undone.written, ["etc/datadog-agent/datadog.yaml", "var", "opt/datadog-agent/embedded/bin/pip"]);
        add(&mut found, link("opt/datadog-agent/embedded/bin/python", "/app/.apt/opt/datadog-agent/embedded/bin/python3"));
        add(&mut found, file("var/x", b""));
        found.remove(&path("etc/datadog-agent/conf.d/cpu.d/conf.yaml.default"));
        add(&mut found, file("etc/datadog-agent/conf.d/cpu.d/conf.yaml.default_disabled", b"not cpu"));
        let undone = undo(&cx, found.clone());
        let left: Vec<&str> = undone.entries.iter().filter(|e| !built.iter().any(|b| b.path == e.path)).filter_map(|e| e.path.to_str()).collect();
        assert_eq!(left, ["opt/datadog-agent/embedded/bin/python", "var/x"]);
        let cpu = undone.entries.iter().find(|e| e.path == "etc/datadog-agent/conf.d/cpu.d/conf.yaml.default").unwrap();
        assert_ne!(cpu, &built[4], "renamed back, with the content it has now");
        add(&mut found, file("etc/datadog-agent/conf.d/cpu.d/conf.yaml.default_disabled", b"cpu"));
        let undone = undo(&cx, found);
        assert!(undone.entries.contains(&built[4]), "an unchanged renamed file is the build's");
    }
}
