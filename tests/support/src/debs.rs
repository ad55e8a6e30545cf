//! Builds real .deb files (ar of debian-binary, control.tar.gz, data.tar.*) from a list of
//! entries, deterministically: fixed mtimes, uid/gid 0, each parent directory emitted once.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::Result;

/// Compression of data.tar inside the .deb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    /// Multi-block xz made on all cores (as dpkg-deb 1.21+ writes), at a fast preset.
    XzMultiBlock,
    Zstd,
    Bzip2,
}

impl Compression {
    fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Xz | Compression::XzMultiBlock => ".xz",
            Compression::Zstd => ".zst",
            Compression::Bzip2 => ".bz2",
        }
    }
}

/// One entry of the data archive; paths are relative, without a leading `./`, and bytes
/// (a package may name files in any encoding, or none).
#[derive(Clone, Debug)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: Vec<u8> },
    /// A hard link to an earlier entry (path relative to the archive root).
    Hardlink { target: Vec<u8> },
    /// Bytes written into the data archive as they are (whole 512-byte blocks): for
    /// headers no tar writer would make.
    RawTar(Vec<u8>),
}

/// What goes into one package.
#[derive(Clone, Debug)]
pub struct DebSpec {
    pub package: String,
    pub version: String,
    pub arch: String,
    pub compression: Compression,
    pub entries: Vec<(Vec<u8>, Node)>,
    /// Entry mtime (seconds since the epoch).
    pub mtime: u64,
}

impl DebSpec {
    /// A package with no entries, xz-compressed, amd64.
    pub fn new(package: &str, version: &str) -> DebSpec {
        DebSpec {
            package: package.into(),
            version: version.into(),
            arch: "amd64".into(),
            compression: Compression::Xz,
            entries: Vec::new(),
            mtime: 1_700_000_000,
        }
    }

    /// Adds a regular file.
    pub fn file<P: AsRef<[u8]> + ?Sized>(mut self, path: &P, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        self.entries.push((path.as_ref().to_vec(), Node::File { mode, data: data.into() }));
        self
    }

    /// Adds a symbolic link.
    pub fn symlink<P: AsRef<[u8]> + ?Sized, T: AsRef<[u8]> + ?Sized>(mut self, path: &P, target: &T) -> Self {
        self.entries.push((path.as_ref().to_vec(), Node::Symlink { target: target.as_ref().to_vec() }));
        self
    }

    /// Adds a hard link to an earlier file.
    pub fn hardlink<P: AsRef<[u8]> + ?Sized, T: AsRef<[u8]> + ?Sized>(mut self, path: &P, target: &T) -> Self {
        self.entries.push((path.as_ref().to_vec(), Node::Hardlink { target: target.as_ref().to_vec() }));
        self
    }

    /// Appends raw tar blocks (see [`Node::RawTar`]).
    pub fn raw_tar(mut self, blocks: Vec<u8>) -> Self {
        self.entries.push((Vec::new(), Node::RawTar(blocks)));
        self
    }

    /// Adds an explicit directory (its mode is set where it is first emitted: a directory
    /// named here before anything below it gets this mode).
    pub fn dir<P: AsRef<[u8]> + ?Sized>(mut self, path: &P, mode: u32) -> Self {
        self.entries.push((path.as_ref().to_vec(), Node::Dir { mode }));
        self
    }

    /// The file name apt repositories use: `name_version-without-epoch_arch.deb`.
    pub fn file_name(&self) -> String {
        let version = self.version.split_once(':').map(|(_, v)| v).unwrap_or(&self.version);
        format!("{}_{}_{}.deb", self.package, version, self.arch)
    }

    /// Sum of file sizes in KiB, as dpkg computes Installed-Size (roughly).
    pub fn installed_size_kib(&self) -> u64 {
        let bytes: u64 = self
            .entries
            .iter()
            .map(|(_, n)| match n {
                Node::File { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum();
        bytes.div_ceil(1024)
    }

    /// The control file text.
    pub fn control(&self) -> String {
        format!(
            "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: ddslug tests <tests@ddslug.invalid>\n\
             Installed-Size: {}\nSection: utils\nPriority: optional\nDescription: generated test package\n \
             Built by ddslug's test support for integration tests.\n",
            self.package,
            self.version,
            self.arch,
            self.installed_size_kib()
        )
    }

    /// Builds the .deb bytes.
    pub fn build(&self) -> Result<Vec<u8>> {
        let data_tar = self.data_tar()?;
        let data = compress(&data_tar, self.compression)?;
        let control_tar = {
            let mut b = tar::Builder::new(Vec::new());
            let control = self.control();
            append(&mut b, b"./", tar::EntryType::Directory, 0o755, self.mtime, &[], None)?;
            append(&mut b, b"./control", tar::EntryType::Regular, 0o644, self.mtime, control.as_bytes(), None)?;
            b.into_inner()?
        };
        let control = compress(&control_tar, Compression::Gzip)?;
        let mut out = Vec::with_capacity(data.len() + control.len() + 512);
        out.extend_from_slice(b"!<arch>\n");
        ar_member(&mut out, "debian-binary", b"2.0\n", self.mtime);
        ar_member(&mut out, "control.tar.gz", &control, self.mtime);
        ar_member(&mut out, &format!("data.tar{}", self.compression.suffix()), &data, self.mtime);
        Ok(out)
    }

    /// The uncompressed data.tar, with every parent directory emitted once before its children.
    pub fn data_tar(&self) -> Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        let mut emitted: BTreeSet<Vec<u8>> = BTreeSet::new();
        append(&mut b, b"./", tar::EntryType::Directory, 0o755, self.mtime, &[], None)?;
        for (path, node) in &self.entries {
            let parts: Vec<&[u8]> = path.split(|&c| c == b'/').collect();
            for i in 1..parts.len() {
                let parent = parts[..i].join(&b'/');
                if emitted.insert(parent.clone()) {
                    append(&mut b, &[b"./", &parent[..], b"/"].concat(), tar::EntryType::Directory, 0o755, self.mtime, &[], None)?;
                }
            }
            let name = [b"./", &path[..]].concat();
            match node {
                Node::Dir { mode } => {
                    if emitted.insert(path.clone()) {
                        append(&mut b, &[&name[..], b"/"].concat(), tar::EntryType::Directory, *mode, self.mtime, &[], None)?;
                    }
                }
                Node::File { mode, data } => {
                    append(&mut b, &name, tar::EntryType::Regular, *mode, self.mtime, data, None)?
                }
                Node::Symlink { target } => {
                    append(&mut b, &name, tar::EntryType::Symlink, 0o777, self.mtime, &[], Some(target))?
                }
                Node::RawTar(blocks) => b.get_mut().extend_from_slice(blocks),
                Node::Hardlink { target } => {
                    append(&mut b, &name, tar::EntryType::Link, 0o644, self.mtime, &[], Some(&[b"./", &target[..]].concat()))?
                }
            }
        }
        Ok(b.into_inner()?)
    }
}

fn append(
    b: &mut tar::Builder<Vec<u8>>,
    path: &[u8],
    kind: tar::EntryType,
    mode: u32,
    mtime: u64,
    data: &[u8],
    link: Option<&[u8]>,
) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let (path, link) = (std::ffi::OsStr::from_bytes(path), link.map(std::ffi::OsStr::from_bytes));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_username("root")?;
    h.set_groupname("root")?;
    h.set_size(data.len() as u64);
    // append_link / append_data write GNU long-name records for long paths and targets.
    match link {
        Some(target) => b.append_link(&mut h, path, target)?,
        None => b.append_data(&mut h, path, data)?,
    }
    Ok(())
}

/// Compresses bytes the way dpkg-deb would for that suffix.
pub fn compress(data: &[u8], c: Compression) -> Result<Vec<u8>> {
    Ok(match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(data)?;
            e.finish()?
        }
        Compression::Xz => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(data)?;
            e.finish()?
        }
        Compression::XzMultiBlock => {
            let threads = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
            let stream = liblzma::stream::MtStreamBuilder::new()
                .threads(threads)
                // As xz -T does for big inputs; small test packages still get several blocks.
                .block_size((data.len() as u64 / 8).clamp(64 << 10, 8 << 20))
                .preset(3)
                .check(liblzma::stream::Check::Crc64)
                .encoder()?;
            let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
            e.write_all(data)?;
            e.finish()?
        }
        Compression::Zstd => zstd::encode_all(data, 3)?,
        Compression::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(6));
            e.write_all(data)?;
            e.finish()?
        }
    })
}

fn ar_member(out: &mut Vec<u8>, name: &str, data: &[u8], mtime: u64) {
    let header = format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", name, mtime, 0, 0, "100644", data.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(b'\n');
    }
}
