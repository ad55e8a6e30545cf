//! Datadog's public apt signing keys: fetched from Datadog's key server and accepted only
//! when their fingerprints match the ones pinned here (as published in Datadog's security
//! documentation), so that a compromised key server cannot swap in its own key.

use crate::apt::signature::Keyring;
use crate::fetch::{FetchError, Fetcher};

/// Datadog's key server.
pub const KEY_SERVER: &str = "https://keys.datadoghq.com";

/// Key files published by Datadog for its apt repository. `CURRENT` holds whichever key
/// signs the repository today; the others are the named keys, kept for older metadata.
pub const KEY_FILES: [&str; 5] = [
    "DATADOG_APT_KEY_CURRENT.public",
    "DATADOG_APT_KEY_06462314.public",
    "DATADOG_APT_KEY_C0962C7D.public",
    "DATADOG_APT_KEY_F14F620E.public",
    "DATADOG_APT_KEY_382E94DE.public",
];

/// Primary-key fingerprints Datadog documents for its DEB packages and repository metadata.
pub const PINNED_FINGERPRINTS: [&str; 4] = [
    "D18886567EABAD8B2D2526900D826EB906462314",
    "5F1E256061D813B125E156E8E6266D4AC0962C7D",
    "D75CEA17048B9ACBF186794B32637D44F14F620E",
    "A2923DFF56EDA6E76E55E492D3A80E30382E94DE",
];

/// Largest key file read (Datadog's are a few kB).
const KEY_FILE_LIMIT: u64 = 256 << 10;

/// Why Datadog's keys could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DatadogKeysError {
    // Not `#[from]`, which would make the cause a `source` as well: printed twice by `{:#}`.
    #[error("fetching Datadog's signing keys: {0}")]
    Fetch(FetchError),
    #[error(
        "none of the keys served by {server} has a pinned Datadog fingerprint (got: {got}); \
         refusing them. Set DD_APT_KEYRING to a keyring file you trust"
    )]
    NoPinnedKey { server: String, got: String },
}

/// Downloads Datadog's key files and keeps the certificates with pinned fingerprints.
pub fn datadog_keyring(fetcher: &Fetcher, server: &str) -> Result<Keyring, DatadogKeysError> {
    let mut accepted = Vec::new();
    let mut seen = Vec::new();
    for file in KEY_FILES {
        let url = format!("{}/{}", server.trim_end_matches('/'), file);
        let Some(bytes) = fetcher.get_bytes(&url, KEY_FILE_LIMIT, "the limit for a key file").map_err(DatadogKeysError::Fetch)? else { continue };
        let Ok(keyring) = Keyring::from_bytes(&bytes, &url) else { continue };
        for (fingerprint, armored) in keyring.split() {
            if PINNED_FINGERPRINTS.contains(&fingerprint.as_str()) {
                accepted.extend(armored);
            } else {
                seen.push(fingerprint);
            }
        }
    }
    Keyring::from_bytes(&accepted, server)
        .map_err(|_| DatadogKeysError::NoPinnedKey { server: server.into(), got: crate::report::first_of(seen.iter(), 10) })
}
