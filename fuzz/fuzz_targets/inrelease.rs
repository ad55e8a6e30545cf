//! InRelease framing: a cleartext-signed body against a fixed test keyring. Any bytes are
//! either verified (only what the key signed) or refused; never a panic. The keyring parser
//! also gets the raw input.
#![no_main]

use std::sync::OnceLock;

use ddslug::apt::signature::Keyring;
use libfuzzer_sys::fuzz_target;

/// A key generated for fuzzing only (`fuzz/keys/README.md` says how); its secret half is
/// not kept.
const PUBLIC_KEY: &[u8] = include_bytes!("../keys/fuzz-signing.asc");

fn keyring() -> &'static Keyring {
    static KEYRING: OnceLock<Keyring> = OnceLock::new();
    KEYRING.get_or_init(|| Keyring::from_bytes(PUBLIC_KEY, "fuzz key").expect("the fuzz key parses"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(verified) = keyring().verify_cleartext(data, "fuzz:InRelease") {
        // What was verified is part of what was given, never more.
        assert!(verified.body.len() <= data.len());
    }
    let _ = Keyring::from_bytes(data, "fuzz input");
});
