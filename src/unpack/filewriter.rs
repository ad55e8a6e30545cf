//! Writing unpacked files: on worker threads, so that creating tens of thousands of files
//! (mostly kernel time) runs on every core while the tar reader moves on.
//!
//! Contract: a file is created as one name in an open directory ([`At`]), exclusively and
//! without following a symlink (`openat` `O_CREAT | O_EXCL | O_NOFOLLOW`); what was at that
//! name is unlinked first, never written through. No path is resolved here, so a directory
//! swapped for a symlink after it was opened leads nowhere.
//!
//! Order matters only where two entries touch the same path (or one is below the other);
//! the unpacker calls [`WriterPool::drain`] before such an entry, so the result is the same
//! as writing everything in archive order.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use crate::fsat::Dir;
use crate::hash::{FileHasher, Sha256};
use crate::store::treehash::FileId;

/// Bytes of file contents held in memory waiting for a writer, at most (a file bigger than
/// this is still accepted alone).
const IN_FLIGHT: usize = 32 << 20;
/// Files waiting for a writer, at most: each holds its directory's descriptor open, and
/// empty files would otherwise queue without limit.
const MAX_QUEUED: usize = 256;
/// A sleeping writer is woken once this many files (or bytes) wait, and takes up to this
/// many at a time: one wake-up per file would cost more than writing a small file.
const BATCH: usize = 16;
const BATCH_BYTES: usize = 1 << 20;

/// A written file.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    pub id: FileId,
    pub sha256: Sha256,
    /// The content's xxh3, recorded in the layer index for warm builds' content checks.
    pub xxh3: u64,
    pub bytes: u64,
}

/// Where a file goes: the name `name` in the open directory `dir`. `path` is where that is
/// for people (errors); nothing opens it.
#[derive(Clone, Debug)]
pub struct At {
    pub dir: Arc<Dir>,
    pub name: OsString,
    pub path: PathBuf,
}

/// Creates the file `at` names (replacing a file or symlink there, refusing a directory),
/// writes what `source` gives, hashing it, then sets mode and mtime through the open file.
pub fn write_file(at: &At, source: &mut dyn Read, mode: u32, mtime: SystemTime, buf: &mut [u8]) -> Result<Written, WriteError> {
    let err = |e| WriteError { path: at.path.clone(), source: e };
    // Created with its final permission bits: unless the umask takes some away, no chmod
    // is needed afterwards. The common case, a new name, costs no lookup first.
    let (mut out, replaced) = match at.dir.create_file(&at.name, mode & 0o777) {
        Ok(out) => (out, false),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            make_room(&at.dir, &at.name).map_err(err)?;
            (at.dir.create_file(&at.name, mode & 0o777).map_err(err)?, true)
        }
        Err(e) => return Err(err(e)),
    };
    let hasher = copy_hashing(&mut out, source, buf).map_err(err)?;
    if replaced || !created_with(mode) {
        out.set_permissions(fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    out.set_modified(mtime).map_err(err)?;
    written(&out, hasher).map_err(err)
}

/// Writes what `source` gives into the open file `out` from its start, in place (every
/// name the inode has sees the new contents; `path` is one, for errors), then sets `mode`
/// and `mtime` through the descriptor.
pub fn fill_in_place(out: &mut fs::File, path: &Path, source: &mut dyn Read, mode: u32, mtime: SystemTime, buf: &mut [u8]) -> Result<Written, WriteError> {
    use std::io::Seek;
    let at = |e| WriteError { path: path.to_owned(), source: e };
    out.set_len(0).map_err(at)?;
    out.rewind().map_err(at)?;
    let hasher = copy_hashing(out, source, buf).map_err(at)?;
    out.set_permissions(fs::Permissions::from_mode(mode)).map_err(at)?;
    out.set_modified(mtime).map_err(at)?;
    written(out, hasher).map_err(at)
}

/// Copies what `source` gives into `out` through `buf`, hashing it on the way.
fn copy_hashing(out: &mut fs::File, source: &mut dyn Read, buf: &mut [u8]) -> io::Result<FileHasher> {
    let mut hasher = FileHasher::new();
    loop {
        let n = match source.read(buf) {
            Ok(0) => return Ok(hasher),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
    }
}

/// What was written to `out`: its identity and the digests of the bytes hashed.
fn written(out: &fs::File, hasher: FileHasher) -> io::Result<Written> {
    let meta = out.metadata()?;
    let bytes = hasher.len();
    let digests = hasher.finish();
    Ok(Written { id: FileId::of(&meta), bytes, sha256: digests.sha256, xxh3: digests.xxh3 })
}

/// Whether a file created with `mode & 0o777` already has exactly `mode`: no setuid, setgid
/// or sticky bit to add, and no bit the umask removes.
fn created_with(mode: u32) -> bool {
    mode & !0o777 == 0 && umask().is_some_and(|mask| mode & mask == 0)
}

/// The process's umask, as Linux reports it (reading it with umask(2) would mean setting
/// it, which other threads creating files would see).
fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

/// Makes room for an entry that is not a directory at `name` in `dir`: an existing file or
/// symlink is removed (never written through: it may be a hard link or a symlink); an
/// existing directory is an `IsADirectory` error.
pub fn make_room(dir: &Dir, name: &OsStr) -> io::Result<()> {
    match dir.remove_file(name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        done => done,
    }
}

/// Writing a file failed.
#[derive(Debug)]
pub struct WriteError {
    pub path: PathBuf,
    pub source: io::Error,
}

struct Job {
    at: At,
    data: Vec<u8>,
    mode: u32,
    mtime: SystemTime,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Bytes of the queued jobs.
    queued_bytes: usize,
    /// Jobs queued or being written.
    pending: usize,
    bytes: usize,
    /// Writers waiting for work.
    idle: usize,
    /// The submitter waits for writers to make progress.
    waiting: bool,
    closed: bool,
    error: Option<WriteError>,
    written: Vec<Written>,
}

/// Worker threads writing files whose contents are already in memory.
pub struct WriterPool {
    state: Mutex<State>,
    work: Condvar,
    progress: Condvar,
}

impl WriterPool {
    pub fn new() -> WriterPool {
        WriterPool { state: Mutex::new(State::default()), work: Condvar::new(), progress: Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A writer that panicked leaves plain data behind; its error is reported anyway.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a file, waiting while too many bytes are in flight. Returns a writer's error,
    /// if one failed since.
    pub fn submit(&self, at: At, data: Vec<u8>, mode: u32, mtime: SystemTime) -> Result<(), WriteError> {
        let mut state = self.lock();
        while state.error.is_none() && state.pending > 0 && (state.bytes + data.len() > IN_FLIGHT || state.pending >= MAX_QUEUED) {
            state = self.wait_for_progress(state);
        }
        if let Some(e) = state.error.take() {
            return Err(e);
        }
        state.bytes += data.len();
        state.queued_bytes += data.len();
        state.pending += 1;
        state.queue.push_back(Job { at, data, mode, mtime });
        if state.idle > 0 && (state.queue.len() >= BATCH || state.queued_bytes >= BATCH_BYTES) {
            self.work.notify_one();
        }
        Ok(())
    }

    /// Wakes the writers for a short batch, before the submitter turns to something long
    /// (writing a big file itself).
    pub fn wake(&self) {
        let state = self.lock();
        if state.idle > 0 && !state.queue.is_empty() {
            self.work.notify_all();
        }
    }

    /// Waits until everything queued is written.
    pub fn drain(&self) -> Result<(), WriteError> {
        let mut state = self.lock();
        while state.pending > 0 {
            state = self.wait_for_progress(state);
        }
        state.error.take().map_or(Ok(()), Err)
    }

    /// Wakes the writers for whatever is queued (a short batch too), then waits for one of
    /// them to finish something.
    fn wait_for_progress<'a>(&'a self, mut state: std::sync::MutexGuard<'a, State>) -> std::sync::MutexGuard<'a, State> {
        if state.idle > 0 && !state.queue.is_empty() {
            self.work.notify_all();
        }
        state.waiting = true;
        let mut state = self.progress.wait(state).unwrap_or_else(|p| p.into_inner());
        state.waiting = false;
        state
    }

    /// What the writers wrote; stops them once the queue is empty (also on an error).
    pub fn finish(&self) -> Result<Vec<Written>, WriteError> {
        let drained = self.drain();
        let mut state = self.lock();
        state.closed = true;
        self.work.notify_all();
        drained.map(|()| std::mem::take(&mut state.written))
    }

    /// A guard that stops the writers when dropped, however the scope that runs them ends
    /// (an error or a panic in the reader must not leave them waiting for work forever).
    pub fn closer(&self) -> Closer<'_> {
        Closer(self)
    }

    /// Stops the writers without waiting for the queue (after an error elsewhere).
    pub fn abandon(&self) {
        let mut state = self.lock();
        state.queue.clear();
        state.queued_bytes = 0;
        state.closed = true;
        self.work.notify_all();
    }

    /// A writer thread's loop; returns once the pool is finished or abandoned.
    pub fn work(&self) {
        let mut buf = vec![0u8; 1 << 16];
        let mut jobs = Vec::with_capacity(BATCH);
        loop {
            {
                let mut state = self.lock();
                while state.queue.is_empty() {
                    if state.closed {
                        return;
                    }
                    state.idle += 1;
                    state = self.work.wait(state).unwrap_or_else(|p| p.into_inner());
                    state.idle -= 1;
                }
                let take = state.queue.len().min(BATCH);
                jobs.extend(state.queue.drain(..take));
                state.queued_bytes -= jobs.iter().map(|j: &Job| j.data.len()).sum::<usize>();
            }
            let results: Vec<_> = jobs.iter().map(|job| write_file(&job.at, &mut &job.data[..], job.mode, job.mtime, &mut buf)).collect();
            let mut state = self.lock();
            state.pending -= jobs.len();
            state.bytes -= jobs.drain(..).map(|j| j.data.len()).sum::<usize>();
            for result in results {
                match result {
                    Ok(w) => state.written.push(w),
                    Err(e) => {
                        if state.error.is_none() {
                            state.error = Some(e);
                        }
                    }
                }
            }
            if state.waiting {
                self.progress.notify_all();
            }
        }
    }
}

/// See [`WriterPool::closer`].
pub struct Closer<'p>(&'p WriterPool);

impl Drop for Closer<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

impl Default for WriterPool {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name` in the directory `dir` (a path the test made).
    fn at(dir: &std::path::Path, name: &str) -> At {
        At { dir: Arc::new(Dir::open_given(dir).unwrap()), name: name.into(), path: dir.join(name) }
    }

    #[test]
    fn files_get_exact_modes_whether_or_not_the_umask_would_change_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = vec![0u8; 64];
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        // 0o777 and 0o666 lose bits to the usual umask (022); 0o4755 carries setuid.
        for mode in [0o644, 0o755, 0o600, 0o444, 0o777, 0o666, 0o4755, 0o1644] {
            let path = dir.path().join(format!("m{mode:o}"));
            let target = at(dir.path(), &format!("m{mode:o}"));
            write_file(&target, &mut &b"x"[..], mode, mtime, &mut buf).unwrap();
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, mode, "{mode:o}");
            // Replacing an existing file goes through the second open.
            write_file(&target, &mut &b"yy"[..], mode, mtime, &mut buf).unwrap();
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, mode, "{mode:o}, replaced");
        }
        assert!(umask().is_some(), "Linux reports the umask in /proc/self/status");
    }

    #[test]
    fn pool_writes_everything_with_modes_mtimes_and_digests() {
        let dir = tempfile::tempdir().unwrap();
        let pool = WriterPool::new();
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let written = std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| pool.work());
            }
            for i in 0..200 {
                let data = format!("file {i}").repeat(i);
                pool.submit(at(dir.path(), &format!("f{i}")), data.into_bytes(), 0o640, mtime).unwrap();
            }
            pool.finish().unwrap()
        });
        assert_eq!(written.len(), 200);
        for i in [0usize, 7, 199] {
            let path = dir.path().join(format!("f{i}"));
            let data = fs::read(&path).unwrap();
            assert_eq!(data, format!("file {i}").repeat(i).into_bytes());
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
            assert_eq!(meta.modified().unwrap(), mtime);
            let w = written.iter().find(|w| w.id == FileId::of(&meta)).unwrap();
            assert_eq!((w.sha256, w.xxh3), (Sha256::of(&data), crate::hash::xxh3(&data)));
        }
    }

    #[test]
    fn a_failed_write_is_reported_to_the_submitter() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("taken")).unwrap();
        let pool = WriterPool::new();
        let err = std::thread::scope(|scope| {
            scope.spawn(|| pool.work());
            pool.submit(at(dir.path(), "taken"), b"x".to_vec(), 0o644, SystemTime::now()).unwrap();
            let err = pool.drain().unwrap_err();
            pool.abandon();
            err
        });
        assert_eq!(err.path, dir.path().join("taken"));
        // finish() after a failure returns the error and still stops the writers (the scope
        // would never end otherwise).
        let pool = WriterPool::new();
        let result = std::thread::scope(|scope| {
            scope.spawn(|| pool.work());
            pool.submit(at(dir.path(), "taken"), b"x".to_vec(), 0o644, SystemTime::now()).unwrap();
            pool.finish()
        });
        assert!(result.is_err());
    }

    #[test]
    fn a_symlink_at_the_name_is_replaced_not_written_through_and_a_directory_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, "outside").unwrap();
        let tree = dir.path().join("t");
        fs::create_dir_all(tree.join("sub")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        let mtime = SystemTime::now();
        write_file(&at(&tree, "link"), &mut &b"new"[..], 0o644, mtime, &mut [0; 16]).unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "outside");
        assert_eq!(fs::read(tree.join("link")).unwrap(), b"new");
        let err = write_file(&at(&tree, "sub"), &mut &b"x"[..], 0o644, mtime, &mut [0; 16]).unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::IsADirectory, "{:?}", err.source);
        assert!(tree.join("sub").is_dir());
    }
}
