//! The .deb unpacker: `ar` container → `data.tar.{xz,gz,zst,bz2,}` → files, like `dpkg-deb -x`.
//!
//! Contract: streams (no member is held in memory) and never writes outside the target
//! directory. Entries with `..` or absolute paths, hard links leaving the tree, and writes
//! through a symlink that leads outside the tree are refused with an error naming the entry.
//! Names and symlink targets are written with their exact bytes, UTF-8 or not, and symlink
//! targets verbatim (relative or absolute), as dpkg does; permission bits
//! (setuid included) and mtimes are restored; device nodes and FIFOs are skipped with a
//! warning. Ownership is not changed.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use filetime::FileTime;

use crate::ar::{ArReader, Compression, Want};
/// The members dpkg-deb reads of a .deb, or why it refuses it (a fuzz target's entry point).
pub use crate::ar::list_members;
use crate::fetch::{FileRange, Progress};
use crate::tarstream::EntryMeta;
use crate::filewriter::{WriteError, WriterPool, Written, fill_in_place, make_room, write_file};
use crate::hash::Sha256;
use crate::treehash::FileId;
use crate::xzseek::ForwardSeek;

/// What an unpack produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Warnings for entries that were not extracted (device nodes, FIFOs).
    pub skipped: Vec<String>,
    /// SHA-256 of every regular file as written, by the file's identity (hashed while the
    /// bytes passed, so that nobody has to read them back; see [`scan_tree_known`]).
    ///
    /// [`scan_tree_known`]: crate::treehash::scan_tree_known
    pub digests: HashMap<FileId, Sha256>,
    /// For a multi-block data.tar.xz: how many blocks had to be decoded.
    pub xz_blocks: Option<crate::xzseek::BlockStats>,
    /// The exact permission bits of directories left with other bits on disk, by
    /// `(dev, ino)`: [`unpack_deb_filtered`] leaves every directory owner-accessible (see
    /// [`crate::layerindex::stored_dir_mode`]).
    pub dir_modes: HashMap<(u64, u64), u32>,
}

/// The permission bits an unpack leaves on directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DirModes {
    /// The archive's, as `dpkg-deb -x` leaves them.
    Exact,
    /// The store's: the archive's plus owner read, write and search, so that the recipe,
    /// the layer scan and a warm build can work in them as a user who is not root; the
    /// archive's are reported in [`UnpackReport::dir_modes`].
    Stored,
}

/// Why a .deb could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{deb}: {source}")]
    Io { deb: String, source: io::Error },
    #[error("{deb}: not a Debian package: {reason}")]
    NotADeb { deb: String, reason: String },
    /// `entry` is the entry's name for people ([`crate::pathbytes::escape`]d, bounded).
    #[error("{deb}: entry \"{entry}\": {reason}; refusing to unpack this package")]
    Unsafe { deb: String, entry: String, reason: String },
    #[error("{deb}: entry \"{entry}\": {reason}")]
    Unsupported { deb: String, entry: String, reason: String },
    /// A tar or decompression error; `reason` escaped (it may quote the package's bytes).
    #[error("{deb}: data archive: {reason}")]
    Tar { deb: String, reason: String },
    #[error("{deb}: writing {}: {source}", crate::pathbytes::escape_bounded(path.as_os_str().as_bytes(), 1024))]
    Write { deb: String, path: PathBuf, source: io::Error },
}

/// Decides, entry by entry, what not to write at all (the strip recipe, applied while
/// unpacking, so that removed files cost no disk writes).
pub trait EntryFilter {
    /// `rel` is the entry's `/`-separated path, its bytes as in the archive; `size` its
    /// content length. Returns true to skip the entry. The filter sees every entry,
    /// including those below a directory it skipped, and must skip those too.
    fn skip(&mut self, rel: &[u8], is_dir: bool, size: u64) -> bool;
}

/// Whether a package's bytes were verified (by SHA-256, against a signed index) before
/// unpacking, or will be before the result is used. Only unverified packages need the
/// compressor's own checks.
#[derive(Clone, Copy, Debug)]
pub enum Integrity<'a> {
    Unverified,
    Verified,
    /// Still being downloaded (so not verified yet): reads wait for bytes to arrive, and
    /// fail if the download does. Whoever unpacks must not trust the result before the
    /// download has completed and matched.
    Downloading(&'a Progress),
}

/// Extracts the data archive of `deb` into `dest` (created if missing), as `dpkg-deb -x`
/// does: directories are made owner-accessible while they are filled and get the archive's
/// modes at the end (deepest first), so this works for a user who is not root too.
pub fn unpack_deb(deb: &Path, dest: &Path) -> Result<UnpackReport, DebError> {
    unpack(deb, &deb.display().to_string(), dest, None, Integrity::Unverified, DirModes::Exact)
}

/// [`unpack_deb`], leaving out what `filter` skips. A multi-block data.tar.xz is read block
/// by block ([`crate::xzseek`]): blocks that hold only skipped contents are never decoded.
/// `label` names the package in errors and warnings (its file name, say, rather than the
/// partial download or the blob its bytes are in). Unlike `dpkg-deb -x`, directories are
/// left with the store's modes ([`crate::layerindex::stored_dir_mode`]); the archive's are in
/// the report's `dir_modes`.
pub fn unpack_deb_filtered(
    deb: &Path,
    label: &str,
    dest: &Path,
    filter: Option<&mut dyn EntryFilter>,
    integrity: Integrity,
) -> Result<UnpackReport, DebError> {
    unpack(deb, label, dest, filter, integrity, DirModes::Stored)
}

fn unpack(
    deb: &Path,
    label: &str,
    dest: &Path,
    filter: Option<&mut dyn EntryFilter>,
    integrity: Integrity,
    modes: DirModes,
) -> Result<UnpackReport, DebError> {
    let (unpacked, xz_blocks) = read_data_tar(deb, label, integrity, |tar| unpack_tar_filtered(tar, dest, label, filter, modes))?;
    let (mut report, deferred) = unpacked?;
    report.xz_blocks = xz_blocks;
    if !deferred.is_empty() {
        // Rare: a kept hard link to a stripped file. Its bytes were skipped; read them now.
        let mut deferred = deferred;
        let (filled, _) = read_data_tar(deb, label, integrity, |tar| fill_deferred(tar, label, &mut deferred))?;
        for w in filled? {
            report.digests.insert(w.id, w.sha256);
            report.files += 1;
            report.bytes += w.bytes;
        }
    }
    Ok(report)
}

/// A tar stream that can skip forward.
trait TarStream: Read + io::Seek {}
impl<T: Read + io::Seek> TarStream for T {}

/// Opens the data member of `deb` (found as dpkg-deb finds it) and gives its tar stream to
/// `read`: a multi-block xz through the block reader, anything else decompressed on a thread
/// of its own. Returns what `read` returned (its errors are the caller's to look at) and, for
/// a multi-block xz, how many blocks were decoded.
fn read_data_tar<T>(
    deb: &Path,
    label: &str,
    integrity: Integrity,
    read: impl FnOnce(&mut dyn TarStream) -> T,
) -> Result<(T, Option<crate::xzseek::BlockStats>), DebError> {
    let io_err = |source| DebError::Io { deb: label.into(), source };
    let file = File::open(deb).map_err(io_err)?;
    let growing = match integrity {
        Integrity::Downloading(progress) => Some(progress),
        _ => None,
    };
    // A download in progress is checked against its SHA-256 before the layer is kept, so
    // the compressor's own checks (CRC64, CRC32) would add nothing there either.
    let checks = matches!(integrity, Integrity::Unverified);
    let sequential = FileRange { file: &file, pos: 0, end: u64::MAX, growing };
    let mut ar = ArReader::new(BufReader::with_capacity(1 << 16, sequential), label)?;
    let (member, compression) = ar.find(Want::Data, &mut |_| {})?;
    let (start, size) = (ar.position(), member.size);
    // dpkg-deb copies exactly the member's size to the decompressor and fails if the file
    // ends first; a file already complete is checked before anything is decoded.
    if growing.is_none() && file.metadata().map_err(io_err)?.len() < start + size {
        return Err(DebError::NotADeb {
            deb: label.into(),
            reason: format!("member '{}' runs past the end of the file: unexpected end of file or stream", member.shown()),
        });
    }
    if compression == Compression::Xz {
        let layout = match growing {
            Some(progress) => crate::xzseek::arriving(&file, start, size, progress).map_err(io_err)?,
            None => crate::xzseek::blocks(&file, start, size).map(crate::xzseek::Layout::Indexed),
        };
        if let Some(layout) = layout {
            return Ok(std::thread::scope(|scope| {
                let mut reader = crate::xzseek::BlockReader::new(scope, &file, start, size, layout, checks);
                let result = read(&mut reader);
                (result, Some(reader.stats()))
            }));
        }
    }
    let body = Exact { inner: FileRange { file: &file, pos: start, end: start + size, growing }, left: size, member: member.shown() };
    let decompressed: Box<dyn Read + Send> = if checks || compression != Compression::Gzip {
        crate::tarstream::decompressor(compression, body).map_err(io_err)?
    } else {
        Box::new(crate::tarstream::gzip_unchecked(body).map_err(io_err)?)
    };
    Ok((pipelined(decompressed, read), None))
}

/// A member's bytes, which must all be there: a file that ends first is an error (dpkg-deb's
/// "unexpected end of file or stream"), not the end of the member.
struct Exact<R> {
    inner: R,
    left: u64,
    member: String,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            let why = format!("member '{}' ends {} bytes early: unexpected end of file or stream", self.member, self.left);
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Runs `read` on what `decompressed` gives, decompressing on a thread of its own so that
/// inflating overlaps parsing, writing and hashing (the two take about as long).
fn pipelined<T>(mut decompressed: Box<dyn Read + Send + '_>, read: impl FnOnce(&mut dyn TarStream) -> T) -> T {
    const CHUNK: usize = 1 << 20;
    // A few chunks in flight: enough to ride out uneven entry sizes, little memory.
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    // Read chunks come back to be filled again: fresh memory costs page faults and zeroing.
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            loop {
                let mut chunk = recycled.try_recv().unwrap_or_default();
                chunk.resize(CHUNK, 0);
                let mut filled = 0;
                while filled < CHUNK {
                    match decompressed.read(&mut chunk[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
                chunk.truncate(filled);
                // The end of the data (or a consumer that stopped early) ends the thread;
                // dropping `tx` is the end-of-stream signal.
                if filled == 0 || tx.send(Ok(chunk)).is_err() {
                    return;
                }
            }
        });
        let chunks = ChunkReader { rx, recycle, chunk: Vec::new(), at: 0 };
        read(&mut ForwardSeek::new(chunks))
    })
}

/// Reads the chunks a decompressing thread sends, and sends them back once read.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    let read = std::mem::replace(&mut self.chunk, chunk?);
                    // The decompressing thread may have ended: then the chunk is just freed.
                    let _ = self.recycle.send(read);
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Bytes of the control archive, uncompressed, that [`read_control`] reads at most.
pub const MAX_CONTROL_TAR: u64 = 16 << 20;
/// Bytes of the `control` file that [`read_control`] reads at most.
pub const MAX_CONTROL_FILE: u64 = 1 << 20;

/// The text of `./control` from the package's control archive (found the way dpkg-deb
/// finds it), within [`MAX_CONTROL_TAR`] and [`MAX_CONTROL_FILE`].
pub fn read_control(deb: &Path) -> Result<String, DebError> {
    let label = deb.display().to_string();
    let io_err = |source| DebError::Io { deb: label.clone(), source };
    let file = File::open(deb).map_err(io_err)?;
    let mut ar = ArReader::new(BufReader::new(file), &label)?;
    let (member, compression) = ar.find(Want::Control, &mut |_| {})?;
    let body = Exact { inner: ar.inner_mut(), left: member.size, member: member.shown() };
    let decompressed = crate::tarstream::decompressor(compression, body).map_err(io_err)?;
    let bounded = Bounded::new(decompressed, MAX_CONTROL_TAR, "control.tar, uncompressed,");
    let mut archive = tar::Archive::new(bounded);
    let entries = archive.entries().map_err(|e| tar_err(&label, e))?;
    let mut text = None;
    crate::tarstream::for_each_entry(entries, |e| tar_err(&label, e), |entry, meta| {
        if meta.path != b"./control" && meta.path != b"control" {
            return Ok(true);
        }
        let mut bytes = Vec::new();
        let io = |e| tar_err(&label, e);
        let mut limited = Bounded::new(entry, MAX_CONTROL_FILE, "the control file");
        limited.read_to_end(&mut bytes).map_err(io)?;
        text = Some(String::from_utf8(bytes).map_err(|_| not_a_deb(&label, "its control file is not UTF-8"))?);
        Ok(false)
    })?;
    text.ok_or_else(|| not_a_deb(&label, "its control.tar has no control file"))
}

/// A reader that fails (rather than stops) after `left` bytes: what a limit on untrusted
/// data looks like to the code reading it.
struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
    what: &'static str,
}

impl<R> Bounded<R> {
    fn new(inner: R, limit: u64, what: &'static str) -> Self {
        Bounded { inner, left: limit, limit, what }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            let why = format!("{} is bigger than ddslug's limit of {} bytes", self.what, self.limit);
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A tar (or decompression) error, with what it quotes from the package escaped and cut
/// short: the tar reader's messages include raw header bytes.
fn tar_err(label: &str, e: io::Error) -> DebError {
    DebError::Tar { deb: label.into(), reason: crate::pathbytes::escape_bounded(e.to_string().as_bytes(), 1024) }
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

/// A name or text from the package as an error message shows it: escaped, and cut short
/// (a name can be as long as the archive lets it be).
fn shown(bytes: &[u8]) -> String {
    crate::pathbytes::escape_bounded(bytes, 512)
}

fn not_a_deb(label: &str, reason: &str) -> DebError {
    DebError::NotADeb { deb: label.into(), reason: reason.into() }
}

/// Extracts an (already decompressed) tar stream into `dest`. `label` names the source in
/// errors and warnings.
pub fn unpack_data_tar<R: Read>(tar_stream: R, dest: &Path, label: &str) -> Result<UnpackReport, DebError> {
    // Without a filter nothing is skipped, so no hard link waits for skipped bytes.
    unpack_tar_filtered(ForwardSeek::new(tar_stream), dest, label, None, DirModes::Exact).map(|(report, _)| report)
}

/// A kept hard link whose target the filter skipped: dpkg -x followed by the classic
/// buildpack's `rm` leaves it a regular file with the target's bytes, mode and mtime. It is
/// created empty where the link entry is, kept open, and filled through that descriptor by a
/// second read of the archive ([`fill_deferred`]): the inode is filled whichever of its
/// names are still there (later links to it share it; a later entry at its path replaces it).
struct Deferred {
    /// The archive entry (by position) whose contents it gets.
    index: u64,
    path: PathBuf,
    file: File,
}

/// Kept hard links to skipped files in one package, at most (each holds a descriptor until
/// the second read).
const MAX_DEFERRED: usize = 1000;

/// Unpacks a tar stream; contents of skipped entries are seeked over, not read. Returns the
/// hard links left to fill with skipped contents.
fn unpack_tar_filtered<R: Read + io::Seek>(
    tar_stream: R,
    dest: &Path,
    label: &str,
    filter: Option<&mut dyn EntryFilter>,
    modes: DirModes,
) -> Result<(UnpackReport, Vec<Deferred>), DebError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| DebError::Write { deb: label.into(), path, source }
    };
    fs::create_dir_all(dest).map_err(write_err(dest))?;
    let pool = WriterPool::new();
    let writers = crate::fsat::workers();
    let mut unpacker = std::thread::scope(|scope| -> Result<Unpacker, DebError> {
        for _ in 0..writers {
            scope.spawn(|| pool.work());
        }
        let _close_on_exit = pool.closer();
        let mut unpacker = Unpacker {
            dest,
            label,
            known_dirs: HashSet::new(),
            dirs: Vec::new(),
            report: UnpackReport::default(),
            filter,
            pool: &pool,
            queued: HashSet::new(),
            index: 0,
            skipped_files: HashMap::new(),
            skipped_links: HashMap::new(),
            deferred: Vec::new(),
            skipped_entries: 0,
        };
        let result = (|| -> Result<(), DebError> {
            let mut archive = tar::Archive::new(tar_stream);
            let mut buf = vec![0u8; 1 << 16];
            let entries = archive.entries_with_seek().map_err(|e| tar_err(label, e))?;
            crate::tarstream::for_each_entry(entries, |e| tar_err(label, e), |entry, meta| {
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
    // Directory modes and mtimes last, deepest first: filling a directory changes its mtime,
    // and a parent that loses its owner's write or search bits is done after its children.
    // (The sort is stable: a directory listed twice gets its later entry's mode.)
    let mut dirs = std::mem::take(&mut unpacker.dirs);
    dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
    for (rel, mode, mtime) in dirs {
        let path = dest.join(&rel);
        let on_disk = if modes == DirModes::Stored { crate::layerindex::stored_dir_mode(mode) } else { mode };
        fs::set_permissions(&path, fs::Permissions::from_mode(on_disk)).map_err(write_err(&path))?;
        crate::fsat::set_mtime(&path, (mtime.unix_seconds(), i64::from(mtime.nanoseconds()))).map_err(write_err(&path))?;
        if modes == DirModes::Stored {
            use std::os::unix::fs::MetadataExt;
            let meta = fs::symlink_metadata(&path).map_err(write_err(&path))?;
            let id = (meta.dev(), meta.ino());
            if on_disk == mode {
                unpacker.report.dir_modes.remove(&id);
            } else {
                unpacker.report.dir_modes.insert(id, mode);
            }
        }
    }
    let unnamed = unpacker.skipped_entries - unpacker.report.skipped.len() as u64;
    if unnamed > 0 {
        unpacker.report.skipped.push(format!("{label}: skipped {unnamed} more device nodes or FIFOs"));
    }
    Ok((unpacker.report, unpacker.deferred))
}

/// Second read of the archive: fills each [`Deferred`] link with the contents of its entry,
/// in place (later hard links to it share the inode). Stops after the last entry needed.
fn fill_deferred(tar: &mut dyn TarStream, label: &str, deferred: &mut [Deferred]) -> Result<Vec<Written>, DebError> {
    let last = deferred.iter().map(|d| d.index).max().unwrap_or(0);
    let mut wanted: HashMap<u64, Vec<&mut Deferred>> = HashMap::new();
    for d in deferred {
        wanted.entry(d.index).or_default().push(d);
    }
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries_with_seek().map_err(|e| tar_err(label, e))?;
    let (mut index, mut written, mut buf) = (0u64, Vec::new(), vec![0u8; 1 << 16]);
    let write_err = |e: WriteError| DebError::Write { deb: label.into(), path: e.path, source: e.source };
    crate::tarstream::for_each_entry(entries, |e| tar_err(label, e), |entry, meta| {
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
            first.file.rewind().map_err(|source| DebError::Write { deb: label.into(), path: first.path.clone(), source })?;
            let mut source = &first.file;
            written.push(fill_in_place(&mut link.file, &link.path, &mut source, mode, mtime_of(mtime), &mut buf).map_err(write_err)?);
        }
        written.push(w);
        Ok(here < last)
    })?;
    Ok(written)
}

struct Unpacker<'a, 'f> {
    dest: &'a Path,
    label: &'a str,
    /// Relative paths known to be real directories inside `dest`. Paths are kept as bytes
    /// (hashing a `Path` parses its components): all of them are clean, so bytes compare
    /// as paths do.
    known_dirs: HashSet<Vec<u8>>,
    dirs: Vec<(PathBuf, u32, FileTime)>,
    report: UnpackReport,
    filter: Option<&'f mut dyn EntryFilter>,
    pool: &'a WriterPool,
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
const MAX_WARNINGS: usize = 20;

/// Files up to this size are read into memory and written by the pool; bigger ones are
/// streamed to disk by the reader itself.
const POOLED_FILE: u64 = 8 << 20;

impl Unpacker<'_, '_> {
    fn written_err(&self, e: WriteError) -> DebError {
        DebError::Write { deb: self.label.into(), path: e.path, source: e.source }
    }

    fn record(&mut self, w: Written) {
        self.report.digests.insert(w.id, w.sha256);
        self.report.files += 1;
        self.report.bytes += w.bytes;
    }

    /// Waits for queued files if `rel` or one of its parents is among them.
    fn order_after_queued(&mut self, rel: &Path, always: bool) -> Result<(), DebError> {
        let rel = rel.as_os_str().as_bytes();
        let parents = rel.iter().enumerate().filter(|&(_, &b)| b == b'/').map(|(at, _)| &rel[..at]);
        if !self.queued.is_empty() && (always || self.queued.contains(rel) || parents.clone().any(|p| self.queued.contains(p))) {
            self.pool.drain().map_err(|e| self.written_err(e))?;
            self.queued.clear();
        }
        Ok(())
    }

    fn unsafe_entry(&self, entry: &str, reason: &str) -> DebError {
        DebError::Unsafe { deb: self.label.into(), entry: entry.into(), reason: reason.into() }
    }

    fn write_err(&self, path: &Path) -> impl FnOnce(io::Error) -> DebError + use<> {
        let (deb, path) = (self.label.to_string(), path.to_owned());
        move |source| DebError::Write { deb, path, source }
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
        let parent_real = self.real_dir(&parent, &name)?;
        let file_name = rel.file_name().map(PathBuf::from).unwrap_or_default();
        let real = parent_real.join(&file_name);
        let path = self.dest.join(&real);
        self.order_after_queued(&real, kind.is_hard_link())?;
        if kind.is_file() || kind == tar::EntryType::Continuous {
            let size = header.size().unwrap_or(0);
            let mtime = mtime_of(mtime);
            if size <= POOLED_FILE {
                let mut data = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut data).map_err(|e| tar_err(self.label, e))?;
                self.pool.submit(path, data, mode, mtime).map_err(|e| self.written_err(e))?;
                self.queued.insert(real.as_os_str().as_bytes().to_vec());
            } else {
                self.pool.wake();
                let w = write_file(&path, entry, mode, mtime, buf).map_err(|e| self.written_err(e))?;
                self.record(w);
            }
            return Ok(());
        }
        if kind.is_dir() {
            match fs::symlink_metadata(&path).ok() {
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    fs::remove_file(&path).map_err(self.write_err(&path))?;
                    fs::create_dir(&path).map_err(self.write_err(&path))?;
                }
                None => fs::create_dir(&path).map_err(self.write_err(&path))?,
            }
            self.known_dirs.insert(real.as_os_str().as_bytes().to_vec());
            self.dirs.push((real, mode, mtime));
            self.report.dirs += 1;
            return Ok(());
        }
        self.clear_for_non_dir(&path, &name)?;
        if kind.is_symlink() {
            let target = meta.link.as_deref().filter(|t| !t.is_empty());
            let target = target.ok_or_else(|| self.unsafe_entry(&name, "symlink without a target"))?;
            // The target's bytes exactly (dpkg keeps them, UTF-8 or not).
            let target = Path::new(OsStr::from_bytes(target));
            std::os::unix::fs::symlink(target, &path).map_err(self.write_err(&path))?;
            filetime::set_symlink_file_times(&path, mtime, mtime).map_err(self.write_err(&path))?;
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
                let created = File::options().read(true).write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&path);
                let file = created.map_err(self.write_err(&path))?;
                self.deferred.push(Deferred { index: target_index, path, file });
                return Ok(());
            }
            let target_parent = self.real_dir(target_rel.parent().unwrap_or(Path::new("")), &name)?;
            let target = self.dest.join(target_parent).join(target_rel.file_name().unwrap_or_default());
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_file() => {}
                _ => return Err(self.unsafe_entry(&name, "hard link target is not a file extracted earlier")),
            }
            fs::hard_link(&target, &path).map_err(self.write_err(&path))?;
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
    fn clear_for_non_dir(&self, path: &Path, name: &str) -> Result<(), DebError> {
        make_room(path).map_err(|e| match e.kind() {
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
    /// directories are created (as tar does). Returns the resolved relative path.
    fn real_dir(&mut self, rel: &Path, entry: &str) -> Result<PathBuf, DebError> {
        if rel.as_os_str().is_empty() || self.known_dirs.contains(rel.as_os_str().as_bytes()) {
            return Ok(rel.to_path_buf());
        }
        let mut resolved: Vec<OsString> = Vec::new();
        let mut pending: Vec<OsString> = rel.components().rev().map(|c| c.as_os_str().to_owned()).collect();
        let mut hops = 0;
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
            let candidate: PathBuf = resolved.iter().chain(std::iter::once(&part)).collect();
            let full = self.dest.join(&candidate);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    let target = fs::read_link(&full).map_err(self.write_err(&full))?;
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
                Ok(m) if m.is_dir() => resolved.push(part),
                Ok(_) => {
                    return Err(DebError::Unsupported {
                        deb: self.label.into(),
                        entry: entry.into(),
                        reason: format!("{} is a file, not a directory", shown(candidate.as_os_str().as_bytes())),
                    });
                }
                Err(_) => {
                    fs::create_dir(&full).map_err(self.write_err(&full))?;
                    resolved.push(part);
                }
            }
        }
        let real: PathBuf = resolved.iter().collect();
        if real.as_path() == rel {
            self.known_dirs.insert(real.as_os_str().as_bytes().to_vec());
        }
        Ok(real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw tar entry: name bytes written verbatim (the tar crate refuses `..` itself).
    struct Raw<'a> {
        name: &'a [u8],
        kind: tar::EntryType,
        link: &'a [u8],
        data: &'a [u8],
    }

    fn raw<'a>(name: &'a (impl AsRef<[u8]> + ?Sized), kind: tar::EntryType) -> Raw<'a> {
        Raw { name: name.as_ref(), kind, link: b"", data: b"" }
    }

    fn tar_of(entries: &[Raw]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..e.name.len()].copy_from_slice(e.name);
            h.as_gnu_mut().unwrap().linkname[..e.link.len()].copy_from_slice(e.link);
            h.set_entry_type(e.kind);
            h.set_mode(if e.kind.is_dir() { 0o755 } else { 0o644 });
            h.set_size(e.data.len() as u64);
            h.set_mtime(1_600_000_000);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(e.data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn deb_of(data_tar: &[u8]) -> Vec<u8> {
        deb_with(&tar_of(&[Raw { data: b"Package: t\n", ..raw("./control", tar::EntryType::Regular) }]), data_tar)
    }

    fn deb_with(control: &[u8], data_tar: &[u8]) -> Vec<u8> {
        let mut out = b"!<arch>\n".to_vec();
        for (name, body) in [("debian-binary", &b"2.0\n"[..]), ("control.tar", control), ("data.tar", data_tar)] {
            out.extend_from_slice(format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, "100644", body.len()).as_bytes());
            out.extend_from_slice(body);
            if body.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    /// Unpacks into `<tmp>/root/target` and returns the error and the tmp dir.
    fn unpack_hostile(entries: &[Raw]) -> (Result<UnpackReport, DebError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("evil.deb");
        fs::write(&deb, deb_of(&tar_of(entries))).unwrap();
        let target = dir.path().join("root/target");
        (unpack_deb(&deb, &target), dir)
    }

    fn assert_refused(result: Result<UnpackReport, DebError>, entry: &str) {
        match result {
            Err(DebError::Unsafe { entry: e, .. }) => assert_eq!(e, entry),
            other => panic!("expected refusal of {entry}, got {other:?}"),
        }
    }

    #[test]
    fn refuses_parent_dir_components() {
        let (r, dir) = unpack_hostile(&[Raw { data: b"x", ..raw("./../evil", tar::EntryType::Regular) }]);
        assert_refused(r, "./../evil");
        assert!(!dir.path().join("root/evil").exists());
        let (r, _) = unpack_hostile(&[Raw { data: b"x", ..raw("./a/../../evil", tar::EntryType::Regular) }]);
        assert_refused(r, "./a/../../evil");
    }

    #[test]
    fn refuses_absolute_paths() {
        let (r, _) = unpack_hostile(&[Raw { data: b"x", ..raw("/tmp/ddslug-evil", tar::EntryType::Regular) }]);
        assert_refused(r, "/tmp/ddslug-evil");
        assert!(!Path::new("/tmp/ddslug-evil").exists());
    }

    #[test]
    fn refuses_writing_through_a_symlink_that_leaves() {
        let (r, dir) = unpack_hostile(&[
            Raw { link: b"../..", ..raw("./up", tar::EntryType::Symlink) },
            Raw { data: b"x", ..raw("./up/escaped", tar::EntryType::Regular) },
        ]);
        assert_refused(r, "./up/escaped");
        assert!(!dir.path().join("escaped").exists());
        let (r, _) = unpack_hostile(&[
            Raw { link: b"/tmp", ..raw("./abs", tar::EntryType::Symlink) },
            Raw { data: b"x", ..raw("./abs/escaped", tar::EntryType::Regular) },
        ]);
        assert_refused(r, "./abs/escaped");
    }

    #[test]
    fn follows_symlinks_that_stay_inside() {
        let (r, dir) = unpack_hostile(&[
            raw("./usr/", tar::EntryType::Directory),
            raw("./usr/lib/", tar::EntryType::Directory),
            Raw { link: b"usr/lib", ..raw("./lib", tar::EntryType::Symlink) },
            Raw { data: b"so", ..raw("./lib/libx.so", tar::EntryType::Regular) },
        ]);
        r.unwrap();
        assert_eq!(fs::read(dir.path().join("root/target/usr/lib/libx.so")).unwrap(), b"so");
    }

    #[test]
    fn refuses_hard_links_leaving_the_tree() {
        let (r, _) = unpack_hostile(&[Raw { link: b"../../etc/passwd", ..raw("./pw", tar::EntryType::Link) }]);
        assert_refused(r, "./pw");
        let (r, _) = unpack_hostile(&[Raw { link: b"/etc/passwd", ..raw("./pw", tar::EntryType::Link) }]);
        assert_refused(r, "./pw");
    }

    #[test]
    fn skips_devices_and_fifos_with_warnings() {
        let (r, dir) = unpack_hostile(&[
            raw("./dev/", tar::EntryType::Directory),
            raw("./dev/null", tar::EntryType::Char),
            raw("./dev/sda", tar::EntryType::Block),
            raw("./dev/pipe", tar::EntryType::Fifo),
            Raw { data: b"ok", ..raw("./dev/regular", tar::EntryType::Regular) },
        ]);
        let report = r.unwrap();
        assert_eq!(report.skipped.len(), 3, "{:?}", report.skipped);
        // However many there are, a report names only the first few.
        let fifos: Vec<String> = (0..500).map(|i| format!("./dev/p{i}")).collect();
        let mut entries = vec![raw("./dev/", tar::EntryType::Directory)];
        entries.extend(fifos.iter().map(|n| raw(n, tar::EntryType::Fifo)));
        let (many, _) = unpack_hostile(&entries);
        let many = many.unwrap().skipped;
        assert_eq!(many.len(), MAX_WARNINGS + 1);
        assert!(many[MAX_WARNINGS].ends_with("skipped 480 more device nodes or FIFOs"), "{:?}", many.last());
        assert!(report.skipped[0].contains("device node ./dev/null"));
        assert!(report.skipped[2].contains("FIFO ./dev/pipe"));
        assert!(!dir.path().join("root/target/dev/null").exists());
        assert_eq!(report.files, 1);
    }

    #[test]
    fn replaced_symlink_is_not_followed() {
        // A later regular file at the path of a symlink replaces the link, never its target.
        let (r, dir) = unpack_hostile(&[
            Raw { link: b"/tmp/ddslug-victim", ..raw("./f", tar::EntryType::Symlink) },
            Raw { data: b"new", ..raw("./f", tar::EntryType::Regular) },
        ]);
        r.unwrap();
        assert!(!Path::new("/tmp/ddslug-victim").exists());
        assert_eq!(fs::read(dir.path().join("root/target/f")).unwrap(), b"new");
    }

    #[test]
    fn archive_order_holds_while_files_are_written_in_parallel() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let many: Vec<String> = (0..300).map(|i| format!("./d/f{i}")).collect();
        let mut entries = vec![raw("./d/", Directory)];
        entries.extend(many.iter().map(|n| Raw { data: n.as_bytes(), ..raw(n, Regular) }));
        entries.extend([
            // The same path again: the later entry wins.
            Raw { data: b"second", ..raw("./d/f7", Regular) },
            // A hard link to a file that may still be queued.
            Raw { link: b"./d/f7", ..raw("./d/hard", Link) },
            // A symlink replacing a queued file.
            Raw { link: b"f1", ..raw("./d/f9", Symlink) },
            // A file replacing that symlink.
            Raw { data: b"last", ..raw("./d/f9", Regular) },
        ]);
        let (r, dir) = unpack_hostile(&entries);
        let report = r.unwrap();
        let d = dir.path().join("root/target/d");
        assert_eq!(fs::read(d.join("f7")).unwrap(), b"second");
        assert_eq!(fs::read(d.join("hard")).unwrap(), b"second");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(d.join("hard")).unwrap().ino(), fs::metadata(d.join("f7")).unwrap().ino());
        assert!(!fs::symlink_metadata(d.join("f9")).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(d.join("f9")).unwrap(), b"last");
        assert_eq!(fs::read(d.join("f299")).unwrap(), b"./d/f299");
        assert_eq!(report.files, 302);
        assert_eq!(report.hardlinks, 1);
        // Every file's digest is that of what is on disk.
        for name in ["f7", "f9", "f0", "f123"] {
            let meta = fs::metadata(d.join(name)).unwrap();
            let digest = report.digests.get(&FileId::of(&meta)).copied();
            assert_eq!(digest, Some(Sha256::of(&fs::read(d.join(name)).unwrap())), "{name}");
        }
    }

    #[test]
    fn names_and_targets_keep_their_bytes() {
        use tar::EntryType::{Regular, Symlink};
        let tar = tar_of(&[
            Raw { data: b"1", ..raw(b"./a\xe9", Regular) },
            Raw { data: b"2", ..raw(b"./a\xff", Regular) },
            Raw { link: b"a\xe9", ..raw("./l", Symlink) },
        ]);
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("bytes.deb");
        fs::write(&deb, deb_of(&tar)).unwrap();
        let target = dir.path().join("t");
        let report = unpack_deb(&deb, &target).unwrap();
        assert_eq!((report.files, report.symlinks), (2, 1));
        let at = |name: &[u8]| target.join(OsStr::from_bytes(name));
        assert_eq!(fs::read(at(b"a\xe9")).unwrap(), b"1", "two names that differ only in bytes that are not UTF-8 do not collide");
        assert_eq!(fs::read(at(b"a\xff")).unwrap(), b"2");
        assert_eq!(fs::read_link(at(b"l")).unwrap().as_os_str().as_bytes(), b"a\xe9");
    }

    /// Skips everything under `doc/`.
    struct SkipDoc;

    impl EntryFilter for SkipDoc {
        fn skip(&mut self, rel: &[u8], _: bool, _: u64) -> bool {
            rel.starts_with(b"doc")
        }
    }

    #[test]
    fn kept_hard_links_to_skipped_files_become_the_files() {
        use tar::EntryType::{Directory, Link, Regular};
        let mut entries = vec![raw("./doc/", Directory), raw("./keep/", Directory)];
        entries.push(Raw { data: b"docs", ..raw("./doc/readme", Regular) });
        // Enough in between that the second read has something to skip.
        let filler: Vec<String> = (0..50).map(|i| format!("./keep/f{i}")).collect();
        entries.extend(filler.iter().map(|n| Raw { data: n.as_bytes(), ..raw(n, Regular) }));
        entries.extend([
            Raw { link: b"./doc/readme", ..raw("./keep/link", Link) },
            // A kept link to that link, a skipped link to the skipped file and a kept link to
            // the skipped link: all of them the same file in the end.
            Raw { link: b"./keep/link", ..raw("./keep/link2", Link) },
            Raw { link: b"./doc/readme", ..raw("./doc/alias", Link) },
            Raw { link: b"./doc/alias", ..raw("./keep/link3", Link) },
            // A link that a later entry replaces keeps the later entry.
            Raw { link: b"./doc/readme", ..raw("./keep/replaced", Link) },
            Raw { data: b"later", ..raw("./keep/replaced", Regular) },
        ]);
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("links.deb");
        fs::write(&deb, deb_of(&tar_of(&entries))).unwrap();
        let target = dir.path().join("t");
        let report = unpack_deb_filtered(&deb, "links.deb", &target, Some(&mut SkipDoc), Integrity::Unverified).unwrap();
        assert!(!target.join("doc").exists());
        let keep = target.join("keep");
        use std::os::unix::fs::MetadataExt;
        for name in ["link", "link2", "link3"] {
            assert_eq!(fs::read(keep.join(name)).unwrap(), b"docs", "{name}");
            let meta = fs::metadata(keep.join(name)).unwrap();
            assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o644, 1_600_000_000), "{name}: the target's mode and mtime");
            assert_eq!(report.digests.get(&FileId::of(&meta)), Some(&Sha256::of(b"docs")), "{name}: digest recorded");
        }
        let ino = |name: &str| fs::metadata(keep.join(name)).unwrap().ino();
        assert_eq!(ino("link"), ino("link2"), "links to one another stay links");
        assert_eq!(fs::read(keep.join("replaced")).unwrap(), b"later");
        // The first read's files, the later file, and the filled links still named (link and
        // link2 are one file).
        assert_eq!(report.files, 50 + 1 + 2);
    }

    #[test]
    fn control_archives_are_read_within_limits() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("c.deb");
        let control = |entries: &[Raw]| deb_with(&tar_of(entries), &tar_of(&[]));
        fs::write(&deb, control(&[Raw { data: b"Package: ok\n", ..raw("./control", tar::EntryType::Regular) }])).unwrap();
        assert_eq!(read_control(&deb).unwrap(), "Package: ok\n");
        let big = vec![b'x'; MAX_CONTROL_FILE as usize + 1];
        fs::write(&deb, control(&[Raw { data: &big, ..raw("./control", tar::EntryType::Regular) }])).unwrap();
        let err = read_control(&deb).unwrap_err().to_string();
        assert!(err.contains("the control file is bigger than ddslug's limit of 1048576 bytes"), "{err}");
        let huge = vec![0u8; MAX_CONTROL_TAR as usize];
        fs::write(&deb, control(&[Raw { data: &huge, ..raw("./postinst", tar::EntryType::Regular) }])).unwrap();
        let err = read_control(&deb).unwrap_err().to_string();
        assert!(err.contains("control.tar, uncompressed, is bigger than ddslug's limit of 16777216 bytes"), "{err}");
        fs::write(&deb, control(&[])).unwrap();
        assert!(read_control(&deb).unwrap_err().to_string().contains("no control file"));
    }

    #[test]
    fn not_a_deb() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.deb");
        fs::write(&path, b"PK\x03\x04 zip").unwrap();
        assert!(matches!(unpack_deb(&path, dir.path()), Err(DebError::NotADeb { .. })));
    }
}
