//! The ar reader: any bytes are read as dpkg-deb reads a .deb (up to control.tar, up to
//! data.tar) or refused; never a panic, never an allocation the input's size fields alone
//! decide. The control member reader gets the same bytes as a file.
#![no_main]

use ddslug::unpack::ar::{Want, list_members};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for want in [Want::Control, Want::Data] {
        if let Ok(members) = list_members(data, "fuzz.deb", want) {
            // Every member before the one asked for was read whole, so it lies within the
            // input (the last one's body is read, and checked, by whoever unpacks it).
            let before: u64 = members.iter().rev().skip(1).map(|m| m.size).sum();
            assert!(before <= data.len() as u64, "members claim {before} bytes of {}", data.len());
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let deb = dir.path().join("input.deb");
    std::fs::write(&deb, data).expect("write input");
    let _ = ddslug::unpack::deb::read_control(&deb);
});
