//! Puts a layer into a slug. By default files are hard-linked to the layer (no data is
//! copied: a warm build costs metadata only); `Materialize::Copy` copies instead (reflink
//! where the filesystem allows, else a parallel copy). Across filesystems linking falls back
//! to copying. Hard links, modes, symlink targets and mtimes are preserved either way.
//!
//! Sharing inodes with the store means an in-place edit of a slug file would also edit the
//! layer: the store guards against that by checking each layer file's type, mode, size,
//! mtime and content (its xxh3) against the layer's index and rebuilding a layer that
//! changed, so that no manifest records a tree hash its slug does not have, even when a file
//! was overwritten with its size and mtime kept. The content is not read again where a
//! file's ctime shows it unchanged since the last build that checked and linked it
//! ([`crate::store::seen`]). A warm build links from the layer's index
//! and checks each entry as it links it ([`materialize_index`]), so it never lists the
//! layer, and visits each of its directories once.
//!
//! Modes: the slug gets the package's exact modes from the index, whatever the store's
//! directories have ([`crate::store::layerindex::stored_dir_mode`]); a directory whose exact mode
//! lacks the owner's search bit is finished after everything else, deepest first, so that a
//! build that does not run as root can still pass through it while it fills the slug. A
//! copy of a file its owner may not read briefly gives the store's file the owner's read bit.
//!
//! Contract: the slug tree is made in a staging directory inside BUILD_DIR and moved into
//! place only when complete, so a failure leaves BUILD_DIR as it was. The layer is only read
//! (but for that read bit, restored at once; a mode left behind by a kill is caught by the
//! next index check, which rebuilds the layer).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use filetime::FileTime;

use crate::fsat::{Dir, Kind};
use crate::store::layerindex::{ChildKind, LayerIndex};
use crate::store::seen::Seen;

/// A copy failed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", crate::pathbytes::escape_bounded(path.as_os_str().as_bytes(), 1024))]
pub struct CopyError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CopyError + '_ {
    move |source| CopyError { path: path.to_owned(), error: source }
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

/// Copies the tree at `src` to `dst` (which must not exist): reflinks where the filesystem
/// allows, else copies, on all cores; hard links inside the tree stay hard links. Every
/// entry of `dst` is made relative to a directory descriptor opened without following
/// symlinks, and every file of `src` is opened without following one.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<CopyStats, CopyError> {
    let mut items = Vec::new();
    list(src, PathBuf::new(), &mut items)?;
    fs::create_dir(dst).map_err(io_at(dst))?;
    let src_root = Dir::open_given(src).map_err(io_at(src))?;
    let dst_root = Dir::open_given(dst).map_err(io_at(dst))?;
    // The directory holding `rel` below `root`, and `rel`'s name.
    let in_dir = |root: &Dir, base: &Path, rel: &Path| -> Result<(Dir, OsString), CopyError> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let dir = root.dir_beneath(parent).map_err(io_at(&base.join(parent)))?;
        Ok((dir, rel.file_name().unwrap_or_default().to_owned()))
    };
    for item in &items {
        if let Item::Dir { rel, .. } = item {
            let (dir, name) = in_dir(&dst_root, dst, rel)?;
            dir.make_dirs_beneath(Path::new(&name)).map_err(io_at(&dst.join(rel)))?;
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
    let reflinked = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let copy_some = || -> Result<(), CopyError> {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((rel, mode, _)) = copies.get(i) else { return Ok(()) };
            let ((from_dir, name), (to_dir, _)) = (in_dir(&src_root, src, rel)?, in_dir(&dst_root, dst, rel)?);
            let copied = match from_dir.copy_file(&name, &to_dir, &name, *mode) {
                // A file its owner may not read (a package's 0000 file, in a build that does
                // not run as root): readable for the copy only. The source is in the store and
                // the build holds its lock; a build killed in between leaves a mode that the
                // layer's index check finds, so the layer is rebuilt.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && mode & 0o400 == 0 => {
                    from_dir.set_mode_of(&name, mode | 0o400).map_err(io_at(&src.join(rel)))?;
                    let copied = from_dir.copy_file(&name, &to_dir, &name, *mode);
                    from_dir.set_mode_of(&name, *mode).map_err(io_at(&src.join(rel)))?;
                    copied
                }
                other => other,
            };
            if copied.map_err(io_at(&dst.join(rel)))? {
                reflinked.store(true, Ordering::Relaxed);
            }
        }
    };
    let panicked = || CopyError { path: dst.to_owned(), error: std::io::Error::other("copy thread panicked") };
    for copied in crate::fsat::on_threads(crate::fsat::workers(), copy_some, panicked) {
        copied?;
    }
    for (rel, target) in links {
        let ((to_dir, name), (first_dir, first)) = (in_dir(&dst_root, dst, rel)?, in_dir(&dst_root, dst, target)?);
        first_dir.hard_link(&first, &to_dir, &name).map_err(io_at(&dst.join(rel)))?;
    }
    let mut stats = CopyStats { reflinked: reflinked.load(Ordering::Relaxed), ..Default::default() };
    for item in &items {
        match item {
            Item::Symlink { rel, mtime } => {
                let ((from_dir, name), (to_dir, _)) = (in_dir(&src_root, src, rel)?, in_dir(&dst_root, dst, rel)?);
                let target = from_dir.read_link(&name).map_err(io_at(&src.join(rel)))?;
                to_dir.make_symlink(&target, &name, times(*mtime)).map_err(io_at(&dst.join(rel)))?;
                stats.files += 1;
            }
            Item::File { rel, mtime, size, .. } => {
                let (to_dir, name) = in_dir(&dst_root, dst, rel)?;
                // Through the directory, never by opening the file: its owner may not be allowed to.
                to_dir.set_mtime_of(&name, times(*mtime)).map_err(io_at(&dst.join(rel)))?;
                stats.files += 1;
                stats.bytes += size;
            }
            Item::Dir { .. } => {}
        }
    }
    // Directories last, deepest first: filling them changed their mtimes.
    for item in items.iter().rev() {
        if let Item::Dir { rel, mode, mtime } = item {
            let (dir, name) = in_dir(&dst_root, dst, rel)?;
            let path = dst.join(rel);
            dir.set_mode_of(&name, *mode).map_err(io_at(&path))?;
            dir.set_mtime_of(&name, times(*mtime)).map_err(io_at(&path))?;
        }
    }
    let root_meta = fs::metadata(src).map_err(io_at(src))?;
    crate::fsat::Dir::open(dst).and_then(|d| d.open_in_to_fill(b"")).and_then(|d| d.finish(root_meta.mode() & 0o7777, None)).map_err(io_at(dst))?;
    Ok(stats)
}

fn times(t: FileTime) -> (i64, i64) {
    (t.unix_seconds(), i64::from(t.nanoseconds()))
}

/// What [`materialize_index`] did.
#[derive(Debug)]
pub enum Materialized {
    Done(CopyStats),
    /// A checked entry of `src` is not what the index says. `dst` was removed.
    SourceChanged,
}

/// Makes `dst` (which must not exist) equal to the layer at `src` that `index` describes:
/// the fast path of a warm build. Each directory is made, checked and filled in one pass on
/// all cores: files are hard-linked, symlinks and directories made from the index; nothing
/// is listed. With `check`, every entry of `src` is compared with the index on the way (one
/// lstat each, and each non-empty file read and hashed with xxh3) and a difference stops
/// everything. Where the layer cannot be
/// linked (another filesystem) or `how` asks for copies, the layer is checked, then copied,
/// and what the index does not name is left out.
///
/// With `seen`, a file unchanged since the last build that installed the layer (its ctime
/// within that build's run, see [`crate::store::seen`]) is stat'ed and linked, not read.
pub fn materialize_index(src: &Path, dst: &Path, index: &LayerIndex, how: Materialize, check: bool, seen: Option<&Seen>) -> Result<Materialized, CopyError> {
    if how == Materialize::Copy {
        return checked_copy(src, dst, index, check);
    }
    fs::create_dir(dst).map_err(io_at(dst))?;
    match walk(src, Some(dst), index, check, seen) {
        Ok(w) if !w.changed && !w.cross_device => {}
        other => {
            let _ = fs::remove_dir_all(dst);
            let w = other?;
            return if w.changed { Ok(Materialized::SourceChanged) } else { checked_copy(src, dst, index, check) };
        }
    }
    let (files, bytes) = index.totals();
    Ok(Materialized::Done(CopyStats { files, bytes, linked: true, reflinked: false }))
}

/// Whether every entry of the layer at `src` is what `index` says (one lstat each, on all
/// cores). A missing entry fails.
pub fn check_index(src: &Path, index: &LayerIndex) -> bool {
    walk(src, None, index, true, None).is_ok_and(|w| !w.changed)
}

fn checked_copy(src: &Path, dst: &Path, index: &LayerIndex, check: bool) -> Result<Materialized, CopyError> {
    if check && !check_index(src, index) {
        return Ok(Materialized::SourceChanged);
    }
    Ok(Materialized::Done(copy_listed(src, dst, index)?))
}

/// Bytes each thread reads at once to check a layer's files by content.
const CHECK_BUFFER: usize = 1 << 20;

/// What walking the groups found.
struct Walked {
    /// Some entry differed from the index (or an entry to check was missing).
    changed: bool,
    /// A hard link failed with EXDEV: `src` and `dst` are on different filesystems.
    cross_device: bool,
}

/// Visits every group of the index on all cores, each thread taking the next group in
/// index order: with `check`, compares each entry of `src` with the index, and with a
/// `dst`, makes each directory's subdirectories there, links (or, for symlinks, recreates)
/// its entries, then sets its mode and mtime, which nothing changes after that. Stops
/// early, everywhere, at the first difference or EXDEV.
fn walk(src: &Path, dst: Option<&Path>, index: &LayerIndex, check: bool, seen: Option<&Seen>) -> Result<Walked, CopyError> {
    let groups = &index.groups;
    let subdirs = if dst.is_some() { subdirs(index) } else { Vec::new() };
    let src_root = match crate::fsat::Dir::open(src) {
        Ok(dir) => dir,
        Err(_) if check => return Ok(Walked { changed: true, cross_device: false }),
        Err(e) => return Err(io_at(src)(e)),
    };
    let dst_root = match dst {
        Some(dst) => Some(crate::fsat::Dir::open(dst).map_err(io_at(dst))?),
        None => None,
    };
    let (next, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    // Directories to finish after every thread is done, with their mtimes.
    let late: std::sync::Mutex<Vec<(usize, (i64, i64))>> = std::sync::Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let changed = AtomicBool::new(false);
    let cross_device = AtomicBool::new(false);
    // Files bigger than a read buffer whose content was checked, by inode.
    let big_files_read = std::sync::Mutex::new(std::collections::HashSet::new());
    let failed = |flag: &AtomicBool| {
        flag.store(true, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
    };
    // Whether an entry was linked or made; `Ok(false)` for EXDEV (the walk must stop).
    let linked = |made: std::io::Result<()>, to: &Path, name: &[u8]| -> Result<bool, CopyError> {
        match made {
            Ok(()) => Ok(true),
            Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
                failed(&cross_device);
                Ok(false)
            }
            Err(err) => Err(CopyError { path: crate::fsat::join(to, name), error: err }),
        }
    };
    // One group; `Ok(false)` when the walk must stop (the layer changed, or EXDEV). `buf` is
    // the thread's buffer for reading files.
    let visit = |at: usize, subdirs: &[usize], buf: &mut [u8]| -> Result<bool, CopyError> {
        let group = &groups[at];
        let rel = index.rel(group);
        let from = || crate::fsat::join(src, rel);
        let opened = src_root.open_in(rel).and_then(|d| d.metadata().map(|st| (d, st)));
        let judged = judge(opened, check, |(_, st)| group.intact(st)).map_err(|e| io_at(&from())(e))?;
        let Some((from_dir, dir_stat)) = judged else {
            failed(&changed);
            return Ok(false);
        };
        let to_dir = match (dst, &dst_root) {
            (Some(dst), Some(dst_root)) => {
                let to = crate::fsat::join(dst, rel);
                let to_dir = match dst_root.open_in_to_fill(rel) {
                    // Made by the thread that has the parent, or not yet: then here.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        dst_root.make_dirs_in(rel).map_err(io_at(&to))?;
                        dst_root.open_in_to_fill(rel)
                    }
                    opened => opened,
                }
                .map_err(io_at(&to))?;
                for &sub in subdirs {
                    let (_, name) = crate::pathbytes::split_last(index.rel(&groups[sub]));
                    match to_dir.make_dir(name) {
                        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io_at(&crate::fsat::join(&to, name))(e)),
                        _ => {}
                    }
                }
                Some((to, to_dir))
            }
            _ => None,
        };
        for child in index.children(group) {
            let name = index.name(child);
            // Unchanged since a build saw it intact (same inode, same ctime): stat and link.
            if let (true, Some(seen), ChildKind::File { .. }) = (check, seen, child.kind)
                && let Some((to, to_dir)) = &to_dir
                && from_dir.stat(name).is_ok_and(|st| child.intact(&st) && seen.vouches(&st))
            {
                if !linked(from_dir.link_into(name, to_dir), to, name)? {
                    return Ok(false);
                }
                continue;
            }
            if let (true, ChildKind::File { size, xxh3, .. }) = (check, child.kind) {
                // Opened once: its metadata, then its content (the same size and mtime do not
                // prove the same bytes), then linked through the descriptor where allowed.
                let opened = from_dir.open_file(name).and_then(|file| crate::fsat::stat_file(&file).map(|st| (file, st)));
                let (file, st) = match opened {
                    Ok((file, st)) if child.intact(&st) => (file, st),
                    _ => {
                        failed(&changed);
                        return Ok(false);
                    }
                };
                // An empty file has no bytes to change; a big one linked under two names in
                // the layer is read once.
                let big = size > CHECK_BUFFER as u64;
                let seen = || big_files_read.lock().is_ok_and(|read| read.contains(&(st.dev, st.ino)));
                if size > 0 && !seen() {
                    if !crate::hash::xxh3_of_file(&file, size, buf).is_ok_and(|got| got == Some(xxh3)) {
                        failed(&changed);
                        return Ok(false);
                    }
                    if big && let Ok(mut read) = big_files_read.lock() {
                        read.insert((st.dev, st.ino));
                    }
                }
                let Some((to, to_dir)) = &to_dir else { continue };
                if !linked(from_dir.link_file_into(&file, name, to_dir), to, name)? {
                    return Ok(false);
                }
                continue;
            }
            let is_symlink = child.kind == ChildKind::Symlink;
            let stat = if check || is_symlink {
                let judged = judge(from_dir.stat(name), check, |st| child.intact(st)).map_err(|e| io_at(&crate::fsat::join(&from(), name))(e))?;
                let Some(st) = judged else {
                    failed(&changed);
                    return Ok(false);
                };
                Some(st)
            } else {
                None
            };
            let Some((to, to_dir)) = &to_dir else { continue };
            let made = match stat {
                Some(st) if is_symlink => to_dir.symlink(index.target(child), name, st.mtime),
                _ => from_dir.link_into(name, to_dir),
            };
            if !linked(made, to, name)? {
                return Ok(false);
            }
        }
        // Complete now: its mode and mtime can be set (the slug root keeps the time it was
        // made at, and takes the layer root's mode). The slug gets the exact mode, which the
        // store's directory does not have (it keeps the owner's bits, `stored_dir_mode`): a
        // mode without the owner's search bit would stop threads still to pass through it
        // (unless they run as root), so such a directory is finished at the end instead.
        if let Some((to, to_dir)) = &to_dir {
            if group.is_root() {
                to_dir.finish(dir_stat.mode & 0o7777, None).map_err(io_at(to))?;
            } else if group.mode & 0o100 == 0 {
                late.lock().unwrap_or_else(|p| p.into_inner()).push((at, dir_stat.mtime));
            } else {
                to_dir.finish(group.mode, Some(dir_stat.mtime)).map_err(io_at(to))?;
            }
        }
        Ok(true)
    };
    let work = || -> Result<(), CopyError> {
        // Most layer files fit in one read; bigger ones are hashed a buffer at a time.
        let mut buf = if check { vec![0u8; CHECK_BUFFER] } else { Vec::new() };
        while !stop.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= groups.len() {
                break;
            }
            match visit(i, subdirs.get(i).map_or(&[][..], Vec::as_slice), &mut buf) {
                Ok(true) => {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => break,
                Err(e) => {
                    // An error anywhere stops the other threads too.
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(())
    };
    let panicked = || CopyError { path: src.to_owned(), error: std::io::Error::other("thread panicked") };
    for result in crate::fsat::on_threads(crate::fsat::workers().min(groups.len().max(1)), work, panicked) {
        result?;
    }
    let (changed, cross_device) = (changed.into_inner(), cross_device.into_inner());
    if !changed && !cross_device && done.into_inner() != groups.len() {
        return Err(CopyError { path: src.to_owned(), error: std::io::Error::other("a directory was skipped") });
    }
    // The directories left for last, deepest first: until now they kept the owner's bits
    // they were made with, so each opens, and its parent can still be passed through.
    if let (Some(dst), Some(dst_root)) = (dst, &dst_root)
        && !changed
        && !cross_device
    {
        let mut late = late.into_inner().unwrap_or_else(|p| p.into_inner());
        late.sort_by_key(|&(at, _)| std::cmp::Reverse(index.rel(&groups[at]).iter().filter(|&&b| b == b'/').count()));
        for (at, mtime) in late {
            let group = &groups[at];
            let to = crate::fsat::join(dst, index.rel(group));
            dst_root.open_in_to_fill(index.rel(group)).and_then(|d| d.finish(group.mode, Some(mtime))).map_err(io_at(&to))?;
        }
    }
    Ok(Walked { changed, cross_device })
}

/// For each group, the groups directly below it (a group whose parent is not listed has
/// none: it makes its own directory when its turn comes).
fn subdirs(index: &LayerIndex) -> Vec<Vec<usize>> {
    let by_rel: HashMap<&[u8], usize> = index.groups.iter().enumerate().map(|(i, g)| (index.rel(g), i)).collect();
    let mut subdirs = vec![Vec::new(); index.groups.len()];
    for (i, group) in index.groups.iter().enumerate().filter(|(_, g)| !g.is_root()) {
        let (parent, _) = crate::pathbytes::split_last(index.rel(group));
        if let Some(&p) = by_rel.get(parent) {
            subdirs[p].push(i);
        }
    }
    subdirs
}

/// What an lstat in the layer says: `Some` to go on; `None` when the layer changed (the
/// check failed, or the entry is missing while checking); an error when nothing is checked
/// and the entry cannot be read.
fn judge<T>(found: std::io::Result<T>, check: bool, intact: impl FnOnce(&T) -> bool) -> std::io::Result<Option<T>> {
    match found {
        Ok(found) if !check || intact(&found) => Ok(Some(found)),
        Ok(_) => Ok(None),
        Err(_) if check => Ok(None),
        Err(e) => Err(e),
    }
}

/// [`copy_tree`], then removes whatever `index` does not list (a file added to the layer
/// after it was recorded must not reach a slug, copied or linked), then gives directories
/// the index's exact modes (the store keeps them owner-accessible).
fn copy_listed(src: &Path, dst: &Path, index: &LayerIndex) -> Result<CopyStats, CopyError> {
    let stats = copy_tree(src, dst)?;
    let listed: std::collections::HashSet<Vec<u8>> = index.paths().collect();
    let root = Dir::open_given(dst).map_err(io_at(dst))?;
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let here = crate::fsat::join(dst, &rel);
        let dir = root.dir_beneath(Path::new(std::ffi::OsStr::from_bytes(&rel))).map_err(io_at(&here))?;
        for (name, kind) in dir.entries().map_err(io_at(&here))? {
            let child = crate::pathbytes::join(&rel, name.as_bytes());
            if !listed.contains(&child) {
                dir.remove_all(&name).map_err(io_at(&here.join(&name)))?;
            } else if kind == Kind::Dir {
                stack.push(child);
            }
        }
    }
    // Deepest first (groups are in path order, a directory before everything below it): a
    // directory that loses its owner's bits is set after the ones below it.
    for group in index.groups.iter().rev().filter(|g| !g.is_root()) {
        let path = crate::fsat::join(dst, index.rel(group));
        let (parent, name) = crate::pathbytes::split_last(index.rel(group));
        let parent = root.dir_beneath(Path::new(std::ffi::OsStr::from_bytes(parent))).map_err(io_at(&path))?;
        parent.set_mode_of(std::ffi::OsStr::from_bytes(name), group.mode).map_err(io_at(&path))?;
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
            return Err(CopyError { path, error: std::io::Error::other("not a file, directory or symlink") });
        }
    }
    Ok(())
}

/// Moves everything in the directory `from` into the directory `to` (paths given for
/// errors), merging directories and replacing files, so that files already in `to` are
/// kept. A symlink in `to` where `from` has something is replaced, the link itself: nothing
/// is ever moved through a symlink (both sides are entered by descriptors that cannot be).
pub fn merge_into(from: &Dir, from_path: &Path, to: &Dir, to_path: &Path) -> Result<(), CopyError> {
    for (name, kind) in from.entries().map_err(io_at(from_path))? {
        let (src, dst) = (from_path.join(&name), to_path.join(&name));
        match to.kind(&name) {
            Ok(Kind::Dir) if kind == Kind::Dir => {
                let sub_from = from.dir_beneath(Path::new(&name)).map_err(io_at(&src))?;
                let sub_to = to.dir_beneath(Path::new(&name)).map_err(io_at(&dst))?;
                merge_into(&sub_from, &src, &sub_to, &dst)?;
            }
            Ok(_) => {
                to.remove_all(&name).map_err(io_at(&dst))?;
                from.rename(&name, to, &name).map_err(io_at(&dst))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => from.rename(&name, to, &name).map_err(io_at(&dst))?,
            Err(e) => return Err(io_at(&dst)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use crate::store::treehash::scan_tree;

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

    fn done(m: Materialized) -> CopyStats {
        match m {
            Materialized::Done(stats) => stats,
            Materialized::SourceChanged => panic!("the source was reported changed"),
        }
    }

    /// The tree's scan and its index, as a layer build records them.
    fn indexed(root: &Path) -> (crate::store::treehash::TreeScan, LayerIndex) {
        let (scan, mtimes) = crate::store::treehash::scan_tree_known(root, &HashMap::new(), &HashMap::new()).unwrap();
        let index = LayerIndex::decode(LayerIndex::encode(&scan.entries, &mtimes).unwrap()).unwrap();
        (scan, index)
    }

    #[test]
    fn linking_from_the_index_gives_the_same_tree_and_only_the_listed_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("layer"), dir.path().join("slug"));
        sample_tree(&src);
        let (scan, index) = indexed(&src);
        // Something added to the layer after it was recorded never reaches a slug.
        fs::write(src.join("opt/agent/bin/intruder"), b"x").unwrap();
        let stats = done(materialize_index(&src, &dst, &index, Materialize::Link, true, None).unwrap());
        assert!(stats.linked);
        assert_eq!((stats.files, stats.bytes), (scan.files, scan.bytes));
        assert_eq!(scan_tree(&dst).unwrap().hash, scan.hash);
        assert!(!dst.join("opt/agent/bin/intruder").exists());
        let (a, b) = (fs::metadata(dst.join("opt/agent/bin/agent")).unwrap(), fs::metadata(src.join("opt/agent/bin/agent")).unwrap());
        assert_eq!(a.ino(), b.ino(), "files are links to the layer's");
        let mtime = |p: &Path| fs::symlink_metadata(p).unwrap().mtime();
        assert_eq!(mtime(&dst.join("opt/agent/etc")), mtime(&src.join("opt/agent/etc")));
        assert_eq!(mtime(&dst.join("opt/agent/etc/agent")), mtime(&src.join("opt/agent/etc/agent")));
        assert_eq!(fs::metadata(dst.join("opt/agent/etc")).unwrap().mode() & 0o7777, 0o750);
    }

    #[test]
    fn copy_mode_from_the_index_shares_no_inode() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("layer"), dir.path().join("slug"));
        sample_tree(&src);
        let (scan, index) = indexed(&src);
        fs::write(src.join("opt/agent/bin/intruder"), b"x").unwrap();
        done(materialize_index(&src, &dst, &index, Materialize::Copy, true, None).unwrap());
        assert_eq!(scan_tree(&dst).unwrap().hash, scan.hash);
        assert!(!dst.join("opt/agent/bin/intruder").exists());
        let (a, b) = (fs::metadata(dst.join("opt/agent/bin/agent")).unwrap(), fs::metadata(src.join("opt/agent/bin/agent")).unwrap());
        assert_ne!(a.ino(), b.ino());
        let copy = fs::metadata(dst.join("opt/agent/bin/agent-copy")).unwrap();
        assert_eq!(a.ino(), copy.ino(), "hard links inside the tree stay hard links");
    }

    #[test]
    fn a_changed_layer_stops_the_slug_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("layer");
        sample_tree(&src);
        let (_, index) = indexed(&src);
        assert!(check_index(&src, &index));
        type Edit<'a> = (&'a str, &'a dyn Fn(&Path));
        let edits: [Edit; 5] = [
            ("an in-place edit", &|p| fs::write(p.join("opt/agent/etc/conf.yaml"), b"a: 2\n").unwrap()),
            ("an in-place edit keeping size and mtime", &|p| {
                use std::io::Write;
                let path = p.join("opt/agent/etc/conf.yaml");
                let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.write_all(b"a: 3\n").unwrap();
                f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000)).unwrap();
            }),
            ("a mode", &|p| fs::set_permissions(p.join("opt/agent/bin"), fs::Permissions::from_mode(0o700)).unwrap()),
            ("a missing file", &|p| fs::remove_file(p.join("opt/agent/bin/agent-copy")).unwrap()),
            ("a file for a symlink", &|p| {
                fs::remove_file(p.join("opt/agent/etc/agent")).unwrap();
                fs::write(p.join("opt/agent/etc/agent"), b"").unwrap();
            }),
        ];
        for (n, (what, edit)) in edits.iter().enumerate() {
            let layer = dir.path().join(format!("layer{n}"));
            sample_tree(&layer);
            // An old mtime, so that an edit of the same size within the same second shows.
            filetime::set_file_mtime(layer.join("opt/agent/etc/conf.yaml"), FileTime::from_unix_time(1_600_000_000, 0)).unwrap();
            let (_, index) = indexed(&layer);
            edit(&layer);
            for how in [Materialize::Link, Materialize::Copy] {
                let dst = dir.path().join(format!("slug{n}-{how:?}"));
                let m = materialize_index(&layer, &dst, &index, how, true, None).unwrap();
                assert!(matches!(m, Materialized::SourceChanged), "{what}, {how:?}");
                assert!(!dst.exists(), "{what}, {how:?}: a partial slug was left");
            }
            assert!(!check_index(&layer, &index), "{what}");
        }
    }

    /// Overwrites the start of `path` keeping its size and mtime: what only a content check,
    /// or a moved ctime, can tell.
    fn overwrite_keeping_size_and_mtime(path: &Path, with: &[u8]) {
        use std::io::Write;
        let mtime = fs::metadata(path).unwrap().modified().unwrap();
        let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all(with).unwrap();
        f.set_modified(mtime).unwrap();
    }

    #[test]
    fn a_file_changed_within_the_recorded_run_is_linked_unread_and_one_changed_after_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("layer");
        sample_tree(&src);
        let (_, index) = indexed(&src);
        // The filesystem's clock, as the store reads it; pauses put the tree's ctimes, the
        // run and what follows in separate clock ticks.
        let clock = || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            crate::fsat::stat_file(&tempfile::tempfile_in(dir.path()).unwrap()).unwrap().ctime
        };
        let from = clock();
        // Changed within the run, after the index: the record vouches for the run (a build
        // records only after checking the content), so the file is linked unread.
        overwrite_keeping_size_and_mtime(&src.join("opt/agent/etc/conf.yaml"), b"a: 9\n");
        let seen = Seen::run(from, clock());
        let slug = |n: u32, seen: Option<&Seen>| materialize_index(&src, &dir.path().join(format!("slug{n}")), &index, Materialize::Link, true, seen).unwrap();
        assert!(matches!(slug(1, Some(&seen)), Materialized::Done(_)), "vouched for, so not read");
        assert!(matches!(slug(2, None), Materialized::SourceChanged), "without the record, the content check sees it");
        // The links just made moved every ctime past the run: now the file is read, and caught.
        assert!(matches!(slug(3, Some(&seen)), Materialized::SourceChanged), "a ctime after the run is read");
        assert!(!dir.path().join("slug3").exists());
    }

    #[test]
    fn deep_trees_split_across_threads_come_out_whole() {
        // A chain of nested directories, each with files and its own mode and mtime: threads
        // take the next directory in turn, so one often reaches a directory before another
        // has made it, and a directory's mode and mtime are set while others still fill
        // theirs.
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("layer");
        let mut dirs = vec![src.clone()];
        for depth in 0..40 {
            let path = dirs[depth].join(format!("d{depth}"));
            fs::create_dir_all(&path).unwrap();
            for f in 0..5 {
                fs::write(path.join(format!("f{f}")), format!("{depth}.{f}")).unwrap();
            }
            dirs.push(path);
        }
        // Modes that keep the owner from writing, reading or passing (a user who is not root
        // could not scan such a slug, so it gets the ones with the owner's read and search).
        // As in the store, each directory has the owner's bits on disk and its exact mode in
        // the index; the slug gets the exact ones.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut exact = HashMap::new();
        for (depth, path) in dirs.iter().enumerate().skip(1).rev() {
            let mode = if root { [0o555, 0o750, 0o311, 0o000, 0o644, 0o500][depth % 6] } else { [0o555, 0o750, 0o500, 0o700][depth % 4] };
            fs::set_permissions(path, fs::Permissions::from_mode(crate::store::layerindex::stored_dir_mode(mode))).unwrap();
            filetime::set_file_mtime(path, FileTime::from_unix_time(1_600_000_000 + depth as i64, 7)).unwrap();
            let meta = fs::metadata(path).unwrap();
            exact.insert((meta.dev(), meta.ino()), (mode, path.clone()));
        }
        let modes: HashMap<(u64, u64), u32> = exact.iter().map(|(id, (mode, _))| (*id, *mode)).collect();
        let (scan, mtimes) = crate::store::treehash::scan_tree_known(&src, &HashMap::new(), &modes).unwrap();
        let index = LayerIndex::decode(LayerIndex::encode(&scan.entries, &mtimes).unwrap()).unwrap();
        assert_eq!(index.groups.len(), 41);
        assert!(check_index(&src, &index), "the store's bits are what the index expects");
        for round in 0..10 {
            let dst = dir.path().join(format!("slug{round}"));
            done(materialize_index(&src, &dst, &index, Materialize::Link, true, None).unwrap());
            assert_eq!(scan_tree(&dst).unwrap().hash, scan.hash);
            for (mode, path) in exact.values() {
                let (a, b) = (fs::metadata(path).unwrap(), fs::metadata(dst.join(path.strip_prefix(&src).unwrap())).unwrap());
                assert_eq!((b.mode() & 0o7777, b.mtime(), b.mtime_nsec()), (*mode, a.mtime(), a.mtime_nsec()), "{}", path.display());
            }
        }
        // Copies get the exact modes too.
        let dst = dir.path().join("copy");
        done(materialize_index(&src, &dst, &index, Materialize::Copy, true, None).unwrap());
        assert_eq!(scan_tree(&dst).unwrap().hash, scan.hash);
    }
}
