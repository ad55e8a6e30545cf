//! The canonical hash of a directory tree: what "bit-identical slug" means in ddslug.
//!
//! Covered, for every entry below the root (the root itself excluded), sorted by path bytes:
//! the relative path (`/`-separated), the type, the permission bits (`mode & 0o7777`), and
//! the SHA-256 of the content (files) or the target (symlinks). Not covered: mtimes, owners,
//! and which files are hard links of each other.
//!
//! Encoding, one record per entry, hashed with SHA-256:
//! `D <path>\0<mode octal>\n`, `F <path>\0<mode octal>\0<sha256 hex>\n`,
//! `L <path>\0<mode octal>\0<target>\n`.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::hash::{Hasher, Sha256};

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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File { sha256: Sha256, size: u64 },
    Symlink { target: String },
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
// Read through a flat struct: serde's `flatten` of a tagged enum buffers every entry, which
// slowed loading a 24,000-entry list (what `verify` reads) by a quarter.
#[serde(try_from = "FlatEntry")]
pub struct TreeEntry {
    pub path: String,
    pub mode: u32,
    #[serde(flatten)]
    pub kind: EntryKind,
}

/// [`TreeEntry`] as its JSON reads: the kind's fields side by side.
#[derive(serde::Deserialize)]
struct FlatEntry {
    path: String,
    mode: u32,
    #[serde(rename = "type")]
    kind: FlatKind,
    sha256: Option<Sha256>,
    size: Option<u64>,
    target: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum FlatKind {
    Dir,
    File,
    Symlink,
}

impl TryFrom<FlatEntry> for TreeEntry {
    type Error = String;
    fn try_from(e: FlatEntry) -> Result<TreeEntry, String> {
        let kind = match e.kind {
            FlatKind::Dir => EntryKind::Dir,
            FlatKind::File => match (e.sha256, e.size) {
                (Some(sha256), Some(size)) => EntryKind::File { sha256, size },
                _ => return Err(format!("{}: a file entry needs sha256 and size", e.path)),
            },
            FlatKind::Symlink => match e.target {
                Some(target) => EntryKind::Symlink { target },
                None => return Err(format!("{}: a symlink entry needs a target", e.path)),
            },
        };
        Ok(TreeEntry { path: e.path, mode: e.mode, kind })
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
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: &'static str },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io { path: path.to_owned(), source }
}

/// Scans and hashes the tree at `root`, hashing file contents on all cores.
pub fn scan_tree(root: &Path) -> Result<TreeScan, TreeError> {
    scan_tree_known(root, &HashMap::new()).map(|(scan, _)| scan)
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

/// [`scan_tree`], taking the digests of files found in `known` (what an unpacker hashed as
/// it wrote them) instead of reading them again. Also returns each file's mtime (seconds,
/// nanoseconds), in entry order.
pub fn scan_tree_known(root: &Path, known: &HashMap<FileId, Sha256>) -> Result<(TreeScan, Vec<(i64, i64)>), TreeError> {
    let mut listed = list(root)?;
    listed.sort_by(|a, b| a.0.path.as_bytes().cmp(b.0.path.as_bytes()));
    let (mut entries, ids): (Vec<TreeEntry>, Vec<FileId>) = listed.into_iter().unzip();
    let mut files = Vec::new();
    for (i, (e, id)) in entries.iter_mut().zip(&ids).enumerate() {
        if let EntryKind::File { sha256, .. } = &mut e.kind {
            match known.get(id) {
                Some(digest) => *sha256 = *digest,
                None => files.push(i),
            }
        }
    }
    let digests = hash_files(root, &entries, &files)?;
    for (index, digest) in files.iter().zip(digests) {
        if let EntryKind::File { sha256, .. } = &mut entries[*index].kind {
            *sha256 = digest;
        }
    }
    let mtimes = entries.iter().zip(ids).filter(|(e, _)| matches!(e.kind, EntryKind::File { .. })).map(|(_, id)| id.mtime).collect();
    let file_count = entries.iter().filter(|e| !matches!(e.kind, EntryKind::Dir)).count() as u64;
    let bytes = entries.iter().map(|e| if let EntryKind::File { size, .. } = e.kind { size } else { 0 }).sum();
    let hash = hash_entries(&entries);
    Ok((TreeScan { entries, hash, files: file_count, bytes }, mtimes))
}

/// The tree hash of entries already sorted by path bytes.
pub fn hash_entries(entries: &[TreeEntry]) -> TreeHash {
    let mut h = Hasher::new();
    for e in entries {
        let record = match &e.kind {
            EntryKind::Dir => format!("D {}\0{:o}\n", e.path, e.mode),
            EntryKind::File { sha256, .. } => format!("F {}\0{:o}\0{}\n", e.path, e.mode, sha256),
            EntryKind::Symlink { target } => format!("L {}\0{:o}\0{}\n", e.path, e.mode, target),
        };
        h.update(record.as_bytes());
    }
    TreeHash(h.finish())
}

/// Every entry below `root` with its identity, unsorted. Directories are read first (their
/// listings say which children are directories), then every entry is lstat'ed relative to
/// its directory on all cores: a layer has tens of thousands of them.
fn list(root: &Path) -> Result<Vec<(TreeEntry, FileId)>, TreeError> {
    let mut dirs: Vec<(String, Vec<String>)> = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        let dir = crate::fsat::join(root, &rel);
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            let Ok(name) = entry.file_name().into_string() else {
                return Err(TreeError::Unsupported { path: entry.path(), reason: "file name is not UTF-8" });
            };
            if entry.file_type().map_err(io_at(&entry.path()))?.is_dir() {
                pending.push(if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") });
            }
            names.push(name);
        }
        dirs.push((rel, names));
    }
    let workers = crate::fsat::workers();
    let runs = crate::fsat::balanced_runs(dirs.iter().map(|d| d.1.len() + 1), workers);
    let stat_run = |run: std::ops::Range<usize>| -> Result<Vec<(TreeEntry, FileId)>, TreeError> {
        let mut out = Vec::new();
        for (rel, names) in &dirs[run] {
            let dir = crate::fsat::join(root, rel);
            let handle = crate::fsat::Dir::open(&dir).map_err(io_at(&dir))?;
            for name in names {
                let path = dir.join(name);
                let st = handle.stat(name).map_err(io_at(&path))?;
                let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                let mode = st.mode & 0o7777;
                let id = FileId { dev: st.dev, ino: st.ino, size: st.size, mtime: st.mtime };
                let kind = if st.is_symlink() {
                    let target = fs::read_link(&path).map_err(io_at(&path))?;
                    let Some(target) = target.to_str() else {
                        return Err(TreeError::Unsupported { path, reason: "symlink target is not UTF-8" });
                    };
                    EntryKind::Symlink { target: target.to_string() }
                } else if st.is_dir() {
                    EntryKind::Dir
                } else if st.is_file() {
                    EntryKind::File { sha256: Sha256([0; 32]), size: st.size }
                } else {
                    return Err(TreeError::Unsupported { path, reason: "not a file, directory or symlink" });
                };
                out.push((TreeEntry { path: child, mode, kind }, id));
            }
        }
        Ok(out)
    };
    let panicked = || TreeError::Unsupported { path: root.to_owned(), reason: "listing thread panicked" };
    let mut listed = Vec::new();
    for part in crate::fsat::on_runs(&runs, stat_run, panicked) {
        listed.extend(part?);
    }
    Ok(listed)
}

fn hash_files(root: &Path, entries: &[TreeEntry], files: &[usize]) -> Result<Vec<Sha256>, TreeError> {
    let next = AtomicUsize::new(0);
    let hash_some = || -> Result<Vec<(usize, Sha256)>, TreeError> {
        let mut done = Vec::new();
        let mut buf = vec![0u8; 1 << 17];
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(&entry) = files.get(i) else { return Ok(done) };
            let path = root.join(&entries[entry].path);
            done.push((i, hash_file(&path, &mut buf)?));
        }
    };
    let panicked = || TreeError::Unsupported { path: root.to_owned(), reason: "hashing thread panicked" };
    let mut results: Vec<Option<Sha256>> = vec![None; files.len()];
    for done in crate::fsat::on_threads(crate::fsat::workers(), hash_some, panicked) {
        for (i, digest) in done? {
            results[i] = Some(digest);
        }
    }
    Ok(results.into_iter().map(|d| d.unwrap_or(Sha256([0; 32]))).collect())
}

fn hash_file(path: &Path, buf: &mut [u8]) -> Result<Sha256, TreeError> {
    let mut file = fs::File::open(path).map_err(io_at(path))?;
    let mut h = Hasher::new();
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
            (Some(a), Some(b)) if a.path.as_bytes() < b.path.as_bytes() => {
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
        let sentinel = Sha256::of(b"recorded while writing");
        let known: HashMap<FileId, Sha256> = [(id_of(&r.join("a/b/file")), sentinel), (id_of(&r.join("top")), sentinel)].into();
        fs::rename(r.join("a/b/file"), r.join("a/moved")).unwrap();
        fs::write(r.join("top"), b"").unwrap();
        let (scan, mtimes) = scan_tree_known(r, &known).unwrap();
        let digest = |path: &str| match &scan.entries.iter().find(|e| e.path == path).unwrap().kind {
            EntryKind::File { sha256, .. } => *sha256,
            _ => panic!("{path} is not a file"),
        };
        assert_eq!(digest("a/moved"), sentinel, "a renamed file keeps its recorded digest");
        assert_eq!(digest("top"), Sha256::of(b""), "a file written to since is read again");
        assert_eq!(mtimes.len(), 2);
        assert_eq!(mtimes[0], (1_600_000_000, 0));
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
