//! Reads one component of a signed apt repository: InRelease (or Release + Release.gpg),
//! verified against the keyring, then the best Packages index it lists, checked by size and
//! SHA-256 against the verified Release before it is decompressed or parsed.
//!
//! Contract: nothing returned here was used before its signature (Release) or its hash
//! (Packages) was checked. The Packages index is read as a stream (hashed, decompressed
//! and cut into stanzas as it arrives, only the wanted packages kept) and its entries are
//! returned only once the whole file matched the signed Release. Every read is bounded:
//! the Release and its signature by size, the index by the sizes the signed Release gives
//! and by absolute limits; the error names the limit hit.

use std::io::{self, BufReader, Read};
use std::time::SystemTime;

use crate::apt::packages::{self, PackageEntry, PackagesError, ReadError, read_packages};
use crate::apt::release::{IndexFile, Release, ReleaseError, parse_release};
use crate::apt::signature::{Keyring, SignatureError};
use crate::fetch::{FetchError, Fetcher, into_fetch_error, take_fetch_error};
use crate::hash::{Hasher, Sha256};
use crate::report::{excerpt, first_of, limit as human};

/// Largest InRelease or Release accepted (Debian's and Ubuntu's are a few hundred kB).
pub const RELEASE_LIMIT: u64 = 16 << 20;
/// Largest Release.gpg accepted (one signature is a few hundred bytes).
pub const SIGNATURE_LIMIT: u64 = 64 << 10;
/// Largest Packages index accepted, compressed or not (Debian's biggest is ~50 MB
/// uncompressed): the bound when the signed Release gives no smaller one.
pub const PACKAGES_LIMIT: u64 = 256 << 20;

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
    #[error(
        "{url} decompressed past {}, {what}; refusing to read further. The index is broken or hostile \
         (a decompression bomb): check the repository URL, or use another mirror", human(*.limit)
    )]
    Inflated { url: String, limit: u64, what: String },
    #[error(
        "{url}: the signed Release gives it {}, more than {}, the limit for a Packages index; refusing \
         to download it. Check the repository URL, or use another mirror", human(*.size), human(*.limit)
    )]
    IndexTooLarge { url: String, size: u64, limit: u64 },
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
    /// The entries of the packages asked for (built for the source's architecture or `all`).
    pub packages: Vec<PackageEntry>,
    /// Stanzas in the whole index, asked for or not.
    pub stanzas: u64,
}

/// Fetches and verifies the Release file and the component's Packages index, keeping the
/// entries of the packages named in `wanted`.
pub fn load_index(fetcher: &Fetcher, source: &AptSource, keyring: &Keyring, wanted: &[&str]) -> Result<RepoIndex, AptError> {
    let inrelease_url = source.dists_url("InRelease");
    let release_limit = "the limit for a Release file";
    let (verified, release_url) = match fetcher.get_bytes(&inrelease_url, RELEASE_LIMIT, release_limit)? {
        Some(signed) => (keyring.verify_cleartext(&signed, &inrelease_url)?, inrelease_url),
        None => {
            let release_url = source.dists_url("Release");
            let Some(release) = fetcher.get_bytes(&release_url, RELEASE_LIMIT, release_limit)? else {
                return Err(AptError::NoRelease { url: source.dists_url(""), suite: source.suite.clone() });
            };
            let sig_url = source.dists_url("Release.gpg");
            let Some(signature) = fetcher.get_bytes(&sig_url, SIGNATURE_LIMIT, "the limit for a detached signature")? else {
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
            // A Release can list anything: the message shows the first few, each cut short.
            components: first_of(release.components.iter().map(|c| excerpt(c, 40)), 20),
            architectures: first_of(release.architectures.iter().map(|a| excerpt(a, 40)), 20),
        });
    }
    let mut tried = Vec::new();
    for index in candidates {
        let url = source.dists_url(&index.path);
        if index.size > PACKAGES_LIMIT {
            return Err(AptError::IndexTooLarge { url, size: index.size, limit: PACKAGES_LIMIT });
        }
        // Release lists forms the server may not carry (Debian omits plain Packages): try the next.
        let Some(body) = fetcher.open(&url, index.size, "the size the signed Release gives")? else {
            tried.push(url);
            continue;
        };
        let found = read_index(body, &url, index, &release, wanted, &source.arch)?;
        return Ok(RepoIndex {
            source: source.clone(),
            signer: verified.signer,
            release,
            packages_url: url,
            packages: found.entries,
            stanzas: found.stanzas,
        });
    }
    Err(AptError::IndexMissing { release_url, tried: tried.join(", ") })
}

/// Hashes, decompresses and parses one Packages index as it streams in; returns what it
/// found once the whole file matched the signed Release (a mismatch is reported before
/// anything the content caused: it explains it).
fn read_index(
    body: impl Read,
    url: &str,
    index: &IndexFile,
    release: &Release,
    wanted: &[&str],
    arch: &str,
) -> Result<packages::Found, AptError> {
    let (cap, what) = uncompressed_limit(index, release);
    let mut hashed = Hashing { inner: body, hasher: Hasher::new() };
    let (result, inflated) = {
        let decoder: Box<dyn Read + '_> = if index.path.ends_with(".xz") {
            Box::new(liblzma::read::XzDecoder::new(&mut hashed))
        } else if index.path.ends_with(".gz") {
            Box::new(flate2::read::GzDecoder::new(&mut hashed))
        } else {
            Box::new(&mut hashed)
        };
        let mut capped = Capped { inner: decoder, left: cap, over: false };
        let result = read_packages(BufReader::with_capacity(1 << 16, &mut capped), url, wanted, arch, packages::Limits::default());
        (result, capped.over)
    };
    let result = match result {
        // The transfer itself failed: nothing else can be known.
        Err(ReadError::Io(e)) => match take_fetch_error(e) {
            Ok(fetch) => return Err(fetch.into()),
            Err(e) => Err(ReadError::Io(e)),
        },
        other => other,
    };
    // The rest of the file (bounded by the size Release gives), so that the hash covers it.
    io::copy(&mut hashed, &mut io::sink()).map_err(|e| into_fetch_error(e, url))?;
    let size = hashed.hasher.len();
    let actual = hashed.hasher.finish();
    if actual != index.sha256 || size != index.size {
        return Err(AptError::IndexMismatch { url: url.into(), expected: index.sha256, expected_size: index.size, actual, actual_size: size });
    }
    match result {
        Ok(found) => Ok(found),
        Err(ReadError::Io(_)) if inflated => Err(AptError::Inflated { url: url.into(), limit: cap, what }),
        Err(ReadError::Io(e)) => Err(AptError::Decompress { url: url.into(), reason: e.to_string() }),
        Err(ReadError::Invalid(e)) => Err(e.into()),
    }
}

/// How far an index may decompress: the size the signed Release gives its uncompressed
/// form when it lists one, never more than [`PACKAGES_LIMIT`]; and what to call that limit.
fn uncompressed_limit(index: &IndexFile, release: &Release) -> (u64, String) {
    let plain = index.path.trim_end_matches(".xz").trim_end_matches(".gz");
    match release.sha256.iter().find(|f| f.path == plain) {
        Some(f) if f.size <= PACKAGES_LIMIT => (f.size, format!("the size the signed Release gives for {plain}")),
        _ => (PACKAGES_LIMIT, "the limit for a Packages index".into()),
    }
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Fails a read that would go past `left` more bytes, and remembers that it did.
struct Capped<R> {
    inner: R,
    left: u64,
    over: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte more than allowed is enough to know.
        let room = (self.left + 1).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        if n as u64 > self.left {
            self.over = true;
            return Err(io::Error::other("past the size limit"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
