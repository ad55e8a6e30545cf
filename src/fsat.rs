//! Directory-relative file operations for whole trees: checking or linking tens of thousands
//! of files costs one path walk per directory instead of one (or two) per file.
//!
//! Contract: what is written, renamed, linked, chmodded or removed through a [`Dir`] stays
//! below it. Writes take one name in an open directory; directories are reached with
//! [`Dir::dir_beneath`] (openat2 `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so a symlink
//! planted by a package, an app or a damaged cache is an error, never a way out.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

mod beneath;
pub use beneath::Kind;

/// An open directory: an `O_PATH` descriptor (lookups only) unless opened with
/// [`Dir::open_in_to_fill`].
pub struct Dir(OwnedFd);

impl std::fmt::Debug for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dir(fd {})", self.0.as_raw_fd())
    }
}

/// The metadata `fstatat` gives, reduced to what tree checks compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    /// Inode change time: the kernel sets it on every write, chmod, link and unlink, and no
    /// call can set it back (what [`crate::store::seen`] relies on).
    pub ctime: (i64, i64),
    pub dev: u64,
    pub ino: u64,
}

impl Stat {
    /// What `lstat` (or `stat`) gave, as std reports it.
    pub fn of_metadata(m: &std::fs::Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt;
        Stat { mode: m.mode(), size: m.size(), mtime: (m.mtime(), m.mtime_nsec()), ctime: (m.ctime(), m.ctime_nsec()), dev: m.dev(), ino: m.ino() }
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

fn c_name(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file name contains a NUL byte"))
}

/// A single file name as a C string, built on the stack: a warm build converts two names per
/// file, and a heap allocation each was a visible share of its user time.
struct CName([u8; 256]);

impl CName {
    fn new() -> CName {
        CName([0; 256])
    }

    fn of(&mut self, name: &[u8]) -> io::Result<&CStr> {
        let bytes = name;
        // NAME_MAX is 255: a longer name fails here as it would in the kernel.
        if bytes.len() >= self.0.len() {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        self.0[..bytes.len()].copy_from_slice(bytes);
        self.0[bytes.len()] = 0;
        CStr::from_bytes_with_nul(&self.0[..=bytes.len()])
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file name contains a NUL byte"))
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

impl Dir {
    pub fn open(path: &Path) -> io::Result<Dir> {
        let file = File::options().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW).open(path)?;
        Ok(Dir(file.into()))
    }

    /// The directory `rel` (a `/`-separated relative path, `""` for this one) below this one.
    pub fn open_in(&self, rel: impl AsRef<[u8]>) -> io::Result<Dir> {
        self.open_rel(rel.as_ref(), libc::O_PATH)
    }

    /// Like [`Dir::open_in`], but readable, so that [`Dir::finish`] can set its mode and mtime
    /// through the descriptor.
    pub fn open_in_to_fill(&self, rel: impl AsRef<[u8]>) -> io::Result<Dir> {
        self.open_rel(rel.as_ref(), libc::O_RDONLY)
    }

    fn open_rel(&self, rel: &[u8], access: libc::c_int) -> io::Result<Dir> {
        let flags = access | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // O_NOFOLLOW covers the last name only: a longer path is resolved with no symlink
        // anywhere on the way (openat2), or one name at a time where there is no openat2.
        if rel.contains(&b'/') {
            use rustix::fs::{Mode, OFlags, ResolveFlags};
            let oflags = OFlags::from_bits_retain(flags as u32);
            let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.0, OsStr::from_bytes(rel), oflags, Mode::empty(), resolve) {
                Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM => {}
                opened => return Ok(Dir(opened?)),
            }
            let (parent, name) = crate::pathbytes::split_last(rel);
            let mut dir = self.open_rel(b"", libc::O_PATH)?;
            for component in parent.split(|&b| b == b'/') {
                dir = dir.open_rel(component, libc::O_PATH)?;
            }
            return dir.open_rel(name, access);
        }
        let rel = c_name(if rel.is_empty() { b"." } else { rel })?;
        // SAFETY: `rel` is NUL-terminated; the descriptor is an open directory.
        let fd = unsafe { libc::openat(self.0.as_raw_fd(), rel.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat just returned this descriptor and nothing else owns it.
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the directory `name` in this one (mode 0777 less the umask).
    pub fn make_dir(&self, name: impl AsRef<[u8]>) -> io::Result<()> {
        let mut buf = CName::new();
        let name = buf.of(name.as_ref())?;
        // SAFETY: `name` is NUL-terminated; the descriptor is an open directory.
        check(unsafe { libc::mkdirat(self.0.as_raw_fd(), name.as_ptr(), 0o777) })
    }

    /// Makes whichever directories of `rel` (a `/`-separated path below this directory) are
    /// missing, each by one name in its parent opened without following a symlink.
    pub fn make_dirs_in(&self, rel: &[u8]) -> io::Result<()> {
        let ends = rel.iter().enumerate().filter(|&(_, &b)| b == b'/').map(|(i, _)| i).chain(std::iter::once(rel.len()));
        for end in ends.filter(|&end| end > 0) {
            let (parent, name) = crate::pathbytes::split_last(&rel[..end]);
            let made = if parent.is_empty() { self.make_dir(name) } else { self.open_in(parent)?.make_dir(name) };
            match made {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Sets this directory's permission bits and, if given, its mtime (leaving its atime).
    /// Needs a descriptor from [`Dir::open_in_to_fill`].
    pub fn finish(&self, mode: u32, mtime: Option<(i64, i64)>) -> io::Result<()> {
        // SAFETY: a plain call on an open descriptor.
        check(unsafe { libc::fchmod(self.0.as_raw_fd(), mode) })?;
        if let Some(mtime) = mtime {
            let times = mtime_only(mtime);
            // SAFETY: `times` holds the two timespecs futimens reads.
            check(unsafe { libc::futimens(self.0.as_raw_fd(), times.as_ptr()) })?;
        }
        Ok(())
    }

    /// `lstat` of `name` in this directory.
    pub fn stat(&self, name: impl AsRef<[u8]>) -> io::Result<Stat> {
        let mut buf = CName::new();
        self.stat_at(buf.of(name.as_ref())?, libc::AT_SYMLINK_NOFOLLOW)
    }

    /// Opens the file `name` in this directory to read it: never through a symlink, and
    /// without updating its access time where the owner may ask that (a warm build reads
    /// every file of the layer; an atime update each would be a metadata write each).
    pub fn open_file(&self, name: impl AsRef<[u8]>) -> io::Result<File> {
        let mut buf = CName::new();
        let name = buf.of(name.as_ref())?;
        let open = |extra: libc::c_int| {
            let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | extra;
            // SAFETY: `name` is NUL-terminated; the descriptor is an open directory.
            let fd = unsafe { libc::openat(self.0.as_raw_fd(), name.as_ptr(), flags) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: openat just returned this descriptor and nothing else owns it.
            Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
        };
        match open(libc::O_NOATIME) {
            // O_NOATIME is only for the file's owner (or CAP_FOWNER).
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
            other => other,
        }
    }

    /// The directory's own metadata.
    pub fn metadata(&self) -> io::Result<Stat> {
        self.stat_at(c"", libc::AT_EMPTY_PATH)
    }

    fn stat_at(&self, name: &std::ffi::CStr, flags: libc::c_int) -> io::Result<Stat> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `name` is NUL-terminated and `st` is a valid out-pointer; fstatat fills it on success.
        let rc = unsafe { libc::fstatat(self.0.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstatat succeeded, so `st` is initialised.
        let st = unsafe { st.assume_init() };
        Ok(Stat { mode: st.st_mode, size: st.st_size as u64, mtime: (st.st_mtime, st.st_mtime_nsec), ctime: (st.st_ctime, st.st_ctime_nsec), dev: st.st_dev, ino: st.st_ino })
    }

    /// Creates the symlink `name` -> `target` in this directory with the given mtime (its
    /// atime too: a symlink's times are only ever set together here).
    pub fn symlink(&self, target: impl AsRef<[u8]>, name: impl AsRef<[u8]>, mtime: (i64, i64)) -> io::Result<()> {
        let (target, mut buf) = (c_name(target.as_ref())?, CName::new());
        let name = buf.of(name.as_ref())?;
        // SAFETY: both strings are NUL-terminated; the descriptor is an open directory.
        if unsafe { libc::symlinkat(target.as_ptr(), self.0.as_raw_fd(), name.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let time = libc::timespec { tv_sec: mtime.0, tv_nsec: mtime.1 };
        let times = [time, time];
        // SAFETY: `times` holds two timespecs as utimensat requires; `name` is NUL-terminated.
        let rc = unsafe { libc::utimensat(self.0.as_raw_fd(), name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Hard-links `name` in this directory as `name` in `dest`.
    pub fn link_into(&self, name: impl AsRef<[u8]>, dest: &Dir) -> io::Result<()> {
        let mut buf = CName::new();
        let name = buf.of(name.as_ref())?;
        // SAFETY: both names are NUL-terminated; the descriptors are open directories.
        check(unsafe { libc::linkat(self.0.as_raw_fd(), name.as_ptr(), dest.0.as_raw_fd(), name.as_ptr(), 0) })
    }

    /// Hard-links `file`, opened from this directory as `name` ([`Dir::open_file`]), as `name`
    /// in `dest`: through its descriptor where the process may (CAP_DAC_READ_SEARCH), so that
    /// the inode linked is the one that was opened and checked, and no name is looked up
    /// again; else by name.
    pub fn link_file_into(&self, file: &File, name: impl AsRef<[u8]>, dest: &Dir) -> io::Result<()> {
        static BY_DESCRIPTOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
        if BY_DESCRIPTOR.load(std::sync::atomic::Ordering::Relaxed) {
            let mut buf = CName::new();
            let to = buf.of(name.as_ref())?;
            // SAFETY: both strings are NUL-terminated; the descriptors are open.
            let rc = unsafe { libc::linkat(file.as_raw_fd(), c"".as_ptr(), dest.0.as_raw_fd(), to.as_ptr(), libc::AT_EMPTY_PATH) };
            match check(rc) {
                // Without the capability the kernel answers ENOENT: link by name from now on.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EPERM)) => {
                    BY_DESCRIPTOR.store(false, std::sync::atomic::Ordering::Relaxed)
                }
                done => return done,
            }
        }
        self.link_into(name, dest)
    }
}

/// `fstat` of an open file.
pub fn stat_file(file: &File) -> io::Result<Stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer; fstat fills it on success.
    if unsafe { libc::fstat(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so `st` is initialised.
    let st = unsafe { st.assume_init() };
    Ok(Stat { mode: st.st_mode, size: st.st_size as u64, mtime: (st.st_mtime, st.st_mtime_nsec), ctime: (st.st_ctime, st.st_ctime_nsec), dev: st.st_dev, ino: st.st_ino })
}

/// Sets the mtime of `path` (following symlinks), leaving its atime: one `utimensat` by
/// path, where `filetime::set_file_mtime` opens the file, sets the times through the
/// descriptor and closes it again.
pub fn set_mtime(path: &Path, mtime: (i64, i64)) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
    let times = mtime_only(mtime);
    // SAFETY: `path` is NUL-terminated and `times` holds the two timespecs utimensat reads.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) })
}

/// The (atime, mtime) pair for `utimensat`/`futimens` that sets the mtime and leaves the atime.
fn mtime_only(mtime: (i64, i64)) -> [libc::timespec; 2] {
    [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, libc::timespec { tv_sec: mtime.0, tv_nsec: mtime.1 }]
}

/// How many worker threads a parallel pass over a tree uses: the cores this process may use,
/// at most 8. Asked once: the standard library reads the cgroup limits on every call.
pub fn workers() -> usize {
    static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WORKERS.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(8))
}

/// Splits items of the given weights (directories, by how much work each is) into at most
/// `parts` consecutive runs of similar weight, for worker threads.
pub fn balanced_runs(weights: impl ExactSizeIterator<Item = usize> + Clone, parts: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = weights.clone().sum();
    let target = total.div_ceil(parts.max(1)).max(1);
    let (mut runs, mut start, mut acc) = (Vec::new(), 0, 0);
    let len = weights.len();
    for (i, w) in weights.enumerate() {
        acc += w;
        if acc >= target {
            runs.push(start..i + 1);
            start = i + 1;
            acc = 0;
        }
    }
    if start < len {
        runs.push(start..len);
    }
    runs
}

/// Runs `work` on each of `runs`, the first on this thread and each other on a thread of
/// its own; the results in run order (`panicked()` for a thread that panicked).
pub fn on_runs<T: Send, E: Send>(
    runs: &[std::ops::Range<usize>],
    work: impl Fn(std::ops::Range<usize>) -> Result<T, E> + Sync,
    panicked: impl Fn() -> E,
) -> Vec<Result<T, E>> {
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = runs.iter().skip(1).map(|run| scope.spawn(move || work(run.clone()))).collect();
        let mut results: Vec<Result<T, E>> = runs.first().map(|run| work(run.clone())).into_iter().collect();
        results.extend(handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(panicked()))));
        results
    })
}

/// Runs `work` on `threads` threads, this one among them (work shared through the closure's
/// own state); the results in thread order.
pub fn on_threads<T: Send, E: Send>(threads: usize, work: impl Fn() -> Result<T, E> + Sync, panicked: impl Fn() -> E) -> Vec<Result<T, E>> {
    let runs: Vec<_> = (0..threads).map(|t| t..t + 1).collect();
    on_runs(&runs, |_| work(), panicked)
}

/// `path` joined with a `/`-separated relative path, as bytes (`""` is `path` itself).
pub fn join(path: &Path, rel: impl AsRef<[u8]>) -> std::path::PathBuf {
    let rel = rel.as_ref();
    if rel.is_empty() { path.to_owned() } else { path.join(std::ffi::OsStr::from_bytes(rel)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_symlink_anywhere_on_a_relative_path_is_refused_and_missing_directories_are_made_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(outside.join("b")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let at = Dir::open(&root).unwrap();
        assert!(at.open_in(b"a/b").is_ok() && at.open_in_to_fill(b"a/b").is_ok());
        for rel in [&b"link/b"[..], b"link"] {
            assert!(at.open_in(rel).is_err(), "{}", String::from_utf8_lossy(rel));
            assert!(at.open_in_to_fill(rel).is_err(), "{}", String::from_utf8_lossy(rel));
        }
        at.make_dirs_in(b"a/b/c/d").unwrap();
        assert!(root.join("a/b/c/d").is_dir());
        assert!(at.make_dirs_in(b"link/b/new").is_err());
        assert!(!outside.join("b/new").exists(), "made through the symlink");
    }

    #[test]
    fn set_mtime_leaves_the_atime() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        let atime = filetime::FileTime::from_unix_time(1_500_000_000, 0);
        filetime::set_file_atime(&d, atime).unwrap();
        set_mtime(&d, (1_600_000_000, 7)).unwrap();
        let meta = std::fs::metadata(&d).unwrap();
        assert_eq!(filetime::FileTime::from_last_modification_time(&meta), filetime::FileTime::from_unix_time(1_600_000_000, 7));
        assert_eq!(filetime::FileTime::from_last_access_time(&meta), atime);
        assert!(set_mtime(&dir.path().join("missing"), (1, 0)).is_err());
    }

    #[test]
    fn stat_and_link_relative_to_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("f"), b"12345").unwrap();
        std::os::unix::fs::symlink("f", a.join("l")).unwrap();
        let (da, db) = (Dir::open(&a).unwrap(), Dir::open(&b).unwrap());
        let st = da.stat("f").unwrap();
        assert!(st.is_file() && st.size == 5);
        let meta = fs::metadata(a.join("f")).unwrap();
        assert_eq!((st.dev, st.ino), (meta.dev(), meta.ino()));
        assert_eq!(st.mtime, (meta.mtime(), meta.mtime_nsec()));
        assert!(da.stat("l").unwrap().is_symlink(), "symlinks are not followed");
        assert_eq!(da.stat("missing").unwrap_err().kind(), io::ErrorKind::NotFound);
        da.link_into("f", &db).unwrap();
        assert_eq!(fs::metadata(b.join("f")).unwrap().ino(), meta.ino());
        let own = da.metadata().unwrap();
        let dir_meta = fs::metadata(&a).unwrap();
        assert!(own.is_dir() && own.mode == dir_meta.mode() && own.mtime == (dir_meta.mtime(), dir_meta.mtime_nsec()));
        db.symlink("../a/f", "l", (1_700_000_000, 5)).unwrap();
        assert_eq!(fs::read_link(b.join("l")).unwrap(), Path::new("../a/f"));
        let link_meta = fs::symlink_metadata(b.join("l")).unwrap();
        assert_eq!((link_meta.mtime(), link_meta.mtime_nsec()), (1_700_000_000, 5));
        assert_eq!(db.symlink("x", "l", (0, 0)).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn files_opened_stat_and_linked_by_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = ["a", "b", "c"].map(|d| dir.path().join(d));
        for d in [&a, &b, &c] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(a.join("f"), b"12345").unwrap();
        std::os::unix::fs::symlink("f", a.join("l")).unwrap();
        let [da, db, dc] = [&a, &b, &c].map(|d| Dir::open(d).unwrap());
        let file = da.open_file("f").unwrap();
        let st = stat_file(&file).unwrap();
        assert_eq!(st, da.stat("f").unwrap());
        // Twice: the second time by whichever way the first settled on.
        da.link_file_into(&file, "f", &db).unwrap();
        da.link_file_into(&file, "f", &dc).unwrap();
        for d in [&b, &c] {
            assert_eq!(fs::metadata(d.join("f")).unwrap().ino(), st.ino, "{}", d.display());
        }
        assert_eq!(da.open_file("l").unwrap_err().raw_os_error(), Some(libc::ELOOP), "symlinks are not followed");
        assert_eq!(da.open_file("missing").unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn directories_made_opened_and_finished_relative_to_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Dir::open(dir.path()).unwrap();
        root.make_dir("a").unwrap();
        assert_eq!(root.make_dir("a").unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        let a = root.open_in_to_fill("a").unwrap();
        a.make_dir("b").unwrap();
        let b = root.open_in("a/b").unwrap();
        assert!(b.metadata().unwrap().is_dir());
        assert_eq!(root.open_in("a/missing").err().map(|e| e.kind()), Some(io::ErrorKind::NotFound));
        // Filling `a` moved its mtime; finishing sets the recorded one and the mode.
        a.finish(0o750, Some((1_600_000_000, 9))).unwrap();
        let meta = fs::metadata(dir.path().join("a")).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.mtime(), meta.mtime_nsec()), (0o750, 1_600_000_000, 9));
        root.open_in_to_fill("").unwrap().finish(0o700, None).unwrap();
        assert_eq!(fs::metadata(dir.path()).unwrap().mode() & 0o7777, 0o700);
        // Names are single components of at most 255 bytes, without NUL.
        assert_eq!(root.make_dir("n".repeat(256)).unwrap_err().raw_os_error(), Some(libc::ENAMETOOLONG));
        assert!(root.make_dir("n".repeat(255)).is_ok());
        assert_eq!(root.stat("a\0b").unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn runs_are_consecutive_and_cover_everything() {
        let runs = balanced_runs([5, 1, 1, 1, 5, 1].into_iter(), 2);
        assert_eq!(runs, [0..3, 3..6]);
        assert_eq!(balanced_runs([1, 1].into_iter(), 8), [0..1, 1..2]);
        assert!(balanced_runs(std::iter::empty::<usize>().collect::<Vec<_>>().into_iter(), 2).is_empty());
    }

    #[test]
    fn runs_give_their_results_in_order() {
        let runs = [0..1, 1..3, 3..4];
        // A run that fails or panics keeps its place in the results.
        let results = on_runs(&runs, |run| if run.start == 1 { Err(run.start) } else { Ok(run.len()) }, || 99);
        assert_eq!(results, [Ok(1), Err(1), Ok(1)]);
        let results = on_runs(&runs, |run| if run.start == 3 { panic!("run 3..4") } else { Ok(run.len()) }, || 99);
        assert_eq!(results, [Ok(1), Ok(2), Err(99)]);
        assert!(on_runs(&[], |_| Ok::<(), ()>(()), || ()).is_empty());
    }
}
