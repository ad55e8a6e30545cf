//! Writing a tar stream's entries into a directory: the unpacker proper, behind
//! [`crate::unpack::deb`].
//!
//! Contract: never writes outside the target directory. Paths are taken apart component by
//! component (`..` and absolute paths refused); a directory path goes through symlinks the
//! archive made only while they stay inside, resolved here rather than by the kernel. Every
//! create, write, link, symlink, chmod and utimens is one name in an open directory
//! ([`crate::fsat::Dir`]): directories are opened one `O_NOFOLLOW` name at a time, or with
//! openat2 `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` from the target (`Dirs`, which keeps
//! the descriptors of the directories in use open), so a symlink put anywhere on the way,
//! even while the unpack runs, is an error and never a way out. Files are created without
//! following a symlink; hard links must point at a file extracted earlier. Entries are
//! written in archive order as far as anyone can tell (files are written on worker threads;
//! an entry that touches a path still queued waits for it). Directory modes and mtimes are
//! set last, deepest first ([`DirModes`]). A kept hard link to a file the filter skipped gets
//! that file's bytes by a second read ([`fill_deferred`]). A stream cut into pieces of whole
//! entries (a shared layer's zstd frames) is unpacked piece by piece on every core
//! ([`unpack_tar_parts`]), each entry through the same checks.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use filetime::FileTime;

use crate::fsat::{Dir, Kind};
use crate::unpack::deb::{DebError, EntryFilter, TarStream, UnpackReport, shown, tar_err};
use crate::unpack::filewriter::{At, WriteError, WriterPool, Written, fill_in_place, make_room, write_file};
use crate::unpack::tarstream::EntryMeta;

/// The permission bits an unpack leaves on directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DirModes {
    /// The archive's, as `dpkg-deb -x` leaves them.
    Exact,
    /// The store's: the archive's plus owner read, write and search, so that the recipe,
    /// the layer scan and a warm build can work in them as a user who is not root; the
    /// archive's are reported in [`UnpackReport::dir_modes`].
    Stored,
}

/// A kept hard link whose target the filter skipped: dpkg -x followed by the classic
/// buildpack's `rm` leaves it a regular file with the target's bytes, mode and mtime. It is
/// created empty where the link entry is, kept open, and filled through that descriptor by a
/// second read of the archive ([`fill_deferred`]): the inode is filled whichever of its
/// names are still there (later links to it share it; a later entry at its path replaces it).
pub(crate) struct Deferred {
    /// The archive entry (by position) whose contents it gets.
    index: u64,
    path: PathBuf,
    file: File,
}

/// Kept hard links to skipped files in one package, at most (each holds a descriptor until
/// the second read).
const MAX_DEFERRED: usize = 1000;

/// Unpacks a tar stream into `dest` (made if missing; symlinks in that path are the
/// caller's choice, nothing below it is reached by path); contents of skipped entries are
/// seeked over, not read. Returns the hard links left to fill with skipped contents.
pub(crate) fn unpack_tar_filtered<R: Read + io::Seek>(
    tar_stream: R,
    dest: &Path,
    label: &str,
    filter: Option<&mut dyn EntryFilter>,
    modes: DirModes,
) -> Result<(UnpackReport, Vec<Deferred>), DebError> {
    let write_err = |error| DebError::Write { deb: label.into(), path: dest.to_owned(), error };
    std::fs::create_dir_all(dest).map_err(write_err)?;
    let root = Dir::open_given(dest).map_err(write_err)?;
    unpack_tar_into(tar_stream, (root, dest), label, filter, modes)
}

/// [`unpack_tar_filtered`] into the directory `root`, opened by the caller (say, made in a
/// staging directory without following any symlink); `dest` names it in messages.
pub(crate) fn unpack_tar_into<R: Read + io::Seek>(
    tar_stream: R,
    (root, dest): (Dir, &Path),
    label: &str,
    filter: Option<&mut dyn EntryFilter>,
    modes: DirModes,
) -> Result<(UnpackReport, Vec<Deferred>), DebError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| DebError::Write { deb: label.into(), path, error: source }
    };
    // `root` is the target, opened by the caller; `dest` only names it in messages.
    let pool = WriterPool::new();
    let writers = crate::fsat::workers();
    let mut unpacker = std::thread::scope(|scope| -> Result<Unpacker, DebError> {
        for _ in 0..writers {
            scope.spawn(|| pool.work());
        }
        let _close_on_exit = pool.closer();
        let mut unpacker = Unpacker::new((dest, label), (Dirs::new(Arc::new(root)), HashSet::new()), filter, Some(&pool));
        let result = (|| -> Result<(), DebError> {
            let mut archive = tar::Archive::new(tar_stream);
            let mut buf = vec![0u8; 1 << 16];
            let entries = archive.entries_with_seek().map_err(|e| tar_err(label, e))?;
            crate::unpack::tarstream::for_each_entry(entries, |e| tar_err(label, e), |entry, meta| {
                unpacker.entry(entry, meta, &mut buf)?;
                Ok(true)
            })
        })();
        result?;
        for w in pool.finish().map_err(|e| unpacker.written_err(e))? {
            unpacker.record(w);
        }
        Ok(unpacker)
    })?;
    let (dirs, skipped_entries) = (std::mem::take(&mut unpacker.dirs), unpacker.skipped_entries);
    finish_dirs(&mut unpacker.dirs_open, dest, dirs, modes, &mut unpacker.report).map_err(|(path, e)| write_err(&path)(e))?;
    count_unnamed(&mut unpacker.report, skipped_entries, label);
    Ok((unpacker.report, unpacker.deferred))
}

/// Directory modes and mtimes last, deepest first: filling a directory changes its mtime,
/// and a parent that loses its owner's write or search bits is done after its children.
/// A directory listed twice gets its later entry's mode and mtime (as if both were set
/// in turn): each is opened once, while it still has the owner's bits it was made with.
fn finish_dirs(dirs_open: &mut Dirs, dest: &Path, listed: Vec<(PathBuf, u32, FileTime)>, modes: DirModes, report: &mut UnpackReport) -> Result<(), (PathBuf, io::Error)> {
    let mut dirs: HashMap<PathBuf, (u32, FileTime)> = HashMap::new();
    for (rel, mode, mtime) in listed {
        dirs.insert(rel, (mode, mtime));
    }
    let mut dirs: Vec<_> = dirs.into_iter().collect();
    dirs.sort_by(|(a, _), (b, _)| b.components().count().cmp(&a.components().count()).then_with(|| a.cmp(b)));
    for (rel, (mode, mtime)) in dirs {
        let path = dest.join(&rel);
        let on_disk = if modes == DirModes::Stored { crate::store::layerindex::stored_dir_mode(mode) } else { mode };
        let done = (|| {
            let parent = dirs_open.get(rel.parent().unwrap_or(Path::new("")))?;
            let name = rel.file_name().map_or(&b""[..], |n| n.as_bytes());
            finish_dir(&parent, name, on_disk, (mtime.unix_seconds(), i64::from(mtime.nanoseconds())))
        })();
        let meta = done.map_err(|e| (path, e))?;
        if modes == DirModes::Stored {
            let id = (meta.dev, meta.ino);
            if on_disk == mode {
                report.dir_modes.remove(&id);
            } else {
                report.dir_modes.insert(id, mode);
            }
        }
    }
    Ok(())
}

/// Names how many device nodes and FIFOs were skipped beyond those named one by one.
fn count_unnamed(report: &mut UnpackReport, skipped_entries: u64, label: &str) {
    let unnamed = skipped_entries - (report.skipped.len() as u64).min(skipped_entries);
    if unnamed > 0 {
        report.skipped.push(format!("{label}: skipped {unnamed} more device nodes or FIFOs"));
    }
}

/// Unpacks a tar stream cut into `parts` pieces of whole entries (the frames of a shared
/// layer's zstd blob) on every core: each worker takes the next piece, opened by `open`, and
/// writes its entries itself. What one piece's entries make is the same as in one stream, as
/// long as no entry depends on one in another piece (a layer's pieces never do: no hard
/// links, no path through a symlink); an archive whose pieces do may come out different
/// (the caller checks the tree's hash), but never outside the target: every entry goes
/// through the same checks as in [`unpack_tar_into`], and a directory, once made, is never
/// removed by another piece. No filter: nothing is skipped, so nothing is deferred.
pub(crate) fn unpack_tar_parts<'a>(
    parts: usize,
    open: &(dyn Fn(usize) -> io::Result<Box<dyn Read + Send + 'a>> + Sync),
    (root, dest): (Dir, &Path),
    label: &str,
    modes: DirModes,
) -> Result<UnpackReport, DebError> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let root = Arc::new(root);
    let workers = crate::fsat::workers().min(parts);
    let queue = Pieces::new(parts, workers);
    let entries = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    // Each piece's directories (to finish last, in archive order) and counts, by piece.
    type Piece = (usize, Vec<(PathBuf, u32, FileTime)>, UnpackReport, u64);
    let done: Mutex<Vec<Piece>> = Mutex::new(Vec::with_capacity(parts));
    let first_error: Mutex<Option<(usize, DebError)>> = Mutex::new(None);
    let worker = |me: usize| {
        let (mut dirs_open, mut known_dirs) = (Dirs::new(root.clone()), HashSet::new());
        let mut buf = vec![0u8; 1 << 18];
        loop {
            let Some(k) = queue.take(me) else { return };
            if failed.load(Ordering::Relaxed) {
                return;
            }
            let mut unpacker = Unpacker::new((dest, label), (dirs_open, known_dirs), None, None);
            let result = (|| -> Result<(), DebError> {
                let stream = open(k).map_err(|e| tar_err(label, e))?;
                let mut archive = tar::Archive::new(crate::unpack::xzseek::ForwardSeek::new(stream));
                let tar_entries = archive.entries_with_seek().map_err(|e| tar_err(label, e))?;
                crate::unpack::tarstream::for_each_entry(tar_entries, |e| tar_err(label, e), |entry, meta| {
                    if failed.load(Ordering::Relaxed) {
                        return Ok(false);
                    }
                    if entries.fetch_add(1, Ordering::Relaxed) >= crate::unpack::tarstream::MAX_ENTRIES {
                        return Err(tar_err(label, crate::unpack::tarstream::too_many_entries(crate::unpack::tarstream::MAX_ENTRIES)));
                    }
                    unpacker.entry(entry, meta, &mut buf)?;
                    Ok(true)
                })
            })();
            (dirs_open, known_dirs) = (unpacker.dirs_open, unpacker.known_dirs);
            match result {
                Ok(()) => done.lock().unwrap_or_else(|p| p.into_inner()).push((k, unpacker.dirs, unpacker.report, unpacker.skipped_entries)),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    // The earliest piece's error: the one a single stream would have met first.
                    let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    if first.as_ref().is_none_or(|(at, _)| k < *at) {
                        *first = Some((k, e));
                    }
                    return;
                }
            }
        }
    };
    std::thread::scope(|scope| {
        for me in 0..workers {
            let worker = &worker;
            scope.spawn(move || worker(me));
        }
    });
    if let Some((_, e)) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut pieces = done.into_inner().unwrap_or_else(|p| p.into_inner());
    pieces.sort_unstable_by_key(|(k, ..)| *k);
    let (mut report, mut dirs, mut skipped_entries) = (UnpackReport::default(), Vec::new(), 0);
    for (_, piece_dirs, piece, skipped) in pieces {
        dirs.extend(piece_dirs);
        report.files += piece.files;
        report.dirs += piece.dirs;
        report.symlinks += piece.symlinks;
        report.hardlinks += piece.hardlinks;
        report.bytes += piece.bytes;
        report.skipped.extend(piece.skipped.into_iter().take(MAX_WARNINGS.saturating_sub(report.skipped.len())));
        report.digests.extend(piece.digests);
        skipped_entries += skipped;
    }
    let mut dirs_open = Dirs::new(root);
    finish_dirs(&mut dirs_open, dest, dirs, modes, &mut report).map_err(|(path, error)| DebError::Write { deb: label.into(), path, error })?;
    count_unnamed(&mut report, skipped_entries, label);
    Ok(report)
}

/// Which piece each worker of [`unpack_tar_parts`] takes next. Each has a run of its own
/// (the pieces cut into equal runs) and works through it from the start; one done takes the
/// last piece of the run with the most left. So workers stay in different parts of the tree:
/// two creating files in one directory wait for each other (its lock), which adjacent pieces
/// would make them do all the time.
struct Pieces {
    runs: std::sync::Mutex<Vec<std::ops::Range<usize>>>,
}

impl Pieces {
    fn new(parts: usize, workers: usize) -> Pieces {
        let workers = workers.max(1);
        let runs = (0..workers).map(|w| parts * w / workers..parts * (w + 1) / workers).collect();
        Pieces { runs: std::sync::Mutex::new(runs) }
    }

    fn take(&self, me: usize) -> Option<usize> {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(own) = runs.get_mut(me)
            && let Some(k) = own.next()
        {
            return Some(k);
        }
        runs.iter_mut().max_by_key(|r| r.len()).and_then(|r| r.next_back())
    }
}

/// Sets the mode and mtime of the directory `name` in `parent` (`""`: `parent` itself) and
/// returns its metadata: through a descriptor of it where it may be read (one open for the
/// three), else by name in `parent` (a directory that was there before and denies reading).
fn finish_dir(parent: &Dir, name: &[u8], mode: u32, mtime: (i64, i64)) -> io::Result<crate::fsat::Stat> {
    match parent.open_in_to_fill(name) {
        Ok(dir) => {
            dir.finish(mode, Some(mtime))?;
            dir.metadata()
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !name.is_empty() => {
            let name = OsStr::from_bytes(name);
            parent.set_mode_of(name, mode)?;
            parent.set_mtime_of(name, mtime)?;
            parent.lstat(name)
        }
        Err(e) => Err(e),
    }
}

/// The directories of an unpack, by their real path below the target, opened: each at most
/// once while in use (an archive lists a directory's entries together), so that writing a
/// file costs no path walk. Only the most recent ones stay open (descriptors are limited);
/// one closed is opened again from the target with openat2 `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS`.
struct Dirs {
    root: Arc<Dir>,
    open: HashMap<Vec<u8>, Arc<Dir>>,
    /// The directory asked for last, with its path: most entries are in the directory of the
    /// entry before, and comparing is cheaper than hashing.
    last: Option<(Vec<u8>, Arc<Dir>)>,
}

/// Directories [`Dirs`] keeps open, at most.
const OPEN_DIRS: usize = 64;

impl Dirs {
    fn new(root: Arc<Dir>) -> Dirs {
        Dirs { root, open: HashMap::new(), last: None }
    }

    /// The directory `rel` if it is the one asked for last (a real directory, then).
    fn last(&self, rel: &Path) -> Option<Arc<Dir>> {
        self.last.as_ref().filter(|(key, _)| key == rel.as_os_str().as_bytes()).map(|(_, dir)| dir.clone())
    }

    /// The directory `rel` (a real path: no symlink on it), opened.
    fn get(&mut self, rel: &Path) -> io::Result<Arc<Dir>> {
        let key = rel.as_os_str().as_bytes();
        if key.is_empty() {
            return Ok(self.root.clone());
        }
        let dir = match self.open.get(key) {
            Some(dir) => dir.clone(),
            None => {
                let dir = Arc::new(self.root.dir_beneath(rel)?);
                self.keep(key.to_vec(), dir.clone());
                dir
            }
        };
        self.last = Some((key.to_vec(), dir.clone()));
        Ok(dir)
    }

    fn keep(&mut self, rel: Vec<u8>, dir: Arc<Dir>) {
        if self.open.len() >= OPEN_DIRS {
            // Archives list a directory's entries together: the oldest are done with.
            self.open.clear();
        }
        self.open.insert(rel, dir);
    }
}

/// Second read of the archive: fills each [`Deferred`] link with the contents of its entry,
/// in place (later hard links to it share the inode). Stops after the last entry needed.
pub(crate) fn fill_deferred(tar: &mut dyn TarStream, label: &str, deferred: &mut [Deferred]) -> Result<Vec<Written>, DebError> {
    let last = deferred.iter().map(|d| d.index).max().unwrap_or(0);
    let mut wanted: HashMap<u64, Vec<&mut Deferred>> = HashMap::new();
    for d in deferred {
        wanted.entry(d.index).or_default().push(d);
    }
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries_with_seek().map_err(|e| tar_err(label, e))?;
    let (mut index, mut written, mut buf) = (0u64, Vec::new(), vec![0u8; 1 << 16]);
    let write_err = |e: WriteError| DebError::Write { deb: label.into(), path: e.path, error: e.source };
    crate::unpack::tarstream::for_each_entry(entries, |e| tar_err(label, e), |entry, meta| {
        let here = index;
        index += 1;
        let Some(links) = wanted.get_mut(&here) else { return Ok(here < last) };
        // A placeholder whose every name a later entry replaced is nobody's file any more.
        links.retain(|d| d.file.metadata().map_or(true, |m| std::os::unix::fs::MetadataExt::nlink(&m) > 0));
        if links.is_empty() {
            return Ok(here < last);
        }
        let header = entry.header();
        let mode = header.mode().map_err(|e| tar_err(label, e))? & 0o7777;
        let mtime = match meta.mtime {
            Some((secs, nanos)) => FileTime::from_unix_time(secs, nanos),
            None => FileTime::from_unix_time(header.mtime().unwrap_or(0) as i64, 0),
        };
        // Several links to one skipped file: the first gets the bytes as they stream, the
        // others a copy of them (hard-link identity is not part of the tree).
        let (first, rest) = links.split_first_mut().ok_or_else(|| tar_err(label, io::Error::other("no link to fill")))?;
        let w = fill_in_place(&mut first.file, &first.path, entry, mode, mtime_of(mtime), &mut buf).map_err(write_err)?;
        for link in rest {
            first.file.rewind().map_err(|source| DebError::Write { deb: label.into(), path: first.path.clone(), error: source })?;
            let mut source = &first.file;
            written.push(fill_in_place(&mut link.file, &link.path, &mut source, mode, mtime_of(mtime), &mut buf).map_err(write_err)?);
        }
        written.push(w);
        Ok(here < last)
    })?;
    Ok(written)
}

struct Unpacker<'a, 'f> {
    /// The target, for messages only: nothing is reached by path.
    dest: &'a Path,
    label: &'a str,
    dirs_open: Dirs,
    /// Relative paths known to be real directories inside `dest`. Paths are kept as bytes
    /// (hashing a `Path` parses its components): all of them are clean, so bytes compare
    /// as paths do.
    known_dirs: HashSet<Vec<u8>>,
    dirs: Vec<(PathBuf, u32, FileTime)>,
    report: UnpackReport,
    filter: Option<&'f mut dyn EntryFilter>,
    /// The writers small files are handed to; without, every file is written in turn.
    pool: Option<&'a WriterPool>,
    /// Files handed to the writers since they last drained: an entry at (or below) one of
    /// these paths waits for them first.
    queued: HashSet<Vec<u8>>,
    /// Position of the current entry in the archive.
    index: u64,
    /// Regular files the filter skipped (by their path in the archive), with the position of
    /// the last entry that wrote them: a kept hard link to one gets its contents.
    skipped_files: HashMap<Vec<u8>, u64>,
    /// Hard links the filter skipped, with the path they link to.
    skipped_links: HashMap<Vec<u8>, Vec<u8>>,
    deferred: Vec<Deferred>,
    /// Device nodes and FIFOs skipped, named in the report or not.
    skipped_entries: u64,
}

/// Skipped entries named one by one in a report, at most.
pub(crate) const MAX_WARNINGS: usize = 20;

/// Files up to this size are read into memory and written by the pool; bigger ones are
/// streamed to disk by the reader itself.
const POOLED_FILE: u64 = 8 << 20;

impl<'a, 'f> Unpacker<'a, 'f> {
    /// An unpacker into `dest` that starts with the directories `dirs` knows of (open, and
    /// known to be real).
    fn new((dest, label): (&'a Path, &'a str), (dirs_open, known_dirs): (Dirs, HashSet<Vec<u8>>), filter: Option<&'f mut dyn EntryFilter>, pool: Option<&'a WriterPool>) -> Self {
        Unpacker {
            dest,
            label,
            dirs_open,
            known_dirs,
            dirs: Vec::new(),
            report: UnpackReport::default(),
            filter,
            pool,
            queued: HashSet::new(),
            index: 0,
            skipped_files: HashMap::new(),
            skipped_links: HashMap::new(),
            deferred: Vec::new(),
            skipped_entries: 0,
        }
    }

    fn written_err(&self, e: WriteError) -> DebError {
        DebError::Write { deb: self.label.into(), path: e.path, error: e.source }
    }

    fn record(&mut self, w: Written) {
        self.report.digests.insert(w.id, crate::hash::Digests { sha256: w.sha256, xxh3: w.xxh3 });
        self.report.files += 1;
        self.report.bytes += w.bytes;
    }

    /// Waits for queued files if `rel` or one of its parents is among them.
    fn order_after_queued(&mut self, rel: &Path, always: bool) -> Result<(), DebError> {
        let rel = rel.as_os_str().as_bytes();
        let parents = rel.iter().enumerate().filter(|&(_, &b)| b == b'/').map(|(at, _)| &rel[..at]);
        if let Some(pool) = self.pool
            && !self.queued.is_empty()
            && (always || self.queued.contains(rel) || parents.clone().any(|p| self.queued.contains(p)))
        {
            pool.drain().map_err(|e| self.written_err(e))?;
            self.queued.clear();
        }
        Ok(())
    }

    fn unsafe_entry(&self, entry: &str, reason: &str) -> DebError {
        DebError::Unsafe { deb: self.label.into(), entry: entry.into(), reason: reason.into() }
    }

    fn write_err(&self, path: &Path) -> impl FnOnce(io::Error) -> DebError + use<> {
        let (deb, path) = (self.label.to_string(), path.to_owned());
        move |source| DebError::Write { deb, path, error: source }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>, meta: &EntryMeta, buf: &mut [u8]) -> Result<(), DebError> {
        let index = self.index;
        self.index += 1;
        let name = shown(&meta.path);
        let rel = self.sanitize(&meta.path, &name)?;
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().map_err(|e| tar_err(self.label, e))? & 0o7777;
        let mtime = match meta.mtime {
            Some((secs, nanos)) => FileTime::from_unix_time(secs, nanos),
            None => FileTime::from_unix_time(header.mtime().unwrap_or(0) as i64, 0),
        };
        if rel.as_os_str().is_empty() {
            // The archive root ("./"): like tar, it sets the target directory's mode and mtime.
            if kind.is_dir() {
                self.dirs.push((rel, mode, mtime));
            }
            return Ok(());
        }
        if let Some(filter) = self.filter.as_deref_mut() {
            let size = if kind.is_file() { header.size().unwrap_or(0) } else { 0 };
            let rel_bytes = rel.as_os_str().as_bytes();
            if filter.skip(rel_bytes, kind.is_dir(), size) {
                if kind.is_file() || kind == tar::EntryType::Continuous {
                    self.skipped_files.insert(rel_bytes.to_vec(), index);
                } else if kind.is_hard_link()
                    && let Some(target) = meta.link.as_deref().and_then(|t| self.sanitize(t, &name).ok())
                {
                    let target = target.into_os_string().into_vec();
                    let target = self.skipped_links.get(&target).cloned().unwrap_or(target);
                    self.skipped_links.insert(rel_bytes.to_vec(), target);
                }
                return Ok(());
            }
        }
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let what = if kind.is_fifo() { "FIFO" } else { "device node" };
            // A package may hold any number of them: the first few are named, the rest counted.
            self.skipped_entries += 1;
            if self.report.skipped.len() < MAX_WARNINGS {
                self.report.skipped.push(format!("{}: skipped {what} {name}", self.label));
            }
            return Ok(());
        }
        self.order_after_queued(&rel, false)?;
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let (parent_real, dir) = self.real_dir(&parent, &name)?;
        let file_name = rel.file_name().map(OsStr::to_os_string).unwrap_or_default();
        let real = parent_real.join(&file_name);
        // For messages: the writes below take `file_name` in `dir`.
        let path = self.dest.join(&real);
        self.order_after_queued(&real, kind.is_hard_link())?;
        if kind.is_file() || kind == tar::EntryType::Continuous {
            let size = header.size().unwrap_or(0);
            let mtime = mtime_of(mtime);
            let at = At { dir, name: file_name, path };
            if let Some(pool) = self.pool.filter(|_| size <= POOLED_FILE) {
                let mut data = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut data).map_err(|e| tar_err(self.label, e))?;
                pool.submit(at, data, mode, mtime).map_err(|e| self.written_err(e))?;
                self.queued.insert(real.as_os_str().as_bytes().to_vec());
            } else {
                if let Some(pool) = self.pool {
                    pool.wake();
                }
                let w = write_file(&at, entry, mode, mtime, buf).map_err(|e| self.written_err(e))?;
                self.record(w);
            }
            return Ok(());
        }
        if kind.is_dir() {
            match dir.lstat(&file_name).map(|st| st.is_dir()) {
                Ok(true) => {}
                Ok(false) => {
                    dir.remove_file(&file_name).map_err(self.write_err(&path))?;
                    dir.make_dir(file_name.as_bytes()).map_err(self.write_err(&path))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => make_dir_racing(&dir, &file_name).map_err(self.write_err(&path))?,
                Err(e) => return Err(self.write_err(&path)(e)),
            }
            self.known_dirs.insert(real.as_os_str().as_bytes().to_vec());
            self.dirs.push((real, mode, mtime));
            self.report.dirs += 1;
            return Ok(());
        }
        self.clear_for_non_dir(&dir, &file_name, &path, &name)?;
        if kind.is_symlink() {
            let target = meta.link.as_deref().filter(|t| !t.is_empty());
            let target = target.ok_or_else(|| self.unsafe_entry(&name, "symlink without a target"))?;
            // The target's bytes exactly (dpkg keeps them, UTF-8 or not).
            let target = Path::new(OsStr::from_bytes(target));
            let mtime = (mtime.unix_seconds(), i64::from(mtime.nanoseconds()));
            dir.make_symlink(target, &file_name, mtime).map_err(self.write_err(&path))?;
            self.report.symlinks += 1;
        } else if kind.is_hard_link() {
            let target_raw = meta.link.as_deref().filter(|t| !t.is_empty());
            let target_raw = target_raw.ok_or_else(|| self.unsafe_entry(&name, "hard link without a target"))?;
            let target_rel = self.sanitize(target_raw, &name)?;
            if target_rel.as_os_str().is_empty() {
                return Err(self.unsafe_entry(&name, "hard link to the archive root"));
            }
            // A link to a skipped link is a link to what that one links to.
            let target_rel = match self.skipped_links.get(target_rel.as_os_str().as_bytes()) {
                Some(resolved) => PathBuf::from(OsString::from_vec(resolved.clone())),
                None => target_rel,
            };
            if let Some(&target_index) = self.skipped_files.get(target_rel.as_os_str().as_bytes()) {
                // Its target's bytes were skipped: a placeholder now, filled by a second read.
                if self.deferred.len() == MAX_DEFERRED {
                    let why = format!("more than {MAX_DEFERRED} kept hard links to stripped files, ddslug's limit");
                    return Err(DebError::Unsupported { deb: self.label.into(), entry: name, reason: why });
                }
                let file = dir.create_file(&file_name, 0o600).map_err(self.write_err(&path))?;
                self.deferred.push(Deferred { index: target_index, path, file });
                return Ok(());
            }
            let (_, target_dir) = self.real_dir(target_rel.parent().unwrap_or(Path::new("")), &name)?;
            let target_name = target_rel.file_name().unwrap_or_default();
            match target_dir.lstat(target_name) {
                Ok(st) if st.is_file() => {}
                _ => return Err(self.unsafe_entry(&name, "hard link target is not a file extracted earlier")),
            }
            // linkat without AT_SYMLINK_FOLLOW: the entry itself, never what a name leads to.
            target_dir.hard_link(target_name, &dir, &file_name).map_err(self.write_err(&path))?;
            self.report.hardlinks += 1;
        } else if matches!(kind, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
            // Metadata records the tar reader already applied.
        } else {
            return Err(DebError::Unsupported {
                deb: self.label.into(),
                entry: name,
                reason: format!("unsupported tar entry type {:?}", kind),
            });
        }
        Ok(())
    }

    /// [`make_room`] for an entry that is not a directory.
    fn clear_for_non_dir(&self, dir: &Dir, file_name: &OsStr, path: &Path, name: &str) -> Result<(), DebError> {
        make_room(dir, file_name).map_err(|e| match e.kind() {
            io::ErrorKind::IsADirectory => DebError::Unsupported {
                deb: self.label.into(),
                entry: name.into(),
                reason: "a non-directory entry replaces a directory".into(),
            },
            _ => self.write_err(path)(e),
        })
    }

    /// An archive path as a clean relative path: `./` and `.` dropped; `..` and absolute
    /// paths refused.
    fn sanitize(&self, raw: &[u8], entry: &str) -> Result<PathBuf, DebError> {
        let text = || shown(raw);
        if raw.first() == Some(&b'/') {
            return Err(self.unsafe_entry(entry, &format!("absolute path \"{}\"", text())));
        }
        let mut out = PathBuf::new();
        for c in Path::new(OsStr::from_bytes(raw)).components() {
            match c {
                Component::CurDir => {}
                Component::Normal(part) => out.push(part),
                Component::ParentDir => return Err(self.unsafe_entry(entry, &format!("path \"{}\" contains `..`", text()))),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.unsafe_entry(entry, &format!("absolute path \"{}\"", text())));
                }
            }
        }
        Ok(out)
    }

    /// Resolves a relative directory path inside `dest` the way the kernel would, following
    /// symlinks already extracted, and refusing any that lead outside `dest`. Missing
    /// directories are created (as tar does). Returns the resolved relative path and the
    /// directory, opened. The walk goes one name at a time through open directories, never
    /// following a link itself: a link is read and its target walked the same way.
    fn real_dir(&mut self, rel: &Path, entry: &str) -> Result<(PathBuf, Arc<Dir>), DebError> {
        if let Some(dir) = self.dirs_open.last(rel) {
            return Ok((rel.to_path_buf(), dir));
        }
        if rel.as_os_str().is_empty() || self.known_dirs.contains(rel.as_os_str().as_bytes()) {
            // (The error's path only when there is an error: this runs for every entry.)
            let dir = self.dirs_open.get(rel).map_err(|e| self.write_err(&self.dest.join(rel))(e))?;
            return Ok((rel.to_path_buf(), dir));
        }
        // The directories walked so far, from the target down.
        let mut resolved: Vec<(OsString, Arc<Dir>)> = Vec::new();
        let mut pending: Vec<OsString> = rel.components().rev().map(|c| c.as_os_str().to_owned()).collect();
        let mut hops = 0;
        let shown_rel = |resolved: &[(OsString, Arc<Dir>)], part: &OsStr| {
            let path: PathBuf = resolved.iter().map(|(n, _)| n.as_os_str()).chain(std::iter::once(part)).collect();
            path
        };
        while let Some(part) = pending.pop() {
            if part == ".." {
                if resolved.pop().is_none() {
                    return Err(self.unsafe_entry(entry, "a symlink in its path leads outside the target directory"));
                }
                continue;
            }
            if part == "." || part.is_empty() {
                continue;
            }
            let here = resolved.last().map_or_else(|| self.dirs_open.root.clone(), |(_, d)| d.clone());
            let candidate = shown_rel(&resolved, &part);
            let full = self.dest.join(&candidate);
            match here.kind(&part) {
                Ok(Kind::Symlink) => {
                    hops += 1;
                    let target = here.read_link(&part).map_err(self.write_err(&full))?;
                    if hops > 40 || target.is_absolute() {
                        return Err(self.unsafe_entry(
                            entry,
                            &format!(
                                "writing through symlink {} -> {} would leave the target directory",
                                shown(candidate.as_os_str().as_bytes()),
                                shown(target.as_os_str().as_bytes())
                            ),
                        ));
                    }
                    pending.extend(target.components().rev().map(|c| c.as_os_str().to_owned()));
                }
                Ok(Kind::Dir) => {
                    let dir = here.sub_dir(&part).map_err(self.write_err(&full))?;
                    resolved.push((part, Arc::new(dir)));
                }
                Ok(_) => {
                    return Err(DebError::Unsupported {
                        deb: self.label.into(),
                        entry: entry.into(),
                        reason: format!("{} is a file, not a directory", shown(candidate.as_os_str().as_bytes())),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    make_dir_racing(&here, &part).map_err(self.write_err(&full))?;
                    let dir = here.sub_dir(&part).map_err(self.write_err(&full))?;
                    resolved.push((part, Arc::new(dir)));
                }
                Err(e) => return Err(self.write_err(&full)(e)),
            }
        }
        let real: PathBuf = resolved.iter().map(|(n, _)| n.as_os_str()).collect();
        let dir = resolved.pop().map_or_else(|| self.dirs_open.root.clone(), |(_, d)| d);
        if real.as_path() == rel {
            self.known_dirs.insert(real.as_os_str().as_bytes().to_vec());
        }
        if !real.as_os_str().is_empty() {
            self.dirs_open.keep(real.as_os_str().as_bytes().to_vec(), dir.clone());
        }
        Ok((real, dir))
    }
}

/// Makes the directory `name` in `dir`; one already there is fine (another worker of a
/// parallel unpack made it first), anything else there is not.
fn make_dir_racing(dir: &Dir, name: &OsStr) -> io::Result<()> {
    match dir.make_dir(name.as_bytes()) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match dir.lstat(name) {
            Ok(st) if st.is_dir() => Ok(()),
            _ => Err(e),
        },
        done => done,
    }
}

fn mtime_of(t: FileTime) -> std::time::SystemTime {
    let secs = t.unix_seconds();
    let base = if secs >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_secs(secs.unsigned_abs())
    };
    base + std::time::Duration::from_nanos(u64::from(t.nanoseconds()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// Parts read from memory, as a pull reads the frames of a blob.
    fn parts_of<'a>(frames: &'a [Vec<u8>]) -> impl Fn(usize) -> io::Result<Box<dyn Read + Send + 'a>> + Sync + 'a {
        move |k| Ok(Box::new(frames[k].as_slice()) as Box<dyn Read + Send>)
    }

    fn unpack_parts(frames: &[Vec<u8>], dest: &Path) -> Result<UnpackReport, DebError> {
        fs::create_dir_all(dest).unwrap();
        unpack_tar_parts(frames.len(), &parts_of(frames), (Dir::open_given(dest).unwrap(), dest), "test", DirModes::Stored)
    }

    /// A tree with directories of mixed modes, big and small files, a symlink and a name
    /// too long for a ustar header, cut into zstd frames of about `frame` bytes of tar.
    fn framed_layer(frame: u64) -> (tempfile::TempDir, Vec<Vec<u8>>, Vec<u8>) {
        let src = tempfile::tempdir().unwrap();
        let long = "d".repeat(120);
        for i in 0..40 {
            let dir = src.path().join(format!("opt/a{}/b{}", i % 7, i % 3));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(format!("f{i}")), vec![i as u8; i * 97]).unwrap();
        }
        fs::create_dir_all(src.path().join(format!("opt/{long}"))).unwrap();
        fs::write(src.path().join(format!("opt/{long}/g")), b"long").unwrap();
        std::os::unix::fs::symlink("a1/b1", src.path().join("opt/link")).unwrap();
        fs::set_permissions(src.path().join("opt/a2"), fs::Permissions::from_mode(0o555)).unwrap();
        let mut tree = crate::oci::tarball::LayerTree::new();
        tree.add_tree(b"", src.path()).unwrap();
        let mut blob = Vec::new();
        let written = tree.write_compressed(&mut blob, i64::MAX, crate::oci::tarball::Compressor::Zstd { level: 1, frame }).unwrap();
        let mut at = 0;
        let frames = written.frames.iter().map(|&n| {
            at += n as usize;
            zstd::decode_all(&blob[at - n as usize..at]).unwrap()
        });
        let frames: Vec<Vec<u8>> = frames.collect();
        let whole = frames.concat();
        (src, frames, whole)
    }

    #[test]
    fn frames_unpacked_side_by_side_make_the_tree_one_stream_makes() {
        let (_src, frames, whole) = framed_layer(2000);
        assert!(frames.len() > 5, "{}", frames.len());
        let out = tempfile::tempdir().unwrap();
        let (serial, parallel) = (out.path().join("serial"), out.path().join("parallel"));
        let (one, _) = unpack_tar_filtered(crate::unpack::xzseek::ForwardSeek::new(whole.as_slice()), &serial, "test", None, DirModes::Stored).unwrap();
        let many = unpack_parts(&frames, &parallel).unwrap();
        let hash = |dir: &Path| crate::store::treehash::scan_tree(dir).unwrap().hash;
        assert_eq!(hash(&parallel), hash(&serial));
        assert_eq!((many.files, many.dirs, many.symlinks, many.bytes), (one.files, one.dirs, one.symlinks, one.bytes));
        let digests = |r: &UnpackReport| {
            let mut d: Vec<_> = r.digests.values().map(|d| d.sha256).collect();
            d.sort_unstable();
            d
        };
        assert_eq!(digests(&many), digests(&one));
        // The archive's modes are reported for directories the store keeps owner-writable.
        let modes = |r: &UnpackReport| {
            let mut m: Vec<u32> = r.dir_modes.values().copied().collect();
            m.sort_unstable();
            m
        };
        assert_eq!(modes(&many), modes(&one));
        assert_eq!(modes(&many), vec![0o555]);
    }

    /// One raw tar entry (no end-of-archive blocks: a frame in the middle of a stream).
    fn entry(name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        if !link.is_empty() {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[test]
    fn workers_start_apart_and_every_piece_is_taken_once() {
        let pieces = Pieces::new(10, 2);
        assert_eq!((pieces.take(0), pieces.take(1)), (Some(0), Some(5)));
        let mut taken = vec![0, 5];
        // Worker 1 runs alone: its own run, then the far end of worker 0's.
        while let Some(k) = pieces.take(1) {
            taken.push(k);
        }
        assert_eq!(taken, vec![0, 5, 6, 7, 8, 9, 4, 3, 2, 1]);
        assert_eq!(pieces.take(0), None);
        assert_eq!(Pieces::new(1, 2).take(1), Some(0));
        assert_eq!(Pieces::new(0, 3).take(0), None);
    }

    #[test]
    fn hostile_frames_fail_inside_the_target_whatever_order_they_run_in() {
        use tar::EntryType::{Regular, Symlink};
        let file = |name: &str| entry(name, Regular, "", b"out");
        let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
            ("dotdot", vec![file("ok"), file("../escaped")], "refusing to unpack"),
            ("link-then-file", vec![entry("opt", Symlink, "/", b""), file("opt/escaped")], ""),
            ("file-then-link", vec![file("opt/escaped"), entry("opt", Symlink, "/", b"")], ""),
            ("cut-entry", vec![file("ok"), file("cut")[..600].to_vec()], ""),
        ];
        for (name, frames, says) in cases {
            for _ in 0..5 {
                let out = tempfile::tempdir().unwrap();
                let dest = out.path().join("tree");
                let err = unpack_parts(&frames, &dest).map(|_| ()).expect_err(name).to_string();
                assert!(err.contains(says), "{name}: {err}");
                let outside: Vec<_> = fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
                assert_eq!(outside, vec![OsString::from("tree")], "{name}");
                assert!(!Path::new("/escaped").exists(), "{name}");
            }
        }
    }
}
