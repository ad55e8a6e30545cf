//! The `ar` container of a .deb, read as strictly as `dpkg-deb` (1.21) reads it, so that
//! ddslug unpacks exactly the packages dpkg would and refuses the others with dpkg's reason.
//!
//! The rules, in the order dpkg-deb applies them to each 60-byte member header: the header
//! ends in `` `\n ``; the name is the 16-byte field less trailing spaces and `/`, up to its
//! first NUL; the size field is decimal digits after optional spaces, up to a space or the
//! end of the field. The first member is `debian-binary`, whose first line is the format
//! version `2.<minor>`. After it, members starting with `_` are skipped; then comes exactly one
//! `control.tar[.gz|.xz|.zst]`, then `data.tar[.gz|.xz|.zst|.bz2|.lzma]`; any other member
//! before the data is refused. What follows the data member is never read (dpkg-deb -x does
//! not read it either). Every member is padded to an even size.
//!
//! Contract: streams; nothing is allocated from a size field (`debian-binary` is parsed as it
//! is read); every refusal names the package and says what dpkg-deb would say.

use std::io::{self, Read};

use crate::unpack::deb::DebError;

/// How a control.tar or data.tar member is compressed (from its name, as dpkg decides it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
    Bzip2,
    Lzma,
}

impl Compression {
    /// The compressor's name, as build logs show it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
        }
    }
}

/// The member to stop at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Control,
    Data,
}

/// A member header as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The normalized name (trailing spaces and `/` removed, cut at the first NUL).
    pub name: Vec<u8>,
    pub size: u64,
    /// Offset of the member's first byte from the start of the file.
    pub offset: u64,
}

impl Member {
    /// The name as an error message shows it.
    pub fn shown(&self) -> String {
        crate::pathbytes::escape(&self.name)
    }
}

/// Reads a .deb's members in order, as dpkg-deb walks them.
pub struct ArReader<R> {
    inner: R,
    /// Bytes consumed from `inner`.
    pos: u64,
    label: String,
    /// Whether `debian-binary` has been read.
    header_done: bool,
    /// The size of the control member, once seen: dpkg-deb detects a second control member
    /// by this being non-zero (so it misses one after an empty control member; so does this).
    control_len: Option<u64>,
}

const MAGIC: &[u8; 8] = b"!<arch>\n";

impl<R: Read> ArReader<R> {
    /// Checks the `!<arch>` signature.
    pub fn new(mut inner: R, label: &str) -> Result<Self, DebError> {
        let mut magic = [0u8; 8];
        let got = read_full(&mut inner, &mut magic).map_err(|source| DebError::Io { deb: label.into(), error: source })?;
        if got < magic.len() {
            return Err(refuse(label, "unexpected end of file in archive magic version number"));
        }
        if &magic != MAGIC {
            let why = if magic.starts_with(b"0.93") {
                "it is in the old (0.93x) format, which ddslug does not read"
            } else {
                "it is not a Debian format archive (no `!<arch>` signature)"
            };
            return Err(refuse(label, why));
        }
        Ok(ArReader { inner, pos: 8, label: label.into(), header_done: false, control_len: None })
    }

    /// Bytes read so far: after [`ArReader::find`], the offset of the found member's data.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The reader, positioned at the data of the member [`ArReader::find`] returned.
    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Walks the members as dpkg-deb does until the control or data member, and returns it
    /// with its compression; `seen` is told of every member header on the way (the found
    /// one included).
    pub fn find(&mut self, want: Want, seen: &mut dyn FnMut(&Member)) -> Result<(Member, Compression), DebError> {
        loop {
            let member = self.next_header()?;
            seen(&member);
            if !self.header_done {
                if member.name != b"debian-binary" {
                    return Err(refuse(&self.label, "it is not a Debian binary archive (its first member is not debian-binary)"));
                }
                self.check_format_version(member.size)?;
                self.header_done = true;
                continue;
            }
            if member.name.first() == Some(&b'_') {
                // Members named `_...` are optional extensions: skipped.
                self.skip(member.size)?;
                continue;
            }
            if let Some(ext) = member.name.strip_prefix(b"control.tar") {
                let compression = match ext {
                    b"" => Compression::None,
                    b".gz" => Compression::Gzip,
                    b".xz" => Compression::Xz,
                    b".zst" => Compression::Zstd,
                    _ => return Err(self.unknown_compression(&member)),
                };
                if self.control_len.is_some_and(|len| len != 0) {
                    return Err(refuse(&self.label, "it contains two control members"));
                }
                self.control_len = Some(member.size);
                if want == Want::Control {
                    return Ok((member, compression));
                }
                self.skip(member.size)?;
                continue;
            }
            if self.control_len.is_none() {
                return Err(refuse(&self.label, &format!("it has premature member '{}' before 'control.tar'", member.shown())));
            }
            let Some(ext) = member.name.strip_prefix(b"data.tar") else {
                return Err(refuse(&self.label, &format!("it has premature member '{}' before 'data.tar'", member.shown())));
            };
            let compression = match ext {
                b"" => Compression::None,
                b".gz" => Compression::Gzip,
                b".xz" => Compression::Xz,
                b".zst" => Compression::Zstd,
                b".bz2" => Compression::Bzip2,
                b".lzma" => Compression::Lzma,
                _ => return Err(self.unknown_compression(&member)),
            };
            return Ok((member, compression));
        }
    }

    fn unknown_compression(&self, member: &Member) -> DebError {
        refuse(&self.label, &format!("it uses unknown compression for member '{}'", member.shown()))
    }

    /// The next member header, padding of the previous member already consumed.
    fn next_header(&mut self) -> Result<Member, DebError> {
        let mut header = [0u8; 60];
        if self.read(&mut header)? < header.len() {
            return Err(refuse(&self.label, "unexpected end of file in archive member header"));
        }
        if &header[58..60] != b"`\n" {
            return Err(refuse(&self.label, "it is corrupt: bad archive header magic"));
        }
        let name = normalized_name(&header[..16]);
        let size = parse_size(&header[48..58]).map_err(|c| {
            let c = crate::pathbytes::escape(&[c]);
            refuse(&self.label, &format!("invalid character '{c}' in the size of member '{}'", crate::pathbytes::escape(&name)))
        })?;
        Ok(Member { name, size, offset: self.pos })
    }

    /// Skips a member's data and padding.
    fn skip(&mut self, size: u64) -> Result<(), DebError> {
        let padded = size + (size & 1);
        let skipped = io::copy(&mut (&mut self.inner).take(padded), &mut io::sink()).map_err(|source| self.io(source))?;
        self.pos += skipped;
        if skipped < padded {
            // dpkg-deb notices when it next reads a header; the reason is the same.
            return Err(refuse(&self.label, "unexpected end of file in archive member header"));
        }
        Ok(())
    }

    /// Reads `debian-binary` (and its padding) as it streams: its first line must be a
    /// format version 2.x, as dpkg-deb's `deb_version_parse` wants it.
    fn check_format_version(&mut self, size: u64) -> Result<(), DebError> {
        let padded = size + (size & 1);
        let mut version = VersionLine::default();
        let mut buf = [0u8; 4096];
        let mut done = 0u64;
        while done < padded {
            let want = buf.len().min(usize::try_from(padded - done).unwrap_or(buf.len()));
            let got = self.read(&mut buf[..want])?;
            if got == 0 {
                return Err(refuse(&self.label, "unexpected end of file in archive information header member"));
            }
            // The padding byte is not part of the text.
            let text = usize::try_from(size.saturating_sub(done)).unwrap_or(usize::MAX).min(got);
            version.feed(&buf[..text]);
            done += got as u64;
        }
        match version.finish() {
            Ok((2, _)) => Ok(()),
            Ok((major, minor)) => Err(refuse(&self.label, &format!("it is format version {major}.{minor}; dpkg-deb reads only 2.x"))),
            Err(why) => Err(refuse(&self.label, why)),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, DebError> {
        let got = read_full(&mut self.inner, buf).map_err(|source| self.io(source))?;
        self.pos += got as u64;
        Ok(got)
    }

    fn io(&self, source: io::Error) -> DebError {
        DebError::Io { deb: self.label.clone(), error: source }
    }
}

/// Reads until `buf` is full or the end; how much was read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn refuse(label: &str, reason: &str) -> DebError {
    DebError::NotADeb { deb: label.into(), reason: reason.into() }
}

/// dpkg's `dpkg_ar_normalize_name`: trailing spaces and slashes removed; then, as C string
/// comparisons see it, the name ends at its first NUL.
fn normalized_name(field: &[u8]) -> Vec<u8> {
    let end = field.iter().rposition(|&b| b != b' ' && b != b'/').map_or(0, |i| i + 1);
    let name = &field[..end];
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    name.to_vec()
}

/// dpkg's `dpkg_ar_member_get_size`: spaces, then digits up to a space or the end of the
/// field. Returns the first other byte as the error.
fn parse_size(field: &[u8]) -> Result<u64, u8> {
    let digits = field.iter().skip_while(|&&b| b == b' ').take_while(|&&b| b != b' ');
    let mut size = 0u64;
    for &b in digits {
        if !b.is_ascii_digit() {
            return Err(b);
        }
        // Ten digits at most: no overflow.
        size = size * 10 + u64::from(b - b'0');
    }
    Ok(size)
}

/// The first line of `debian-binary`, parsed as it arrives: `<major>.<minor>\n`, each a
/// decimal number up to `i32::MAX`.
#[derive(Default)]
struct VersionLine {
    /// A NUL or newline ended the line.
    ended: Option<u8>,
    /// The first thing wrong with the line, as dpkg-deb words it.
    error: Option<&'static str>,
    minor_started: bool,
    /// Digits of the component being read.
    digits: u32,
    major: u64,
    minor: u64,
}

impl VersionLine {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.ended.is_some() {
                return;
            }
            if b == b'\n' || b == 0 {
                self.ended = Some(b);
            }
            if self.error.is_some() {
                continue;
            }
            let value = if self.minor_started { &mut self.minor } else { &mut self.major };
            if b.is_ascii_digit() {
                *value = (*value * 10 + u64::from(b - b'0')).min(u64::from(u32::MAX));
                self.digits += 1;
                continue;
            }
            let too_big = *value > i32::MAX as u64;
            self.error = match (self.minor_started, self.digits, too_big) {
                (false, 0, _) => Some("invalid format version: format version with empty major component"),
                (false, _, true) => Some("invalid format version: format version with too big major component"),
                (false, _, false) if b != b'.' => Some("invalid format version: format version has no dot"),
                (false, _, false) => {
                    self.minor_started = true;
                    self.digits = 0;
                    None
                }
                (true, 0, _) => Some("invalid format version: format version with empty minor component"),
                (true, _, true) => Some("invalid format version: format version with too big minor component"),
                (true, _, false) if b != b'\n' => Some("invalid format version: format version followed by junk"),
                (true, _, false) => None,
            };
        }
    }

    fn finish(self) -> Result<(u64, u64), &'static str> {
        if self.ended != Some(b'\n') {
            return Err("it has no newlines in its debian-binary member");
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok((self.major, self.minor)),
        }
    }
}

/// The members dpkg-deb reads of the .deb that `reader` gives, up to and including the one
/// `want` names, or why it refuses the package (for tests and fuzzing).
pub fn list_members<R: Read>(reader: R, label: &str, want: Want) -> Result<Vec<Member>, DebError> {
    let mut ar = ArReader::new(reader, label)?;
    let mut members = Vec::new();
    ar.find(want, &mut |m| members.push(m.clone()))?;
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &[u8], size: &[u8]) -> Vec<u8> {
        let mut h = vec![b' '; 60];
        h[..name.len()].copy_from_slice(name);
        h[48..48 + size.len()].copy_from_slice(size);
        h[58..].copy_from_slice(b"`\n");
        h
    }

    fn member(name: &str, body: &[u8]) -> Vec<u8> {
        let mut m = header(name.as_bytes(), body.len().to_string().as_bytes());
        m.extend_from_slice(body);
        if body.len() % 2 == 1 {
            m.push(b'\n');
        }
        m
    }

    fn ar(members: &[Vec<u8>]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        members.iter().for_each(|m| out.extend_from_slice(m));
        out
    }

    fn reason(bytes: &[u8]) -> String {
        match list_members(bytes, "t.deb", Want::Data) {
            Err(DebError::NotADeb { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn names_and_sizes_are_read_as_dpkg_reads_them() {
        assert_eq!(normalized_name(b"data.tar.xz/    "), b"data.tar.xz");
        assert_eq!(normalized_name(b"data.tar.gz\0abc/"), b"data.tar.gz");
        assert_eq!(normalized_name(b"data.tar.gz \0abc"), b"data.tar.gz ");
        assert_eq!(normalized_name(b"                "), b"");
        assert_eq!(parse_size(b"462       "), Ok(462));
        assert_eq!(parse_size(b"  462     "), Ok(462));
        assert_eq!(parse_size(b"462 9     "), Ok(462));
        assert_eq!(parse_size(b"          "), Ok(0));
        assert_eq!(parse_size(b"9999999999"), Ok(9_999_999_999));
        assert_eq!(parse_size(b"46x       "), Err(b'x'));
        assert_eq!(parse_size(b"-5        "), Err(b'-'));
        assert_eq!(parse_size(b"5\0        "), Err(0));
    }

    #[test]
    fn format_versions_as_dpkg_parses_them() {
        let parse = |text: &[u8]| {
            let mut v = VersionLine::default();
            v.feed(text);
            v.finish()
        };
        for good in [&b"2.0\n"[..], b"02.00\n", b"2.9\nanything", b"2.2147483647\n", b"2.0\n\0\0"] {
            assert_eq!(parse(good).map(|v| v.0), Ok(2), "{good:?}");
        }
        assert_eq!(parse(b"3.0\n"), Ok((3, 0)));
        for (bad, why) in [
            (&b"2.0"[..], "no newlines"),
            (b"2.0\0\n", "no newlines"),
            (b"", "no newlines"),
            (b"\n", "empty major"),
            (b" 2.0\n", "empty major"),
            (b"x2.0\n", "empty major"),
            (b"2x.0\n", "has no dot"),
            (b"2\n.0\n", "has no dot"),
            (b"2147483648.0\n", "too big major"),
            (b"99999999999x.0\n", "too big major"),
            (b"2.\n", "empty minor"),
            (b"2.-1\n", "empty minor"),
            (b"2.2147483648\n", "too big minor"),
            (b"2.0 \n", "followed by junk"),
            (b"2.0\r\n", "followed by junk"),
            (b"2.0.1\n", "followed by junk"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        // A long member is read as it streams, whatever its length.
        let mut long = b"2.".to_vec();
        long.extend(std::iter::repeat_n(b'0', 100_000));
        long.push(b'\n');
        assert_eq!(parse(&long), Ok((2, 0)));
    }

    #[test]
    fn member_order_as_dpkg_deb_enforces_it() {
        let (db, c, d) = (member("debian-binary", b"2.0\n"), member("control.tar.gz", b"c"), member("data.tar.xz", b"dd"));
        let names = |bytes: &[u8], want| -> Vec<Vec<u8>> { list_members(bytes, "t", want).unwrap().into_iter().map(|m| m.name).collect() };
        assert_eq!(names(&ar(&[db.clone(), c.clone(), d.clone()]), Want::Data), [&b"debian-binary"[..], b"control.tar.gz", b"data.tar.xz"]);
        assert_eq!(names(&ar(&[db.clone(), c.clone()]), Want::Control).len(), 2);
        // Optional `_` members anywhere after debian-binary, and anything after the data.
        let extra = member("_extra", b"abc");
        let mut trailing = ar(&[db.clone(), extra.clone(), c.clone(), extra.clone(), d.clone()]);
        trailing.extend_from_slice(b"garbage that is never read");
        assert_eq!(names(&trailing, Want::Data).len(), 5);
        let list = list_members(&ar(&[db.clone(), c.clone(), d.clone()])[..], "t", Want::Data).unwrap();
        assert_eq!((list[2].offset, list[2].size), (8 + 64 + 62 + 60, 2), "offsets point at the data, padding counted");

        for (members, why) in [
            (vec![db.clone(), d.clone(), c.clone()], "premature member 'data.tar.xz' before 'control.tar'"),
            (vec![db.clone(), d.clone()], "premature member 'data.tar.xz' before 'control.tar'"),
            (vec![db.clone(), c.clone(), c.clone(), d.clone()], "two control members"),
            (vec![db.clone(), c.clone(), member("extra", b""), d.clone()], "premature member 'extra' before 'data.tar'"),
            (vec![db.clone(), db.clone(), c.clone(), d.clone()], "premature member 'debian-binary' before 'control.tar'"),
            (vec![c.clone(), db.clone(), d.clone()], "not a Debian binary archive"),
            (vec![db.clone(), member("control.tar.bz2", b""), d.clone()], "unknown compression for member 'control.tar.bz2'"),
            (vec![db.clone(), c.clone(), member("data.tarx", b"")], "unknown compression for member 'data.tarx'"),
            (vec![db.clone(), c.clone()], "unexpected end of file in archive member header"),
            (vec![member("debian-binary", b"3.0\n"), c.clone(), d.clone()], "format version 3.0"),
        ] {
            assert!(reason(&ar(&members)).contains(why), "{why}: {}", reason(&ar(&members)));
        }
        let mut junk_size = header(b"data.tar.xz", b"2\x1b[2J");
        junk_size.extend_from_slice(b"dd");
        let why = reason(&ar(&[db.clone(), c.clone(), junk_size]));
        assert!(why.contains("invalid character '\\x1b' in the size of member 'data.tar.xz'"), "{why}");
        let mut bad_magic = header(b"data.tar.xz", b"2");
        bad_magic[58] = b'X';
        assert!(reason(&ar(&[db.clone(), c.clone(), bad_magic])).contains("bad archive header magic"));
        // An odd member without its padding byte misaligns the next header.
        let mut unpadded = member("control.tar.gz", b"c");
        unpadded.pop();
        assert!(reason(&ar(&[db.clone(), unpadded, d.clone()])).contains("bad archive header magic"));
        // Sizes that run past the end of the file.
        let mut past = header(b"control.tar.gz", b"100000");
        past.extend_from_slice(b"cc");
        assert!(reason(&ar(&[db.clone(), past])).contains("unexpected end of file in archive member header"));
        let mut db_past = header(b"debian-binary", b"100");
        db_past.extend_from_slice(b"2.0\n");
        assert!(reason(&ar(&[db_past])).contains("unexpected end of file in archive information header member"));
        assert!(reason(b"!<arch>").contains("magic"));
        assert!(reason(b"PK\x03\x04 zip file").contains("not a Debian format archive"));
    }
}
