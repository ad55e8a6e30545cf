//! The content-addressed store in CACHE_DIR.
//!
//! ```text
//! CACHE_DIR/ddslug/v1/
//!   blobs/sha256/<hex>      verified .deb files, named by their SHA-256
//!   layers/<key>/           unpacked and stripped trees, read-only, never edited in place
//!   layers/<key>.json       what a layer was made from, its tree hash, counts and bytes
//!   layers/<key>.tree.json  its entries; `<key>.index`: the same by directory, with mtimes (binary)
//!   layers/<key>.seen       each file's inode and ctime as the last build saw it intact
//!   layers/<key>.sbom.json  what the package's files declare (the SBOM's inventory, crate::sbom)
//!   layers/<key>.cdx.json   the SBOM last rendered for the layer (reused while its serial matches)
//!   tmp/                    staging; finished items are renamed into place (atomic)
//!   tmp/downloads/<hex>.part  partial downloads, resumed by the next run
//!   lock                    advisory lock held by a build: builds sharing a cache wait
//! ```
//!
//! Contract: whatever is under `blobs/` and `layers/` was complete and verified when it was
//! renamed there. An interrupted build leaves only `tmp/` debris, cleared when the next build
//! takes the lock. A blob whose bytes do not hash to its name is deleted and fetched again.
//! Every write, rename and removal is made relative to the store's own directories, opened
//! without following symlinks: a symlink in the cache is removed or refused, never followed.

pub mod layer;
pub mod layerindex;
pub mod seen;
pub mod treehash;

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::fetch::{Downloaded, FetchError, Fetcher};
use crate::fsat::{Dir, Kind};
use crate::hash::{Hasher, Sha256};

/// Layout version: bump when the meaning of anything in the store changes.
pub const STORE_VERSION: &str = "v1";

/// The store's directories below `v1`.
const SUBDIRS: [&str; 5] = ["blobs/sha256", "layers", "tmp", "tmp/downloads", "indexes"];

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache {path}: {error}; check that the cache directory is writable and the disk has room")]
    Io { path: PathBuf, error: io::Error },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(
        "blob sha256:{sha256} ({url}) is not in the cache {path} and network access is disabled; \
         run `ddslug fetch` with network access to fill the cache first"
    )]
    MissingOffline { sha256: Sha256, url: String, path: PathBuf },
    #[error(
        "cache {path}: {link} is a symlink (to {target}) where the store keeps a directory; the store \
         never writes through a symlink. Remove {link} (or the whole cache directory: nothing in it is needed)"
    )]
    Symlink { path: PathBuf, link: PathBuf, target: PathBuf },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), error: source }
}

/// A store rooted at `CACHE_DIR/ddslug/v1`.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// `v1`, opened once: every write in the store is made relative to it.
    dir: Arc<Dir>,
}

/// Holding this means no other ddslug process is changing the store.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// A fresh directory under the store's `tmp/` (an unpredictable name, made exclusively),
/// removed by [`Staging::remove`] or, if the process dies, by the next build.
pub struct Staging {
    pub path: PathBuf,
    pub dir: Dir,
    name: OsString,
    tmp: Dir,
}

impl Staging {
    /// Removes the directory and everything in it.
    pub fn remove(self) -> Result<(), StoreError> {
        self.tmp.remove_all(&self.name).map_err(io_at(&self.path))
    }
}

impl Store {
    /// Opens (creating if needed) the store under a cache directory. The cache is ours
    /// alone: a symlink or a file found where the store keeps a directory is damage, and is
    /// replaced by the directory (the link itself is removed, never what it points to).
    pub fn open(cache_dir: &Path) -> Result<Store, StoreError> {
        // The cache directory itself is the caller's choice, symlinks and all.
        fs::create_dir_all(cache_dir).map_err(io_at(cache_dir))?;
        let cache = Dir::open_given(cache_dir).map_err(io_at(cache_dir))?;
        let dir = real_dir(&cache, Path::new("ddslug").join(STORE_VERSION).as_path(), cache_dir)?;
        let root = cache_dir.join("ddslug").join(STORE_VERSION);
        for sub in SUBDIRS {
            real_dir(&dir, Path::new(sub), &root)?;
        }
        Ok(Store { root, dir: Arc::new(dir) })
    }

    /// The `v1` directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store directory `rel` (e.g. `layers`), opened without following any symlink.
    pub fn dir(&self, rel: &str) -> Result<Dir, StoreError> {
        beneath(&self.dir, Path::new(rel), &self.root)
    }

    /// Waits for the store's advisory lock, then clears staging debris left by
    /// interrupted builds (partial downloads are kept for resuming, for a day).
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        // Never through a symlink at `lock`: one is refused.
        let mut file = self.dir.open_or_create(OsStr::new("lock"), 0o644).map_err(io_at(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                // One line, so that a build that waits does not look hung.
                eprintln!("       waiting for the cache lock {}: held by {}", path.display(), holder(&mut file));
                file.lock().map_err(io_at(&path))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_at(&path)(e)),
        }
        note_holder(&mut file);
        self.clear_tmp()?;
        Ok(StoreLock { _file: file })
    }

    fn clear_tmp(&self) -> Result<(), StoreError> {
        let tmp_path = self.root.join("tmp");
        let tmp = self.dir("tmp")?;
        for (name, _) in tmp.entries().map_err(io_at(&tmp_path))? {
            if name != "downloads" {
                tmp.remove_all(&name).map_err(io_at(&tmp_path.join(&name)))?;
            }
        }
        let downloads_path = self.root.join("tmp/downloads");
        let downloads = self.dir("tmp/downloads")?;
        let day_ago = unix_seconds(SystemTime::now() - Duration::from_secs(86_400));
        for (name, kind) in downloads.entries().map_err(io_at(&downloads_path))? {
            let stale = kind != Kind::File || downloads.lstat(&name).map(|st| st.mtime.0 < day_ago).unwrap_or(true);
            if stale {
                downloads.remove_all(&name).map_err(io_at(&downloads_path.join(&name)))?;
            }
        }
        Ok(())
    }

    /// Where the blob with this digest lives (whether or not it is there).
    pub fn blob_path(&self, sha256: &Sha256) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256.hex())
    }

    /// A fresh, empty staging directory under `tmp/`, named `<label>.<random>`.
    pub fn staging(&self, label: &str) -> Result<Staging, StoreError> {
        let tmp_path = self.root.join("tmp");
        let made = tempfile::Builder::new().prefix(&format!("{label}.")).tempdir_in(&tmp_path).map_err(io_at(&tmp_path))?;
        // Removed by us (its trees may hold read-only directories), not by TempDir's drop.
        let path = made.keep();
        let name = path.file_name().map(OsStr::to_owned).unwrap_or_default();
        let tmp = self.dir("tmp")?;
        let dir = beneath(&tmp, Path::new(&name), &tmp_path)?;
        Ok(Staging { path, dir, name, tmp })
    }

    /// Stores `bytes` as the file `name` in the store directory `rel` (e.g. `indexes`),
    /// all at once: written under `tmp/`, then renamed into place. Returns what it looks like.
    pub fn put(&self, rel: &str, name: &str, bytes: &[u8]) -> Result<crate::fsat::Stat, StoreError> {
        let path = self.root.join(rel).join(name);
        let (dir, tmp) = (self.dir(rel)?, self.dir("tmp")?);
        dir.write_via(OsStr::new(name), bytes, 0o644, &tmp).map_err(io_at(&path))
    }

    /// Checks a stored blob against its name; a blob whose bytes changed (or anything else
    /// in its place, such as a symlink) is deleted. Returns whether a good blob is present.
    pub fn check_blob(&self, expected: Downloaded) -> Result<bool, StoreError> {
        Ok(self.open_blob(expected)?.is_some())
    }

    /// [`Store::check_blob`], returning the good blob opened (at its start): whoever reads
    /// it reads the bytes that were checked, whatever is renamed to its name meanwhile.
    pub fn open_blob(&self, expected: Downloaded) -> Result<Option<File>, StoreError> {
        let path = self.blob_path(&expected.sha256);
        let blobs = self.dir("blobs/sha256")?;
        let name = OsString::from(expected.sha256.hex());
        let file = match blobs.open_regular(&name) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(io_at(&path)(e)),
            // A symlink, a directory, a FIFO: not a blob.
            Err(_) => {
                blobs.remove_all(&name).map_err(io_at(&path))?;
                return Ok(None);
            }
        };
        let mut hasher = Hasher::new();
        // Never more than one byte past the expected size: a wrong blob is wrong already.
        hasher.update_from(&mut (&file).take(expected.size + 1), &mut vec![0u8; 1 << 17]).map_err(io_at(&path))?;
        let size = hasher.len();
        if size == expected.size && hasher.finish() == expected.sha256 {
            use std::io::Seek;
            let mut file = file;
            file.rewind().map_err(io_at(&path))?;
            return Ok(Some(file));
        }
        blobs.remove_all(&name).map_err(io_at(&path))?;
        Ok(None)
    }

    /// Returns the path of a verified blob, downloading it from `url` if the store lacks it.
    /// The boolean says whether a download happened.
    pub fn ensure_blob(&self, fetcher: &Fetcher, url: &str, expected: Downloaded) -> Result<(PathBuf, bool), StoreError> {
        match self.find_blob(fetcher, url, expected)? {
            Blob::Stored { path, .. } => Ok((path, false)),
            Blob::Missing { part, file } => {
                let (downloads, name) = (self.dir("tmp/downloads")?, part.file_name().unwrap_or_default());
                fetcher.download(url, crate::fetch::Part { dir: &downloads, name, path: &part, file: &file }, Some(expected), None)?;
                Ok((self.keep_part(&part, expected)?, true))
            }
        }
    }

    /// Where the blob is: verified in the store, or to be downloaded into `part` (which then
    /// exists, so that a reader can open it before the first byte arrives) with
    /// [`Fetcher::download`] and moved into the store with [`Store::keep_part`].
    pub fn find_blob(&self, fetcher: &Fetcher, url: &str, expected: Downloaded) -> Result<Blob, StoreError> {
        let path = self.blob_path(&expected.sha256);
        if let Some(file) = self.open_blob(expected)? {
            let _ = self.dir("blobs/sha256")?.set_mtime_of(OsStr::new(&expected.sha256.hex()), now());
            return Ok(Blob::Stored { path, file });
        }
        if fetcher.is_offline() && !url.starts_with("file://") {
            return Err(StoreError::MissingOffline { sha256: expected.sha256, url: url.into(), path: self.root.clone() });
        }
        let name = OsString::from(format!("{}.part", expected.sha256.hex()));
        let part = self.root.join("tmp/downloads").join(&name);
        let downloads = self.dir("tmp/downloads")?;
        // A partial download is resumed; anything else in its place (a symlink) goes.
        if downloads.kind(&name).is_ok_and(|kind| kind != Kind::File) {
            downloads.remove_all(&name).map_err(io_at(&part))?;
        }
        let file = downloads.open_or_create(&name, 0o644).map_err(io_at(&part))?;
        Ok(Blob::Missing { part, file })
    }

    /// Moves a downloaded and checked `part` (in `tmp/downloads`) into the store, read-only;
    /// returns the blob's path.
    pub fn keep_part(&self, part: &Path, expected: Downloaded) -> Result<PathBuf, StoreError> {
        let path = self.blob_path(&expected.sha256);
        let name = part.file_name().ok_or_else(|| io_at(part)(io::Error::other("not a partial download")))?;
        let downloads = self.dir("tmp/downloads")?;
        let file = downloads.open_regular(name).map_err(io_at(part))?;
        make_read_only(&file).map_err(io_at(part))?;
        let blobs = self.dir("blobs/sha256")?;
        downloads.rename(name, &blobs, OsStr::new(&expected.sha256.hex())).map_err(io_at(&path))?;
        Ok(path)
    }
}

/// Who holds the lock, as its holder noted it in the lock file (see [`note_holder`]).
fn holder(file: &mut File) -> String {
    use std::io::Read;
    let mut text = String::new();
    let _ = file.take(256).read_to_string(&mut text);
    let field = |name: &str| text.split_whitespace().find_map(|w| w.strip_prefix(name)).map(str::to_string);
    match (field("pid="), field("command=")) {
        (Some(pid), Some(command)) => format!("pid {pid} (ddslug {command})"),
        _ => "another ddslug process".into(),
    }
}

/// Notes in the lock file who holds it now, for a build that has to wait (best effort: the
/// lock works without it).
fn note_holder(file: &mut File) {
    use std::os::unix::fs::FileExt;
    let command = std::env::args().nth(1).filter(|a| a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    let note = format!("pid={} command={}\n", std::process::id(), command.as_deref().unwrap_or("?"));
    let _ = file.set_len(0).and_then(|()| file.write_all_at(note.as_bytes(), 0));
}

/// The directory `rel` below `dir`, made where missing; whatever else is on the way (a
/// symlink, a file) is removed first (the link itself) and replaced by a directory.
fn real_dir(dir: &Dir, rel: &Path, base: &Path) -> Result<Dir, StoreError> {
    match dir.dir_beneath(rel) {
        Ok(found) => return Ok(found),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => {
            let mut at = dir.dir_beneath(Path::new("")).map_err(io_at(base))?;
            let mut path = base.to_owned();
            for name in rel.iter() {
                path.push(name);
                if at.kind(name).is_ok_and(|kind| kind != Kind::Dir) {
                    at.remove_all(name).map_err(io_at(&path))?;
                }
                at = at.make_dirs_beneath(Path::new(name)).map_err(io_at(&path))?;
            }
            return Ok(at);
        }
    }
    dir.make_dirs_beneath(rel).map_err(io_at(&base.join(rel)))
}

/// The directory `rel` below `dir`; a symlink on the way is an error naming it.
fn beneath(dir: &Dir, rel: &Path, base: &Path) -> Result<Dir, StoreError> {
    dir.dir_beneath(rel).map_err(|source| match dir.symlink_on(rel) {
        Some((link, target)) => StoreError::Symlink { path: base.to_owned(), link, target },
        None => StoreError::Io { path: base.join(rel), error: source },
    })
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Seconds and nanoseconds since the epoch, as `Stat::mtime` has them.
fn unix_time(t: SystemTime) -> (i64, i64) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, i64::from(d.subsec_nanos()))
}

fn now() -> (i64, i64) {
    unix_time(SystemTime::now())
}

/// What [`Store::find_blob`] found.
pub enum Blob {
    /// Checked, and open: read it through `file` (`path` names it).
    Stored { path: PathBuf, file: File },
    /// To be downloaded into `file` (the partial download `part`, made or resumed), which
    /// an unpacker reads as it grows.
    Missing { part: PathBuf, file: File },
}

/// One stored item `gc` would remove.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Garbage {
    pub path: PathBuf,
    pub bytes: u64,
    /// Days since a build last used it.
    pub idle_days: u64,
}

impl Store {
    /// Blobs and layers no build used in the last `days` days (use is recorded in their
    /// mtimes). With `delete`, removes them; the store lock must be held. Removal goes
    /// through the store's own directories: a symlink in the store is removed, never
    /// followed.
    pub fn gc(&self, days: u64, delete: bool) -> Result<Vec<Garbage>, StoreError> {
        // To the nanosecond: `--days 0` means everything used before now.
        let cutoff = unix_time(SystemTime::now() - Duration::from_secs(days * 86_400));
        let idle = |st: &crate::fsat::Stat| {
            (st.mtime < cutoff).then(|| (unix_seconds(SystemTime::now()) - st.mtime.0).max(0) as u64 / 86_400)
        };
        // (directory, name, what it is): blobs, then layers with the files that go with them.
        let mut garbage: Vec<(Garbage, &str, Vec<OsString>)> = Vec::new();
        let blobs_path = self.root.join("blobs/sha256");
        let blobs = self.dir("blobs/sha256")?;
        for (name, _) in blobs.entries().map_err(io_at(&blobs_path))? {
            let path = blobs_path.join(&name);
            let st = blobs.lstat(&name).map_err(io_at(&path))?;
            if let Some(idle_days) = idle(&st) {
                garbage.push((Garbage { path, bytes: st.size, idle_days }, "blobs/sha256", vec![name]));
            }
        }
        let layers_path = self.root.join("layers");
        let layers = self.dir("layers")?;
        for (name, _) in layers.entries().map_err(io_at(&layers_path))? {
            // `<key>.json` describes a layer; `<key>.tree.json` and `<key>.index` go with it.
            let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".json")).filter(|k| !k.contains('.')) else { continue };
            let st = layers.lstat(&name).map_err(io_at(&layers_path.join(&name)))?;
            if let Some(idle_days) = idle(&st) {
                let dir = layers_path.join(key);
                // The description goes first: a layer without it is never reused. (What
                // layers of format 1 had instead of `.index`: `.mtimes.json`.)
                let names = [".json", ".tree.json", ".index", ".seen", ".sbom.json", ".cdx.json", ".mtimes.json", ""].iter().map(|s| OsString::from(format!("{key}{s}"))).collect();
                garbage.push((Garbage { path: dir.clone(), bytes: tree_bytes(&dir), idle_days }, "layers", names));
            }
        }
        garbage.sort_by(|a, b| a.0.path.cmp(&b.0.path));
        if delete {
            for (g, rel, names) in &garbage {
                let dir = self.dir(rel)?;
                for name in names {
                    dir.remove_all(name).map_err(io_at(&g.path))?;
                }
            }
        }
        Ok(garbage.into_iter().map(|(g, ..)| g).collect())
    }
}

fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path).map(|d| d.filter_map(|e| e.ok()).map(|e| tree_bytes(&e.path())).sum()).unwrap_or(0)
}

/// Clears write permission so that nothing edits a stored item in place by accident.
fn make_read_only(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata()?.permissions().mode();
    file.set_permissions(fs::Permissions::from_mode(mode & !0o222))
}

/// Removes a file, a symlink (the link, not its target) or a whole tree (making read-only
/// directories writable first), relative to the directory that holds it.
pub fn remove_any(path: &Path) -> Result<(), StoreError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io_at(path)(io::Error::new(io::ErrorKind::InvalidInput, "not a path to remove")));
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    match Dir::open_given(parent) {
        Ok(dir) => dir.remove_all(name).map_err(io_at(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupted_blob_is_deleted_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"package bytes";
        let expected = Downloaded { sha256: Sha256::of(data), size: data.len() as u64 };
        fs::write(store.blob_path(&expected.sha256), b"package bytez").unwrap();
        assert!(!store.check_blob(expected).unwrap());
        assert!(!store.blob_path(&expected.sha256).exists());
        fs::write(store.blob_path(&expected.sha256), data).unwrap();
        assert!(store.check_blob(expected).unwrap());
    }

    /// What is read of a blob is what was checked: its bytes are read through the descriptor
    /// the check hashed (and a download's through the one it writes), so a file renamed over
    /// its name afterwards is not what an unpacker gets.
    #[test]
    fn a_blob_is_read_through_the_descriptor_that_was_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"package bytes";
        let expected = Downloaded { sha256: Sha256::of(data), size: data.len() as u64 };
        let path = store.blob_path(&expected.sha256);
        fs::write(&path, data).unwrap();
        let fetcher = Fetcher::new(crate::fetch::FetchOptions::default());
        let Blob::Stored { file, .. } = store.find_blob(&fetcher, "http://127.0.0.1:9/x.deb", expected).unwrap() else { panic!("stored") };
        let swapped = dir.path().join("swapped");
        fs::write(&swapped, b"hostile bytes").unwrap();
        fs::rename(&swapped, &path).unwrap();
        let mut read = Vec::new();
        (&file).read_to_end(&mut read).unwrap();
        assert_eq!(read, data);
    }

    #[test]
    fn symlinks_in_the_store_are_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, outside) = (dir.path().join("cache"), dir.path().join("outside"));
        fs::create_dir_all(cache.join("ddslug/v1/blobs")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("f"), b"outside").unwrap();
        std::os::unix::fs::symlink(&outside, cache.join("ddslug/v1/layers")).unwrap();
        std::os::unix::fs::symlink(&outside, cache.join("ddslug/v1/blobs/sha256")).unwrap();
        let store = Store::open(&cache).unwrap();
        for sub in ["layers", "blobs/sha256"] {
            assert!(fs::symlink_metadata(store.root().join(sub)).unwrap().is_dir(), "{sub}");
        }
        // A blob that is a symlink is no blob: the link goes, its target stays.
        let data = b"outside";
        let expected = Downloaded { sha256: Sha256::of(data), size: data.len() as u64 };
        std::os::unix::fs::symlink(outside.join("f"), store.blob_path(&expected.sha256)).unwrap();
        assert!(!store.check_blob(expected).unwrap());
        assert!(fs::symlink_metadata(store.blob_path(&expected.sha256)).is_err());
        store.put("indexes", "memo.json", b"{}").unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
        assert_eq!(fs::read(outside.join("f")).unwrap(), b"outside");
        // Swapped in after opening: refused with the link named.
        fs::remove_dir_all(store.root().join("indexes")).unwrap();
        std::os::unix::fs::symlink(&outside, store.root().join("indexes")).unwrap();
        let err = store.put("indexes", "memo.json", b"{}").unwrap_err().to_string();
        assert!(err.contains("indexes is a symlink (to ") && err.contains("never writes through a symlink"), "{err}");
    }

    #[test]
    fn lock_clears_staging_but_keeps_partial_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let staging = store.staging("layer").unwrap().path;
        fs::write(staging.join("half-written"), b"x").unwrap();
        let part = store.root().join("tmp/downloads/abc.part");
        fs::write(&part, b"partial").unwrap();
        let _lock = store.lock().unwrap();
        assert!(!staging.exists());
        assert!(part.exists());
    }
}
