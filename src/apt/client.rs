//! Reads one component of a signed apt repository: InRelease (or Release + Release.gpg),
//! verified against the keyring, then the best Packages index it lists, checked by size and
//! SHA-256 against the verified Release before it is decompressed or parsed.
//!
//! Contract: nothing returned here was parsed before its signature (Release) or its hash
//! (Packages) was checked.

use std::io::Read;
use std::time::SystemTime;

use crate::apt::packages::{PackageEntry, PackagesError, parse_packages};
use crate::apt::release::{IndexFile, Release, ReleaseError, parse_release};
use crate::apt::signature::{Keyring, SignatureError};
use crate::fetch::{FetchError, Fetcher};
use crate::hash::Sha256;

/// Largest Release or Packages file we accept (Debian's biggest Packages is ~50 MB).
const INDEX_LIMIT: u64 = 512 << 20;

/// Where packages come from: one component of one suite.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AptSource {
    /// Repository base URL, without a trailing slash.
    pub url: String,
    pub suite: String,
    pub component: String,
    pub arch: String,
}

impl AptSource {
    /// Builds a source, normalising the URL.
    pub fn new(url: &str, suite: &str, component: &str, arch: &str) -> AptSource {
        AptSource {
            url: url.trim_end_matches('/').to_string(),
            suite: suite.into(),
            component: component.into(),
            arch: arch.into(),
        }
    }

    /// URL of a file under `dists/<suite>/`.
    pub fn dists_url(&self, file: &str) -> String {
        format!("{}/dists/{}/{}", self.url, self.suite, file)
    }

    /// URL of a pool file named by a Packages `Filename` field.
    pub fn pool_url(&self, filename: &str) -> String {
        format!("{}/{}", self.url, filename.trim_start_matches('/'))
    }
}

/// Why the repository could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Packages(#[from] PackagesError),
    #[error("{url}: neither InRelease nor Release exists; check the repository URL and the suite ({suite:?})")]
    NoRelease { url: String, suite: String },
    #[error("{url}: the Release file is not signed (no InRelease, no Release.gpg); ddslug only installs from signed repositories")]
    Unsigned { url: String },
    #[error(
        "{url} lists no {component}/binary-{arch}/Packages index; the repository has components [{components}] \
         and architectures [{architectures}]: check the component and architecture settings"
    )]
    NoIndex { url: String, component: String, arch: String, components: String, architectures: String },
    #[error("none of the Packages indexes listed in {release_url} could be downloaded (tried {tried})")]
    IndexMissing { release_url: String, tried: String },
    #[error(
        "{url} served {actual_size} bytes with SHA-256 {actual}, but the signed Release promises {expected_size} bytes \
         with SHA-256 {expected}; the mirror is inconsistent or was tampered with: try again later or use another mirror"
    )]
    IndexMismatch { url: String, expected: Sha256, expected_size: u64, actual: Sha256, actual_size: u64 },
    #[error("{url}: cannot decompress: {reason}")]
    Decompress { url: String, reason: String },
}

/// A verified snapshot of one component's index.
#[derive(Clone, Debug)]
pub struct RepoIndex {
    pub source: AptSource,
    /// Fingerprint of the key that signed the Release file.
    pub signer: String,
    pub release: Release,
    /// URL of the Packages index actually used.
    pub packages_url: String,
    pub packages: Vec<PackageEntry>,
}

/// Fetches and verifies the Release file and the component's Packages index.
pub fn load_index(fetcher: &Fetcher, source: &AptSource, keyring: &Keyring) -> Result<RepoIndex, AptError> {
    let inrelease_url = source.dists_url("InRelease");
    let (verified, release_url) = match fetcher.get_bytes(&inrelease_url, INDEX_LIMIT)? {
        Some(signed) => (keyring.verify_cleartext(&signed, &inrelease_url)?, inrelease_url),
        None => {
            let release_url = source.dists_url("Release");
            let Some(release) = fetcher.get_bytes(&release_url, INDEX_LIMIT)? else {
                return Err(AptError::NoRelease { url: source.dists_url(""), suite: source.suite.clone() });
            };
            let sig_url = source.dists_url("Release.gpg");
            let Some(signature) = fetcher.get_bytes(&sig_url, 1 << 20)? else {
                return Err(AptError::Unsigned { url: release_url });
            };
            (keyring.verify_detached(&release, &signature, &release_url)?, release_url)
        }
    };
    let text = String::from_utf8_lossy(&verified.body);
    let release = parse_release(&text, &release_url)?;
    release.check_valid_until(SystemTime::now(), &release_url)?;

    let candidates = release.packages_index_candidates(&source.component, &source.arch);
    if candidates.is_empty() {
        return Err(AptError::NoIndex {
            url: release_url,
            component: source.component.clone(),
            arch: source.arch.clone(),
            components: release.components.join(", "),
            architectures: release.architectures.join(", "),
        });
    }
    let mut tried = Vec::new();
    for index in candidates {
        let url = source.dists_url(&index.path);
        // Release lists forms the server may not carry (Debian omits plain Packages): try the next.
        let Some(bytes) = fetcher.get_bytes(&url, INDEX_LIMIT)? else {
            tried.push(url);
            continue;
        };
        check_index(&url, index, &bytes)?;
        let plain = decompress(&url, &index.path, &bytes)?;
        let text = String::from_utf8_lossy(&plain);
        let packages = parse_packages(&text, &url)?;
        return Ok(RepoIndex { source: source.clone(), signer: verified.signer, release, packages_url: url, packages });
    }
    Err(AptError::IndexMissing { release_url, tried: tried.join(", ") })
}

fn check_index(url: &str, index: &IndexFile, bytes: &[u8]) -> Result<(), AptError> {
    let actual = Sha256::of(bytes);
    if actual != index.sha256 || bytes.len() as u64 != index.size {
        return Err(AptError::IndexMismatch {
            url: url.into(),
            expected: index.sha256,
            expected_size: index.size,
            actual,
            actual_size: bytes.len() as u64,
        });
    }
    Ok(())
}

fn decompress(url: &str, path: &str, bytes: &[u8]) -> Result<Vec<u8>, AptError> {
    let mut out = Vec::new();
    let result = if path.ends_with(".xz") {
        liblzma::read::XzDecoder::new(bytes).read_to_end(&mut out)
    } else if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)
    } else {
        out.extend_from_slice(bytes);
        Ok(out.len())
    };
    result.map_err(|e| AptError::Decompress { url: url.into(), reason: e.to_string() })?;
    Ok(out)
}
