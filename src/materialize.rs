//! Puts a layer into a slug. By default files are hard-linked to the layer (no data is
//! copied: a warm build costs metadata only); `Materialize::Copy` copies instead (reflink
//! where the filesystem allows, else a parallel copy). Across filesystems linking falls back
//! to copying. Hard links, modes, symlink targets and mtimes are preserved either way.
//!
//! Sharing inodes with the store means an in-place edit of a slug file would also edit the
//! layer: the store guards against that by checking each layer file's size, mode and mtime
//! before reuse (`layer::quick_check`) and rebuilding a layer that changed. A warm build
//! links from the layer's recorded entry list ([`materialize_entries`]), so it neither
//! lists nor reads the layer.
//!
//! Contract: the slug tree is made in a staging directory inside BUILD_DIR and moved into
//! place only when complete, so a failure leaves BUILD_DIR as it was. The layer is only read.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use filetime::FileTime;

use crate::treehash::{EntryKind, TreeEntry};

/// A copy failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct CopyError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CopyError + '_ {
    move |source| CopyError { path: path.to_owned(), source }
}

/// How a tree was copied.
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyStats {
    pub files: u64,
    pub bytes: u64,
    pub reflinked: bool,
    /// Files are hard links to the layer's.
    pub linked: bool,
}

enum Item {
    Dir { rel: PathBuf, mode: u32, mtime: FileTime },
    File { rel: PathBuf, mode: u32, mtime: FileTime, size: u64, inode: (u64, u64), nlink: u64 },
    Symlink { rel: PathBuf, mtime: FileTime },
}

/// How files get from the layer into the slug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Materialize {
    /// Hard links to the layer's files (copy when they are on different filesystems).
    Link,
    /// Independent copies (reflink where possible).
    Copy,
}

impl Materialize {
    /// From DDSLUG_MATERIALIZE (`link`, the default, or `copy`).
    pub fn from_env() -> Materialize {
        match std::env::var("DDSLUG_MATERIALIZE").as_deref() {
            Ok("copy") => Materialize::Copy,
            _ => Materialize::Link,
        }
    }
}

/// Copies the tree at `src` to `dst` (which must not exist).
pub fn copy_tree(src: &Path, dst: &Path) -> Result<CopyStats, CopyError> {
    materialize_tree(src, dst, Materialize::Copy)
}

/// Makes `dst` (which must not exist) a tree equal to `src`, by links or copies.
pub fn materialize_tree(src: &Path, dst: &Path, how: Materialize) -> Result<CopyStats, CopyError> {
    let mut items = Vec::new();
    list(src, PathBuf::new(), &mut items)?;
    fs::create_dir(dst).map_err(io_at(dst))?;
    for item in &items {
        if let Item::Dir { rel, .. } = item {
            let path = dst.join(rel);
            fs::create_dir(&path).map_err(io_at(&path))?;
        }
    }
    // First path of each multiply-linked inode is copied; the rest become hard links to it.
    let mut first_of: HashMap<(u64, u64), &Path> = HashMap::new();
    let mut copies: Vec<(&Path, u32, u64)> = Vec::new();
    let mut links: Vec<(&Path, &Path)> = Vec::new();
    for item in &items {
        if let Item::File { rel, mode, size, inode, nlink, .. } = item {
            if *nlink > 1 {
                if let Some(first) = first_of.get(inode) {
                    links.push((rel, first));
                    continue;
                }
                first_of.insert(*inode, rel);
            }
            copies.push((rel, *mode, *size));
        }
    }
    let link_works = AtomicBool::new(how == Materialize::Link);
    let reflink_works = AtomicBool::new(true);
    let reflinked = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(8);
    std::thread::scope(|scope| -> Result<(), CopyError> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<(), CopyError> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((rel, mode, _)) = copies.get(i) else { return Ok(()) };
                        let (from, to) = (src.join(rel), dst.join(rel));
                        if link_works.load(Ordering::Relaxed) {
                            match fs::hard_link(&from, &to) {
                                Ok(()) => continue,
                                // Different filesystems (or no link support): copy from now on.
                                Err(_) => link_works.store(false, Ordering::Relaxed),
                            }
                        }
                        if reflink_works.load(Ordering::Relaxed) {
                            match reflink_copy::reflink(&from, &to) {
                                Ok(()) => reflinked.store(true, Ordering::Relaxed),
                                Err(_) => {
                                    reflink_works.store(false, Ordering::Relaxed);
                                    let _ = fs::remove_file(&to);
                                    fs::copy(&from, &to).map_err(io_at(&to))?;
                                }
                            }
                        } else {
                            fs::copy(&from, &to).map_err(io_at(&to))?;
                        }
                        fs::set_permissions(&to, fs::Permissions::from_mode(*mode)).map_err(io_at(&to))?;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().map_err(|_| CopyError {
                path: dst.to_owned(),
                source: std::io::Error::other("copy thread panicked"),
            })??;
        }
        Ok(())
    })?;
    for (rel, target) in links {
        let path = dst.join(rel);
        fs::hard_link(dst.join(target), &path).map_err(io_at(&path))?;
    }
    let mut stats = CopyStats { reflinked: reflinked.load(Ordering::Relaxed), linked: link_works.load(Ordering::Relaxed), ..Default::default() };
    for item in &items {
        match item {
            Item::Symlink { rel, mtime } => {
                let target = fs::read_link(src.join(rel)).map_err(io_at(&src.join(rel)))?;
                let path = dst.join(rel);
                std::os::unix::fs::symlink(&target, &path).map_err(io_at(&path))?;
                filetime::set_symlink_file_times(&path, *mtime, *mtime).map_err(io_at(&path))?;
                stats.files += 1;
            }
            Item::File { rel, mtime, size, .. } => {
                let path = dst.join(rel);
                // A linked file already has the layer's mtime (setting it would touch the layer).
                if !stats.linked {
                    filetime::set_file_mtime(&path, *mtime).map_err(io_at(&path))?;
                }
                stats.files += 1;
                stats.bytes += size;
            }
            Item::Dir { .. } => {}
        }
    }
    // Directories last, deepest first: filling them changed their mtimes.
    for item in items.iter().rev() {
        if let Item::Dir { rel, mode, mtime } = item {
            let path = dst.join(rel);
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).map_err(io_at(&path))?;
            filetime::set_file_mtime(&path, *mtime).map_err(io_at(&path))?;
        }
    }
    let root_meta = fs::metadata(src).map_err(io_at(src))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(root_meta.mode() & 0o7777)).map_err(io_at(dst))?;
    Ok(stats)
}

/// Makes `dst` (which must not exist) equal to the layer at `src` whose sorted entry list
/// is `entries`: the fast path of a warm build. Directories and symlinks are made from the
/// list, files are hard-linked on all cores; nothing is listed or read. Where the layer
/// cannot be linked (another filesystem) or `how` asks for copies, the layer is copied and
/// what the list does not name is left out.
pub fn materialize_entries(src: &Path, dst: &Path, entries: &[TreeEntry], how: Materialize) -> Result<CopyStats, CopyError> {
    if how == Materialize::Copy {
        return copy_listed(src, dst, entries);
    }
    fs::create_dir(dst).map_err(io_at(dst))?;
    // Sorted by path bytes, a directory comes before everything below it.
    for e in entries.iter().filter(|e| matches!(e.kind, EntryKind::Dir)) {
        let path = dst.join(&e.path);
        fs::create_dir(&path).map_err(io_at(&path))?;
    }
    let files = entries.iter().enumerate().filter(|(_, e)| matches!(e.kind, EntryKind::File { .. }));
    let groups = crate::fsat::by_directory(files.map(|(i, e)| (i, e.path.as_str())));
    let cross_device = AtomicBool::new(false);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(8);
    std::thread::scope(|scope| -> Result<(), CopyError> {
        let handles: Vec<_> = crate::fsat::balanced(&groups, workers)
            .into_iter()
            .map(|run| {
                let (groups, cross_device) = (&groups[run], &cross_device);
                scope.spawn(move || -> Result<(), CopyError> {
                    for (rel, names) in groups {
                        let (from, to) = (crate::fsat::join(src, rel), crate::fsat::join(dst, rel));
                        let from_dir = crate::fsat::Dir::open(&from).map_err(io_at(&from))?;
                        let to_dir = crate::fsat::Dir::open(&to).map_err(io_at(&to))?;
                        for (_, name) in names {
                            match from_dir.link_into(name, &to_dir) {
                                Ok(()) => {}
                                Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
                                    cross_device.store(true, Ordering::Relaxed);
                                    return Ok(());
                                }
                                Err(err) => return Err(CopyError { path: to.join(name), source: err }),
                            }
                        }
                        if cross_device.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle.join().map_err(|_| CopyError { path: dst.to_owned(), source: std::io::Error::other("link thread panicked") })??;
        }
        Ok(())
    })?;
    if cross_device.load(Ordering::Relaxed) {
        fs::remove_dir_all(dst).map_err(io_at(dst))?;
        return copy_listed(src, dst, entries);
    }
    let mut stats = CopyStats { linked: true, ..Default::default() };
    for e in entries {
        match &e.kind {
            EntryKind::Symlink { target } => {
                let (from, path) = (src.join(&e.path), dst.join(&e.path));
                let meta = fs::symlink_metadata(&from).map_err(io_at(&from))?;
                std::os::unix::fs::symlink(target, &path).map_err(io_at(&path))?;
                let mtime = FileTime::from_last_modification_time(&meta);
                filetime::set_symlink_file_times(&path, mtime, mtime).map_err(io_at(&path))?;
                stats.files += 1;
            }
            EntryKind::File { size, .. } => {
                stats.files += 1;
                stats.bytes += size;
            }
            EntryKind::Dir => {}
        }
    }
    // Directories last, deepest first: filling them changed their mtimes.
    let root = std::iter::once((src.to_owned(), dst.to_owned(), None));
    let below = entries.iter().filter(|e| matches!(e.kind, EntryKind::Dir)).map(|e| (src.join(&e.path), dst.join(&e.path), Some(e.mode)));
    let dirs: Vec<_> = root.chain(below).collect();
    for (from, to, mode) in dirs.iter().rev() {
        let meta = fs::metadata(from).map_err(io_at(from))?;
        let mode = mode.unwrap_or(meta.mode() & 0o7777);
        fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(io_at(to))?;
        if to != dst {
            filetime::set_file_mtime(to, FileTime::from_last_modification_time(&meta)).map_err(io_at(to))?;
        }
    }
    Ok(stats)
}

/// [`copy_tree`], then removes whatever `entries` does not list (a file added to the layer
/// after it was recorded must not reach a slug, copied or linked).
fn copy_listed(src: &Path, dst: &Path, entries: &[TreeEntry]) -> Result<CopyStats, CopyError> {
    let stats = copy_tree(src, dst)?;
    let listed: std::collections::HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut stack = vec![(dst.to_owned(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let is_dir = entry.file_type().map_err(io_at(&path))?.is_dir();
            if !listed.contains(child.as_str()) {
                if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) }.map_err(io_at(&path))?;
            } else if is_dir {
                stack.push((path, child));
            }
        }
    }
    Ok(stats)
}

fn list(root: &Path, rel: PathBuf, items: &mut Vec<Item>) -> Result<(), CopyError> {
    let dir = root.join(&rel);
    let mut entries: Vec<_> = fs::read_dir(&dir).map_err(io_at(&dir))?.collect::<Result<_, _>>().map_err(io_at(&dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let child = rel.join(entry.file_name());
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(io_at(&path))?;
        let mtime = FileTime::from_last_modification_time(&meta);
        let mode = meta.mode() & 0o7777;
        if meta.file_type().is_symlink() {
            items.push(Item::Symlink { rel: child, mtime });
        } else if meta.is_dir() {
            items.push(Item::Dir { rel: child.clone(), mode, mtime });
            list(root, child, items)?;
        } else if meta.is_file() {
            items.push(Item::File {
                rel: child,
                mode,
                mtime,
                size: meta.len(),
                inode: (meta.dev(), meta.ino()),
                nlink: meta.nlink(),
            });
        } else {
            return Err(CopyError { path, source: std::io::Error::other("not a file, directory or symlink") });
        }
    }
    Ok(())
}

/// Moves everything under `from` into `to`, merging directories and replacing files, so
/// that other buildpacks' files already in `to` are kept.
pub fn merge_into(from: &Path, to: &Path) -> Result<(), CopyError> {
    if fs::symlink_metadata(to).is_err() {
        return fs::rename(from, to).map_err(io_at(to));
    }
    for entry in fs::read_dir(from).map_err(io_at(from))? {
        let entry = entry.map_err(io_at(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let src_is_dir = entry.file_type().map_err(io_at(&src))?.is_dir();
        match fs::symlink_metadata(&dst) {
            Ok(meta) if meta.is_dir() && src_is_dir => merge_into(&src, &dst)?,
            Ok(meta) => {
                if meta.is_dir() {
                    fs::remove_dir_all(&dst).map_err(io_at(&dst))?;
                } else {
                    fs::remove_file(&dst).map_err(io_at(&dst))?;
                }
                fs::rename(&src, &dst).map_err(io_at(&dst))?;
            }
            Err(_) => fs::rename(&src, &dst).map_err(io_at(&dst))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::treehash::scan_tree;

    fn sample_tree(root: &Path) {
        fs::create_dir_all(root.join("opt/agent/bin")).unwrap();
        fs::create_dir_all(root.join("opt/agent/etc")).unwrap();
        fs::write(root.join("opt/agent/bin/agent"), b"binary").unwrap();
        fs::set_permissions(root.join("opt/agent/bin/agent"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::hard_link(root.join("opt/agent/bin/agent"), root.join("opt/agent/bin/agent-copy")).unwrap();
        fs::write(root.join("opt/agent/etc/conf.yaml"), b"a: 1\n").unwrap();
        std::os::unix::fs::symlink("../bin/agent", root.join("opt/agent/etc/agent")).unwrap();
        fs::set_permissions(root.join("opt/agent/etc"), fs::Permissions::from_mode(0o750)).unwrap();
    }

    #[test]
    fn linking_from_entries_gives_the_same_tree_and_only_the_listed_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("layer"), dir.path().join("slug"));
        sample_tree(&src);
        let scan = scan_tree(&src).unwrap();
        // Something added to the layer after it was recorded never reaches a slug.
        fs::write(src.join("opt/agent/bin/intruder"), b"x").unwrap();
        let stats = materialize_entries(&src, &dst, &scan.entries, Materialize::Link).unwrap();
        assert!(stats.linked);
        assert_eq!(scan_tree(&dst).unwrap().hash, scan.hash);
        assert!(!dst.join("opt/agent/bin/intruder").exists());
        let (a, b) = (fs::metadata(dst.join("opt/agent/bin/agent")).unwrap(), fs::metadata(src.join("opt/agent/bin/agent")).unwrap());
        assert_eq!(a.ino(), b.ino(), "files are links to the layer's");
        let mtime = |p: &Path| fs::metadata(p).unwrap().mtime();
        assert_eq!(mtime(&dst.join("opt/agent/etc")), mtime(&src.join("opt/agent/etc")));
    }

    #[test]
    fn copy_mode_from_entries_shares_no_inode() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("layer"), dir.path().join("slug"));
        sample_tree(&src);
        let scan = scan_tree(&src).unwrap();
        fs::write(src.join("opt/agent/bin/intruder"), b"x").unwrap();
        materialize_entries(&src, &dst, &scan.entries, Materialize::Copy).unwrap();
        assert_eq!(scan_tree(&dst).unwrap().hash, scan.hash);
        assert!(!dst.join("opt/agent/bin/intruder").exists());
        let (a, b) = (fs::metadata(dst.join("opt/agent/bin/agent")).unwrap(), fs::metadata(src.join("opt/agent/bin/agent")).unwrap());
        assert_ne!(a.ino(), b.ino());
        let copy = fs::metadata(dst.join("opt/agent/bin/agent-copy")).unwrap();
        assert_eq!(a.ino(), copy.ino(), "hard links inside the tree stay hard links");
    }
}
