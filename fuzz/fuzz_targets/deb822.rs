//! deb822 framing and the Release and Packages parsers on any text: parse or refuse, never
//! panic; a parsed Packages entry never names a file outside the repository.
#![no_main]

use ddslug::apt::{deb822, packages, release};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(stanzas) = deb822::parse(text) {
        for s in &stanzas {
            let _ = s.get("Package");
            let _ = s.lines("SHA256");
        }
    }
    let _ = release::parse_release(text, "fuzz:Release");
    if let Ok(entries) = packages::parse_packages(text, "fuzz:Packages") {
        for e in &entries {
            assert!(!e.filename.starts_with('/') && !e.filename.split('/').any(|c| c == ".."), "{:?}", e.filename);
        }
        let _ = packages::versions_of(&entries, "datadog-agent", "amd64");
    }
});
