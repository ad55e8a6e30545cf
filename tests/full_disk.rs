//! A full disk, for the cache and for BUILD_DIR: a clear error, BUILD_DIR left exactly as it
//! was, and the next build (with room) succeeds. Needs a 160 kB tmpfs, so root (as CI is); a
//! machine that cannot mount one says so and skips.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Served, bin_compile, text};
use ddslug::store::treehash::scan_tree;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path) -> Option<Tmpfs> {
        fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=160k", "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_fails_cleanly_and_changes_nothing() {
    let served = Served::start();
    let (Some(small), Some(small_fs_for_build)) =
        (Tmpfs::mount(&served.dir.path().join("small")), Tmpfs::mount(&served.dir.path().join("small-build")))
    else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let env = served.env_dir("full", &[]);

    // The cache on the full filesystem.
    let build = served.build_dir("full-cache");
    fs::write(build.join("Procfile"), "web: ./server\n").unwrap();
    let before = scan_tree(&build).unwrap().hash;
    let out = bin_compile(&build, &small.0.join("cache"), &env);
    assert!(!out.status.success());
    assert!(text(&out).contains("No space left on device"), "{}", text(&out));
    assert_eq!(scan_tree(&build).unwrap().hash, before, "BUILD_DIR changed");

    // BUILD_DIR on the full filesystem (the cache elsewhere, so files are copied, not linked).
    let disk_cache = served.dir.path().join("disk-cache");
    let small_build = small_fs_for_build.0.join("build");
    fs::create_dir_all(&small_build).unwrap();
    fs::write(small_build.join("Procfile"), "web: ./server\n").unwrap();
    let before = scan_tree(&small_build).unwrap().hash;
    let out = bin_compile(&small_build, &disk_cache, &env);
    assert!(!out.status.success());
    assert!(text(&out).contains("No space left on device"), "{}", text(&out));
    assert_eq!(scan_tree(&small_build).unwrap().hash, before, "BUILD_DIR changed");

    // With room again, both caches serve the next build.
    for cache in [disk_cache, small.0.join("cache")] {
        let build = served.build_dir("with-room");
        let out = bin_compile(&build, &cache, &env);
        if cache.starts_with(&small.0) {
            // The tmpfs cache is still too small for the layer: it must fail the same clean way.
            assert!(!out.status.success() && text(&out).contains("No space left on device"), "{}", text(&out));
        } else {
            assert!(out.status.success(), "{}", text(&out));
        }
    }
}
