//! The .deb unpacker on any bytes: unpacks or refuses; never a panic, and nothing is created
//! outside the target directory (its parent holds only the input and the target afterwards,
//! and the scratch directory that absolute symlinks in seeds point at stays empty).
#![no_main]

use libfuzzer_sys::fuzz_target;

fn names(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir).expect("list").map(|e| e.expect("entry").file_name()).collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let deb = dir.path().join("input.deb");
    std::fs::write(&deb, data).expect("write input");
    let out = dir.path().join("out");
    let _ = ddslug::unpack::deb::unpack_deb(&deb, &out);
    let left: Vec<_> = names(dir.path()).into_iter().filter(|n| n != "input.deb" && n != "out").collect();
    assert!(left.is_empty(), "created beside the target: {left:?}");
    // Seeds carry symlinks to this absolute path: writing through them must fail.
    let escape = std::path::Path::new("/tmp/ddslug-fuzz-escape");
    if escape.exists() {
        assert!(names(escape).is_empty(), "wrote through a symlink into {}", escape.display());
    }
});
