//! The unpacker's writes are directory-relative: a directory of the target swapped for a
//! symlink to elsewhere while the unpack runs (atomically, with renameat2 RENAME_EXCHANGE,
//! over and over) never gets a file, a mode or an mtime written outside the target. The
//! unpack may fail (it meets the symlink); nothing may land where the symlink points.

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{CWD, RenameFlags, renameat_with};

/// A data.tar with the directory `./d/` (mode 0700) and `files` small files in it, then a
/// deeper directory with files of its own.
fn data_tar(files: usize) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        builder.append_data(&mut h, path, data).unwrap();
    };
    add("./d/", tar::EntryType::Directory, 0o700, b"");
    for i in 0..files {
        add(&format!("./d/f{i}"), tar::EntryType::Regular, 0o644, format!("file {i}").as_bytes());
    }
    add("./d/sub/", tar::EntryType::Directory, 0o700, b"");
    for i in 0..files / 10 {
        add(&format!("./d/sub/g{i}"), tar::EntryType::Regular, 0o644, b"deeper");
    }
    builder.into_inner().unwrap()
}

fn mode_and_mtime(path: &Path) -> (u32, i64) {
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.permissions().mode() & 0o7777, meta.mtime())
}

#[test]
fn a_directory_swapped_for_a_symlink_during_the_unpack_leads_nowhere() {
    let tar = data_tar(1000);
    for round in 0..2 {
        let tmp = tempfile::tempdir().unwrap();
        let (outside, target) = (tmp.path().join("outside"), tmp.path().join("target"));
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(&target).unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
        filetime::set_file_mtime(&outside, filetime::FileTime::from_unix_time(1_234_567_890, 0)).unwrap();
        let before = mode_and_mtime(&outside);
        std::os::unix::fs::symlink(&outside, target.join("s")).unwrap();
        let (d, s) = (target.join("d"), target.join("s"));
        let done = AtomicBool::new(false);
        let swaps = std::thread::scope(|scope| {
            let attacker = scope.spawn(|| {
                // Waits for the unpack to make `d`, then swaps it with the symlink over and over.
                let deadline = Instant::now() + Duration::from_secs(20);
                while !d.exists() && !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                    std::hint::spin_loop();
                }
                let mut swaps = 0u64;
                while !done.load(Ordering::Relaxed) {
                    if renameat_with(CWD, &d, CWD, &s, RenameFlags::EXCHANGE).is_ok() {
                        swaps += 1;
                    }
                }
                swaps
            });
            let result = ddslug::unpack::deb::unpack_data_tar(Cursor::new(&tar), &target, "race");
            done.store(true, Ordering::Relaxed);
            let swaps = attacker.join().unwrap();
            eprintln!("round {round}: {swaps} swaps; unpack: {:?}", result.map(|r| r.files));
            swaps
        });
        assert!(swaps > 0, "the symlink was never swapped in: the test did not test anything");
        let landed: Vec<_> = fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(landed.is_empty(), "round {round}: {} entries written outside the target, e.g. {:?}", landed.len(), landed.first());
        assert_eq!(mode_and_mtime(&outside), before, "round {round}: the mode or mtime of a directory outside the target changed");
    }
}
