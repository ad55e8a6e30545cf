//! The canonical hash of a directory tree: what "bit-identical slug" means in ddslug.
//!
//! Covered, for every entry below the root (the root itself excluded), sorted by path bytes:
//! the relative path (`/`-separated), the type, the permission bits (`mode & 0o7777`), and
//! the SHA-256 of the content (files) or the target (symlinks). Not covered: mtimes, owners,
//! and which files are hard links of each other.
//!
//! Encoding, one record per entry, hashed with SHA-256:
//! `D <path>\0<mode octal>\n`, `F <path>\0<mode octal>\0<sha256 hex>\n`,
//! `L <path>\0<mode octal>\0<target>\n`. Paths and targets are the names' bytes exactly as
//! the filesystem (and the package) has them, UTF-8 or not ([`PathBytes`]); for UTF-8 names
//! these are the bytes of the text, so trees of UTF-8 names hash as they always did.
//!
//! The entry list (`tree.json`) is a JSON array of objects `{"path", "mode", "type", ...}`
//! with `"sha256"` and `"size"` for files and `"target"` for symlinks. A path or target that
//! is not UTF-8 is written instead as `"path_hex"` / `"target_hex"`: the lowercase hex of its
//! bytes. Exactly one of the two forms is allowed, and the hex form only for bytes that are
//! not UTF-8, so that every tree has one entry list.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use crate::hash::{Digests, FileHasher, Hasher, Sha256};
pub use crate::pathbytes::PathBytes;

/// The hash of a whole tree.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TreeHash(pub Sha256);

impl fmt::Display for TreeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for TreeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TreeHash({})", self.0)
    }
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File { sha256: Sha256, size: u64 },
    Symlink { target: PathBytes },
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
// Read through a flat struct: serde's `flatten` of a tagged enum buffers every entry, which
// slowed loading a 24,000-entry list (what `verify` reads) by a quarter.
#[serde(try_from = "FlatEntry")]
pub struct TreeEntry {
    pub path: PathBytes,
    pub mode: u32,
    pub kind: EntryKind,
}

/// A name as JSON: the string when it is UTF-8, else the hex of its bytes under `<key>_hex`.
fn put_name<M: serde::ser::SerializeMap>(map: &mut M, key: &'static str, hex_key: &'static str, name: &PathBytes) -> Result<(), M::Error> {
    match name.to_str() {
        Some(text) => map.serialize_entry(key, text),
        None => map.serialize_entry(hex_key, &name.hex()),
    }
}

impl serde::Serialize for TreeEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        put_name(&mut map, "path", "path_hex", &self.path)?;
        map.serialize_entry("mode", &self.mode)?;
        match &self.kind {
            EntryKind::Dir => map.serialize_entry("type", "dir")?,
            EntryKind::File { sha256, size } => {
                map.serialize_entry("type", "file")?;
                map.serialize_entry("sha256", sha256)?;
                map.serialize_entry("size", size)?;
            }
            EntryKind::Symlink { target } => {
                map.serialize_entry("type", "symlink")?;
                put_name(&mut map, "target", "target_hex", target)?;
            }
        }
        map.end()
    }
}

/// [`TreeEntry`] as its JSON reads: the kind's fields side by side.
#[derive(serde::Deserialize)]
struct FlatEntry {
    path: Option<String>,
    path_hex: Option<String>,
    mode: u32,
    #[serde(rename = "type")]
    kind: FlatKind,
    sha256: Option<Sha256>,
    size: Option<u64>,
    target: Option<String>,
    target_hex: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum FlatKind {
    Dir,
    File,
    Symlink,
}

/// A name from its two JSON forms: exactly one present, and hex only for bytes that are
/// not UTF-8 (one tree, one entry list).
fn take_name(text: Option<String>, hex: Option<String>, what: &str) -> Result<Option<PathBytes>, String> {
    match (text, hex) {
        (Some(text), None) => Ok(Some(PathBytes::from(text))),
        (None, Some(hex)) => match PathBytes::from_hex(&hex) {
            Some(name) if name.to_str().is_none() => Ok(Some(name)),
            Some(_) => Err(format!("{what}_hex {hex:?} is UTF-8: it must be written as {what}")),
            None => Err(format!("{what}_hex {hex:?} is not lowercase hex")),
        },
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(format!("an entry has both {what} and {what}_hex")),
    }
}

impl TryFrom<FlatEntry> for TreeEntry {
    type Error = String;
    fn try_from(e: FlatEntry) -> Result<TreeEntry, String> {
        let path = take_name(e.path, e.path_hex, "path")?.ok_or("an entry needs a path")?;
        let kind = match e.kind {
            FlatKind::Dir => EntryKind::Dir,
            FlatKind::File => match (e.sha256, e.size) {
                (Some(sha256), Some(size)) => EntryKind::File { sha256, size },
                _ => return Err(format!("{path}: a file entry needs sha256 and size")),
            },
            FlatKind::Symlink => match take_name(e.target, e.target_hex, "target")? {
                Some(target) => EntryKind::Symlink { target },
                None => return Err(format!("{path}: a symlink entry needs a target")),
            },
        };
        Ok(TreeEntry { path, mode: e.mode, kind })
    }
}

/// A scanned tree.
#[derive(Clone, Debug)]
pub struct TreeScan {
    pub entries: Vec<TreeEntry>,
    pub hash: TreeHash,
    /// Regular files and symlinks.
    pub files: u64,
    /// Bytes of regular-file content.
    pub bytes: u64,
}

/// A tree could not be scanned.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{}: {error}", crate::pathbytes::escape_bounded(path.as_os_str().as_bytes(), 1024))]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: {reason}", crate::pathbytes::escape_bounded(path.as_os_str().as_bytes(), 1024))]
    Unsupported { path: PathBuf, reason: &'static str },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |error| TreeError::Io { path: path.to_owned(), error }
}

/// Scans and hashes the tree at `root`, hashing file contents on all cores.
pub fn scan_tree(root: &Path) -> Result<TreeScan, TreeError> {
    scan_tree_known(root, &HashMap::new(), &HashMap::new()).map(|(scan, _)| scan)
}

/// Which bytes a file holds, as far as its metadata can tell: the same inode, size and
/// mtime as when it was written means no one has written to it since (any write would have
/// moved the mtime). Renames and hard links keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> FileId {
        FileId { dev: meta.dev(), ino: meta.ino(), size: meta.len(), mtime: (meta.mtime(), meta.mtime_nsec()) }
    }
}

/// What a layer index records of a file besides its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// The content's xxh3 (see [`crate::hash::Digests`]).
    pub xxh3: u64,
}

/// [`scan_tree`], taking the digests of files found in `known` (what an unpacker hashed as
/// it wrote them) instead of reading them again, and the permission bits of directories
/// found in `dir_modes` (by `(dev, ino)`: the exact bits of directories the store keeps with
/// others, see [`crate::store::layerindex::stored_dir_mode`]) instead of those on disk. Also returns
/// each file's mtime and xxh3, in entry order.
pub fn scan_tree_known(
    root: &Path,
    known: &HashMap<FileId, Digests>,
    dir_modes: &HashMap<(u64, u64), u32>,
) -> Result<(TreeScan, Vec<FileMeta>), TreeError> {
    let mut listed = list(root, dir_modes)?;
    // Paths are unique: an unstable sort gives the one order, faster.
    listed.sort_unstable_by(|a, b| a.0.path.cmp(&b.0.path));
    let (mut entries, ids): (Vec<TreeEntry>, Vec<FileId>) = listed.into_iter().unzip();
    let mut files = Vec::new();
    // Each entry's xxh3 (files only), by entry.
    let mut xxh3s = vec![0u64; entries.len()];
    for (i, (e, id)) in entries.iter_mut().zip(&ids).enumerate() {
        if let EntryKind::File { sha256, .. } = &mut e.kind {
            match known.get(id) {
                Some(digests) => (*sha256, xxh3s[i]) = (digests.sha256, digests.xxh3),
                None => files.push(i),
            }
        }
    }
    let digests = hash_files(root, &entries, &files)?;
    for (index, digests) in files.iter().zip(digests) {
        if let EntryKind::File { sha256, .. } = &mut entries[*index].kind {
            (*sha256, xxh3s[*index]) = (digests.sha256, digests.xxh3);
        }
    }
    let mtimes = entries
        .iter()
        .zip(ids)
        .zip(xxh3s)
        .filter(|((e, _), _)| matches!(e.kind, EntryKind::File { .. }))
        .map(|((_, id), xxh3)| FileMeta { mtime: id.mtime, xxh3 })
        .collect();
    let file_count = entries.iter().filter(|e| !matches!(e.kind, EntryKind::Dir)).count() as u64;
    let bytes = entries.iter().map(|e| if let EntryKind::File { size, .. } = e.kind { size } else { 0 }).sum();
    let hash = hash_entries(&entries);
    Ok((TreeScan { entries, hash, files: file_count, bytes }, mtimes))
}

/// The tree hash of entries already sorted by path bytes.
pub fn hash_entries(entries: &[TreeEntry]) -> TreeHash {
    use std::io::Write;
    let mut h = Hasher::new();
    let mut record = Vec::with_capacity(256);
    for e in entries {
        record.clear();
        let tag: &[u8] = match e.kind {
            EntryKind::Dir => b"D ",
            EntryKind::File { .. } => b"F ",
            EntryKind::Symlink { .. } => b"L ",
        };
        record.extend_from_slice(tag);
        record.extend_from_slice(&e.path);
        // Written in place, not through `format!`: a layer has tens of thousands of entries.
        let _ = write!(record, "\0{:o}", e.mode);
        match &e.kind {
            EntryKind::Dir => {}
            EntryKind::File { sha256, .. } => {
                record.push(0);
                record.extend_from_slice(sha256.hex_str(&mut [0; 64]).as_bytes());
            }
            EntryKind::Symlink { target } => {
                record.push(0);
                record.extend_from_slice(target);
            }
        }
        record.push(b'\n');
        h.update(&record);
    }
    TreeHash(h.finish())
}

/// Every entry below `root` with its identity, unsorted. Each thread takes the next
/// directory to read, lstats its entries relative to it and queues its subdirectories, so
/// reading directories and stating their tens of thousands of entries both run on all cores.
fn list(root: &Path, dir_modes: &HashMap<(u64, u64), u32>) -> Result<Vec<(TreeEntry, FileId)>, TreeError> {
    let walk = Walk { queue: Mutex::new(Queue { dirs: vec![Vec::new()], reading: 0, stopped: false }), more: Condvar::new() };
    let read_some = || -> Result<Vec<(TreeEntry, FileId)>, TreeError> {
        let mut out = Vec::new();
        while let Some(reading) = walk.next() {
            let found = list_dir(root, &reading.rel, dir_modes, &mut out);
            walk.done(reading, found.as_ref().ok());
            found?;
        }
        Ok(out)
    };
    let panicked = || TreeError::Unsupported { path: root.to_owned(), reason: "listing thread panicked" };
    let mut listed = Vec::new();
    for part in crate::fsat::on_threads(crate::fsat::workers(), read_some, panicked) {
        listed.extend(part?);
    }
    Ok(listed)
}

/// The directories [`list`] has yet to read, shared by its threads.
struct Walk {
    queue: Mutex<Queue>,
    more: Condvar,
}

struct Queue {
    dirs: Vec<Vec<u8>>,
    /// Directories being read: each may queue more, so an empty queue is the end only when
    /// this is 0.
    reading: usize,
    /// A thread failed (or panicked): the others stop too.
    stopped: bool,
}

/// A directory a thread took from the queue. Dropped without [`Walk::done`] (a panic), it
/// stops the walk, so no other thread waits for it forever.
struct Reading<'w> {
    walk: &'w Walk,
    rel: Vec<u8>,
    finished: bool,
}

impl Walk {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next directory to read; `None` once every directory is read or the walk stopped.
    fn next(&self) -> Option<Reading<'_>> {
        let mut queue = self.lock();
        loop {
            if queue.stopped {
                return None;
            }
            if let Some(rel) = queue.dirs.pop() {
                queue.reading += 1;
                return Some(Reading { walk: self, rel, finished: false });
            }
            if queue.reading == 0 {
                return None;
            }
            queue = self.more.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Ends `reading`: queues the subdirectories it found, or stops the walk (`None`, a failure).
    fn done(&self, mut reading: Reading<'_>, subdirs: Option<&Vec<Vec<u8>>>) {
        reading.finished = true;
        let mut queue = self.lock();
        queue.reading -= 1;
        match subdirs {
            Some(subdirs) => queue.dirs.extend(subdirs.iter().map(|name| crate::pathbytes::join(&reading.rel, name))),
            None => queue.stopped = true,
        }
        self.more.notify_all();
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.walk.lock().stopped = true;
            self.walk.more.notify_all();
        }
    }
}

/// Appends the entries of the directory `rel` below `root` to `out`; returns the names of
/// its subdirectories.
fn list_dir(root: &Path, rel: &[u8], dir_modes: &HashMap<(u64, u64), u32>, out: &mut Vec<(TreeEntry, FileId)>) -> Result<Vec<Vec<u8>>, TreeError> {
    let dir = crate::fsat::join(root, rel);
    let handle = crate::fsat::Dir::open(&dir).map_err(io_at(&dir))?;
    let mut subdirs = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
        let name = entry.map_err(io_at(&dir))?.file_name().into_vec();
        let path = dir.join(std::ffi::OsStr::from_bytes(&name));
        let st = handle.stat(&name).map_err(io_at(&path))?;
        let child = PathBytes::from(crate::pathbytes::join(rel, &name));
        let mut mode = st.mode & 0o7777;
        let id = FileId { dev: st.dev, ino: st.ino, size: st.size, mtime: st.mtime };
        let kind = if st.is_symlink() {
            let target = fs::read_link(&path).map_err(io_at(&path))?;
            EntryKind::Symlink { target: PathBytes::from(target.into_os_string().into_vec()) }
        } else if st.is_dir() {
            mode = dir_modes.get(&(st.dev, st.ino)).copied().unwrap_or(mode);
            subdirs.push(name);
            EntryKind::Dir
        } else if st.is_file() {
            EntryKind::File { sha256: Sha256([0; 32]), size: st.size }
        } else {
            return Err(TreeError::Unsupported { path, reason: "not a file, directory or symlink" });
        };
        out.push((TreeEntry { path: child, mode, kind }, id));
    }
    Ok(subdirs)
}

fn hash_files(root: &Path, entries: &[TreeEntry], files: &[usize]) -> Result<Vec<Digests>, TreeError> {
    let next = AtomicUsize::new(0);
    let hash_some = || -> Result<Vec<(usize, Digests)>, TreeError> {
        let mut done = Vec::new();
        let mut buf = vec![0u8; 1 << 17];
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(&entry) = files.get(i) else { return Ok(done) };
            let path = crate::fsat::join(root, &entries[entry].path);
            done.push((i, hash_file(&path, &mut buf)?));
        }
    };
    let panicked = || TreeError::Unsupported { path: root.to_owned(), reason: "hashing thread panicked" };
    let mut results: Vec<Option<Digests>> = vec![None; files.len()];
    for done in crate::fsat::on_threads(crate::fsat::workers(), hash_some, panicked) {
        for (i, digest) in done? {
            results[i] = Some(digest);
        }
    }
    Ok(results.into_iter().map(|d| d.unwrap_or(Digests { sha256: Sha256([0; 32]), xxh3: 0 })).collect())
}

fn hash_file(path: &Path, buf: &mut [u8]) -> Result<Digests, TreeError> {
    use std::os::unix::fs::OpenOptionsExt;
    // It was a file when listed; a symlink put there since is not followed.
    let mut file = fs::File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io_at(path))?;
    let mut h = FileHasher::new();
    h.update_from(&mut file, buf).map_err(io_at(path))?;
    Ok(h.finish())
}

/// How two sorted entry lists differ.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TreeDiff {
    pub added: Vec<TreeEntry>,
    pub removed: Vec<TreeEntry>,
    /// (old, new) pairs with the same path.
    pub changed: Vec<(TreeEntry, TreeEntry)>,
}

impl TreeDiff {
    /// Whether the trees are the same.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compares two entry lists sorted by path bytes.
pub fn diff(old: &[TreeEntry], new: &[TreeEntry]) -> TreeDiff {
    let mut d = TreeDiff::default();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a.path == b.path => {
                if a != b {
                    d.changed.push((a.clone(), b.clone()));
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.path < b.path => {
                d.removed.push(a.clone());
                i += 1;
            }
            (Some(_), Some(b)) | (None, Some(b)) => {
                d.added.push(b.clone());
                j += 1;
            }
            (Some(a), None) => {
                d.removed.push(a.clone());
                i += 1;
            }
            (None, None) => break,
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        fs::write(r.join("a/b/file"), b"content").unwrap();
        fs::write(r.join("top"), b"").unwrap();
        std::os::unix::fs::symlink("a/b/file", r.join("link")).unwrap();
        dir
    }

    #[test]
    fn hash_matches_the_documented_encoding() {
        let dir = tree();
        let scan = scan_tree(dir.path()).unwrap();
        let mode = |p: &str| fs::symlink_metadata(dir.path().join(p)).unwrap().mode() & 0o7777;
        let expected = format!(
            "D a\0{:o}\nD a/b\0{:o}\nF a/b/file\0{:o}\0{}\nL link\0{:o}\0a/b/file\nF top\0{:o}\0{}\n",
            mode("a"),
            mode("a/b"),
            mode("a/b/file"),
            Sha256::of(b"content"),
            mode("link"),
            mode("top"),
            Sha256::of(b""),
        );
        assert_eq!(scan.hash, TreeHash(Sha256::of(expected.as_bytes())));
        assert_eq!((scan.files, scan.bytes), (3, 7));
    }

    #[test]
    fn every_entry_of_a_wide_and_deep_tree_is_listed_once_and_a_failure_anywhere_ends_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let mut expected = Vec::new();
        for d in 0..40 {
            let mut rel = format!("d{d}");
            for depth in 0..(d % 5) {
                rel = format!("{rel}/n{depth}");
            }
            fs::create_dir_all(r.join(&rel)).unwrap();
            for f in 0..(d % 7) {
                fs::write(r.join(format!("{rel}/f{f}")), format!("{d}-{f}")).unwrap();
                expected.push(format!("{rel}/f{f}"));
            }
            let mut up = Some(std::path::Path::new(&rel));
            while let Some(p) = up.filter(|p| !p.as_os_str().is_empty()) {
                expected.push(p.to_string_lossy().into_owned());
                up = p.parent();
            }
        }
        expected.sort();
        expected.dedup();
        let scan = scan_tree(r).unwrap();
        let listed: Vec<String> = scan.entries.iter().map(|e| String::from_utf8(e.path.to_vec()).unwrap()).collect();
        assert_eq!(listed, expected, "sorted, each entry once");
        assert_eq!(scan_tree(r).unwrap().hash, scan.hash, "the same hash on every walk");
        // A FIFO deep in one branch fails the scan (it is neither file, directory nor symlink),
        // and the other threads stop instead of waiting for that branch's subdirectories.
        let fifo = r.join("d39/n0/n1/n2/pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        match scan_tree(r) {
            Err(TreeError::Unsupported { path, .. }) => assert_eq!(path, fifo),
            other => panic!("expected the FIFO to be refused, got {:?}", other.map(|s| s.hash)),
        }
    }

    #[test]
    fn what_changes_the_hash_and_what_does_not() {
        let dir = tree();
        let r = dir.path();
        let base = scan_tree(r).unwrap();
        filetime::set_file_mtime(r.join("top"), filetime::FileTime::from_unix_time(1, 0)).unwrap();
        assert_eq!(scan_tree(r).unwrap().hash, base.hash, "mtime is not hashed");
        fs::set_permissions(r.join("top"), fs::Permissions::from_mode(0o755)).unwrap();
        let moded = scan_tree(r).unwrap();
        assert_ne!(moded.hash, base.hash);
        let d = diff(&base.entries, &moded.entries);
        assert_eq!((d.added.len(), d.removed.len(), d.changed.len()), (0, 0, 1));
        fs::create_dir(r.join("empty")).unwrap();
        let with_dir = scan_tree(r).unwrap();
        assert_ne!(with_dir.hash, moded.hash);
        assert_eq!(diff(&moded.entries, &with_dir.entries).added[0].path, "empty");
        fs::write(r.join("a/b/file"), b"contenT").unwrap();
        assert_ne!(scan_tree(r).unwrap().hash, with_dir.hash);
    }

    #[test]
    fn known_digests_are_used_only_for_files_nobody_wrote_to_since() {
        let dir = tree();
        let r = dir.path();
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        let id_of = |p: &Path| {
            let f = fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_modified(old).unwrap();
            FileId::of(&f.metadata().unwrap())
        };
        // Recorded digests that are deliberately not the contents' own, to see which are used.
        let sentinel = Digests { sha256: Sha256::of(b"recorded while writing"), xxh3: 7 };
        let known: HashMap<FileId, Digests> = [(id_of(&r.join("a/b/file")), sentinel), (id_of(&r.join("top")), sentinel)].into();
        fs::rename(r.join("a/b/file"), r.join("a/moved")).unwrap();
        fs::write(r.join("top"), b"").unwrap();
        let (scan, mtimes) = scan_tree_known(r, &known, &HashMap::new()).unwrap();
        let digest = |path: &str| match &scan.entries.iter().find(|e| e.path == path).unwrap().kind {
            EntryKind::File { sha256, .. } => *sha256,
            _ => panic!("{path} is not a file"),
        };
        assert_eq!(digest("a/moved"), sentinel.sha256, "a renamed file keeps its recorded digest");
        assert_eq!(digest("top"), Sha256::of(b""), "a file written to since is read again");
        assert_eq!(mtimes.len(), 2);
        assert_eq!((mtimes[0].xxh3, mtimes[1].xxh3), (7, crate::hash::xxh3(b"")), "the xxh3 comes with the SHA-256");
        assert_eq!(mtimes[0].mtime, (1_600_000_000, 0));
    }

    #[test]
    fn names_that_are_not_utf8_are_scanned_hashed_and_listed_as_bytes() {
        use std::ffi::OsStr;
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let p = |b: &[u8]| r.join(OsStr::from_bytes(b));
        fs::create_dir(p(b"d\xe9")).unwrap();
        fs::write(p(b"d\xe9/a\xe9"), b"e acute").unwrap();
        fs::write(p(b"d\xe9/a\xff"), b"ff").unwrap();
        std::os::unix::fs::symlink(OsStr::from_bytes(b"a\xe9"), p(b"d\xe9/l")).unwrap();
        let scan = scan_tree(r).unwrap();
        let paths: Vec<&[u8]> = scan.entries.iter().map(|e| e.path.as_bytes()).collect();
        assert_eq!(paths, [&b"d\xe9"[..], b"d\xe9/a\xe9", b"d\xe9/a\xff", b"d\xe9/l"]);
        // The hash covers the raw bytes, in the documented records.
        let mode = |b: &[u8]| fs::symlink_metadata(p(b)).unwrap().mode() & 0o7777;
        let mut expected = Vec::new();
        for (tag, path, tail) in [
            ("D ", &b"d\xe9"[..], Vec::new()),
            ("F ", b"d\xe9/a\xe9", format!("\0{}", Sha256::of(b"e acute")).into_bytes()),
            ("F ", b"d\xe9/a\xff", format!("\0{}", Sha256::of(b"ff")).into_bytes()),
            ("L ", b"d\xe9/l", b"\0a\xe9".to_vec()),
        ] {
            expected.extend_from_slice(tag.as_bytes());
            expected.extend_from_slice(path);
            expected.extend_from_slice(format!("\0{:o}", mode(path)).as_bytes());
            expected.extend_from_slice(&tail);
            expected.push(b'\n');
        }
        assert_eq!(scan.hash, TreeHash(Sha256::of(&expected)));
        // The entry list: hex only for what is not UTF-8, and it reads back exactly.
        let json = serde_json::to_string(&scan.entries).unwrap();
        assert!(json.contains(r#"{"path_hex":"64e9","mode":"#), "{json}");
        assert!(json.contains(r#""path_hex":"64e92f61ff""#), "{json}");
        assert!(json.contains(r#""type":"symlink","target_hex":"61e9"}"#), "{json}");
        assert!(!json.contains(r#""path":"#), "{json}");
        let back: Vec<TreeEntry> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, scan.entries);
        // People see escapes.
        assert_eq!(scan.entries[2].path.to_string(), "d\\xe9/a\\xff");
    }

    #[test]
    fn entry_lists_have_one_form_per_name() {
        let read = |json: &str| serde_json::from_str::<TreeEntry>(json).map_err(|e| e.to_string());
        let entry = read(r#"{"path_hex":"61ff","mode":420,"type":"symlink","target":"x"}"#).unwrap();
        assert_eq!(entry.path.as_bytes(), b"a\xff");
        for (json, why) in [
            (r#"{"path_hex":"6162","mode":420,"type":"dir"}"#, "is UTF-8"),
            (r#"{"path_hex":"61FF","mode":420,"type":"dir"}"#, "not lowercase hex"),
            (r#"{"path":"a","path_hex":"61ff","mode":420,"type":"dir"}"#, "both path and path_hex"),
            (r#"{"mode":420,"type":"dir"}"#, "needs a path"),
            (r#"{"path":"l","mode":511,"type":"symlink","target_hex":"78"}"#, "is UTF-8"),
        ] {
            let err = read(json).unwrap_err();
            assert!(err.contains(why), "{json}: {err}");
        }
    }

    #[test]
    fn entry_lists_read_back_what_was_written() {
        let dir = tree();
        let scan = scan_tree(dir.path()).unwrap();
        let json = serde_json::to_string(&scan.entries).unwrap();
        assert!(json.contains(r#""type":"file","sha256":""#), "{json}");
        let back: Vec<TreeEntry> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, scan.entries);
        let err = serde_json::from_str::<TreeEntry>(r#"{"path":"f","mode":420,"type":"file","size":1}"#).unwrap_err();
        assert!(err.to_string().contains("needs sha256 and size"), "{err}");
    }
}
