//! The Go build information reader of the SBOM (`sbom::gobuild`): a `.go.buildinfo` section
//! and an ELF file holding one come from the package, so from anyone who can publish one.
//! The first byte chooses: even, the rest is a section; odd, the rest is a whole file.
#![no_main]

use std::io::Write;

use ddslug::sbom::gobuild::{from_file, from_section};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    let found = if choice % 2 == 0 {
        from_section(rest, "x").ok()
    } else {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(rest).unwrap();
        from_file(&file, rest.len() as u64, "x").unwrap().ok().flatten()
    };
    if let Some(binary) = found {
        // Every field is bounded; modules come only from the section's text.
        assert!(binary.go_version.chars().count() <= 256 && binary.main.chars().count() <= 256);
        assert!(binary.modules.len() <= rest.len() / 4 + 1);
        for m in &binary.modules {
            assert!(m.path.chars().count() <= 256 && m.version.chars().count() <= 256);
        }
    }
});
