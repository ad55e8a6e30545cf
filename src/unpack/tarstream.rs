//! The tar members of a .deb: decompressors chosen by the member's name (as dpkg-deb chooses
//! them), and tar entries with their extension records (GNU long names and links, PAX)
//! applied, as GNU tar, which `dpkg-deb -x` runs, applies them.
//!
//! Contract: nothing a package controls makes these allocate without bound or print without
//! bound. Extension records are read only up to [`MAX_EXTENSION`] bytes; an archive of more
//! than [`MAX_ENTRIES`] entries, or whose names and link targets add up to more than
//! [`MAX_NAME_BYTES`] (the unpacker keeps names, of skipped entries too), is refused; the xz and lzma decoders stop at [`XZ_MEMLIMIT`]
//! (zstd's own default window limit is 128 MiB, bzip2 and gzip need little memory); gzip
//! header fields are skipped without being kept. Each refusal names the limit.

use std::io::{self, BufRead, BufReader, Read};

use crate::unpack::ar::Compression;

/// Bytes of one GNU long-name or long-link record, or of one PAX header: far beyond any real
/// path (Linux allows 4096 bytes).
pub const MAX_EXTENSION: u64 = 64 << 10;
/// Entries in one tar archive: twenty times the real agent package (about 25,000).
pub const MAX_ENTRIES: u64 = 500_000;
/// Bytes of all entry names and link targets of one tar archive together: the unpacker
/// keeps a name per directory and per skipped file, so this bounds its memory where the
/// entry count alone does not (names run to [`MAX_EXTENSION`] each). The real agent's add
/// up to about 2 MB.
pub const MAX_NAME_BYTES: u64 = 32 << 20;
/// Memory for an xz or lzma decoder: twice what `xz -9` streams need.
pub const XZ_MEMLIMIT: u64 = 128 << 20;

/// An archive with more than `max` entries.
pub(crate) fn too_many_entries(max: u64) -> io::Error {
    invalid(format!("the archive has more than {max} entries, ddslug's limit"))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A decompressing reader for a member compressed as `compression`.
pub fn decompressor<'a, R: Read + Send + 'a>(compression: Compression, body: R) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(body),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(body)),
        Compression::Xz => Box::new(xz_reader(body)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(body)?),
        Compression::Bzip2 => Box::new(bzip2::read::BzDecoder::new(body)),
        Compression::Lzma => {
            let stream = liblzma::stream::Stream::new_lzma_decoder(XZ_MEMLIMIT).map_err(io::Error::other)?;
            Box::new(liblzma::read::XzDecoder::new_stream(body, stream))
        }
    })
}

/// A gzip member's deflate data without its CRC32 and length check, for packages whose
/// SHA-256 is checked (the check is about a twentieth of gzip's decoding time).
pub fn gzip_unchecked<R: Read>(body: R) -> io::Result<flate2::read::DeflateDecoder<BufReader<R>>> {
    let mut body = BufReader::new(body);
    skip_gzip_header(&mut body)?;
    Ok(flate2::read::DeflateDecoder::new_with_buf(body, vec![0u8; 1 << 16]))
}

/// Reads past a gzip member header (RFC 1952, section 2.3), keeping none of it.
fn skip_gzip_header<R: BufRead>(r: &mut R) -> io::Result<()> {
    let bad = |why: &str| invalid(format!("not a gzip stream: {why}"));
    let mut fixed = [0u8; 10];
    r.read_exact(&mut fixed)?;
    if fixed[..3] != [0x1f, 0x8b, 8] {
        return Err(bad("wrong magic or compression method"));
    }
    let flags = fixed[3];
    if flags & 0xe0 != 0 {
        return Err(bad("reserved flags set"));
    }
    if flags & 0x04 != 0 {
        let mut len = [0u8; 2];
        r.read_exact(&mut len)?;
        let len = u64::from(u16::from_le_bytes(len));
        if io::copy(&mut r.take(len), &mut io::sink())? != len {
            return Err(bad("header ends inside the extra field"));
        }
    }
    for flag in [0x08, 0x10] {
        // File name, comment: zero-terminated, of any length, so skipped a buffer at a time.
        if flags & flag != 0 {
            loop {
                let buf = r.fill_buf()?;
                if buf.is_empty() {
                    return Err(bad("header ends inside a name or comment"));
                }
                match buf.iter().position(|&b| b == 0) {
                    Some(at) => {
                        r.consume(at + 1);
                        break;
                    }
                    None => {
                        let n = buf.len();
                        r.consume(n);
                    }
                }
            }
        }
    }
    if flags & 0x02 != 0 {
        r.read_exact(&mut [0u8; 2])?;
    }
    Ok(())
}

/// xz with liblzma's multi-threaded decoder (it helps on multi-block streams, as dpkg-deb
/// writes them), falling back to the single-threaded one; both stop at [`XZ_MEMLIMIT`].
fn xz_reader<R: Read>(body: R) -> liblzma::read::XzDecoder<R> {
    let threads = crate::fsat::workers() as u32;
    let stream = liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        // Beyond this liblzma decodes on one thread: a compile stays well under 256 MB.
        .memlimit_threading(XZ_MEMLIMIT)
        .memlimit_stop(XZ_MEMLIMIT)
        .decoder()
        .or_else(|_| liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0));
    match stream {
        Ok(stream) => liblzma::read::XzDecoder::new_stream(body, stream),
        Err(_) => liblzma::read::XzDecoder::new(body),
    }
}

/// A tar entry's name, link target and mtime, with the extension records before it applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryMeta {
    pub path: Vec<u8>,
    pub link: Option<Vec<u8>>,
    /// From a PAX `mtime` record (seconds, nanoseconds); else the header's applies.
    pub mtime: Option<(i64, u32)>,
}

/// Calls `each` with every entry of `entries` (made raw here: extension records are read by
/// this function, within [`MAX_EXTENSION`]) and its [`EntryMeta`], until `each` returns
/// `false`. `io_err` turns read errors and refusals into the caller's error.
pub fn for_each_entry<'a, R: Read + 'a, E>(
    entries: tar::Entries<'a, R>,
    io_err: impl Fn(io::Error) -> E,
    each: impl FnMut(&mut tar::Entry<'a, R>, &EntryMeta) -> Result<bool, E>,
) -> Result<(), E> {
    entries_within(entries, (MAX_ENTRIES, MAX_NAME_BYTES), io_err, each)
}

/// [`for_each_entry`] within `(entries, name bytes)`.
fn entries_within<'a, R: Read + 'a, E>(
    entries: tar::Entries<'a, R>,
    (max_entries, max_name_bytes): (u64, u64),
    io_err: impl Fn(io::Error) -> E,
    mut each: impl FnMut(&mut tar::Entry<'a, R>, &EntryMeta) -> Result<bool, E>,
) -> Result<(), E> {
    use tar::EntryType::{GNULongLink, GNULongName, XGlobalHeader, XHeader};
    let (mut long_name, mut long_link, mut pax) = (None, None, None);
    let (mut count, mut name_bytes) = (0u64, 0u64);
    for entry in entries.raw(true) {
        let mut entry = entry.map_err(&io_err)?;
        count += 1;
        if count > max_entries {
            return Err(io_err(too_many_entries(max_entries)));
        }
        let kind = entry.header().entry_type();
        let slot = match kind {
            GNULongName => Some((&mut long_name, "GNU long name")),
            GNULongLink => Some((&mut long_link, "GNU long link")),
            XHeader => Some((&mut pax, "PAX header")),
            _ => None,
        };
        if let Some((slot, what)) = slot {
            if slot.is_some() {
                return Err(io_err(invalid(format!("two {what} records describe the same entry"))));
            }
            *slot = Some(read_extension(&mut entry, what).map_err(&io_err)?);
            continue;
        }
        if kind == XGlobalHeader {
            // Applies to every later entry in PAX; GNU tar keeps only what ddslug ignores.
            read_extension(&mut entry, "PAX global header").map_err(&io_err)?;
            continue;
        }
        let meta = entry_meta(&entry, long_name.take(), long_link.take(), pax.take()).map_err(&io_err)?;
        name_bytes += (meta.path.len() + meta.link.as_ref().map_or(0, Vec::len)) as u64;
        if name_bytes > max_name_bytes {
            let why = format!("the archive's entry names and link targets add up to more than {max_name_bytes} bytes, ddslug's limit");
            return Err(io_err(invalid(why)));
        }
        if !each(&mut entry, &meta)? {
            return Ok(());
        }
    }
    if long_name.is_some() || long_link.is_some() || pax.is_some() {
        return Err(io_err(invalid("the archive ends with extension records that describe no entry".into())));
    }
    Ok(())
}

/// An extension record's data, refused beyond [`MAX_EXTENSION`] before anything is read.
fn read_extension<R: Read>(entry: &mut tar::Entry<'_, R>, what: &str) -> io::Result<Vec<u8>> {
    let size = entry.size();
    if size > MAX_EXTENSION {
        return Err(invalid(format!("a {what} record of {size} bytes is over ddslug's limit of {MAX_EXTENSION} bytes")));
    }
    let mut data = Vec::with_capacity(size as usize);
    entry.read_to_end(&mut data)?;
    Ok(data)
}

/// A GNU long name or link: a C string (what follows its first NUL is not part of it).
fn c_string(mut bytes: Vec<u8>) -> Vec<u8> {
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(at);
    }
    bytes
}

fn entry_meta<R: Read>(entry: &tar::Entry<'_, R>, long_name: Option<Vec<u8>>, long_link: Option<Vec<u8>>, pax: Option<Vec<u8>>) -> io::Result<EntryMeta> {
    let mut meta = EntryMeta {
        path: long_name.map(c_string).unwrap_or_else(|| entry.path_bytes().into_owned()),
        link: long_link.map(c_string).or_else(|| entry.link_name_bytes().map(|l| l.into_owned())),
        mtime: None,
    };
    let Some(pax) = pax else { return Ok(meta) };
    for record in tar::PaxExtensions::new(&pax) {
        let record = record.map_err(|_| invalid("a malformed PAX record".into()))?;
        let value = record.value_bytes();
        match record.key_bytes() {
            b"path" => meta.path = value.to_vec(),
            b"linkpath" => meta.link = Some(value.to_vec()),
            b"mtime" => meta.mtime = Some(pax_time(value).ok_or_else(|| invalid("a PAX mtime record that is not a time".into()))?),
            // The tar reader skips contents by the header's size: a record giving another
            // would desynchronise it from GNU tar, so it is refused.
            b"size" => {
                let size = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
                if size != Some(entry.size()) {
                    return Err(invalid("a PAX size record that differs from the header's size (not supported)".into()));
                }
            }
            _ => {}
        }
    }
    Ok(meta)
}

/// A PAX time (`seconds[.fraction]`, seconds possibly negative) as (seconds, nanoseconds).
fn pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: u32 = digits.parse().ok()?;
    // -1.5 is half a second before -1: the fraction counts down from the seconds' sign.
    Some(if text.starts_with('-') && nanos > 0 { (secs - 1, 1_000_000_000 - nanos) } else { (secs, nanos) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &[u8], kind: tar::EntryType, size: u64) -> [u8; 512] {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_cksum();
        *h.as_bytes()
    }

    fn archive(parts: &[(&[u8], tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data) in parts {
            out.extend_from_slice(&header(name, *kind, data.len() as u64));
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    /// One PAX record: `<length> <key>=<value>\n`, the length counting itself.
    fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
        let body = [b" ", key, b"=", value, b"\n"].concat();
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len += 1;
        }
        [len.to_string().as_bytes(), &body].concat()
    }

    fn metas(tar_bytes: &[u8]) -> Result<Vec<EntryMeta>, String> {
        let mut archive = tar::Archive::new(tar_bytes);
        let mut out = Vec::new();
        for_each_entry(archive.entries().map_err(|e| e.to_string())?, |e| e.to_string(), |_, meta| {
            out.push(meta.clone());
            Ok(true)
        })?;
        Ok(out)
    }

    #[test]
    fn extension_records_name_the_next_entry() {
        use tar::EntryType::{GNULongLink, GNULongName, Regular, Symlink, XHeader};
        let long = [&b"./"[..], &b"d\xe9/".repeat(80), b"file\0ignored"].concat();
        let pax = [pax_record(b"mtime", b"1700000000.25"), pax_record(b"path", b"./p\xffx")].concat();
        let got = metas(&archive(&[
            (b"././@LongLink", GNULongName, &long),
            (b"./short", Regular, b"data"),
            (b"././@LongLink", GNULongLink, b"target\xfe\0"),
            (b"./l", Symlink, b""),
            (b"PaxHeaders/x", XHeader, &pax),
            (b"./ignored-name", Regular, b""),
        ]))
        .unwrap();
        assert_eq!(got[0].path, long[..long.len() - "\0ignored".len()].to_vec(), "a C string: cut at its NUL");
        assert_eq!((got[1].path.as_slice(), got[1].link.as_deref()), (&b"./l"[..], Some(&b"target\xfe"[..])));
        assert_eq!((got[2].path.as_slice(), got[2].mtime), (&b"./p\xffx"[..], Some((1_700_000_000, 250_000_000))));
    }

    #[test]
    fn oversized_repeated_and_dangling_records_are_refused() {
        use tar::EntryType::{GNULongName, Regular, XHeader};
        let huge = vec![b'a'; MAX_EXTENSION as usize + 1];
        let err = metas(&archive(&[(b"././@LongLink", GNULongName, &huge), (b"./x", Regular, b"")])).unwrap_err();
        assert!(err.contains("65537 bytes is over ddslug's limit of 65536"), "{err}");
        // A size field claiming terabytes is refused before any allocation or read.
        let mut lying = header(b"././@LongLink", GNULongName, 1 << 40).to_vec();
        lying.resize(4096, 0);
        assert!(metas(&lying).unwrap_err().contains("over ddslug's limit"));
        let err = metas(&archive(&[(b"a", GNULongName, b"x"), (b"b", GNULongName, b"y"), (b"./x", Regular, b"")])).unwrap_err();
        assert!(err.contains("two GNU long name records"), "{err}");
        assert!(metas(&archive(&[(b"a", GNULongName, b"x")])).unwrap_err().contains("describe no entry"));
        let err = metas(&archive(&[(b"p", XHeader, &pax_record(b"size", b"99")), (b"./x", Regular, b"abc")])).unwrap_err();
        assert!(err.contains("PAX size record"), "{err}");
        assert!(metas(&archive(&[(b"p", XHeader, &pax_record(b"size", b"3")), (b"./x", Regular, b"abc")])).is_ok(), "an agreeing size is fine");
        assert!(metas(&archive(&[(b"p", XHeader, b"99 path=x\n"), (b"./x", Regular, b"")])).unwrap_err().contains("malformed PAX"));
    }

    #[test]
    fn entries_beyond_the_limit_are_refused() {
        use tar::EntryType::Regular;
        let tar_bytes = archive(&[(b"./a", Regular, b""), (b"./b", Regular, b""), (b"./c", Regular, b"")]);
        let run = |max| {
            let mut archive = tar::Archive::new(&tar_bytes[..]);
            entries_within(archive.entries().unwrap(), max, |e| e.to_string(), |_, _| Ok(true))
        };
        assert!(run((3, 100)).is_ok());
        assert!(run((2, 100)).unwrap_err().contains("more than 2 entries"));
        assert!(run((3, 9)).is_ok(), "three names of three bytes");
        assert!(run((3, 8)).unwrap_err().contains("names and link targets add up to more than 8 bytes"));
    }

    /// Names of up to 64 KiB each (GNU long names), few enough entries: what the entry
    /// count alone let through, and the unpacker would keep every one of (a stripped file's
    /// name is kept for hard links to it), is refused by the total of the names.
    #[test]
    fn long_names_are_bounded_in_total_not_only_one_by_one() {
        use tar::EntryType::{GNULongName, Regular};
        let long = vec![b'n'; MAX_EXTENSION as usize - 1];
        let count = (MAX_NAME_BYTES / long.len() as u64 + 1) as usize;
        let mut tar_bytes = Vec::with_capacity(count * (long.len() + 1536));
        for _ in 0..count {
            let part = archive(&[(b"././@LongLink", GNULongName, &long), (b"./x", Regular, b"")]);
            tar_bytes.extend_from_slice(&part[..part.len() - 1024]);
        }
        tar_bytes.resize(tar_bytes.len() + 1024, 0);
        let mut seen = 0usize;
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let result = for_each_entry(archive.entries().unwrap(), |e| e.to_string(), |_, _| {
            seen += 1;
            Ok(true)
        });
        assert!(result.unwrap_err().contains(&format!("add up to more than {MAX_NAME_BYTES} bytes")));
        assert_eq!(seen, count - 1);
    }

    #[test]
    fn xz_streams_that_need_more_memory_than_the_limit_are_refused() {
        use std::io::Write;
        // A real stream, its LZMA2 dictionary then declared as 4 GiB: the decoder would
        // fill that much memory with what a few hundred KB of input decode to.
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 0);
        enc.write_all(&[0u8; 4096]).unwrap();
        let mut xz = enc.finish().unwrap();
        let block = 12;
        assert_eq!(&xz[block..block + 4], &[0x02, 0x00, 0x21, 0x01], "a one-filter LZMA2 block header");
        xz[block + 4] = 40;
        let crc = {
            let mut c = flate2::Crc::new();
            c.update(&xz[block..block + 8]);
            c.sum()
        };
        xz[block + 8..block + 12].copy_from_slice(&crc.to_le_bytes());
        let mut out = Vec::new();
        let err = decompressor(Compression::Xz, &xz[..]).unwrap().read_to_end(&mut out).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("memory"), "{err}");
        // The same bytes with the limit lifted are a valid stream: the limit is what refused.
        let stream = liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0).unwrap();
        let mut out = Vec::new();
        liblzma::read::XzDecoder::new_stream(&xz[..], stream).read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 4096);
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(pax_time(b"1.000000001999"), Some((1, 1)));
        assert_eq!(pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(pax_time(b"-0.25"), Some((-1, 750_000_000)));
        assert_eq!(pax_time(b"-2"), Some((-2, 0)));
        assert_eq!(pax_time(b"x"), None);
        assert_eq!(pax_time(b"1.x"), None);
    }

    #[test]
    fn gzip_names_of_any_length_are_skipped_without_being_kept() {
        let mut gz = vec![0x1f, 0x8b, 8, 0x08, 0, 0, 0, 0, 0, 3];
        gz.extend(std::iter::repeat_n(b'n', 1 << 20));
        gz.push(0);
        let mut r = BufReader::with_capacity(4096, &gz[..]);
        skip_gzip_header(&mut r).unwrap();
        assert!(r.fill_buf().unwrap().is_empty());
        let cut = &gz[..gz.len() - 1];
        assert!(skip_gzip_header(&mut BufReader::new(cut)).unwrap_err().to_string().contains("inside a name"));
    }

    #[test]
    fn unchecked_gzip_reads_past_every_optional_header_field() {
        use std::io::Write;
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i * 7 / 3) as u8).collect();
        let mut enc = flate2::GzBuilder::new()
            .filename("data.tar")
            .comment("a comment")
            .extra(vec![1, 2, 3, 4, 5])
            .write(Vec::new(), flate2::Compression::fast());
        enc.write_all(&plain).unwrap();
        let mut gz = enc.finish().unwrap();
        // A header CRC too (GzBuilder cannot write one): set FHCRC and insert two bytes.
        let header_len = 10 + 2 + 5 + "data.tar\0".len() + "a comment\0".len();
        gz[3] |= 0x02;
        gz.splice(header_len..header_len, [0xab, 0xcd]);
        let mut out = Vec::new();
        gzip_unchecked(&gz[..]).unwrap().read_to_end(&mut out).unwrap();
        assert!(out == plain, "the deflate data after the header decodes to the input");

        let mut not_gzip = gz.clone();
        not_gzip[2] = 9;
        assert_eq!(gzip_unchecked(&not_gzip[..]).err().map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
        let cut = gzip_unchecked(&gz[..14]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(cut.contains("extra field"), "{cut}");
    }
}
