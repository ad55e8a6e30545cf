//! What a package's own files declare about the software inside it, gathered while its layer
//! is built: the [`Inventory`] stored in the layer's record and rendered by
//! [`crate::sbom::for_layer`].
//!
//! Two steps. While the package streams, a [`Collector`] wraps the strip filter and notes
//! every `*.dist-info` / `*.egg-info` path it sees (names only: nothing is read, so the
//! blocks the unpacker skips stay undecoded). Once the stripped tree is complete,
//! [`inventory`] reads, for each distribution still in it, the headers of its `METADATA` (or
//! `PKG-INFO`) and the top-level names of its `RECORD` (or `top_level.txt`), and the Omnibus
//! build manifest ([`super::omnibus`]); distributions no longer in the tree are described by
//! their directory names.
//!
//! Contract: reads go through directory descriptors that never follow a symlink, and every
//! read is bounded (the headers are taken from the first [`METADATA_HEAD`] bytes; a `RECORD`,
//! `top_level.txt` or build manifest over its limit is not read, and the SBOM says so in a
//! `ddslug:note` naming the limit). Nothing here fails a build over what a package's metadata
//! says; only an unreadable tree (an I/O error) does, or a package with more than
//! [`MAX_DISTRIBUTIONS`] distribution records (the error names the limit).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{BufRead, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::fsat::Dir;
use crate::unpack::deb::EntryFilter;
use crate::unpack::recipe::RuleOutcome;

/// Bytes of a `METADATA` / `PKG-INFO` read for its headers (the description after them may
/// be long; it is not needed).
pub const METADATA_HEAD: u64 = 64 << 10;
/// The largest `RECORD` read (botocore's, the largest in the agent, is under 1 MiB).
pub const RECORD_LIMIT: u64 = 16 << 20;
/// The largest `top_level.txt` read.
pub const TOP_LEVEL_LIMIT: u64 = 1 << 20;
/// Distributions recorded per layer, at most (the agent has a few hundred).
pub const MAX_DISTRIBUTIONS: usize = 100_000;
/// Longest name, version or licence kept from a package's metadata, in characters.
pub(super) const MAX_FIELD: usize = 256;

/// Why the inventory could not be made: the tree just built could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("the package holds more than {MAX_DISTRIBUTIONS} Python distribution records, ddslug's limit for an SBOM")]
    TooMany,
    #[error("reading the Python distributions' metadata: a worker thread panicked")]
    Panicked,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What the package's files declare (stored with the layer, in `layers/<key>.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inventory {
    pub python: Vec<PythonDist>,
    pub omnibus: Vec<OmnibusSoftware>,
    /// The Go executables kept, with their modules; `None` in an inventory made by a ddslug
    /// from before it read them ([`crate::sbom::for_stored_layer`] reads them then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go: Option<Vec<super::GoBinary>>,
    /// What could not be read, and why (shown as `ddslug:note` properties).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A Python distribution the package ships.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PythonDist {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<License>,
    /// Its `.dist-info` / `.egg-info`, relative to the layer root.
    pub path: String,
    /// Still in the layer after the recipe.
    pub kept: bool,
    /// Recipe rules that removed any of it.
    pub rules: Vec<String>,
}

/// A licence as a distribution's metadata gives it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum License {
    /// `License-Expression` (PEP 639): an SPDX expression.
    Expression(String),
    /// `License`, or a `License ::` classifier: free text.
    Name(String),
}

/// One `software` entry of the Omnibus build manifest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OmnibusSoftware {
    pub name: String,
    pub version: Option<String>,
    pub license: Option<String>,
    /// The manifest it is named in, relative to the layer root.
    pub manifest: String,
}

/// Wraps the strip filter while a package streams, noting each distribution directory (or
/// egg-info file) it passes and whether anything of it was kept.
pub struct Collector<'f> {
    inner: &'f mut dyn EntryFilter,
    seen: BTreeMap<Vec<u8>, bool>,
    overflow: bool,
}

impl<'f> Collector<'f> {
    pub fn new(inner: &'f mut dyn EntryFilter) -> Collector<'f> {
        Collector { inner, seen: BTreeMap::new(), overflow: false }
    }

    /// The distributions seen, by path, with whether anything of each was written.
    pub fn finish(self) -> Result<BTreeMap<Vec<u8>, bool>, SbomError> {
        if self.overflow { Err(SbomError::TooMany) } else { Ok(self.seen) }
    }
}

impl EntryFilter for Collector<'_> {
    fn skip(&mut self, rel: &[u8], is_dir: bool, size: u64) -> bool {
        let skipped = self.inner.skip(rel, is_dir, size);
        if let Some(end) = distribution_end(rel) {
            let key = &rel[..end];
            let room = self.seen.len() < MAX_DISTRIBUTIONS;
            match self.seen.get_mut(key) {
                Some(kept) => *kept |= !skipped,
                None if room => {
                    self.seen.insert(key.to_vec(), !skipped);
                }
                None => self.overflow = true,
            }
        }
        skipped
    }
}

/// The length of the prefix of `rel` that names a distribution record (up to and including
/// the first component ending in `.dist-info` or `.egg-info`), if there is one.
fn distribution_end(rel: &[u8]) -> Option<usize> {
    let mut start = 0;
    for part in rel.split(|&b| b == b'/') {
        let end = start + part.len();
        // A name with something before the suffix: `.dist-info` alone names no distribution.
        if (part.len() > 10 && part.ends_with(b".dist-info")) || (part.len() > 9 && part.ends_with(b".egg-info")) {
            return Some(end);
        }
        start = end + 1;
    }
    None
}

/// Reads what the finished tree at `tree` (shown as `tree_path` in errors) declares: the
/// distributions `seen` while unpacking (merged over the packages), each kept or removed as
/// `removed` (the recipe's outcomes) says, and the Omnibus manifest. The records are read on
/// all cores (a few hundred small files on the cold path).
pub fn inventory(tree: &Dir, tree_path: &Path, seen: &BTreeMap<Vec<u8>, bool>, removed: &[RuleOutcome]) -> Result<Inventory, SbomError> {
    let cut = removed_paths(removed);
    let seen: Vec<(&Vec<u8>, &bool)> = seen.iter().collect();
    let runs = crate::fsat::balanced_runs(std::iter::repeat_n(1, seen.len()), crate::fsat::workers());
    let parts = crate::fsat::on_runs(
        &runs,
        |run| {
            let (mut python, mut notes) = (Vec::new(), Vec::new());
            // The records of one site-packages come one after another: its directory is opened once.
            let mut last: Option<(&[u8], Parent)> = None;
            for &(rel, &streamed_kept) in &seen[run] {
                let (parent, _) = crate::pathbytes::split_last(rel);
                if last.as_ref().is_none_or(|(p, _)| *p != parent) {
                    last = Some((parent, open_parent(tree, tree_path, parent)?));
                }
                let Some((_, parent_dir)) = &last else { continue };
                python.push(describe(parent_dir, tree_path, rel, streamed_kept, &cut, &mut notes)?);
            }
            Ok((python, notes))
        },
        || SbomError::Panicked,
    );
    let mut inv = Inventory::default();
    for part in parts {
        let (python, notes) = part?;
        inv.python.extend(python);
        inv.notes.extend(notes);
    }
    inv.omnibus = super::omnibus::software(tree, tree_path, &mut inv.notes)?;
    inv.go = Some(super::gobuild::binaries(tree, tree_path, &mut inv.notes)?);
    Ok(inv)
}

/// One distribution record `rel` (its directory already opened as `parent_dir`): from its
/// metadata if it is still in the tree, else from its name; kept or removed as `cut` says.
fn describe(parent_dir: &Parent, tree_path: &Path, rel: &[u8], streamed_kept: bool, cut: &[(String, String)], notes: &mut Vec<String>) -> Result<PythonDist, SbomError> {
    let path = crate::pathbytes::escape(rel);
    let (parent, name) = crate::pathbytes::split_last(rel);
    let name_text = String::from_utf8_lossy(name);
    let egg = name_text.ends_with(".egg-info");
    let (mut dist_name, mut version) = from_dir_name(&name_text);
    let mut license = None;
    let mut tops = BTreeSet::new();
    let present = match parent_dir {
        Parent::Open(dir) => match dir.kind(OsStr::from_bytes(name)) {
            Ok(kind) => Some((dir, kind)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(SbomError::Io { path: crate::fsat::join(tree_path, rel), error }),
        },
        Parent::Missing => None,
        Parent::BeyondSymlink => {
            // Not read through a link; what the unpack wrote is all that is known.
            notes.push(format!("{path} lies beyond a symlink in the package: its metadata was not read"));
            return Ok(PythonDist { name: bounded(&dist_name), version: bounded(&version), license: None, path, kept: streamed_kept, rules: Vec::new() });
        }
    };
    if let Some((dir, kind)) = present {
        let read = Reader { tree_path, rel };
        let headers = match kind {
            crate::fsat::Kind::Dir => {
                let meta = dir.dir_beneath(Path::new(OsStr::from_bytes(name))).map_err(|error| read.io(error))?;
                let headers = read.head(&meta, if egg { "PKG-INFO" } else { "METADATA" }, notes)?;
                tops = if egg { read.top_level(&meta, notes)? } else { read.record(&meta, name, notes)? };
                headers
            }
            // An egg-info file is PKG-INFO itself.
            crate::fsat::Kind::File => Reader { tree_path, rel: parent }.head(dir, &name_text, notes)?,
            _ => None,
        };
        if let Some(h) = headers {
            dist_name = h.name.unwrap_or(dist_name);
            version = h.version.unwrap_or(version);
            license = h.license;
        }
    }
    // Which rules took the record itself, or any of the names it installs.
    let site = String::from_utf8_lossy(parent).into_owned();
    let mut rules = BTreeSet::new();
    let mut all_gone = !tops.is_empty();
    for top in &tops {
        let full = if site.is_empty() { top.clone() } else { format!("{site}/{top}") };
        let candidates = if egg { vec![full.clone(), format!("{full}.py")] } else { vec![full] };
        let mut gone = false;
        for (cut_path, rule) in cut {
            for c in &candidates {
                if covers(cut_path, c) {
                    gone = true;
                    rules.insert(rule.clone());
                } else if covers(c, cut_path) {
                    rules.insert(rule.clone());
                }
            }
        }
        all_gone &= gone;
    }
    if present.is_none() {
        rules.extend(cut.iter().filter(|(c, _)| covers(c, &path)).map(|(_, r)| r.clone()));
    }
    Ok(PythonDist {
        name: bounded(&dist_name),
        version: bounded(&version),
        license,
        path,
        kept: present.is_some() && !all_gone,
        rules: rules.into_iter().collect(),
    })
}

/// The paths the recipe removed (top-most), with the rule that did; renames are not removals.
fn removed_paths(removed: &[RuleOutcome]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for outcome in removed {
        for path in outcome.paths.iter().filter(|p| !p.contains(" -> ")) {
            out.push((path.clone(), outcome.rule.clone()));
        }
    }
    out
}

/// Whether the removal of `ancestor` took `path` (the path itself or something below it).
fn covers(ancestor: &str, path: &str) -> bool {
    path == ancestor || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// What became of a directory of the tree.
pub(super) enum Parent {
    Open(Dir),
    Missing,
    /// Reached only through a symlink (which is never followed), or not a directory.
    BeyondSymlink,
}

/// The directory `parent` of the tree, opened without following any symlink.
pub(super) fn open_parent(tree: &Dir, tree_path: &Path, parent: &[u8]) -> Result<Parent, SbomError> {
    match tree.dir_beneath(Path::new(OsStr::from_bytes(parent))) {
        Ok(dir) => Ok(Parent::Open(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Parent::Missing),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV)) => Ok(Parent::BeyondSymlink),
        Err(error) => Err(SbomError::Io { path: crate::fsat::join(tree_path, parent), error }),
    }
}

/// Name and version from `<name>-<version>.dist-info` or `<name>-<version>[-pyX.Y].egg-info`
/// (the wheel and egg conventions: neither part holds a `-`).
fn from_dir_name(dir: &str) -> (String, String) {
    let stem = dir.strip_suffix(".dist-info").or_else(|| dir.strip_suffix(".egg-info")).unwrap_or(dir);
    let mut parts = stem.split('-');
    let name = parts.next().unwrap_or_default().to_string();
    (name, parts.next().unwrap_or_default().to_string())
}

pub(super) fn bounded(s: &str) -> String {
    s.chars().take(MAX_FIELD).collect()
}

/// The headers of a distribution's metadata that the SBOM uses.
#[derive(Debug, Default, PartialEq)]
struct Headers {
    name: Option<String>,
    version: Option<String>,
    license: Option<License>,
}

/// Parses the header block of a core-metadata file (RFC 822 style; continuation lines start
/// with white space). Licence: `License-Expression`, else a meaningful first line of
/// `License`, else the last part of a `License ::` classifier.
fn parse_headers(text: &str) -> Headers {
    let (mut name, mut version, mut expression, mut free, mut classifier) = (None, None, None, None, None);
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        let keep = || (!value.is_empty()).then(|| bounded(value));
        match key.trim().to_ascii_lowercase().as_str() {
            "name" => name = name.or_else(keep),
            "version" => version = version.or_else(keep),
            "license-expression" => expression = expression.or_else(keep),
            "license" if !value.eq_ignore_ascii_case("unknown") => free = free.or_else(keep),
            "classifier" if value.starts_with("License ::") => {
                classifier = value.rsplit("::").next().map(|s| bounded(s.trim())).filter(|s| !s.is_empty());
            }
            _ => {}
        }
    }
    let license = expression.map(License::Expression).or(free.map(License::Name)).or(classifier.map(License::Name));
    Headers { name, version, license }
}

/// Reads the files of one distribution record, naming them in errors and notes.
pub(super) struct Reader<'a> {
    pub(super) tree_path: &'a Path,
    /// The record (or, for an egg-info file, its directory), relative to the tree.
    pub(super) rel: &'a [u8],
}

impl Reader<'_> {
    pub(super) fn io(&self, error: std::io::Error) -> SbomError {
        SbomError::Io { path: crate::fsat::join(self.tree_path, self.rel), error }
    }

    fn shown(&self, file: &str) -> String {
        format!("{}/{file}", crate::pathbytes::escape(self.rel))
    }

    /// `file` in `dir`, opened if it is a regular file; `None` if missing, not one (a symlink
    /// is not followed), or not readable (a package's mode 0000 file, for a user who is not
    /// root: said in a note).
    pub(super) fn open(&self, dir: &Dir, file: &str, notes: &mut Vec<String>) -> Option<std::fs::File> {
        match dir.open_regular(OsStr::new(file)) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                notes.push(format!("{}: {e}; not read", self.shown(file)));
                None
            }
            Err(_) => None,
        }
    }

    /// The headers of `file` (its first [`METADATA_HEAD`] bytes).
    fn head(&self, dir: &Dir, file: &str, notes: &mut Vec<String>) -> Result<Option<Headers>, SbomError> {
        let Some(f) = self.open(dir, file, notes) else { return Ok(None) };
        let mut bytes = Vec::new();
        f.take(METADATA_HEAD).read_to_end(&mut bytes).map_err(|e| self.io(e))?;
        Ok(Some(parse_headers(&String::from_utf8_lossy(&bytes))))
    }

    /// The first path components `RECORD` lists, other than the record itself, `..` (scripts
    /// installed elsewhere) and `__pycache__`.
    fn record(&self, dir: &Dir, record_dir: &[u8], notes: &mut Vec<String>) -> Result<BTreeSet<String>, SbomError> {
        let mut tops = BTreeSet::new();
        let Some(f) = self.open(dir, "RECORD", notes) else { return Ok(tops) };
        let mut reader = std::io::BufReader::new(f.take(RECORD_LIMIT + 1));
        let (mut line, mut total) = (Vec::new(), 0u64);
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(|e| self.io(e))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > RECORD_LIMIT {
                notes.push(format!("{} is larger than {RECORD_LIMIT} bytes, ddslug's limit: not read, so whether the recipe removed this distribution's files is not known", self.shown("RECORD")));
                return Ok(BTreeSet::new());
            }
            let path = record_path(&line);
            let top = path.split(|&b| b == b'/').next().unwrap_or_default();
            if top.is_empty() || top == b".." || top == b"__pycache__" || top == record_dir {
                continue;
            }
            tops.insert(String::from_utf8_lossy(top).into_owned());
        }
        Ok(tops)
    }

    /// The module names `top_level.txt` lists (egg-info).
    fn top_level(&self, dir: &Dir, notes: &mut Vec<String>) -> Result<BTreeSet<String>, SbomError> {
        let Some(f) = self.open(dir, "top_level.txt", notes) else { return Ok(BTreeSet::new()) };
        let mut bytes = Vec::new();
        f.take(TOP_LEVEL_LIMIT + 1).read_to_end(&mut bytes).map_err(|e| self.io(e))?;
        if bytes.len() as u64 > TOP_LEVEL_LIMIT {
            notes.push(format!("{} is larger than {TOP_LEVEL_LIMIT} bytes, ddslug's limit: not read", self.shown("top_level.txt")));
            return Ok(BTreeSet::new());
        }
        Ok(String::from_utf8_lossy(&bytes).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
    }
}

/// The path field of a `RECORD` line (CSV: quoted when it holds a comma or a quote).
fn record_path(line: &[u8]) -> Vec<u8> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(quoted) = line.strip_prefix(b"\"") else {
        return line.split(|&b| b == b',').next().unwrap_or_default().to_vec();
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < quoted.len() {
        match (quoted[i], quoted.get(i + 1)) {
            (b'"', Some(b'"')) => {
                out.push(b'"');
                i += 2;
            }
            (b'"', _) => break,
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_paths_are_found() {
        let p = b"opt/x/site-packages/six-1.16.0.dist-info/RECORD";
        assert_eq!(distribution_end(p), Some(p.len() - "/RECORD".len()));
        assert_eq!(distribution_end(b"a/b.egg-info"), Some(12));
        assert_eq!(distribution_end(b"a/.dist-info/x"), None, "a bare suffix names nothing");
        assert_eq!(distribution_end(b"a/b/c.py"), None);
    }

    #[test]
    fn the_collector_passes_decisions_through_and_stops_at_its_limit() {
        /// Skips everything under `gone/`.
        struct Strip;
        impl EntryFilter for Strip {
            fn skip(&mut self, rel: &[u8], _: bool, _: u64) -> bool {
                rel.starts_with(b"gone/")
            }
        }
        let mut strip = Strip;
        let mut c = Collector::new(&mut strip);
        assert!(!c.skip(b"site/a-1.dist-info", true, 0));
        assert!(c.skip(b"gone/b-2.dist-info/METADATA", false, 10));
        assert!(!c.skip(b"site/plain.py", false, 10));
        let seen = c.finish().unwrap();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [(b"gone/b-2.dist-info".to_vec(), false), (b"site/a-1.dist-info".to_vec(), true)]);
        let mut strip = Strip;
        let mut c = Collector::new(&mut strip);
        for i in 0..=MAX_DISTRIBUTIONS {
            c.skip(format!("site/d{i}-1.dist-info").as_bytes(), true, 0);
        }
        let err = c.finish().unwrap_err().to_string();
        assert!(err.contains(&format!("more than {MAX_DISTRIBUTIONS} Python distribution records, ddslug's limit")), "{err}");
    }

    #[test]
    fn directory_names_give_name_and_version() {
        assert_eq!(from_dir_name("PyYAML-6.0.1.dist-info"), ("PyYAML".into(), "6.0.1".into()));
        assert_eq!(from_dir_name("simplejson-3.6.5-py2.7.egg-info"), ("simplejson".into(), "3.6.5".into()));
        assert_eq!(from_dir_name("odd.dist-info"), ("odd".into(), String::new()));
    }

    #[test]
    fn headers_and_licences() {
        let h = parse_headers("Metadata-Version: 2.4\nName: requests\nVersion: 2.32.3\nLicense: Apache 2.0\n    more text\nLicense-Expression: Apache-2.0\n\nName: body\n");
        assert_eq!(h, Headers { name: Some("requests".into()), version: Some("2.32.3".into()), license: Some(License::Expression("Apache-2.0".into())) });
        let h = parse_headers("Name: six\nVersion: 1.16.0\nLicense: UNKNOWN\nClassifier: License :: OSI Approved :: MIT License\n");
        assert_eq!(h.license, Some(License::Name("MIT License".into())));
        let h = parse_headers("Name: x\nLicense: BSD\n");
        assert_eq!(h.license, Some(License::Name("BSD".into())));
        assert_eq!(parse_headers("no headers at all").name, None);
    }

    #[test]
    fn record_paths_with_quotes() {
        assert_eq!(record_path(b"six.py,sha256=abc,123\n"), b"six.py");
        assert_eq!(record_path(b"\"a,b/c.py\",sha256=x,1\r\n"), b"a,b/c.py");
        assert_eq!(record_path(b"\"q\"\"x/y\",,\n"), b"q\"x/y");
    }

    fn outcome(rule: &str, paths: &[&str]) -> RuleOutcome {
        RuleOutcome { rule: rule.into(), paths: paths.iter().map(|p| p.to_string()).collect(), ..RuleOutcome::default() }
    }

    #[test]
    fn inventory_of_a_stripped_tree() {
        let root = tempfile::tempdir().unwrap();
        let put = |rel: &str, text: &str| {
            let path = root.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        let site = "lib/site-packages";
        put(&format!("{site}/requests-2.0.dist-info/METADATA"), "Name: requests\nVersion: 2.0\nLicense-Expression: Apache-2.0\n\nbody");
        put(&format!("{site}/requests-2.0.dist-info/RECORD"), "requests/__init__.py,,\nrequests-2.0.dist-info/RECORD,,\n../../bin/x,,\n");
        put(&format!("{site}/requests/__init__.py"), "");
        // Its code removed, its record left.
        put(&format!("{site}/kube-1.0.dist-info/METADATA"), "Name: kube\nVersion: 1.0\n");
        put(&format!("{site}/kube-1.0.dist-info/RECORD"), "kube/__init__.py,,\nkube/api.py,,\n");
        // METADATA a symlink: not followed, the directory name speaks for it.
        put("outside/METADATA", "Name: evil\nVersion: 6.6.6\n");
        std::fs::create_dir_all(root.path().join(format!("{site}/linked-3.0.dist-info"))).unwrap();
        std::os::unix::fs::symlink(root.path().join("outside/METADATA"), root.path().join(format!("{site}/linked-3.0.dist-info/METADATA"))).unwrap();
        // A site-packages reached through a symlink.
        std::os::unix::fs::symlink("site-packages", root.path().join("lib/alias")).unwrap();
        put("opt/datadog-agent/version-manifest.json", "{ not json");
        let seen: BTreeMap<Vec<u8>, bool> = [
            format!("{site}/requests-2.0.dist-info"),
            format!("{site}/kube-1.0.dist-info"),
            format!("{site}/linked-3.0.dist-info"),
            "lib/python2.7/site-packages/old_pkg-0.9.dist-info".to_string(),
            "lib/alias/aliased-1.0.dist-info".to_string(),
        ]
        .into_iter()
        .map(|p| (p.into_bytes(), true))
        .collect();
        let removed = [outcome("python-packages", &["lib/site-packages/kube"]), outcome("python2", &["lib/python2.7"])];
        let tree = Dir::open_given(root.path()).unwrap();
        let inv = inventory(&tree, root.path(), &seen, &removed).unwrap();
        let by_name = |n: &str| inv.python.iter().find(|d| d.name == n).unwrap_or_else(|| panic!("{n} in {inv:#?}"));
        let requests = by_name("requests");
        assert_eq!((requests.kept, requests.license.clone()), (true, Some(License::Expression("Apache-2.0".into()))));
        let kube = by_name("kube");
        assert_eq!((kube.kept, kube.rules.clone()), (false, vec!["python-packages".to_string()]));
        let linked = by_name("linked");
        assert_eq!((linked.version.as_str(), linked.kept), ("3.0", true));
        let old = by_name("old_pkg");
        assert_eq!((old.version.as_str(), old.kept, old.rules.clone()), ("0.9", false, vec!["python2".to_string()]));
        assert!(by_name("aliased").kept, "what the unpack wrote");
        assert!(inv.notes.iter().any(|n| n.contains("lib/alias/aliased-1.0.dist-info lies beyond a symlink")), "{:?}", inv.notes);
        assert!(inv.notes.iter().any(|n| n.contains("version-manifest.json is not an Omnibus build manifest")), "{:?}", inv.notes);
        assert!(inv.omnibus.is_empty());
    }

    #[test]
    fn coverage_is_by_whole_components() {
        assert!(covers("a/b", "a/b"));
        assert!(covers("a/b", "a/b/c"));
        assert!(!covers("a/b", "a/bc"));
        assert!(!covers("a/b/c", "a/b"));
    }
}
