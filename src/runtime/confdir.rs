//! The directories dyno start writes into (datadog.yaml, conf.d, checks.d, run, logs, the
//! restored symlinks), as cap-std capabilities.
//!
//! Contract:
//! - A directory is reached one component at a time, each opened without following a symlink
//!   (`open_dir_nofollow`), below a [`Tree`] opened from a trusted path (HOME). A symlink or a
//!   `..` shipped by a package or an app can never lead a write out; it is refused by name.
//! - A file is written to a fresh temp file created with `O_EXCL` and mode 0600, then renamed
//!   over its name: a symlink or hard link at the name is replaced, never written through (slug
//!   files are hard links into the build cache while tests run), and a secret in it is never
//!   readable by others, not even for a moment.
//! - Heroku runs dynos as an unprivileged user who owns the slug. A package may ship a
//!   directory without u+w (0555) or without any access (0000); dyno start adds u+rwx to such a
//!   directory it owns while it works in it and puts the mode back afterwards, except on the
//!   directories the agents themselves write into later ([`Keep::Writable`]: the configuration
//!   directory, where the agent writes auth_token, and the run and log directories).

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, DirBuilder, DirBuilderExt, MetadataExt, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt};

/// An open directory of the slug.
pub struct Tree {
    dir: Dir,
    /// For messages only.
    path: PathBuf,
    /// The mode to set back when done, if dyno start had to open the directory up.
    restore: Option<u32>,
}

/// Whether a directory dyno start opened up keeps u+rwx afterwards.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Its mode is set back when the [`Tree`] is dropped.
    Restore,
    /// The agents write into it later: it keeps u+rwx.
    Writable,
}

/// Whether a missing directory is created.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Create,
    Fail,
}

impl Tree {
    /// Opens a directory named by a trusted path (HOME and what the app configures).
    pub fn open_ambient(path: &Path) -> Result<Tree> {
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority()).with_context(|| format!("opening {}", path.display()))?;
        Ok(Tree { dir, path: path.to_path_buf(), restore: None })
    }

    /// Where this directory is, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cap-std handle, for reads that may follow symlinks inside this directory.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The directory `rel` (`/`-separated, no `..`) below this one, reached without following
    /// a symlink; with [`Missing::Create`], missing components are created.
    pub fn subdir(&self, rel: impl AsRef<Path>, missing: Missing, keep: Keep) -> Result<Tree> {
        let rel = rel.as_ref();
        let mut names = Vec::new();
        for component in rel.components() {
            match component {
                std::path::Component::Normal(name) => names.push(name),
                _ => bail!("{}: dyno start only goes down into plain directory names", self.path.join(rel).display()),
            }
        }
        let Some((last, above)) = names.split_last() else { bail!("{}: no directory named", self.path.display()) };
        // Intermediate directories get their mode back as soon as the next one is open.
        let mut current: Option<Tree> = None;
        for name in above {
            let parent = current.as_ref().unwrap_or(self);
            current = Some(parent.child(name, missing, Keep::Restore)?);
        }
        current.as_ref().unwrap_or(self).child(last, missing, keep)
    }

    fn child(&self, name: &OsStr, missing: Missing, keep: Keep) -> Result<Tree> {
        let path = self.path.join(name);
        let meta = match self.dir.symlink_metadata(name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && missing == Missing::Create => {
                // At most 0755 (mkdir's usual result), even under a permissive umask: never
                // group- or world-writable.
                let mut builder = DirBuilder::new();
                builder.mode(0o755);
                self.dir.create_dir_with(name, &builder).with_context(|| format!("creating {}", path.display()))?;
                self.dir.symlink_metadata(name).with_context(|| format!("reading {}", path.display()))?
            }
            other => other.with_context(|| format!("reading {}", path.display()))?,
        };
        if meta.is_symlink() {
            bail!("{} is a symbolic link; dyno start writes only into the slug's own directories, never through a link", path.display());
        }
        if !meta.is_dir() {
            bail!("{} is not a directory", path.display());
        }
        let mut restore = None;
        if needs_opening_up(meta.mode(), meta.uid()) {
            self.dir
                .set_permissions(name, Permissions::from_mode((meta.mode() | 0o700) & 0o7777))
                .with_context(|| format!("adding u+rwx to {} (mode {:o})", path.display(), meta.mode() & 0o7777))?;
            restore = (keep == Keep::Restore).then_some(meta.mode() & 0o7777);
        }
        let dir = self.open_nofollow(name, restore.is_some()).with_context(|| format!("opening {}", path.display()));
        let dir = match dir {
            Ok(dir) => dir,
            Err(e) => {
                if let Some(mode) = restore {
                    let _ = self.dir.set_permissions(name, Permissions::from_mode(mode));
                }
                return Err(e);
            }
        };
        Ok(Tree { dir, path, restore })
    }

    /// Opens the directory `name` without following a symlink (O_NOFOLLOW: one swapped in
    /// since it was checked is refused too). Readable, so that its mode can be set back with
    /// fchmod; a directory this user may search but not read (not its own) gets an O_PATH
    /// handle instead, which is all a walk through it needs.
    fn open_nofollow(&self, name: &OsStr, opened_up: bool) -> io::Result<Dir> {
        let mut options = OpenOptions::new();
        options.read(true).follow(FollowSymlinks::No).custom_flags(libc::O_DIRECTORY);
        match self.dir.open_with(name, &options) {
            Ok(file) => Ok(Dir::from_std_file(file.into_std())),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !opened_up => self.dir.open_dir_nofollow(name),
            Err(e) => Err(e),
        }
    }

    /// Writes `name` in this directory: a new 0600 file renamed into place.
    pub fn write_private(&self, name: impl AsRef<Path>, content: &[u8]) -> Result<()> {
        let name = name.as_ref();
        let path = self.path.join(name);
        let (tmp, mut file) = self.temp_file().with_context(|| format!("creating a file in {}", self.path.display()))?;
        let written = file.write_all(content).and_then(|()| file.flush());
        drop(file);
        let result = written.and_then(|()| self.dir.rename(&tmp, &self.dir, name));
        if let Err(e) = result {
            let _ = self.dir.remove_file(&tmp);
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
        Ok(())
    }

    fn temp_file(&self) -> io::Result<(String, cap_std::fs::File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true).mode(0o600);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!(".ddslug-tmp.{}.{n}", std::process::id());
            match self.dir.open_with(&name, &options) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => continue,
                other => return other.map(|file| (name, file)),
            }
        }
    }

    /// Makes `name` a symlink to `target` (relative: cap-std refuses absolute targets, and a
    /// relative one stays right wherever the slug is), replacing a file or link there.
    pub fn symlink(&self, target: &str, name: &str) -> Result<()> {
        let path = self.path.join(name);
        match self.dir.symlink_metadata(name) {
            Ok(m) if m.is_dir() => bail!("{} is a directory; expected a symbolic link", path.display()),
            Ok(_) => self.dir.remove_file(name).with_context(|| format!("replacing {}", path.display()))?,
            Err(_) => {}
        }
        self.dir.symlink(target, name).with_context(|| format!("linking {} to {target}", path.display()))
    }

    /// Opens (or creates, 0600) the regular file `name` for locking; a symlink there is
    /// refused, never followed.
    pub fn open_lock_file(&self, name: &str) -> Result<std::fs::File> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).mode(0o600);
        options.follow(FollowSymlinks::No);
        let file = self.dir.open_with(name, &options).with_context(|| format!("opening {}", self.path.join(name).display()))?;
        Ok(file.into_std())
    }

    /// Whether `name` exists in this directory (a symlink counts, whatever it points to).
    pub fn has(&self, name: &str) -> bool {
        self.dir.symlink_metadata(name).is_ok()
    }

    /// Renames `from` to `to`, both in this directory.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> Result<()> {
        self.dir.rename(from, &self.dir, to).with_context(|| format!("renaming {}", self.path.join(from).display()))
    }

    /// The names in this directory, sorted; at most `limit` of them.
    pub fn names(&self, limit: usize) -> Result<Vec<std::ffi::OsString>> {
        let mut names = Vec::new();
        for entry in self.dir.entries().with_context(|| format!("reading {}", self.path.display()))? {
            let entry = entry.with_context(|| format!("reading {}", self.path.display()))?;
            if names.len() == limit {
                bail!("{} has more than {limit} entries, the most dyno start reads", self.path.display());
            }
            names.push(entry.file_name());
        }
        names.sort();
        Ok(names)
    }

    /// The regular file `name` (symlinks followed only inside this directory), at most
    /// `limit` bytes; a FIFO or device is refused without blocking on it.
    pub fn read_bounded(&self, name: impl AsRef<Path>, limit: u64) -> Result<Vec<u8>> {
        let name = name.as_ref();
        let path = self.path.join(name);
        let file = self
            .dir
            .open_with(name, OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK))
            .with_context(|| format!("opening {}", path.display()))?;
        let meta = file.metadata().with_context(|| format!("reading {}", path.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize);
        file.take(limit + 1).read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
        if bytes.len() as u64 > limit {
            bail!("{} is larger than {limit} bytes, the most dyno start reads from it", path.display());
        }
        Ok(bytes)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Some(mode) = self.restore {
            // fchmod on the open directory: no path, so nothing can be swapped in.
            let _ = rustix::fs::fchmod(&self.dir, rustix::fs::Mode::from_raw_mode(mode));
        }
    }
}

/// Whether a directory of `mode` owned by `uid` must be opened up before dyno start can read
/// and write in it: only for a user without root's override, and only on its own directories.
fn needs_opening_up(mode: u32, uid: u32) -> bool {
    let euid = rustix::process::geteuid();
    !euid.is_root() && uid == euid.as_raw() && mode & 0o700 != 0o700
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn writes_replace_links_and_are_private() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::write(&outside, "keep").unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink(&outside, root.join("etc/datadog.yaml")).unwrap();
        let tree = Tree::open_ambient(&root).unwrap();
        let etc = tree.subdir("etc", Missing::Fail, Keep::Restore).unwrap();
        // (tests/dyno.rs checks the mode under umask 000; the umask is process-wide, so not here.)
        etc.write_private("datadog.yaml", b"api_key: x\n").unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(fs::read_to_string(root.join("etc/datadog.yaml")).unwrap(), "api_key: x\n");
        assert_eq!(mode(&root.join("etc/datadog.yaml")), 0o600);
        assert_eq!(fs::read_dir(root.join("etc")).unwrap().count(), 1, "no temp file is left");
    }

    #[test]
    fn symlinked_or_dotdot_directories_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink(&outside, root.join("etc/conf.d")).unwrap();
        symlink("..", root.join("etc/up")).unwrap();
        let tree = Tree::open_ambient(&root).unwrap();
        for rel in ["etc/conf.d", "etc/conf.d/postgres.d", "etc/up", "../outside", "/etc"] {
            let err = tree.subdir(rel, Missing::Create, Keep::Restore).err().unwrap_or_else(|| panic!("{rel} was opened"));
            assert!(format!("{err:#}").contains(if rel.starts_with(['.', '/']) { "plain directory names" } else { "symbolic link" }), "{rel}: {err:#}");
        }
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        let etc = tree.subdir("etc", Missing::Fail, Keep::Restore).unwrap();
        fs::write(outside.join("secret"), "s").unwrap();
        assert!(etc.read_bounded("conf.d/secret", 100).is_err(), "a read followed a link out");
        fs::write(root.join("etc/big"), vec![b'x'; 101]).unwrap();
        assert!(format!("{:#}", etc.read_bounded("big", 100).unwrap_err()).contains("larger than 100 bytes"));
        assert_eq!(etc.read_bounded("big", 101).unwrap().len(), 101);
    }

    #[test]
    fn modes_are_restored_unless_kept_writable() {
        // Root overrides modes: the opening up is only exercised as another user (tests/dyno.rs
        // runs that case as uid 65534); here the modes must come out as they went in either way.
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::set_permissions(root.join("a/b/c"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o500)).unwrap();
        let tree = Tree::open_ambient(&root).unwrap();
        {
            let c = tree.subdir("a/b/c", Missing::Fail, Keep::Restore).unwrap();
            c.write_private("f", b"x").unwrap();
            let d = c.subdir("d/e", Missing::Create, Keep::Restore).unwrap();
            d.symlink("../f", "link").unwrap();
            d.symlink("../f", "link").unwrap();
            assert_eq!(d.names(10).unwrap(), ["link"]);
            assert!(format!("{:#}", c.names(1).unwrap_err()).contains("more than 1 entries"));
        }
        assert_eq!(mode(&root.join("a/b/c")), 0o555);
        assert_eq!(mode(&root.join("a/b")), 0o500);
        assert_eq!(fs::read_link(root.join("a/b/c/d/e/link")).unwrap(), Path::new("../f"));
        fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o755)).unwrap();
    }
}
