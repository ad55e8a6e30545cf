//! Writing under a directory without ever following a symlink: the [`Dir`] calls that
//! create, replace, rename, link, chmod and remove. Everything here goes through rustix's
//! `*at` calls: a name is resolved relative to an open directory, a name given to a write
//! is one component (never a path), and a directory reached by a relative path is opened
//! with openat2 `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (or one `O_NOFOLLOW` component at a
//! time where the kernel lacks openat2): a symlink anywhere on the way is an error
//! (`ELOOP`), never a detour out of the tree.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::{Dir, Stat};

/// What an entry is, as `lstat` sees it (a symlink is never followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

impl Kind {
    fn of_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

fn stat_of(st: &rustix::fs::Stat) -> Stat {
    Stat {
        mode: st.st_mode,
        size: st.st_size as u64,
        mtime: (st.st_mtime, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

/// Refuses anything but one plain name: writes take a name in an open directory, so that
/// no lookup of theirs can pass through a symlink.
fn one_name(name: &OsStr) -> io::Result<&OsStr> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a single file name")));
    }
    Ok(name)
}

/// The names of a relative path, refusing `..` and absolute paths (`.` parts are dropped).
fn names_of(rel: &Path) -> io::Result<Vec<&OsStr>> {
    use std::path::Component;
    rel.components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a relative path without `..`", rel.display()))),
        })
        .collect()
}

/// A fresh name for a temporary entry: unpredictable (tempfile's generator), and created
/// exclusively by its users, so that nothing planted in advance can be in the way.
fn temp_name(prefix: &str) -> OsString {
    let mut name = OsString::from(prefix);
    name.push(std::iter::repeat_with(fastrand::alphanumeric).take(12).collect::<String>());
    name
}

const DIR_FLAGS: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl Dir {
    /// Opens a directory the caller names (BUILD_DIR, CACHE_DIR, a path the user gave):
    /// symlinks in `path` itself are followed, as the platform or the user chose it. What
    /// is done below it never follows one.
    pub fn open_given(path: &Path) -> io::Result<Dir> {
        Ok(Dir(rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?))
    }

    /// The directory `rel` (relative, without `..`; empty for this one) below this one, with
    /// no symlink anywhere on the way: `ELOOP` (or `ENOTDIR`) if there is one, see
    /// [`Dir::symlink_on`] for which.
    pub fn dir_beneath(&self, rel: &Path) -> io::Result<Dir> {
        let names = names_of(rel)?;
        if names.is_empty() {
            return Ok(Dir(rustix::fs::openat(&self.0, c".", DIR_FLAGS, Mode::empty())?));
        }
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(&self.0, rel, DIR_FLAGS, Mode::empty(), resolve) {
            // No openat2 (Linux before 5.6, or a seccomp filter that hides it).
            Err(e) if e == Errno::NOSYS || e == Errno::PERM => {}
            opened => return Ok(Dir(opened?)),
        }
        self.dir_by_names(&names)
    }

    /// [`Dir::dir_beneath`] without openat2: one `O_NOFOLLOW` open per name.
    fn dir_by_names(&self, names: &[&OsStr]) -> io::Result<Dir> {
        let mut dir = Dir(rustix::fs::openat(&self.0, c".", DIR_FLAGS, Mode::empty())?);
        for name in names {
            dir = Dir(rustix::fs::openat(&dir.0, *name, DIR_FLAGS, Mode::empty())?);
        }
        Ok(dir)
    }

    /// Like [`Dir::dir_beneath`], making the directories that are missing (mode 0777 less
    /// the umask) on the way.
    pub fn make_dirs_beneath(&self, rel: &Path) -> io::Result<Dir> {
        match self.dir_beneath(rel) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            found => return found,
        }
        let mut dir = self.dir_beneath(Path::new(""))?;
        for name in names_of(rel)? {
            match rustix::fs::mkdirat(&dir.0, name, Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            dir = Dir(rustix::fs::openat(&dir.0, name, DIR_FLAGS, Mode::empty())?);
        }
        Ok(dir)
    }

    /// The first symlink on `rel` (`rel` itself included) and its target, if any: what the
    /// calls above refuse, for the error message.
    pub fn symlink_on(&self, rel: &Path) -> Option<(PathBuf, PathBuf)> {
        let mut dir = self.dir_beneath(Path::new("")).ok()?;
        let mut so_far = PathBuf::new();
        for name in names_of(rel).ok()? {
            so_far.push(name);
            match dir.kind(name).ok()? {
                Kind::Symlink => return Some((so_far, dir.read_link(name).unwrap_or_default())),
                Kind::Dir => dir = Dir(rustix::fs::openat(&dir.0, name, DIR_FLAGS, Mode::empty()).ok()?),
                _ => return None,
            }
        }
        None
    }

    /// What `name` is, without following it.
    pub fn kind(&self, name: &OsStr) -> io::Result<Kind> {
        Ok(Kind::of_mode(self.lstat(name)?.mode))
    }

    /// `lstat` of `name` here.
    pub fn lstat(&self, name: &OsStr) -> io::Result<Stat> {
        Ok(stat_of(&rustix::fs::statat(&self.0, one_name(name)?, AtFlags::SYMLINK_NOFOLLOW)?))
    }

    /// The target of the symlink `name`.
    pub fn read_link(&self, name: &OsStr) -> io::Result<PathBuf> {
        let target = rustix::fs::readlinkat(&self.0, one_name(name)?, Vec::new())?;
        Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
    }

    /// The entries of this directory (not `.` and `..`), sorted by name, with their kinds.
    pub fn entries(&self) -> io::Result<Vec<(OsString, Kind)>> {
        let fd = rustix::fs::openat(&self.0, c".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::new(fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsString::from_vec(name.to_vec());
            let kind = match entry.file_type() {
                FileType::Directory => Kind::Dir,
                FileType::RegularFile => Kind::File,
                FileType::Symlink => Kind::Symlink,
                FileType::Unknown => self.kind(&name)?,
                _ => Kind::Other,
            };
            out.push((name, kind));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Opens the directory `name` here for reading its entries (and locking, setting its
    /// mode): a symlink is refused.
    pub fn open_dir_readable(&self, name: &OsStr) -> io::Result<Dir> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(Dir(rustix::fs::openat(&self.0, one_name(name)?, flags, Mode::empty())?))
    }

    /// Opens the directory `name` here (lookups and `*at` calls only): a symlink is refused.
    pub fn sub_dir(&self, name: &OsStr) -> io::Result<Dir> {
        Ok(Dir(rustix::fs::openat(&self.0, one_name(name)?, DIR_FLAGS, Mode::empty())?))
    }

    /// Creates the new regular file `name` for reading and writing, exclusively (nothing may
    /// be there, not even a symlink), with `mode` less the umask: the unpacker's create, one
    /// syscall for the common case (it adds what the umask took only where it took any).
    pub fn create_file(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(&self.0, one_name(name)?, flags, Mode::from_raw_mode(mode))?))
    }

    /// Removes the file or symlink `name` here (the link, never its target); a directory is
    /// an `IsADirectory` error and left alone.
    pub fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.0, one_name(name)?, AtFlags::empty()) {
            // EPERM: POSIX's answer to unlink() of a directory.
            Err(Errno::ISDIR) | Err(Errno::PERM) if self.kind(name)? == Kind::Dir => {
                Err(io::Error::new(io::ErrorKind::IsADirectory, "a non-directory entry replaces a directory"))
            }
            done => Ok(done?),
        }
    }

    /// Opens the regular file `name` for reading; a symlink is refused (`ELOOP`), and so is
    /// anything that is not a regular file (without blocking on a FIFO).
    pub fn open_regular(&self, name: &OsStr) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.0, one_name(name)?, flags, Mode::empty())?;
        if Kind::of_mode(rustix::fs::fstat(&fd)?.st_mode) != Kind::File {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a regular file")));
        }
        Ok(File::from(fd))
    }

    /// Opens the regular file `name` for writing in place, truncated: a symlink is refused,
    /// and so is anything that is not a regular file.
    pub fn open_file_to_rewrite(&self, name: &OsStr) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.0, one_name(name)?, flags, Mode::empty())?;
        if Kind::of_mode(rustix::fs::fstat(&fd)?.st_mode) != Kind::File {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a regular file")));
        }
        rustix::fs::ftruncate(&fd, 0)?;
        Ok(File::from(fd))
    }

    /// Opens the regular file `name` for reading and writing, creating it (with `mode`) if
    /// missing; a symlink there is refused (`ELOOP`), and so is anything not a regular file.
    pub fn open_or_create(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.0, one_name(name)?, flags, Mode::from_raw_mode(mode))?;
        if Kind::of_mode(rustix::fs::fstat(&fd)?.st_mode) != Kind::File {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a regular file")));
        }
        Ok(File::from(fd))
    }

    /// Creates the new regular file `name` (exclusively: nothing may be there, not even a
    /// symlink) with the given permission bits, set exactly (not masked by the umask).
    pub fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.0, one_name(name)?, flags, Mode::from_raw_mode(0o600))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        Ok(File::from(fd))
    }

    /// Makes `name` hold `bytes` with the given mode, all at once: written to a new file of
    /// a fresh name in `tmp` (on the same filesystem), then renamed over `name`. Whatever
    /// was at `name` (a file, a symlink) is replaced, never written through. Returns what
    /// the new file looks like.
    pub fn write_via(&self, name: &OsStr, bytes: &[u8], mode: u32, tmp: &Dir) -> io::Result<Stat> {
        use std::io::Write;
        let name = one_name(name)?;
        let (temp, mut file) = tmp.create_temp(".new.", mode)?;
        let written = file.write_all(bytes).and_then(|()| Ok(stat_of(&rustix::fs::fstat(&file)?)));
        let renamed = written.and_then(|stat| Ok(rustix::fs::renameat(&tmp.0, &temp, &self.0, name).map(|()| stat)?));
        if renamed.is_err() {
            let _ = rustix::fs::unlinkat(&tmp.0, &temp, AtFlags::empty());
        }
        renamed
    }

    /// A new file of a fresh name here (see [`Dir::create_new`]); its name and the file.
    pub fn create_temp(&self, prefix: &str, mode: u32) -> io::Result<(OsString, File)> {
        loop {
            let name = temp_name(prefix);
            match self.create_new(&name, mode) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                created => return created.map(|file| (name, file)),
            }
        }
    }

    /// Renames `from` here to `to` in `to_dir` (replacing a file or symlink there).
    pub fn rename(&self, from: &OsStr, to_dir: &Dir, to: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::renameat(&self.0, one_name(from)?, &to_dir.0, one_name(to)?)?)
    }

    /// Hard-links `from` here as `to` in `to_dir` (a symlink at `from` is linked, not followed).
    pub fn hard_link(&self, from: &OsStr, to_dir: &Dir, to: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::linkat(&self.0, one_name(from)?, &to_dir.0, one_name(to)?, AtFlags::empty())?)
    }

    /// Creates the symlink `name` -> `target` here, with the given mtime (and atime).
    pub fn make_symlink(&self, target: &Path, name: &OsStr, mtime: (i64, i64)) -> io::Result<()> {
        rustix::fs::symlinkat(target, &self.0, one_name(name)?)?;
        let time = rustix::fs::Timespec { tv_sec: mtime.0, tv_nsec: mtime.1 as _ };
        let times = rustix::fs::Timestamps { last_access: time, last_modification: time };
        Ok(rustix::fs::utimensat(&self.0, name, &times, AtFlags::SYMLINK_NOFOLLOW)?)
    }

    /// Sets the mtime (and leaves the atime) of `name` itself, a symlink included.
    pub fn set_mtime_of(&self, name: &OsStr, mtime: (i64, i64)) -> io::Result<()> {
        let times = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
            last_modification: rustix::fs::Timespec { tv_sec: mtime.0, tv_nsec: mtime.1 as _ },
        };
        Ok(rustix::fs::utimensat(&self.0, one_name(name)?, &times, AtFlags::SYMLINK_NOFOLLOW)?)
    }

    /// Sets the permission bits of the directory or file `name` here (a symlink is refused):
    /// through `/proc/self/fd` of a descriptor that cannot be a symlink, as glibc's
    /// `fchmodat(AT_SYMLINK_NOFOLLOW)` does, so it works without read access too.
    pub fn set_mode_of(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.0, one_name(name)?, flags, Mode::empty())?;
        if Kind::of_mode(rustix::fs::fstat(&fd)?.st_mode) == Kind::Symlink {
            return Err(Errno::LOOP.into());
        }
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        match rustix::fs::chmod(path.as_str(), Mode::from_raw_mode(mode)) {
            // No /proc: the descriptor above said it is no symlink.
            Err(Errno::NOENT) => Ok(rustix::fs::chmodat(&self.0, name, Mode::from_raw_mode(mode), AtFlags::empty())?),
            other => Ok(other?),
        }
    }

    /// Takes an exclusive `flock` on this directory (opened with
    /// [`Dir::open_dir_readable`]) without waiting: `false` when another process holds it.
    pub fn try_lock(&self) -> io::Result<bool> {
        match rustix::fs::flock(&self.0, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether this directory is still linked in its parent (not removed since it was opened).
    pub fn is_linked(&self) -> io::Result<bool> {
        Ok(rustix::fs::fstat(&self.0)?.st_nlink > 0)
    }

    /// Removes `name`: a file or a symlink (the link itself, never its target), or a whole
    /// tree, entered only through descriptors that cannot be symlinks and made writable
    /// where it was not. Nothing there is fine.
    pub fn remove_all(&self, name: &OsStr) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.0, one_name(name)?, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => return Ok(()),
            Err(Errno::ISDIR) => {}
            // EPERM: Linux's answer to unlink() of a directory.
            Err(Errno::PERM) if self.kind(name)? == Kind::Dir => {}
            Err(e) => return Err(e.into()),
        }
        let dir = match self.open_dir_readable(name) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                self.set_mode_of(name, 0o700)?;
                self.open_dir_readable(name)?
            }
            opened => opened?,
        };
        let mode = rustix::fs::fstat(&dir.0)?.st_mode;
        if mode & 0o700 != 0o700 {
            rustix::fs::fchmod(&dir.0, Mode::from_raw_mode(mode | 0o700))?;
        }
        for (child, _) in dir.entries()? {
            dir.remove_all(&child)?;
        }
        match rustix::fs::unlinkat(&self.0, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Hard-links the file at `from` (a path the caller names, such as this program's own
    /// binary) as the new entry `to` here.
    pub fn link_in(&self, from: &Path, to: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::linkat(rustix::fs::CWD, from, &self.0, one_name(to)?, AtFlags::empty())?)
    }

    /// Copies the file at `from` (a path the caller names) to the new file `to` here, with
    /// its permission bits.
    pub fn copy_in(&self, from: &Path, to: &OsStr) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut src = File::open(from)?;
        let mode = src.metadata()?.permissions().mode() & 0o7777;
        let mut dst = self.create_new(to, mode)?;
        if rustix::fs::ioctl_ficlone(&dst, &src).is_err() {
            std::io::copy(&mut src, &mut dst)?;
        }
        Ok(())
    }

    /// Copies the regular file `from` here to the new file `to` in `to_dir` with the given
    /// mode: a reflink where the filesystem allows, else a copy (`copy_file_range`).
    /// Returns whether it was a reflink.
    pub fn copy_file(&self, from: &OsStr, to_dir: &Dir, to: &OsStr, mode: u32) -> io::Result<bool> {
        let mut src = self.open_regular(from)?;
        let mut dst = to_dir.create_new(to, mode)?;
        if rustix::fs::ioctl_ficlone(&dst, &src).is_ok() {
            return Ok(true);
        }
        std::io::copy(&mut src, &mut dst)?;
        Ok(false)
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    /// A tree `t` with a directory and symlinks out of it, and a directory `outside` with a
    /// file; returns (tree, outside).
    fn setup(dir: &Path) -> (PathBuf, PathBuf) {
        let (tree, outside) = (dir.join("t"), dir.join("outside"));
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("f"), "outside").unwrap();
        symlink(&outside, tree.join("abs")).unwrap();
        symlink("../../outside", tree.join("a/rel")).unwrap();
        symlink("b", tree.join("a/inside")).unwrap();
        (tree, outside)
    }

    #[test]
    fn no_symlink_is_followed_on_the_way_to_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (tree, _) = setup(dir.path());
        let root = Dir::open_given(&tree).unwrap();
        assert!(root.dir_beneath(Path::new("a/b")).is_ok());
        assert!(root.dir_by_names(&names_of(Path::new("a/b")).unwrap()).is_ok());
        assert!(root.dir_beneath(Path::new("")).is_ok());
        // Out of the tree or within it: a symlink is refused either way.
        for rel in ["abs", "abs/x", "a/rel", "a/inside", "a/inside/c"] {
            assert!(root.dir_beneath(Path::new(rel)).is_err(), "{rel}");
            // The same without openat2.
            assert!(root.dir_by_names(&names_of(Path::new(rel)).unwrap()).is_err(), "{rel}");
            assert!(root.make_dirs_beneath(Path::new(rel)).is_err(), "{rel}");
        }
        assert_eq!(root.symlink_on(Path::new("abs/x/y")), Some((PathBuf::from("abs"), dir.path().join("outside"))));
        assert_eq!(root.symlink_on(Path::new("a/rel")), Some((PathBuf::from("a/rel"), PathBuf::from("../../outside"))));
        assert_eq!(root.symlink_on(Path::new("a/b/new")), None);
        for rel in ["../t", "/etc", "a/../b"] {
            assert_eq!(root.dir_beneath(Path::new(rel)).err().map(|e| e.kind()), Some(io::ErrorKind::InvalidInput), "{rel}");
        }
        assert!(root.make_dirs_beneath(Path::new("a/b/c/d")).is_ok() && tree.join("a/b/c/d").is_dir());
        assert!(!dir.path().join("outside/x").exists());
    }

    #[test]
    fn writes_replace_a_symlink_and_never_go_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let (tree, outside) = setup(dir.path());
        let root = Dir::open_given(&tree).unwrap();
        symlink(outside.join("f"), tree.join("w")).unwrap();
        let st = root.write_via(OsStr::new("w"), b"new", 0o751, &root).unwrap();
        assert_eq!((st.size, st.mode & 0o7777), (3, 0o751));
        assert_eq!(fs::read_to_string(outside.join("f")).unwrap(), "outside");
        assert!(fs::symlink_metadata(tree.join("w")).unwrap().is_file());
        assert_eq!(fs::read(tree.join("w")).unwrap(), b"new");
        // Only the written file and the tree's own entries are there: no temp file is left.
        let names: Vec<_> = root.entries().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "abs", "w"]);
        assert!(root.write_via(OsStr::new("a/w"), b"x", 0o644, &root).is_err(), "a path is not a name");
        assert_eq!(root.create_new(OsStr::new("abs"), 0o644).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(root.open_regular(OsStr::new("abs")).is_err() && root.open_file_to_rewrite(OsStr::new("abs")).is_err());
        assert!(root.set_mode_of(OsStr::new("abs"), 0o777).is_err());
        assert_eq!(fs::metadata(&outside).unwrap().permissions().mode() & 0o777, 0o755);
        rustix::fs::mknodat(&root.0, "fifo", rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        assert!(root.open_regular(OsStr::new("fifo")).is_err(), "a FIFO is no regular file (and opening it does not block)");
    }

    #[test]
    fn removal_takes_the_link_not_its_target_and_read_only_trees_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (tree, outside) = setup(dir.path());
        let root = Dir::open_given(&tree).unwrap();
        root.remove_all(OsStr::new("abs")).unwrap();
        assert!(outside.join("f").is_file() && !tree.join("abs").exists());
        fs::write(tree.join("a/b/file"), "x").unwrap();
        for (path, mode) in [("a/b", 0o000), ("a", 0o555)] {
            fs::set_permissions(tree.join(path), fs::Permissions::from_mode(mode)).unwrap();
        }
        root.remove_all(OsStr::new("a")).unwrap();
        assert!(!tree.join("a").exists());
        root.remove_all(OsStr::new("missing")).unwrap();
        assert!(outside.join("f").is_file());
    }

    #[test]
    fn a_locked_directory_cannot_be_locked_again_and_knows_when_it_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("s")).unwrap();
        let parent = Dir::open_given(dir.path()).unwrap();
        let (first, second) = (parent.open_dir_readable(OsStr::new("s")).unwrap(), parent.open_dir_readable(OsStr::new("s")).unwrap());
        assert!(first.try_lock().unwrap());
        assert!(!second.try_lock().unwrap());
        assert!(first.is_linked().unwrap());
        parent.remove_all(OsStr::new("s")).unwrap();
        assert!(!first.is_linked().unwrap());
        drop(first);
        assert!(second.try_lock().unwrap());
    }
}
