//! Against Debian's real archive (the mirror comes from this machine's apt sources or
//! DDSLUG_DEBIAN_MIRROR): verify bookworm's InRelease with Debian's keyring, download real
//! packages, unpack them, and compare with `dpkg-deb -x` of the same file.

use std::path::Path;
use std::process::Command;

use ddslug::apt::client::{AptSource, load_index};
use ddslug::apt::resolve;
use ddslug::apt::signature::Keyring;
use ddslug::fetch::{Downloaded, FetchOptions, Fetcher};
use ddslug::store::Store;
use ddslug::store::treehash::scan_tree;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

#[test]
fn bookworm_packages_unpack_like_dpkg() {
    let mirror = ddslug_testsupport::mirror::debian_mirror("bookworm")
        .expect("no Debian mirror for bookworm in /etc/apt/sources.list.d or DDSLUG_DEBIAN_MIRROR");
    let keyring = Keyring::load(Path::new(KEYRING)).expect("Debian's archive keyring (package debian-archive-keyring)");
    let fetcher = Fetcher::new(FetchOptions::default());
    let source = AptSource::new(&mirror, "bookworm", "main", "amd64");
    let index = load_index(&fetcher, &source, &keyring, &["hello", "tzdata"]).unwrap();
    assert!(keyring.fingerprints().contains(&index.signer), "signer {} not in keyring", index.signer);
    assert!(index.stanzas > 50_000, "bookworm main has ~63k packages, got {}", index.stanzas);

    let work = tempfile::tempdir().unwrap();
    let store = Store::open(&work.path().join("cache")).unwrap();
    let _lock = store.lock().unwrap();
    // hello: a tiny package; tzdata: hundreds of files, many symlinks and hard links.
    for name in ["hello", "tzdata"] {
        let newest = resolve::available(&index, name)[0];
        let expected = Downloaded { sha256: newest.sha256, size: newest.size };
        let (deb, downloaded) = store.ensure_blob(&fetcher, &source.pool_url(&newest.filename), expected).unwrap();
        assert!(downloaded);

        let ours = work.path().join(format!("{name}-ddslug"));
        let theirs = work.path().join(format!("{name}-dpkg"));
        let report = ddslug::unpack::deb::unpack_deb(&deb, &ours).unwrap();
        let status = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&theirs).status().unwrap();
        assert!(status.success(), "dpkg-deb -x failed on {}", deb.display());

        let a = scan_tree(&ours).unwrap();
        let b = scan_tree(&theirs).unwrap();
        assert_eq!(a.entries, b.entries, "{name}: trees differ");
        assert_eq!(a.hash, b.hash);
        if name == "tzdata" {
            assert!(a.entries.len() > 300, "tzdata has hundreds of entries, got {}", a.entries.len());
            assert!(report.symlinks > 0 || report.hardlinks > 0);
        }
        // dpkg-deb -x leaves directories with the extraction time; ddslug gives them the
        // archive's mtime (deterministic), so only files and symlinks are compared.
        let non_dirs: Vec<ddslug::store::treehash::PathBytes> = b
            .entries
            .iter()
            .filter(|e| !matches!(e.kind, ddslug::store::treehash::EntryKind::Dir))
            .map(|e| e.path.clone())
            .collect();
        assert_same_mtimes(&ours, &theirs, &non_dirs);
    }
}

fn assert_same_mtimes(a: &Path, b: &Path, paths: &[ddslug::store::treehash::PathBytes]) {
    for p in paths {
        let ma = std::fs::symlink_metadata(a.join(p)).unwrap();
        let mb = std::fs::symlink_metadata(b.join(p)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(ma.mtime(), mb.mtime(), "mtime of {p}");
    }
}
