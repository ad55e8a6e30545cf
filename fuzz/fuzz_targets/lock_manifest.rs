//! Lock and manifest reading: any file either reads or is refused with an error; what reads
//! writes back to JSON that reads again to the same value.
#![no_main]

use ddslug::slug::manifest::{read_lock, read_manifest, to_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("input.json");
    std::fs::write(&path, data).expect("write input");
    if let Ok(lock) = read_lock(&path) {
        std::fs::write(&path, to_json(&lock)).expect("write lock");
        assert_eq!(read_lock(&path).expect("a written lock reads back"), lock);
    }
    std::fs::write(&path, data).expect("write input");
    if let Ok(manifest) = read_manifest(&path) {
        std::fs::write(&path, to_json(&manifest)).expect("write manifest");
        assert_eq!(read_manifest(&path).expect("a written manifest reads back"), manifest);
    }
});
