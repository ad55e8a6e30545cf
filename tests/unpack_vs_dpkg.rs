//! The unpacker against dpkg itself: packages built by `dpkg-deb --build` with every
//! compression, unpacked by ddslug and by `dpkg-deb -x`, must give the same tree (paths,
//! types, modes, link targets, contents) and the same file mtimes.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use ddslug::store::treehash::{EntryKind, scan_tree};

fn make_tree(root: &Path) {
    let p = |rel: &str| root.join(rel);
    fs::create_dir_all(p("DEBIAN")).unwrap();
    fs::write(p("DEBIAN/control"), "Package: ddslug-oracle\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: t <t@t.invalid>\nDescription: test\n").unwrap();
    fs::create_dir_all(p("opt/app/bin")).unwrap();
    fs::create_dir_all(p("opt/app/share/empty")).unwrap();
    fs::write(p("opt/app/bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(p("opt/app/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(p("opt/app/bin/suid"), b"suid").unwrap();
    fs::set_permissions(p("opt/app/bin/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(p("opt/app/private"), b"secret").unwrap();
    fs::set_permissions(p("opt/app/private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(p("opt/app/empty-file"), b"").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    fs::write(p("opt/app/big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("bin/tool", p("opt/app/relative-link")).unwrap();
    std::os::unix::fs::symlink("/opt/app/bin/tool", p("opt/app/absolute-link")).unwrap();
    fs::hard_link(p("opt/app/bin/tool"), p("opt/app/bin/tool-hardlink")).unwrap();
    let long = format!("opt/app/{}", "very-long-directory-name-".repeat(4));
    fs::create_dir_all(p(&long)).unwrap();
    fs::write(p(&format!("{long}/{}.txt", "long-file-name-".repeat(8))), b"long").unwrap();
    fs::write(p("opt/app/café-日本.txt"), "utf-8 name").unwrap();
    // Names and a link target that are not UTF-8 (Latin-1 é, a lone 0xff): dpkg keeps bytes.
    let raw = |b: &[u8]| root.join("opt/app").join(OsStr::from_bytes(b));
    fs::write(raw(b"latin1-\xe9"), "e acute in latin-1").unwrap();
    fs::write(raw(b"latin1-\xff"), "0xff").unwrap();
    fs::create_dir(raw(b"dir-\xe9")).unwrap();
    fs::write(raw(b"dir-\xe9/inside"), "below").unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"latin1-\xe9"), raw(b"link-to-\xe9")).unwrap();
    // A fixed mtime everywhere, so that dpkg-deb's archive carries known times.
    Command::new("find").arg(root).args(["-exec", "touch", "-h", "-d", "2024-01-02 03:04:05", "{}", "+"]).status().unwrap();
}

fn compressions() -> Vec<&'static str> {
    // bookworm's dpkg-deb writes xz, gzip, zstd and none.
    vec!["xz", "gzip", "zstd", "none"]
}

#[test]
fn same_tree_as_dpkg_for_every_compression() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    for z in compressions() {
        let deb = dir.path().join(format!("oracle-{z}.deb"));
        let status = Command::new("dpkg-deb")
            .args(["--root-owner-group", &format!("-Z{z}"), "--build"])
            .arg(&src)
            .arg(&deb)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("dpkg-deb is needed for this test (.ci/run installs it)");
        assert!(status.success(), "dpkg-deb --build -Z{z}");
        let ours = dir.path().join(format!("ours-{z}"));
        let theirs = dir.path().join(format!("theirs-{z}"));
        let report = ddslug::unpack::deb::unpack_deb(&deb, &ours).unwrap();
        assert!(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&theirs).status().unwrap().success());
        let (a, b) = (scan_tree(&ours).unwrap(), scan_tree(&theirs).unwrap());
        assert_eq!(a.entries, b.entries, "-Z{z}");
        assert_eq!(a.hash, b.hash);
        assert_eq!((report.hardlinks, report.symlinks), (1, 3), "-Z{z}");
        let latin1 = ours.join("opt/app").join(OsStr::from_bytes(b"latin1-\xe9"));
        assert_eq!(fs::read(latin1).unwrap(), b"e acute in latin-1", "-Z{z}");
        let suid = fs::metadata(ours.join("opt/app/bin/suid")).unwrap();
        assert_eq!(suid.mode() & 0o7777, 0o4755, "setuid kept");
        let tool = fs::metadata(ours.join("opt/app/bin/tool")).unwrap();
        assert_eq!(tool.nlink(), 2, "hard link kept as a hard link");
        for e in b.entries.iter().filter(|e| !matches!(e.kind, EntryKind::Dir)) {
            let (ma, mb) = (fs::symlink_metadata(ours.join(&e.path)).unwrap(), fs::symlink_metadata(theirs.join(&e.path)).unwrap());
            assert_eq!(ma.mtime(), mb.mtime(), "-Z{z}: mtime of {}", e.path);
        }
        assert_eq!(ddslug::unpack::deb::read_control(&deb).unwrap().lines().next(), Some("Package: ddslug-oracle"));
    }
}

/// Every data.tar compression ddslug reads (bzip2 and multi-block xz included, which
/// dpkg-deb here does not write) gives the same tree as dpkg-deb -x of the same file.
#[test]
fn every_compression_matches_dpkg() {
    use ddslug_testsupport::{Compression, DebSpec};
    let dir = tempfile::tempdir().unwrap();
    let mut hashes = Vec::new();
    for c in [Compression::None, Compression::Gzip, Compression::Xz, Compression::XzMultiBlock, Compression::Zstd, Compression::Bzip2] {
        let mut spec = DebSpec::new("multi", "1.0-1")
            .file("usr/share/multi/a.txt", 0o644, "alpha\n".repeat(5000))
            .file("usr/bin/multi", 0o755, "#!/bin/sh\n")
            .symlink("usr/bin/m", "multi")
            .hardlink("usr/bin/multi2", "usr/bin/multi");
        spec.compression = c;
        let deb = dir.path().join(format!("{c:?}.deb"));
        fs::write(&deb, spec.build().unwrap()).unwrap();
        let (ours, theirs) = (dir.path().join(format!("ours-{c:?}")), dir.path().join(format!("theirs-{c:?}")));
        ddslug::unpack::deb::unpack_deb(&deb, &ours).unwrap();
        assert!(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&theirs).status().unwrap().success(), "{c:?}");
        let (a, b) = (scan_tree(&ours).unwrap(), scan_tree(&theirs).unwrap());
        assert_eq!(a.entries, b.entries, "{c:?}");
        hashes.push(a.hash);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "compression changed the tree");
}

/// Names and symlink targets that are not UTF-8, short and long (GNU long-name records),
/// in files, directories, symlinks and hard links: written with their exact bytes, as
/// dpkg-deb -x writes them, and two of them never collide.
#[test]
fn names_that_are_not_utf8_match_dpkg_byte_for_byte() {
    use ddslug_testsupport::{Compression, DebSpec};
    let dir = tempfile::tempdir().unwrap();
    let long_dir = [&b"opt/"[..], &b"d\xe9-".repeat(40)].concat();
    let long_file = [&long_dir[..], b"/", &b"f\xff".repeat(60)].concat();
    let long_target = [&b"../"[..], &b"t\xfe".repeat(70)].concat();
    let mut spec = DebSpec::new("bytes", "1.0-1")
        .file(b"opt/n/a\xe9", 0o644, "latin-1")
        .file(b"opt/n/a\xff", 0o600, "lone ff")
        .file("opt/n/a\u{fffd}", 0o644, "the replacement character itself")
        .file(b"opt/n\xe9/inside", 0o644, "below a directory named in latin-1")
        .symlink(b"opt/n/l\xe9", b"a\xe9")
        .symlink("opt/n/abs", b"/opt/n/a\xff")
        .hardlink(b"opt/n/h\xfe", b"opt/n/a\xe9")
        .file(&long_file, 0o644, "long")
        .symlink(b"opt/n/long-target", &long_target);
    spec.compression = Compression::Gzip;
    let deb = dir.path().join("bytes.deb");
    fs::write(&deb, spec.build().unwrap()).unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    let report = ddslug::unpack::deb::unpack_deb(&deb, &ours).unwrap();
    assert!(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&theirs).status().unwrap().success());
    let (a, b) = (scan_tree(&ours).unwrap(), scan_tree(&theirs).unwrap());
    assert_eq!(a.entries, b.entries);
    assert_eq!(a.hash, b.hash);
    assert_eq!((report.files, report.symlinks, report.hardlinks), (5, 3, 1));
    let at = |name: &[u8]| ours.join(OsStr::from_bytes(name));
    assert_eq!(fs::read(at(b"opt/n/a\xe9")).unwrap(), b"latin-1");
    assert_eq!(fs::read(at(b"opt/n/a\xff")).unwrap(), b"lone ff");
    assert_eq!(fs::read(at("opt/n/a\u{fffd}".as_bytes())).unwrap(), b"the replacement character itself");
    assert_eq!(fs::read_link(at(b"opt/n/long-target")).unwrap().as_os_str().as_bytes(), &long_target[..]);
    assert_eq!(fs::read(at(&long_file)).unwrap(), b"long");
    // The entry list carries the bytes and reads back to the same tree hash.
    let json = serde_json::to_string(&a.entries).unwrap();
    assert!(json.contains(r#""path_hex":"6f70742f6e2f61e9""#), "{json}");
    let back: Vec<ddslug::store::treehash::TreeEntry> = serde_json::from_str(&json).unwrap();
    assert_eq!(ddslug::store::treehash::hash_entries(&back), a.hash);
}

/// The members of a well-formed .deb, as (name, bytes), split without ddslug's reader.
fn members_of(deb: &[u8]) -> Vec<(String, Vec<u8>)> {
    let (mut out, mut at) = (Vec::new(), 8);
    while at + 60 <= deb.len() {
        let name = String::from_utf8_lossy(&deb[at..at + 16]).trim_end().trim_end_matches('/').to_string();
        let size: usize = String::from_utf8_lossy(&deb[at + 48..at + 58]).trim().parse().unwrap();
        out.push((name, deb[at + 60..at + 60 + size].to_vec()));
        at += 60 + size + size % 2;
    }
    out
}

/// An ar member: header fields as given (the size field verbatim), body, padding if odd.
fn raw_member(name: &str, size_field: &[u8], body: &[u8], pad: bool) -> Vec<u8> {
    let mut out = format!("{name:<16}{:<12}{:<6}{:<6}{:<8}", 0, 0, 0, "100644").into_bytes();
    let mut size = size_field.to_vec();
    size.resize(10, b' ');
    out.extend_from_slice(&size);
    out.extend_from_slice(b"`\n");
    out.extend_from_slice(body);
    if pad && body.len() % 2 == 1 {
        out.push(b'\n');
    }
    out
}

fn member(name: &str, body: &[u8]) -> Vec<u8> {
    raw_member(name, body.len().to_string().as_bytes(), body, true)
}

/// Hostile .deb containers: ddslug accepts exactly what `dpkg-deb -x` accepts (and unpacks the
/// same tree), and refuses the rest with dpkg-deb's reason.
#[test]
fn the_ar_container_is_read_as_strictly_as_dpkg_deb_reads_it() {
    use ddslug_testsupport::{Compression, DebSpec};
    let dir = tempfile::tempdir().unwrap();
    let mut spec = DebSpec::new("strict", "1.0-1").file("usr/share/strict/a.txt", 0o644, "alpha\n");
    spec.compression = Compression::Gzip;
    let parts = members_of(&spec.build().unwrap());
    let (control, data) = (&parts[1].1, &parts[2].1);
    let db = member("debian-binary", b"2.0\n");
    let c = member("control.tar.gz", control);
    let d = member("data.tar.gz", data);
    let odd_control = [&control[..], if control.len() % 2 == 0 { b"\0" } else { b"" }].concat();
    let deb = |members: &[&[u8]], tail: &[u8]| [&b"!<arch>\n"[..], &members.concat(), tail].concat();
    let with_version = |v: &[u8]| deb(&[&member("debian-binary", v), &c, &d], b"");
    let size = |field: &[u8]| deb(&[&db, &c, &raw_member("data.tar.gz", field, data, true)], b"");
    // (case, the .deb, what both refusals say; None where dpkg-deb -x accepts it)
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("well formed", deb(&[&db, &c, &d], b""), None),
        ("data before control", deb(&[&db, &d, &c], b""), Some("premature member 'data.tar.gz' before 'control.tar'")),
        ("no control member", deb(&[&db, &d], b""), Some("premature member 'data.tar.gz' before 'control.tar'")),
        ("two control members", deb(&[&db, &c, &c, &d], b""), Some("two control members")),
        ("two data members", deb(&[&db, &c, &d, &d], b""), None),
        ("trailing garbage", deb(&[&db, &c, &d], b"garbage after the data member"), None),
        ("optional _ members", deb(&[&db, &member("_a", b"x"), &c, &member("_b", b"yz"), &d], b""), None),
        ("an unknown member", deb(&[&db, &c, &member("extra", b"abc"), &d], b""), Some("premature member 'extra' before 'data.tar'")),
        ("debian-binary twice", deb(&[&db, &db, &c, &d], b""), Some("premature member 'debian-binary' before 'control.tar'")),
        ("control first", deb(&[&c, &db, &d], b""), Some("not a Debian binary archive")),
        ("format 3.0", with_version(b"3.0\n"), Some("format version 3.0")),
        ("format without newline", with_version(b"2.0"), Some("no newlines in")),
        ("format followed by junk", with_version(b"2.0x\n"), Some("followed by junk")),
        ("format without a dot", with_version(b"2\n"), Some("has no dot")),
        ("format 2.9 with more lines", with_version(b"2.9\nmore text\n"), None),
        ("long debian-binary", with_version(&[&b"2.0\n"[..], &[b'x'; 5000]].concat()), None),
        ("size with junk", size(format!("{}x", data.len()).as_bytes()), Some("invalid character 'x'")),
        ("negative size", size(b"-5"), Some("invalid character '-'")),
        ("size after spaces", size(format!("  {}", data.len()).as_bytes()), None),
        ("data past the end", deb(&[&db, &c, &raw_member("data.tar.gz", (data.len() + 1000).to_string().as_bytes(), data, true)], b""), Some("unexpected end of file or stream")),
        ("control past the end", deb(&[&db, &raw_member("control.tar.gz", b"100000", control, true)], b""), Some("unexpected end of file in archive member header")),
        ("debian-binary past the end", deb(&[&raw_member("debian-binary", b"100", b"2.0\n", true)], b""), Some("unexpected end of file in archive information header member")),
        ("no data member", deb(&[&db, &c], b""), Some("unexpected end of file in archive member header")),
        ("odd member without padding", deb(&[&db, &raw_member("control.tar.gz", odd_control.len().to_string().as_bytes(), &odd_control, false), &d], b""), Some("bad archive header magic")),
        ("bzip2 control", deb(&[&db, &member("control.tar.bz2", control), &d], b""), Some("unknown compression for member 'control.tar.bz2'")),
        ("unknown data compression", deb(&[&db, &c, &member("data.tar.foo", data)], b""), Some("unknown compression for member 'data.tar.foo'")),
        ("names ending in a slash", deb(&[&member("debian-binary/", b"2.0\n"), &member("control.tar.gz/", control), &member("data.tar.gz/", data)], b""), None),
        ("not an ar archive", b"PK\x03\x04 a zip file\nmore text\n".to_vec(), Some("not a Debian format archive")),
        ("shorter than the signature", b"!<arch>".to_vec(), Some("unexpected end of file in archive magic version number")),
    ];
    for (i, (case, bytes, refusal)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.deb"));
        fs::write(&path, bytes).unwrap();
        let (ours, theirs) = (dir.path().join(format!("ours{i}")), dir.path().join(format!("theirs{i}")));
        let dpkg = Command::new("dpkg-deb").arg("-x").arg(&path).arg(&theirs).output().unwrap();
        let dpkg_says = String::from_utf8_lossy(&dpkg.stderr);
        let result = ddslug::unpack::deb::unpack_deb(&path, &ours);
        match refusal {
            None => {
                assert!(dpkg.status.success(), "{case}: dpkg-deb refused it: {dpkg_says}");
                assert!(result.is_ok(), "{case}: refused: {:?}", result.err());
                assert_eq!(scan_tree(&ours).unwrap().entries, scan_tree(&theirs).unwrap().entries, "{case}");
            }
            Some(reason) => {
                assert!(!dpkg.status.success() && dpkg_says.contains(reason), "{case}: dpkg-deb said: {dpkg_says}");
                let ours_says = result.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(ours_says.contains(reason), "{case}: ddslug said {ours_says:?}; dpkg-deb said {dpkg_says}");
                assert!(ours_says.contains(&format!("case{i}.deb")), "{case}: the error names the package: {ours_says}");
            }
        }
    }
}

/// `ddslug unpack` as a user who is not root, on directories its owner may not write (0555)
/// or read and pass (0000) and a file no one may read: the same tree as `dpkg-deb -x` run
/// as that user (directories owner-accessible while filled, exact modes at the end).
#[test]
fn unpack_as_an_unprivileged_user_matches_dpkg() {
    use ddslug_testsupport::{Compression, DebSpec};
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = DebSpec::new("modes", "1.0-1")
        .dir("opt/ro", 0o555)
        .file("opt/ro/f", 0o644, "in a read-only directory")
        .dir("opt/locked", 0o000)
        .file("opt/locked/secret", 0o600, "behind a 0000 directory")
        .dir("opt/locked/deeper", 0o500)
        .file("opt/locked/deeper/g", 0o444, "deeper")
        .file("opt/unreadable", 0o000, "no one may read this");
    spec.compression = Compression::Xz;
    let deb = dir.path().join("modes.deb");
    fs::write(&deb, spec.build().unwrap()).unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    let as_user = |program: &str| {
        let mut command = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", program]);
            c
        } else {
            Command::new(program)
        };
        command.current_dir(dir.path());
        command
    };
    if root {
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    }
    let out = as_user("dpkg-deb").arg("-x").arg(&deb).arg(&theirs).output().unwrap();
    assert!(out.status.success(), "dpkg-deb -x: {}", String::from_utf8_lossy(&out.stderr));
    let out = as_user(env!("CARGO_BIN_EXE_ddslug")).arg("unpack").arg(&deb).arg(&ours).output().unwrap();
    assert!(out.status.success(), "ddslug unpack: {}", String::from_utf8_lossy(&out.stderr));
    if root {
        // Only root can read such trees back.
        let (a, b) = (scan_tree(&ours).unwrap(), scan_tree(&theirs).unwrap());
        assert_eq!(a.entries, b.entries);
        assert_eq!(fs::metadata(ours.join("opt/locked")).unwrap().mode() & 0o7777, 0o000);
    }
}
