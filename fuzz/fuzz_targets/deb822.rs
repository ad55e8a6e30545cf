//! deb822 framing and the Release and Packages parsers on any text: parse or refuse, never
//! panic; a kept Packages entry never names a file outside the repository; the streaming
//! reader (what builds use) keeps the same entries as the whole-text parser where both
//! accept the input, within its limits.
#![no_main]

use ddslug::apt::packages::{Limits, read_packages};
use ddslug::apt::{deb822, packages, release};
use libfuzzer_sys::fuzz_target;

fn key(e: &packages::PackageEntry) -> (String, String, String, String) {
    (e.package.clone(), e.version.to_string(), e.filename.clone(), e.sha256.to_string())
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits { stanzas: 1000, stanza_bytes: 4096, kept: 100 };
    let streamed = read_packages(data, "fuzz:Packages", &["datadog-agent"], "amd64", limits);
    if let Ok(found) = &streamed {
        assert!(found.entries.len() <= limits.kept);
        for e in &found.entries {
            assert!(!e.filename.starts_with('/') && !e.filename.split('/').any(|c| c == ".."), "{:?}", e.filename);
        }
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(stanzas) = deb822::parse(text) {
        for s in &stanzas {
            let _ = s.get("Package");
            let _ = s.lines("SHA256");
        }
    }
    let _ = release::parse_release(text, "fuzz:Release");
    if let (Ok(entries), Ok(found)) = (packages::parse_packages(text, "fuzz:Packages"), &streamed) {
        let mut whole: Vec<_> = packages::versions_of(&entries, "datadog-agent", "amd64").into_iter().map(key).collect();
        let mut kept: Vec<_> = found.entries.iter().map(key).collect();
        whole.sort();
        kept.sort();
        assert_eq!(whole, kept, "the streaming reader and the whole-text parser disagree");
    }
});
