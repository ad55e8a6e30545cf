//! The unpacker against dpkg itself: packages built by `dpkg-deb --build` with every
//! compression, unpacked by ddslug and by `dpkg-deb -x`, must give the same tree (paths,
//! types, modes, link targets, contents) and the same file mtimes.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use ddslug::treehash::{EntryKind, scan_tree};

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
        let report = ddslug::deb::unpack_deb(&deb, &ours).unwrap();
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
        assert_eq!(ddslug::deb::read_control(&deb).unwrap().lines().next(), Some("Package: ddslug-oracle"));
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
        ddslug::deb::unpack_deb(&deb, &ours).unwrap();
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
    let report = ddslug::deb::unpack_deb(&deb, &ours).unwrap();
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
    let back: Vec<ddslug::treehash::TreeEntry> = serde_json::from_str(&json).unwrap();
    assert_eq!(ddslug::treehash::hash_entries(&back), a.hash);
}
