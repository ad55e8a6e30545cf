//! SHA-256 identities and hashing while streaming.
//!
//! Every byte ddslug trusts is hashed exactly once, as it streams past: downloads feed a
//! [`Hasher`] while they write, so verification costs no second pass.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest, Sha256 as Sha256Hasher};

/// A SHA-256 digest, parsed once at the edge and printed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// Digest of a byte slice.
    pub fn of(bytes: &[u8]) -> Sha256 {
        Sha256(Sha256Hasher::digest(bytes).into())
    }

    /// Digest of what reading the file at `path` gives (streamed, not held in memory).
    pub fn of_file(path: &std::path::Path) -> io::Result<Sha256> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Hasher::new();
        hasher.update_from(&mut file, &mut vec![0; 1 << 17])?;
        Ok(hasher.finish())
    }

    /// Lowercase hex form, as used in file names and manifests.
    pub fn hex(&self) -> String {
        self.hex_str(&mut [0; 64]).to_owned()
    }

    /// The lowercase hex form written into `buf`: no allocation, for the tens of thousands
    /// of digests an entry list or a tree hash formats.
    pub fn hex_str<'b>(&self, buf: &'b mut [u8; 64]) -> &'b str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (pair, b) in buf.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 15)];
        }
        // Only ASCII digits were written: this never fails.
        std::str::from_utf8(buf).unwrap_or_default()
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex_str(&mut [0; 64]))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.hex())
    }
}

/// The text was not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("not a SHA-256 (expected 64 hex digits): \"{}\"", crate::pathbytes::escape_bounded(.0.as_bytes(), 100))]
pub struct BadSha256(pub String);

impl FromStr for Sha256 {
    type Err = BadSha256;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(BadSha256(s.to_string()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16);
            let lo = (pair[1] as char).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = (h * 16 + l) as u8,
                _ => return Err(BadSha256(s.to_string())),
            }
        }
        Ok(Sha256(out))
    }
}

impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.hex_str(&mut [0; 64]))
    }
}

impl<'de> serde::Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Parsed from the borrowed text: entry lists hold tens of thousands of digests.
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = Sha256;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SHA-256 as 64 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Sha256, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Hex)
    }
}

/// Incremental SHA-256 with a byte count.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256Hasher,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }
    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn finish(self) -> Sha256 {
        Sha256(self.inner.finalize().into())
    }

    /// Hashes everything `reader` gives until its end, through `buf`.
    pub fn update_from(&mut self, reader: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
        read_each(reader, buf, |bytes| self.update(bytes))
    }
}

/// Calls `each` with every chunk `reader` gives until its end, read through `buf`.
fn read_each(reader: &mut impl Read, buf: &mut [u8], mut each: impl FnMut(&[u8])) -> io::Result<()> {
    loop {
        match reader.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => each(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What a file holds, as the layer records it: its SHA-256 (its identity, in tree hashes) and
/// its xxh3 (what a warm build checks a reused layer's files against: fast enough to read
/// and hash every file of the layer on every build).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digests {
    pub sha256: Sha256,
    pub xxh3: u64,
}

/// [`Hasher`] and xxh3 over the same bytes: files are hashed both ways in one pass.
#[derive(Clone, Default)]
pub struct FileHasher {
    sha256: Hasher,
    xxh3: xxhash_rust::xxh3::Xxh3,
}

impl FileHasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        self.xxh3.update(bytes);
    }
    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.sha256.len()
    }
    pub fn is_empty(&self) -> bool {
        self.sha256.is_empty()
    }
    pub fn finish(self) -> Digests {
        Digests { xxh3: self.xxh3.digest(), sha256: self.sha256.finish() }
    }
    /// Hashes everything `reader` gives until its end, through `buf`.
    pub fn update_from(&mut self, reader: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
        read_each(reader, buf, |bytes| self.update(bytes))
    }
}

/// The xxh3 of a byte slice.
pub fn xxh3(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The xxh3 of `file`'s first `size` bytes, or `None` when it holds fewer: what a warm build
/// checks each reused layer file with. Files up to `buf`'s length are read in one call (the
/// common case: most layer files are small); bigger ones are streamed through it.
pub fn xxh3_of_file(file: &std::fs::File, size: u64, buf: &mut [u8]) -> io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let fill = |buf: &mut [u8], mut at: u64| -> io::Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], at) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    filled += n;
                    at += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    };
    if size <= buf.len() as u64 {
        let part = &mut buf[..size as usize];
        return Ok(fill(part, 0)?.then(|| xxh3(part)));
    }
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        if !fill(&mut buf[..n], at)? {
            return Ok(None);
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(Some(hasher.digest()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile index can put megabytes where a hash belongs: the error shows a bounded part.
    #[test]
    fn a_bad_sha256_error_is_bounded() {
        let err = "z".repeat(1 << 20).parse::<Sha256>().expect_err("not hex");
        assert!(err.to_string().len() < 300, "{} bytes", err.to_string().len());
    }

    #[test]
    fn known_digest_and_round_trip() {
        // SHA-256 of the empty string, from FIPS 180-2 examples.
        let empty = Sha256::of(b"");
        assert_eq!(empty.hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let parsed: Sha256 = empty.hex().parse().unwrap();
        assert_eq!(parsed, empty);
        assert!("xyz".parse::<Sha256>().is_err());
        assert!("g".repeat(64).parse::<Sha256>().is_err());
    }

    #[test]
    fn files_are_hashed_both_ways_in_one_pass_and_checked_by_xxh3() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = FileHasher::new();
        h.update_from(&mut &data[..], &mut [0u8; 1000]).unwrap();
        assert_eq!(h.len(), data.len() as u64);
        assert_eq!(h.finish(), Digests { sha256: Sha256::of(&data), xxh3: xxh3(&data) });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // Read in one call, streamed through a smaller buffer, and cut short.
        for buf_len in [1 << 20, 4096, 7] {
            let mut buf = vec![0; buf_len];
            assert_eq!(xxh3_of_file(&file, data.len() as u64, &mut buf).unwrap(), Some(xxh3(&data)), "{buf_len}");
            assert_eq!(xxh3_of_file(&file, 10, &mut buf).unwrap(), Some(xxh3(&data[..10])), "{buf_len}");
            assert_eq!(xxh3_of_file(&file, data.len() as u64 + 1, &mut buf).unwrap(), None, "{buf_len}");
        }
        assert_eq!(xxh3_of_file(&file, 0, &mut []).unwrap(), Some(xxh3(b"")));
    }

    #[test]
    fn update_from_hashes_a_whole_reader() {
        let data = b"hello world".repeat(1000);
        let mut h = Hasher::new();
        h.update_from(&mut &data[..], &mut [0u8; 100]).unwrap();
        assert_eq!(h.len(), data.len() as u64);
        assert_eq!(h.finish(), Sha256::of(&data));
    }
}
