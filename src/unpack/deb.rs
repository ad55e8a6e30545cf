//! The .deb unpacker: `ar` container → `data.tar.{xz,gz,zst,bz2,lzma,}` → files, like
//! `dpkg-deb -x`. The container is read as dpkg-deb reads it ([`crate::unpack::ar`]: what it refuses
//! is refused, with its reason), the member decompressed and its tar entries read within
//! bounds ([`crate::unpack::tarstream`]), and the entries written by [`crate::unpack::extract`].
//!
//! Contract: streams (no member is held in memory) and never writes outside the target
//! directory. Entries with `..` or absolute paths, hard links leaving the tree, and writes
//! through a symlink that leads outside the tree are refused with an error naming the entry.
//! Names and symlink targets are written with their exact bytes, UTF-8 or not, and symlink
//! targets verbatim (relative or absolute), as dpkg does; permission bits
//! (setuid included) and mtimes are restored; device nodes and FIFOs are skipped with a
//! warning. Ownership is not changed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::fsat::Dir;
use crate::unpack::ar::{ArReader, Compression, Want};
/// The members dpkg-deb reads of a .deb, or why it refuses it (a fuzz target's entry point).
pub use crate::unpack::ar::list_members;
use crate::unpack::extract::{DirModes, fill_deferred, unpack_tar_filtered, unpack_tar_into};
use crate::fetch::{FileRange, Progress};
use crate::hash::Digests;
use crate::store::treehash::FileId;
use crate::unpack::xzseek::ForwardSeek;

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
    /// [`scan_tree_known`]: crate::store::treehash::scan_tree_known
    pub digests: HashMap<FileId, Digests>,
    /// For a multi-block data.tar.xz: how many blocks had to be decoded.
    pub xz_blocks: Option<crate::unpack::xzseek::BlockStats>,
    /// The exact permission bits of directories left with other bits on disk, by
    /// `(dev, ino)`: [`unpack_deb_filtered`] leaves every directory owner-accessible (see
    /// [`crate::store::layerindex::stored_dir_mode`]).
    pub dir_modes: HashMap<(u64, u64), u32>,
}


/// Why a .deb could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{deb}: {error}")]
    Io { deb: String, error: io::Error },
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
    #[error("{deb}: writing {}: {error}", crate::pathbytes::escape_bounded(path.as_os_str().as_bytes(), 1024))]
    Write { deb: String, path: PathBuf, error: io::Error },
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
    let label = deb.display().to_string();
    let file = File::open(deb).map_err(|error| DebError::Io { deb: label.clone(), error })?;
    let target = open_target(dest, &label)?;
    unpack(&file, &label, (target, dest), None, Integrity::Unverified, DirModes::Exact)
}

/// The directory `dest` a caller names (made if missing), opened: symlinks in that path
/// are the caller's choice; nothing below it is ever reached by path.
fn open_target(dest: &Path, label: &str) -> Result<Dir, DebError> {
    let write_err = |error| DebError::Write { deb: label.into(), path: dest.to_owned(), error };
    std::fs::create_dir_all(dest).map_err(write_err)?;
    Dir::open_given(dest).map_err(write_err)
}

/// [`unpack_deb`] of the package open as `deb` (read through that descriptor only: the
/// blob the store checked, or the download being written), leaving out what `filter`
/// skips. A multi-block data.tar.xz is read block by block ([`crate::unpack::xzseek`]):
/// blocks that hold only skipped contents are never decoded. `label` names the package in
/// errors and warnings (its file name, say, rather than the partial download or the blob
/// its bytes are in). `dest` is the target, opened by the caller (a store's staging
/// directory, made without following any symlink), with its path for messages. Unlike `dpkg-deb -x`, directories are left with the store's modes
/// ([`crate::store::layerindex::stored_dir_mode`]); the archive's are in the report's
/// `dir_modes`.
pub fn unpack_deb_filtered(
    deb: &File,
    label: &str,
    dest: (Dir, &Path),
    filter: Option<&mut dyn EntryFilter>,
    integrity: Integrity,
) -> Result<UnpackReport, DebError> {
    unpack(deb, label, dest, filter, integrity, DirModes::Stored)
}

fn unpack(
    deb: &File,
    label: &str,
    dest: (Dir, &Path),
    filter: Option<&mut dyn EntryFilter>,
    integrity: Integrity,
    modes: DirModes,
) -> Result<UnpackReport, DebError> {
    let (unpacked, xz_blocks) = read_data_tar(deb, label, integrity, |tar| unpack_tar_into(tar, dest, label, filter, modes))?;
    let (mut report, deferred) = unpacked?;
    report.xz_blocks = xz_blocks;
    if !deferred.is_empty() {
        // Rare: a kept hard link to a stripped file. Its bytes were skipped; read them now.
        let mut deferred = deferred;
        let (filled, _) = read_data_tar(deb, label, integrity, |tar| fill_deferred(tar, label, &mut deferred))?;
        for w in filled? {
            report.digests.insert(w.id, Digests { sha256: w.sha256, xxh3: w.xxh3 });
            report.files += 1;
            report.bytes += w.bytes;
        }
    }
    Ok(report)
}

/// A tar stream that can skip forward.
pub(crate) trait TarStream: Read + io::Seek {}
impl<T: Read + io::Seek> TarStream for T {}

/// Opens the data member of `deb` (found as dpkg-deb finds it) and gives its tar stream to
/// `read`: a multi-block xz through the block reader, anything else decompressed on a thread
/// of its own. Returns what `read` returned (its errors are the caller's to look at) and, for
/// a multi-block xz, how many blocks were decoded.
fn read_data_tar<T>(
    file: &File,
    label: &str,
    integrity: Integrity,
    read: impl FnOnce(&mut dyn TarStream) -> T,
) -> Result<(T, Option<crate::unpack::xzseek::BlockStats>), DebError> {
    let io_err = |source| DebError::Io { deb: label.into(), error: source };
    let growing = match integrity {
        Integrity::Downloading(progress) => Some(progress),
        _ => None,
    };
    // A download in progress is checked against its SHA-256 before the layer is kept, so
    // the compressor's own checks (CRC64, CRC32) would add nothing there either.
    let checks = matches!(integrity, Integrity::Unverified);
    let sequential = FileRange { file, pos: 0, end: u64::MAX, growing };
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
            Some(progress) => crate::unpack::xzseek::arriving(file, start, size, progress).map_err(io_err)?,
            None => crate::unpack::xzseek::blocks(file, start, size).map(crate::unpack::xzseek::Layout::Indexed),
        };
        if let Some(layout) = layout {
            return Ok(std::thread::scope(|scope| {
                let mut reader = crate::unpack::xzseek::BlockReader::new(scope, file, start, size, layout, checks);
                let result = read(&mut reader);
                (result, Some(reader.stats()))
            }));
        }
    }
    let body = Exact { inner: FileRange { file, pos: start, end: start + size, growing }, left: size, member: member.shown() };
    let decompressed: Box<dyn Read + Send> = if checks || compression != Compression::Gzip {
        crate::unpack::tarstream::decompressor(compression, body).map_err(io_err)?
    } else {
        Box::new(crate::unpack::tarstream::gzip_unchecked(body).map_err(io_err)?)
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
pub(crate) fn pipelined<T>(mut decompressed: Box<dyn Read + Send + '_>, read: impl FnOnce(&mut dyn TarStream) -> T) -> T {
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
        read(&mut ForwardSeek::new(ChunkReader::new(rx, recycle)))
    })
}

/// Reads the chunks another thread sends (a decompressor, a download), and sends them back
/// once read. The stream ends when the sender is dropped.
pub(crate) struct ChunkReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl ChunkReader {
    pub(crate) fn new(rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>, recycle: std::sync::mpsc::Sender<Vec<u8>>) -> ChunkReader {
        ChunkReader { rx, recycle, chunk: Vec::new(), at: 0 }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    let read = std::mem::replace(&mut self.chunk, chunk?);
                    // The sending thread may have ended: then the chunk is just freed.
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
    let io_err = |source| DebError::Io { deb: label.clone(), error: source };
    let file = File::open(deb).map_err(io_err)?;
    let mut ar = ArReader::new(BufReader::new(file), &label)?;
    let (member, compression) = ar.find(Want::Control, &mut |_| {})?;
    let body = Exact { inner: ar.inner_mut(), left: member.size, member: member.shown() };
    let decompressed = crate::unpack::tarstream::decompressor(compression, body).map_err(io_err)?;
    let bounded = Bounded::new(decompressed, MAX_CONTROL_TAR, "control.tar, uncompressed,");
    let mut archive = tar::Archive::new(bounded);
    let entries = archive.entries().map_err(|e| tar_err(&label, e))?;
    let mut text = None;
    crate::unpack::tarstream::for_each_entry(entries, |e| tar_err(&label, e), |entry, meta| {
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
pub(crate) fn tar_err(label: &str, e: io::Error) -> DebError {
    DebError::Tar { deb: label.into(), reason: crate::pathbytes::escape_bounded(e.to_string().as_bytes(), 1024) }
}


/// A name or text from the package as an error message shows it: escaped, and cut short
/// (a name can be as long as the archive lets it be).
pub(crate) fn shown(bytes: &[u8]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::extract::MAX_WARNINGS;
    use std::ffi::OsStr;
    use std::fs;

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

    /// A cause is printed once: an error whose message shows its cause must not also hand
    /// it on as its source, or anyhow's `{:#}` prints it twice ("premature eof: premature eof").
    #[test]
    fn errors_print_their_cause_once() {
        let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "premature eof");
        let io = DebError::Io { deb: "a.deb".into(), error: eof() };
        assert_eq!(format!("{:#}", anyhow::Error::new(io)), "a.deb: premature eof");
        let write = DebError::Write { deb: "a.deb".into(), path: "x/y".into(), error: eof() };
        assert_eq!(format!("{:#}", anyhow::Error::new(write)), "a.deb: writing x/y: premature eof");
        let tree = crate::store::treehash::TreeError::Io { path: "x".into(), error: eof() };
        assert_eq!(format!("{:#}", anyhow::Error::new(tree)), "x: premature eof");
        let manifest = crate::slug::manifest::ManifestError::Io { path: "m.json".into(), error: eof() };
        assert_eq!(format!("{:#}", anyhow::Error::new(manifest)), "m.json: premature eof");
        let layer = crate::store::layer::LayerError::Io { path: "l".into(), error: eof() };
        assert_eq!(format!("{:#}", anyhow::Error::new(layer)), "l: premature eof");
        let recipe = crate::unpack::recipe::RecipeError::Io { path: "r".into(), error: eof() };
        assert_eq!(format!("{:#}", anyhow::Error::new(recipe)), "r: premature eof");
        let copy = crate::slug::materialize::CopyError { path: "c".into(), error: eof() };
        assert_eq!(format!("{:#}", anyhow::Error::new(copy)), "c: premature eof");
        let store = crate::store::StoreError::Io { path: "s".into(), error: eof() };
        assert!(!format!("{:#}", anyhow::Error::new(store)).contains("premature eof: premature eof"));
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
            let digest = report.digests.get(&FileId::of(&meta)).map(|d| d.sha256);
            assert_eq!(digest, Some(crate::hash::Sha256::of(&fs::read(d.join(name)).unwrap())), "{name}");
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
        let report = unpack_deb_filtered(&File::open(&deb).unwrap(), "links.deb", (open_target(&target, "t").unwrap(), &target), Some(&mut SkipDoc), Integrity::Unverified).unwrap();
        assert!(!target.join("doc").exists());
        let keep = target.join("keep");
        use std::os::unix::fs::MetadataExt;
        for name in ["link", "link2", "link3"] {
            assert_eq!(fs::read(keep.join(name)).unwrap(), b"docs", "{name}");
            let meta = fs::metadata(keep.join(name)).unwrap();
            assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o644, 1_600_000_000), "{name}: the target's mode and mtime");
            assert_eq!(report.digests.get(&FileId::of(&meta)).map(|d| d.sha256), Some(crate::hash::Sha256::of(b"docs")), "{name}: digest recorded");
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
