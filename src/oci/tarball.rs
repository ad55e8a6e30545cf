//! Reproducible OCI layer tarballs (`application/vnd.oci.image.layer.v1.tar+gzip`, or
//! `+zstd` for the shared layer cache) from trees on disk: the same entries give the same
//! bytes, on any machine and any day.
//!
//! The rules (README, "Reproducibility", beside the tree hash's):
//! * entries sorted by their path bytes (a directory before what it holds), each directory
//!   once; names and symlink targets are bytes exactly as on disk, never normalised;
//! * POSIX ustar headers: uid and gid 0, no user or group names, device numbers 0, no
//!   xattrs or ACLs; permission bits `mode & 0o7777` (setuid, setgid, sticky kept); a
//!   directory's name ends in `/`;
//! * a path or target longer than the 100 bytes a header holds goes into a PAX extended
//!   header (`path`, `linkpath`; `hdrcharset=BINARY` when the bytes are not UTF-8) named
//!   `././@PaxHeader`, mode 0644, mtime 0;
//! * every regular file is stored whole: which files are hard links of each other is not
//!   part of a tree (the tree hash does not cover it), so it is not part of a layer either;
//! * mtimes are whole seconds, each `min(mtime on disk, clamp)` (`SOURCE_DATE_EPOCH`'s
//!   clamping): the caller passes the package's own time, so that what a build wrote
//!   (edited directories, the wrapper, the start script) does not carry the build's time;
//! * gzip by flate2's zlib-rs backend at level 6, header mtime 0, no file name, OS byte 255
//!   (unknown): `diff_id` (of the tar) depends only on the entries; `digest` (of the gzip)
//!   also on the compressor, pinned by Cargo.lock. (zlib-rs 0.6 chooses its match hash by
//!   level only, never by CPU feature, unlike Chromium's zlib: the same stream on any CPU.)
//!   zstd (shared layers) by the libzstd that zstd-sys bundles, at a fixed level, one thread,
//!   no checksum, no content size: again pinned by Cargo.lock. The stream is cut into frames:
//!   a frame ends after the first entry that brings it to the compressor's frame size (tar
//!   bytes), so that each frame holds whole entries and decodes alone (a pull unpacks frames
//!   on every core); any zstd reader reads the frames in turn as one stream.
//!
//! Contract: sources are only read. Directories are entered and files opened relative to the
//! tree's root without following a symlink (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`,
//! `O_NOFOLLOW`); a file is read for exactly the size listed, and one that changed size
//! since is an error; FIFOs, sockets and devices are refused by name.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::fsat::Dir;
use crate::hash::{Hasher, Sha256};
use crate::pathbytes::{PathBytes, escape_bounded};

/// The most entries a layer takes (the agent has about 24,000).
pub const MAX_ENTRIES: usize = 1_000_000;
/// The largest file a ustar header's 11 octal digits can give a size for (8 GiB - 1).
pub const MAX_FILE: u64 = 0o77777777777;
/// The latest mtime a ustar header holds (11 octal digits: the year 2242).
const MAX_TIME: i64 = 0o77777777777;
/// The gzip level: zlib's default, what Docker and most registries' layers use.
pub const GZIP_LEVEL: u32 = 6;

/// How a layer's tar stream is compressed; each gives its own media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compressor {
    /// `application/vnd.oci.image.layer.v1.tar+gzip`: what every runtime reads.
    Gzip { level: u32 },
    /// `application/vnd.oci.image.layer.v1.tar+zstd` (image-spec 1.1), in frames of whole
    /// entries: a frame ends once it holds `frame` bytes of tar or more.
    Zstd { level: i32, frame: u64 },
}

impl Compressor {
    pub fn media_type(self) -> oci_spec::image::MediaType {
        match self {
            Compressor::Gzip { .. } => oci_spec::image::MediaType::ImageLayerGzip,
            Compressor::Zstd { .. } => oci_spec::image::MediaType::ImageLayerZstd,
        }
    }
}

/// A finished layer blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    /// SHA-256 of the uncompressed tar (the image config's `rootfs.diff_ids`).
    pub diff_id: Sha256,
    /// SHA-256 of the compressed stream (the manifest's layer digest, the blob's name).
    pub digest: Sha256,
    /// Bytes of the compressed stream.
    pub size: u64,
    /// Bytes of each zstd frame, in order (they add up to `size`); empty for gzip.
    pub frames: Vec<u64>,
}

/// A layer could not be assembled or written.
#[derive(Debug, thiserror::Error)]
pub enum TarballError {
    #[error("{}: {error}", escape_bounded(path.as_os_str().as_bytes(), 1024))]
    Io { path: PathBuf, error: io::Error },
    #[error("{}: {reason}", escape_bounded(path.as_os_str().as_bytes(), 1024))]
    Unsupported { path: PathBuf, reason: String },
    #[error("a layer holds at most {MAX_ENTRIES} entries (ddslug's limit); {0} has more")]
    TooManyEntries(String),
    #[error("writing the layer: {0}")]
    Write(io::Error),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> TarballError + '_ {
    move |error| TarballError::Io { path: path.to_owned(), error }
}

/// Where an entry's bytes come from.
#[derive(Clone, Debug)]
enum Source {
    Dir,
    /// The file `name` in the directory `dir` (relative, `/`-separated) below root `root`.
    File { root: usize, dir: Vec<u8>, name: Vec<u8>, size: u64 },
    Symlink { target: Vec<u8> },
}

#[derive(Clone, Debug)]
struct Entry {
    mode: u32,
    mtime: i64,
    source: Source,
}

/// The entries of a layer, by path in the tarball (relative, no leading `/`), gathered from
/// trees and files on disk before anything is written.
#[derive(Default)]
pub struct LayerTree {
    roots: Vec<(PathBuf, Dir)>,
    entries: BTreeMap<Vec<u8>, Entry>,
}

impl LayerTree {
    pub fn new() -> LayerTree {
        LayerTree::default()
    }

    /// Adds a directory entry that has no source on disk (a parent such as `app`).
    pub fn add_dir(&mut self, at: &[u8], mode: u32, mtime: i64) -> Result<(), TarballError> {
        self.put(at, Entry { mode: mode & 0o7777, mtime, source: Source::Dir })
    }

    /// Adds the directory `source` as `at` (`at` empty: its entries at the top, itself not
    /// added) and everything below it, as `lstat` shows it: modes, mtimes, symlink targets.
    pub fn add_tree(&mut self, at: &[u8], source: &Path) -> Result<(), TarballError> {
        let root = Dir::open_given(source).map_err(io_at(source))?;
        if !at.is_empty() {
            let st = root.metadata().map_err(io_at(source))?;
            self.add_dir(at, st.mode, st.mtime.0)?;
        }
        let index = self.roots.len();
        self.roots.push((source.to_owned(), root));
        let mut pending = vec![Vec::new()];
        while let Some(rel) = pending.pop() {
            let here = crate::fsat::join(source, &rel);
            let dir = self.roots[index].1.dir_beneath(Path::new(OsStr::from_bytes(&rel))).map_err(io_at(&here))?;
            for (name, _) in dir.entries().map_err(io_at(&here))? {
                let name = name.into_encoded_bytes();
                let child_rel = crate::pathbytes::join(&rel, &name);
                let path = crate::fsat::join(source, &child_rel);
                let st = dir.lstat(OsStr::from_bytes(&name)).map_err(io_at(&path))?;
                let source = if st.is_dir() {
                    pending.push(child_rel.clone());
                    Source::Dir
                } else if st.is_file() {
                    if st.size > MAX_FILE {
                        return Err(TarballError::Unsupported { path, reason: format!("{} bytes; a layer file holds at most {MAX_FILE}", st.size) });
                    }
                    Source::File { root: index, dir: rel.clone(), name, size: st.size }
                } else if st.is_symlink() {
                    let target = dir.read_link(OsStr::from_bytes(&name)).map_err(io_at(&path))?;
                    Source::Symlink { target: target.into_os_string().into_encoded_bytes() }
                } else {
                    return Err(TarballError::Unsupported { path, reason: "not a file, directory or symlink: a layer cannot hold it".into() });
                };
                let at_path = if at.is_empty() { child_rel } else { crate::pathbytes::join(at, &child_rel) };
                self.put(&at_path, Entry { mode: st.mode & 0o7777, mtime: st.mtime.0, source })?;
            }
        }
        Ok(())
    }

    /// Adds the regular file `source` as `at` with its mode and mtime.
    pub fn add_file(&mut self, at: &[u8], source: &Path) -> Result<(), TarballError> {
        let (parent, name) = match (source.parent(), source.file_name()) {
            (Some(parent), Some(name)) => (if parent.as_os_str().is_empty() { Path::new(".") } else { parent }, name),
            _ => return Err(TarballError::Unsupported { path: source.to_owned(), reason: "not a file name".into() }),
        };
        let dir = Dir::open_given(parent).map_err(io_at(parent))?;
        let st = dir.lstat(name).map_err(io_at(source))?;
        if !st.is_file() {
            return Err(TarballError::Unsupported { path: source.to_owned(), reason: "not a regular file (a symlink is not followed)".into() });
        }
        if st.size > MAX_FILE {
            return Err(TarballError::Unsupported { path: source.to_owned(), reason: format!("{} bytes; a layer file holds at most {MAX_FILE}", st.size) });
        }
        let root = self.roots.len();
        self.roots.push((parent.to_owned(), dir));
        let source = Source::File { root, dir: Vec::new(), name: name.as_bytes().to_vec(), size: st.size };
        self.put(at, Entry { mode: st.mode & 0o7777, mtime: st.mtime.0, source })
    }

    /// Sets the permission bits of the entry `at` (for a store layer, whose directories keep
    /// extra owner bits on disk: the exact ones are in its index). `false` if there is none.
    pub fn set_mode(&mut self, at: &[u8], mode: u32) -> bool {
        self.entries.get_mut(at).map(|e| e.mode = mode & 0o7777).is_some()
    }

    /// Sets the mtime of the entry `at`. `false` if there is none.
    pub fn set_mtime(&mut self, at: &[u8], mtime: i64) -> bool {
        self.entries.get_mut(at).map(|e| e.mtime = mtime).is_some()
    }

    /// Gives `at` and everything below it the modes of files nobody's umask decides:
    /// directories 0755, files 0755 when their owner may run them, else 0644. For what a
    /// build wrote (its directories' modes come from the umask), never for a package's tree.
    pub fn normalize_modes(&mut self, at: &[u8]) {
        for (path, e) in self.entries.range_mut(at.to_vec()..).take_while(|(path, _)| path.starts_with(at)) {
            // `at-x` sorts between `at` and `at/...`: not below it.
            if path.len() > at.len() && path[at.len()] != b'/' {
                continue;
            }
            e.mode = match e.source {
                Source::Dir => 0o755,
                Source::File { .. } if e.mode & 0o100 != 0 => 0o755,
                Source::File { .. } => 0o644,
                Source::Symlink { .. } => 0o777,
            };
        }
    }

    /// The newest mtime among the files and symlinks below `under` (a prefix of paths, such
    /// as `app/.apt/`) that `skip` does not name.
    pub fn newest_mtime(&self, under: &[u8], skip: impl Fn(&[u8]) -> bool) -> Option<i64> {
        self.entries
            .range(under.to_vec()..)
            .take_while(|(path, _)| path.starts_with(under))
            .filter(|(path, e)| !matches!(e.source, Source::Dir) && !skip(path))
            .map(|(_, e)| e.mtime)
            .max()
    }

    /// How many entries the layer has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn put(&mut self, at: &[u8], entry: Entry) -> Result<(), TarballError> {
        let bad = at.is_empty() || at.starts_with(b"/") || at.ends_with(b"/") || at.split(|&b| b == b'/').any(|c| c.is_empty() || c == b"." || c == b"..");
        if bad || at.contains(&0) {
            return Err(TarballError::Unsupported { path: PathBuf::from(OsStr::from_bytes(at)), reason: "not a plain relative path for a layer entry".into() });
        }
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(at) {
            return Err(TarballError::TooManyEntries(PathBytes::from(at.to_vec()).to_string()));
        }
        self.entries.insert(at.to_vec(), entry);
        Ok(())
    }

    /// Writes the layer as gzip ([`GZIP_LEVEL`]) to `out`, every mtime clamped to at most
    /// `clamp` (seconds). Every entry's parent must be an entry too (or the layer's root).
    pub fn write(&self, out: impl Write, clamp: i64) -> Result<LayerBlob, TarballError> {
        self.write_compressed(out, clamp, Compressor::Gzip { level: GZIP_LEVEL })
    }

    /// [`LayerTree::write`] with `compressor` (the bytes depend on it and on the entries alone).
    pub fn write_compressed(&self, out: impl Write, clamp: i64, compressor: Compressor) -> Result<LayerBlob, TarballError> {
        for path in self.entries.keys() {
            let (parent, _) = crate::pathbytes::split_last(path);
            if !parent.is_empty() && !matches!(self.entries.get(parent), Some(Entry { source: Source::Dir, .. })) {
                return Err(TarballError::Unsupported { path: PathBuf::from(OsStr::from_bytes(path)), reason: "its parent directory is not in the layer".into() });
            }
        }
        let compressed = Counted { inner: out, hasher: Hasher::new() };
        let (diff_id, compressed, frames) = match compressor {
            Compressor::Gzip { level } => {
                let gzip = flate2::GzBuilder::new().mtime(0).operating_system(255).write(compressed, flate2::Compression::new(level));
                let mut tar = Counted { inner: gzip, hasher: Hasher::new() };
                self.write_tar(&mut tar, clamp)?;
                (tar.hasher.finish(), tar.inner.finish().map_err(TarballError::Write)?, Vec::new())
            }
            Compressor::Zstd { level, frame } => {
                let mut tar = Counted { inner: Frames::new(compressed, level, frame).map_err(TarballError::Write)?, hasher: Hasher::new() };
                self.write_tar(&mut tar, clamp)?;
                let (compressed, frames) = tar.inner.finish().map_err(TarballError::Write)?;
                (tar.hasher.finish(), compressed, frames)
            }
        };
        let size = compressed.hasher.len();
        let mut out = compressed.inner;
        out.flush().map_err(TarballError::Write)?;
        Ok(LayerBlob { diff_id, digest: compressed.hasher.finish(), size, frames })
    }

    /// Writes the tar stream itself (entries in path order, then the end-of-archive blocks).
    fn write_tar(&self, tar: &mut impl EntrySink, clamp: i64) -> Result<(), TarballError> {
        let mut buf = vec![0u8; 1 << 17];
        let mut open: Option<(usize, Vec<u8>, Dir)> = None;
        for (path, entry) in &self.entries {
            let mtime = entry.mtime.min(clamp).clamp(0, MAX_TIME);
            match &entry.source {
                Source::Dir => {
                    let mut name = path.clone();
                    name.push(b'/');
                    write_header(tar, &name, None, b'5', entry.mode, 0, mtime)?;
                }
                Source::Symlink { target } => write_header(tar, path, Some(target), b'2', entry.mode, 0, mtime)?,
                Source::File { root, dir, name, size } => {
                    let (root_path, root_dir) = &self.roots[*root];
                    let file_path = crate::fsat::join(root_path, crate::pathbytes::join(dir, name));
                    if !matches!(&open, Some((r, d, _)) if r == root && d == dir) {
                        let opened = root_dir.dir_beneath(Path::new(OsStr::from_bytes(dir))).map_err(io_at(&file_path))?;
                        open = Some((*root, dir.clone(), opened));
                    }
                    let Some((_, _, parent)) = &open else { unreachable!("opened just above") };
                    let file = parent.open_regular(OsStr::from_bytes(name)).map_err(io_at(&file_path))?;
                    write_header(tar, path, None, b'0', entry.mode, *size, mtime)?;
                    copy_exactly(file, tar, *size, &mut buf).map_err(|e| match e {
                        Copy::Read(error) => TarballError::Io { path: file_path.clone(), error },
                        Copy::Write(error) => TarballError::Write(error),
                        Copy::Changed(got) => TarballError::Unsupported {
                            path: file_path.clone(),
                            reason: format!("changed while the layer was written: {size} bytes listed, {got} read"),
                        },
                    })?;
                    pad(tar, *size)?;
                }
            }
            tar.entry_end().map_err(TarballError::Write)?;
        }
        // The end of the archive: two zero blocks.
        tar.write_all(&[0u8; 1024]).map_err(TarballError::Write)
    }
}

/// Where a tar stream goes, told where each entry ends (a place to cut it).
trait EntrySink: Write {
    fn entry_end(&mut self) -> io::Result<()>;
}

impl<W: Write> EntrySink for flate2::write::GzEncoder<W> {
    fn entry_end(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: EntrySink> EntrySink for Counted<S> {
    fn entry_end(&mut self) -> io::Result<()> {
        self.inner.entry_end()
    }
}

/// A zstd stream in frames of whole entries: one ends at the first entry end after it holds
/// `frame` bytes of tar. One thread, no checksum (the blob's digest covers it), no content
/// size (not known when a frame's header is written): fixed settings.
struct Frames<W: Write> {
    encoder: Option<zstd::stream::write::Encoder<'static, Counted<W>>>,
    level: i32,
    frame: u64,
    /// Tar bytes in the current frame.
    in_frame: u64,
    /// Compressed bytes of each frame ended so far.
    sizes: Vec<u64>,
}

impl<W: Write> Frames<W> {
    fn new(out: Counted<W>, level: i32, frame: u64) -> io::Result<Frames<W>> {
        Ok(Frames { encoder: Some(Self::encoder(out, level)?), level, frame, in_frame: 0, sizes: Vec::new() })
    }

    fn encoder(out: Counted<W>, level: i32) -> io::Result<zstd::stream::write::Encoder<'static, Counted<W>>> {
        let mut zstd = zstd::stream::write::Encoder::new(out, level)?;
        zstd.include_checksum(false)?;
        Ok(zstd)
    }

    fn encoder_mut(&mut self) -> io::Result<&mut zstd::stream::write::Encoder<'static, Counted<W>>> {
        self.encoder.as_mut().ok_or_else(|| io::Error::other("a zstd frame failed to end"))
    }

    /// Ends the current frame; returns the compressed stream.
    fn end_frame(&mut self) -> io::Result<Counted<W>> {
        let out = self.encoder.take().ok_or_else(|| io::Error::other("a zstd frame failed to end"))?.finish()?;
        let before: u64 = self.sizes.iter().sum();
        self.sizes.push(out.hasher.len() - before);
        self.in_frame = 0;
        Ok(out)
    }

    /// Ends the last frame: the compressed stream and every frame's size.
    fn finish(mut self) -> io::Result<(Counted<W>, Vec<u64>)> {
        let out = self.end_frame()?;
        Ok((out, self.sizes))
    }
}

impl<W: Write> Write for Frames<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.encoder_mut()?.write(bytes)?;
        self.in_frame += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.encoder_mut()?.flush()
    }
}

impl<W: Write> EntrySink for Frames<W> {
    fn entry_end(&mut self) -> io::Result<()> {
        if self.in_frame >= self.frame {
            let out = self.end_frame()?;
            self.encoder = Some(Self::encoder(out, self.level)?);
        }
        Ok(())
    }
}

/// A writer that hashes and counts what passes through it.
struct Counted<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Copy {
    Read(io::Error),
    Write(io::Error),
    /// The file ended after this many bytes, or had more than listed.
    Changed(u64),
}

/// Copies exactly `size` bytes of `file` and checks that nothing follows them.
fn copy_exactly(mut file: std::fs::File, out: &mut impl Write, size: u64, buf: &mut [u8]) -> Result<(), Copy> {
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => return Err(Copy::Changed(size - left)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(e)),
        };
        out.write_all(&buf[..n]).map_err(Copy::Write)?;
        left -= n as u64;
    }
    match file.read(&mut buf[..1]) {
        Ok(0) => Ok(()),
        Ok(_) => Err(Copy::Changed(size + 1)),
        Err(e) => Err(Copy::Read(e)),
    }
}

fn pad(out: &mut impl Write, size: u64) -> Result<(), TarballError> {
    let rest = (512 - size % 512) % 512;
    out.write_all(&[0u8; 512][..rest as usize]).map_err(TarballError::Write)
}

/// Writes `n` as zero-padded octal filling `field` but its last byte (a NUL).
fn octal(field: &mut [u8], n: u64) {
    let digits = format!("{n:0width$o}", width = field.len() - 1);
    field[..digits.len()].copy_from_slice(digits.as_bytes());
}

/// One PAX record: `<length> <key>=<value>\n`, the length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// Writes one entry's header (after a PAX header when a name does not fit).
fn write_header(out: &mut impl Write, name: &[u8], link: Option<&[u8]>, kind: u8, mode: u32, size: u64, mtime: i64) -> Result<(), TarballError> {
    let long_name = name.len() > 100;
    let long_link = link.is_some_and(|l| l.len() > 100);
    if long_name || long_link {
        let mut records = Vec::new();
        let binary = (long_name && std::str::from_utf8(name).is_err()) || (long_link && link.is_some_and(|l| std::str::from_utf8(l).is_err()));
        if binary {
            records.extend(pax_record("hdrcharset", b"BINARY"));
        }
        if long_link {
            records.extend(pax_record("linkpath", link.unwrap_or_default()));
        }
        if long_name {
            records.extend(pax_record("path", name));
        }
        out.write_all(&header(b"././@PaxHeader", b"", b'x', 0o644, records.len() as u64, 0)).map_err(TarballError::Write)?;
        out.write_all(&records).map_err(TarballError::Write)?;
        pad(out, records.len() as u64)?;
    }
    let cut = |b: &[u8]| b[..b.len().min(100)].to_vec();
    out.write_all(&header(&cut(name), &cut(link.unwrap_or_default()), kind, mode, size, mtime as u64)).map_err(TarballError::Write)
}

/// A POSIX ustar header block; `name` and `link` at most 100 bytes.
fn header(name: &[u8], link: &[u8], kind: u8, mode: u32, size: u64, mtime: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    // The checksum: the header's bytes summed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let digits = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(digits.as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    const OLD: i64 = 1_600_000_000;

    /// A small tree with what a package has: nested directories, a setuid file, a symlink,
    /// a hard link, a long name, a long target and a name that is not UTF-8.
    fn sample(root: &Path, dir_mtime: i64) {
        let long = "d".repeat(120);
        fs::create_dir_all(root.join("opt/agent/bin")).unwrap();
        fs::create_dir_all(root.join(format!("opt/{long}"))).unwrap();
        fs::write(root.join("opt/agent/bin/agent"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("opt/agent/bin/agent"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::write(root.join(format!("opt/{long}/f")), vec![7u8; 1000]).unwrap();
        fs::hard_link(root.join("opt/agent/bin/agent"), root.join("opt/agent/bin/again")).unwrap();
        std::os::unix::fs::symlink("bin/agent", root.join("opt/agent/link")).unwrap();
        std::os::unix::fs::symlink(format!("../{long}/f"), root.join("opt/agent/far")).unwrap();
        fs::write(root.join(OsStr::from_bytes(b"opt/na\xefve")), b"x").unwrap();
        let time = |t| filetime::FileTime::from_unix_time(t, 0);
        filetime::set_file_mtime(root.join("opt/agent/bin/agent"), time(OLD)).unwrap();
        filetime::set_file_mtime(root.join(OsStr::from_bytes(b"opt/na\xefve")), time(OLD)).unwrap();
        filetime::set_file_mtime(root.join(format!("opt/{long}/f")), time(OLD + 5)).unwrap();
        for link in ["opt/agent/link", "opt/agent/far"] {
            filetime::set_symlink_file_times(root.join(link), time(OLD), time(OLD)).unwrap();
        }
        for d in ["opt/agent/bin", "opt/agent", &format!("opt/{long}"), "opt"] {
            filetime::set_file_mtime(root.join(d), time(dir_mtime)).unwrap();
        }
    }

    fn layer_of(root: &Path) -> (LayerBlob, Vec<u8>) {
        let mut tree = LayerTree::new();
        tree.add_dir(b"app", 0o755, OLD).unwrap();
        tree.add_tree(b"app/.apt", root).unwrap();
        let mut out = Vec::new();
        let blob = tree.write(&mut out, OLD + 10).unwrap();
        (blob, out)
    }

    /// (path, kind, mode, uid, gid, mtime, link, content) of each entry, as tarstream reads them.
    type Got = (Vec<u8>, u8, u32, u64, u64, u64, Option<Vec<u8>>, Vec<u8>);

    fn read_back(gz: &[u8]) -> Vec<Got> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        let mut got = Vec::new();
        crate::unpack::tarstream::for_each_entry(archive.entries().unwrap(), |e| e, |entry, meta| {
            let h = entry.header();
            let (kind, mode, uid, gid, mtime) = (h.entry_type().as_byte(), h.mode()?, h.uid()?, h.gid()?, h.mtime()?);
            assert_eq!((h.username_bytes(), h.groupname_bytes()), (Some(&b""[..]), Some(&b""[..])));
            let mut content = Vec::new();
            entry.read_to_end(&mut content)?;
            got.push((meta.path.clone(), kind, mode, uid, gid, mtime, meta.link.clone(), content));
            Ok(true)
        })
        .unwrap();
        got
    }

    #[test]
    fn same_tree_same_bytes_whatever_the_build_time_and_place() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        sample(a.path(), OLD + 3);
        // Directories touched after the package's time (as a build's edits do) are clamped.
        fs::create_dir(b.path().join("elsewhere")).unwrap();
        sample(&b.path().join("elsewhere"), 1_900_000_000);
        let (blob_a, bytes_a) = layer_of(a.path());
        let (blob_b, bytes_b) = layer_of(&b.path().join("elsewhere"));
        // Only the directories' mtimes differ: OLD + 3 is kept, later ones are clamped.
        assert_ne!(blob_a, blob_b, "a directory at OLD + 3 is kept, not clamped");
        let c = tempfile::tempdir().unwrap();
        sample(c.path(), 1_800_000_000);
        let (blob_c, bytes_c) = layer_of(c.path());
        assert_eq!(blob_b, blob_c);
        assert_eq!(bytes_b, bytes_c);
        assert_eq!(blob_a.size, bytes_a.len() as u64);
        assert_eq!(blob_a.digest, Sha256::of(&bytes_a));
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&bytes_a[..]).read_to_end(&mut tar).unwrap();
        assert_eq!(blob_a.diff_id, Sha256::of(&tar));
        // The gzip header: no mtime, no name, OS "unknown".
        assert_eq!(&bytes_a[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    }

    #[test]
    fn zstd_layers_are_the_same_tar_and_the_same_bytes_every_time() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path(), OLD + 3);
        let mut tree = LayerTree::new();
        tree.add_dir(b"app", 0o755, OLD).unwrap();
        tree.add_tree(b"app/.apt", dir.path()).unwrap();
        let zstd = Compressor::Zstd { level: 3, frame: 1000 };
        let (mut first, mut second, mut gzip) = (Vec::new(), Vec::new(), Vec::new());
        let blob = tree.write_compressed(&mut first, OLD + 10, zstd).unwrap();
        assert_eq!(tree.write_compressed(&mut second, OLD + 10, zstd).unwrap(), blob);
        assert_eq!(first, second);
        assert_eq!((blob.digest, blob.size), (Sha256::of(&first), first.len() as u64));
        // The same tar inside as the gzip layer's: only the compression differs.
        let gzip_blob = tree.write(&mut gzip, OLD + 10).unwrap();
        let tar = zstd::decode_all(first.as_slice()).unwrap();
        assert_eq!((Sha256::of(&tar), blob.diff_id), (gzip_blob.diff_id, gzip_blob.diff_id));
        assert_eq!(zstd.media_type().to_string(), "application/vnd.oci.image.layer.v1.tar+zstd");
    }

    #[test]
    fn zstd_frames_hold_whole_entries_and_each_decodes_alone() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path(), OLD + 3);
        std::fs::write(dir.path().join("big"), vec![7u8; 5000]).unwrap();
        let mut tree = LayerTree::new();
        tree.add_tree(b"", dir.path()).unwrap();
        let (mut one, mut framed) = (Vec::new(), Vec::new());
        let single = tree.write_compressed(&mut one, OLD + 10, Compressor::Zstd { level: 3, frame: u64::MAX }).unwrap();
        let blob = tree.write_compressed(&mut framed, OLD + 10, Compressor::Zstd { level: 3, frame: 1000 }).unwrap();
        assert_eq!(single.frames, vec![single.size], "one frame when none fills up");
        assert!(blob.frames.len() > 2, "{:?}", blob.frames);
        assert_eq!(blob.frames.iter().sum::<u64>(), blob.size);
        // One tar either way, and every frame alone is whole entries: together, that tar.
        assert_eq!(blob.diff_id, single.diff_id);
        let mut at = 0usize;
        let mut joined = Vec::new();
        let mut names = Vec::new();
        let mut last_of_frames = Vec::new();
        for &size in &blob.frames {
            let frame = &framed[at..at + size as usize];
            at += size as usize;
            assert_eq!(zstd::zstd_safe::find_frame_compressed_size(frame), Ok(size as usize), "exactly one frame");
            let tar = zstd::decode_all(frame).unwrap();
            assert_eq!(tar.len() % 512, 0);
            for entry in tar::Archive::new(tar.as_slice()).entries().unwrap() {
                let mut entry = entry.unwrap();
                names.push(entry.path_bytes().into_owned());
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                assert_eq!(data.len() as u64, entry.header().size().unwrap(), "an entry's data is in its header's frame");
            }
            last_of_frames.push(names.last().cloned());
            joined.extend(tar);
        }
        assert_eq!(Sha256::of(&joined), blob.diff_id);
        assert_eq!(names, read_back_zstd(&one), "the frames' entries are the layer's, in order");
        // The 5000-byte file ends a frame (frames end at the first entry end past 1000 bytes).
        assert!(last_of_frames.contains(&Some(b"big".to_vec())), "{last_of_frames:?}");
    }

    fn read_back_zstd(blob: &[u8]) -> Vec<Vec<u8>> {
        let tar = zstd::decode_all(blob).unwrap();
        tar::Archive::new(tar.as_slice()).entries().unwrap().map(|e| e.unwrap().path_bytes().into_owned()).collect()
    }

    #[test]
    fn entries_are_sorted_exact_and_owned_by_root() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path(), 1_900_000_000);
        let (_, gz) = layer_of(dir.path());
        let got = read_back(&gz);
        let long = "d".repeat(120);
        let paths: Vec<String> = got.iter().map(|e| String::from_utf8_lossy(&e.0).into_owned()).collect();
        let expected = [
            "app/".to_string(),
            "app/.apt/".into(),
            "app/.apt/opt/".into(),
            "app/.apt/opt/agent/".into(),
            "app/.apt/opt/agent/bin/".into(),
            "app/.apt/opt/agent/bin/again".into(),
            "app/.apt/opt/agent/bin/agent".into(),
            "app/.apt/opt/agent/far".into(),
            "app/.apt/opt/agent/link".into(),
            format!("app/.apt/opt/{long}/"),
            format!("app/.apt/opt/{long}/f"),
            "app/.apt/opt/na\u{fffd}ve".into(),
        ];
        assert_eq!(paths, expected);
        assert_eq!(got[11].0, b"app/.apt/opt/na\xefve", "names are bytes");
        for e in &got {
            assert_eq!((e.3, e.4), (0, 0), "uid and gid 0");
            assert!(e.5 <= (OLD + 10) as u64, "mtime clamped: {e:?}");
        }
        let by = |p: &str| got.iter().find(|e| e.0 == p.as_bytes()).unwrap();
        // Hard links are stored whole, with the setuid bit and the package's mtime.
        let (again, agent) = (by("app/.apt/opt/agent/bin/again"), by("app/.apt/opt/agent/bin/agent"));
        assert_eq!((again.1, again.2, again.5, &again.7[..]), (b'0', 0o4755, OLD as u64, &b"#!/bin/sh\n"[..]));
        assert_eq!((agent.1, &agent.7), (again.1, &again.7));
        assert_eq!(by("app/.apt/opt/agent/link").6.as_deref(), Some(&b"bin/agent"[..]));
        assert_eq!(by("app/.apt/opt/agent/far").6.as_deref(), Some(format!("../{long}/f").as_bytes()));
        let f = by(&format!("app/.apt/opt/{long}/f"));
        assert_eq!((f.5, f.7.len()), ((OLD + 5) as u64, 1000));
        assert_eq!(by("app/.apt/opt/agent/").5, (OLD + 10) as u64, "a directory newer than the clamp gets the clamp");
        // GNU tar reads it the same way.
        let tar = tempfile::tempdir().unwrap();
        fs::write(tar.path().join("l.tar.gz"), &gz).unwrap();
        let out = std::process::Command::new("tar").args(["--quoting-style=literal", "-tzf"]).arg(tar.path().join("l.tar.gz")).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listed: Vec<&[u8]> = out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(listed, got.iter().map(|e| &e.0[..]).collect::<Vec<_>>());
    }

    #[test]
    fn what_a_layer_cannot_hold_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("t")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, dir.path().join("t/fifo"), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o644), 0).unwrap();
        let err = LayerTree::new().add_tree(b"x", &dir.path().join("t")).unwrap_err().to_string();
        assert!(err.contains("t/fifo") && err.contains("not a file, directory or symlink"), "{err}");
        let mut tree = LayerTree::new();
        assert!(tree.add_dir(b"../up", 0o755, 0).unwrap_err().to_string().contains("not a plain relative path"));
        assert!(tree.add_dir(b"/abs", 0o755, 0).is_err());
        tree.add_dir(b"a/b", 0o755, 0).unwrap();
        let err = tree.write(io::sink(), 0).unwrap_err().to_string();
        assert!(err.contains("a/b: its parent directory is not in the layer"), "{err}");
    }

    #[test]
    fn a_file_that_changes_size_while_written_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"four").unwrap();
        let mut tree = LayerTree::new();
        tree.add_tree(b"t", dir.path()).unwrap();
        fs::write(dir.path().join("f"), b"longer now").unwrap();
        let err = tree.write(io::sink(), OLD).unwrap_err().to_string();
        assert!(err.contains("changed while the layer was written: 4 bytes listed"), "{err}");
        fs::write(dir.path().join("f"), b"3b").unwrap();
        let err = tree.write(io::sink(), OLD).unwrap_err().to_string();
        assert!(err.contains("4 bytes listed, 2 read"), "{err}");
    }

    #[test]
    fn a_symlink_is_never_followed_into_a_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("t")).unwrap();
        fs::write(dir.path().join("t/f"), b"ok").unwrap();
        fs::write(dir.path().join("secret"), b"outside").unwrap();
        let mut tree = LayerTree::new();
        tree.add_tree(b"t", &dir.path().join("t")).unwrap();
        // Swapped for a symlink after listing: the open refuses it.
        fs::remove_file(dir.path().join("t/f")).unwrap();
        std::os::unix::fs::symlink("../secret", dir.path().join("t/f")).unwrap();
        let err = tree.write(io::sink(), OLD).unwrap_err().to_string();
        assert!(err.contains("t/f"), "{err}");
        assert!(LayerTree::new().add_file(b"x", &dir.path().join("t/f")).unwrap_err().to_string().contains("not a regular file"));
    }

    #[test]
    fn pax_records_count_their_own_length() {
        for n in [0usize, 1, 5, 90, 93, 94, 95, 996, 997, 998, 10_000] {
            let r = pax_record("path", &vec![b'a'; n]);
            let (len, _) = std::str::from_utf8(&r).unwrap().split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "{n}");
        }
    }
}
