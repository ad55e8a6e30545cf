//! The ar reader (through the control member reader): any file is read or refused; never a
//! panic, never an allocation the input's size fields alone decide.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let deb = dir.path().join("input.deb");
    std::fs::write(&deb, data).expect("write input");
    let _ = ddslug::deb::read_control(&deb);
});
