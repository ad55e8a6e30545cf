//! The content-addressed store in CACHE_DIR.
//!
//! ```text
//! CACHE_DIR/ddslug/v1/
//!   blobs/sha256/<hex>      verified .deb files, named by their SHA-256
//!   layers/<key>/           unpacked and stripped trees, read-only, never edited in place
//!   layers/<key>.json       what a layer was made from, its tree hash, counts and bytes
//!   layers/<key>.tree.json  its entries; `<key>.index`: the same by directory, with mtimes (binary)
//!   tmp/                    staging; finished items are renamed into place (atomic)
//!   tmp/downloads/<hex>.part  partial downloads, resumed by the next run
//!   lock                    advisory lock held by a build: builds sharing a cache wait
//! ```
//!
//! Contract: whatever is under `blobs/` and `layers/` was complete and verified when it was
//! renamed there. An interrupted build leaves only `tmp/` debris, cleared when the next build
//! takes the lock. A blob whose bytes do not hash to its name is deleted and fetched again.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::fetch::{Downloaded, FetchError, Fetcher};
use crate::hash::{Hasher, Sha256};

/// Layout version: bump when the meaning of anything in the store changes.
pub const STORE_VERSION: &str = "v1";

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache {path}: {source}; check that the cache directory is writable and the disk has room")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(
        "blob sha256:{sha256} ({url}) is not in the cache {path} and network access is disabled; \
         run `ddslug fetch` with network access to fill the cache first"
    )]
    MissingOffline { sha256: Sha256, url: String, path: PathBuf },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// A store rooted at `CACHE_DIR/ddslug/v1`.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// Holding this means no other ddslug process is changing the store.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

impl Store {
    /// Opens (creating if needed) the store under a cache directory.
    pub fn open(cache_dir: &Path) -> Result<Store, StoreError> {
        let root = cache_dir.join("ddslug").join(STORE_VERSION);
        for dir in ["blobs/sha256", "layers", "tmp/downloads", "indexes"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_at(&path))?;
        }
        Ok(Store { root })
    }

    /// The `v1` directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Waits for the store's advisory lock, then clears staging debris left by
    /// interrupted builds (partial downloads are kept for resuming, for a day).
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let mut file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io_at(&path))?;
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
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_at(&tmp))? {
            let entry = entry.map_err(io_at(&tmp))?;
            if entry.file_name() == "downloads" {
                continue;
            }
            remove_any(&entry.path())?;
        }
        let downloads = tmp.join("downloads");
        let day_ago = SystemTime::now() - Duration::from_secs(86_400);
        for entry in fs::read_dir(&downloads).map_err(io_at(&downloads))? {
            let entry = entry.map_err(io_at(&downloads))?;
            let stale = entry.metadata().and_then(|m| m.modified()).map(|t| t < day_ago).unwrap_or(true);
            if stale {
                remove_any(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Where the blob with this digest lives (whether or not it is there).
    pub fn blob_path(&self, sha256: &Sha256) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256.hex())
    }

    /// A fresh, empty staging directory under `tmp/`.
    pub fn staging_dir(&self, label: &str) -> Result<PathBuf, StoreError> {
        let tmp = self.root.join("tmp");
        for n in 0u32.. {
            let path = tmp.join(format!("{label}.{}.{n}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_at(&path)(e)),
            }
        }
        unreachable!("u32 range exhausted")
    }

    /// Checks a stored blob against its name; a blob whose bytes changed is deleted.
    /// Returns whether a good blob is present.
    pub fn check_blob(&self, expected: Downloaded) -> Result<bool, StoreError> {
        let path = self.blob_path(&expected.sha256);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_at(&path)(e)),
        };
        let mut hasher = Hasher::new();
        hasher.update_from(&mut file, &mut vec![0u8; 1 << 17]).map_err(io_at(&path))?;
        let size = hasher.len();
        if size == expected.size && hasher.finish() == expected.sha256 {
            return Ok(true);
        }
        fs::remove_file(&path).map_err(io_at(&path))?;
        Ok(false)
    }

    /// Returns the path of a verified blob, downloading it from `url` if the store lacks it.
    /// The boolean says whether a download happened.
    pub fn ensure_blob(&self, fetcher: &Fetcher, url: &str, expected: Downloaded) -> Result<(PathBuf, bool), StoreError> {
        match self.find_blob(fetcher, url, expected)? {
            Blob::Stored(path) => Ok((path, false)),
            Blob::Missing { part } => {
                fetcher.download(url, &part, Some(expected), None)?;
                Ok((self.keep_part(&part, expected)?, true))
            }
        }
    }

    /// Where the blob is: verified in the store, or to be downloaded into `part` (which then
    /// exists, so that a reader can open it before the first byte arrives) with
    /// [`Fetcher::download`] and moved into the store with [`Store::keep_part`].
    pub fn find_blob(&self, fetcher: &Fetcher, url: &str, expected: Downloaded) -> Result<Blob, StoreError> {
        let path = self.blob_path(&expected.sha256);
        if self.check_blob(expected)? {
            let _ = filetime::set_file_mtime(&path, filetime::FileTime::now());
            return Ok(Blob::Stored(path));
        }
        if fetcher.is_offline() && !url.starts_with("file://") {
            return Err(StoreError::MissingOffline { sha256: expected.sha256, url: url.into(), path: self.root.clone() });
        }
        let part = self.root.join("tmp/downloads").join(format!("{}.part", expected.sha256.hex()));
        OpenOptions::new().create(true).truncate(false).write(true).open(&part).map_err(io_at(&part))?;
        Ok(Blob::Missing { part })
    }

    /// Moves a downloaded and checked `part` into the store; returns the blob's path.
    pub fn keep_part(&self, part: &Path, expected: Downloaded) -> Result<PathBuf, StoreError> {
        make_read_only(part)?;
        let path = self.blob_path(&expected.sha256);
        fs::rename(part, &path).map_err(io_at(&path))?;
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

/// What [`Store::find_blob`] found.
pub enum Blob {
    Stored(PathBuf),
    Missing { part: PathBuf },
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
    /// mtimes). With `delete`, removes them; the store lock must be held.
    pub fn gc(&self, days: u64, delete: bool) -> Result<Vec<Garbage>, StoreError> {
        let cutoff = SystemTime::now() - Duration::from_secs(days * 86_400);
        let mut garbage = Vec::new();
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(io_at(&blobs))? {
            let entry = entry.map_err(io_at(&blobs))?;
            let meta = entry.metadata().map_err(io_at(&entry.path()))?;
            if let Some(idle) = idle(&meta, cutoff) {
                garbage.push(Garbage { path: entry.path(), bytes: meta.len(), idle_days: idle });
            }
        }
        let layers = self.root.join("layers");
        for entry in fs::read_dir(&layers).map_err(io_at(&layers))? {
            let entry = entry.map_err(io_at(&layers))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // `<key>.json` describes a layer; `<key>.tree.json` and `<key>.index` go with it.
            let Some(key) = name.strip_suffix(".json").filter(|k| !k.contains('.')) else { continue };
            let meta = entry.metadata().map_err(io_at(&entry.path()))?;
            if let Some(idle) = idle(&meta, cutoff) {
                let dir = layers.join(key);
                garbage.push(Garbage { path: dir.clone(), bytes: tree_bytes(&dir), idle_days: idle });
            }
        }
        garbage.sort_by(|a, b| a.path.cmp(&b.path));
        if delete {
            for g in &garbage {
                // The description goes first: a layer without it is never reused.
                if g.path.parent().is_some_and(|p| p.ends_with("layers")) {
                    let base = g.path.to_string_lossy().into_owned();
                    remove_any(Path::new(&format!("{base}.json")))?;
                    remove_any(Path::new(&format!("{base}.tree.json")))?;
                    remove_any(Path::new(&format!("{base}.index")))?;
                    // What layers of format 1 had instead of `.index`.
                    remove_any(Path::new(&format!("{base}.mtimes.json")))?;
                }
                remove_any(&g.path)?;
            }
        }
        Ok(garbage)
    }
}

fn idle(meta: &fs::Metadata, cutoff: SystemTime) -> Option<u64> {
    let used = meta.modified().ok()?;
    (used < cutoff).then(|| SystemTime::now().duration_since(used).map(|d| d.as_secs() / 86_400).unwrap_or(0))
}

fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path).map(|d| d.filter_map(|e| e.ok()).map(|e| tree_bytes(&e.path())).sum()).unwrap_or(0)
}

/// Clears write permission so that nothing edits a stored item in place by accident.
pub fn make_read_only(path: &Path) -> Result<(), StoreError> {
    let meta = fs::metadata(path).map_err(io_at(path))?;
    let mut perms = meta.permissions();
    perms.set_readonly(true);
    fs::set_permissions(path, perms).map_err(io_at(path))
}

/// Removes a file, a symlink or a whole tree (making read-only directories writable first).
pub fn remove_any(path: &Path) -> Result<(), StoreError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at(path)(e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(io_at(path));
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(_) => {
            make_tree_writable(path)?;
            fs::remove_dir_all(path).map_err(io_at(path))
        }
    }
}

fn make_tree_writable(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(dir).map_err(io_at(dir))?;
    if meta.is_dir() {
        let mode = meta.permissions().mode();
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700)).map_err(io_at(dir))?;
        for entry in fs::read_dir(dir).map_err(io_at(dir))? {
            let entry = entry.map_err(io_at(dir))?;
            make_tree_writable(&entry.path())?;
        }
    }
    Ok(())
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

    #[test]
    fn lock_clears_staging_but_keeps_partial_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let staging = store.staging_dir("layer").unwrap();
        fs::write(staging.join("half-written"), b"x").unwrap();
        let part = store.root().join("tmp/downloads/abc.part");
        fs::write(&part, b"partial").unwrap();
        let _lock = store.lock().unwrap();
        assert!(!staging.exists());
        assert!(part.exists());
    }
}
