//! OpenPGP verification of apt Release files against a user-given keyring.
//!
//! Contract: the only bytes that leave this module are bytes covered by a good signature
//! from a key in the keyring, valid under Sequoia's standard policy (expiry, revocation,
//! subkey binding, weak hashes) at the current time. A missing, bad, malformed or
//! unknown-key signature is an error, never a warning.

use std::io::Read;
use std::path::{Path, PathBuf};

use sequoia_openpgp as openpgp;
use openpgp::cert::{Cert, CertParser};
use openpgp::parse::stream::{
    DetachedVerifierBuilder, MessageLayer, MessageStructure, VerificationError, VerificationHelper,
    VerifierBuilder,
};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::KeyHandle;

/// Largest keyring file read (Debian's archive keyring is ~100 kB).
pub const KEYRING_LIMIT: u64 = 16 << 20;
/// Reasons listed when no signature was good (a file can carry thousands of signatures).
const REASONS_LISTED: usize = 5;

/// Why a keyring or a signature was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    // The cause is in the message, not a `source`: `{:#}` would print it twice.
    #[error("cannot read keyring {path}: {error}")]
    KeyringRead { path: PathBuf, error: std::io::Error },
    #[error("keyring {path} is not an OpenPGP keyring (armored or binary): {reason}")]
    KeyringParse { path: PathBuf, reason: String },
    #[error("keyring {path} holds no OpenPGP keys; pass the repository's public signing key")]
    KeyringEmpty { path: PathBuf },
    #[error("keyring {path} is larger than {}, the limit for a keyring; pass the repository's public signing key alone", crate::report::limit(KEYRING_LIMIT))]
    KeyringTooLarge { path: PathBuf },
    #[error(
        "{url}: no valid OpenPGP signature from a key in the keyring ({reasons}); \
         check that the keyring belongs to this repository and that nobody altered the file"
    )]
    NotVerified { url: String, reasons: String },
}

/// The public keys a repository's Release file must be signed with.
#[derive(Clone, Debug)]
pub struct Keyring {
    certs: Vec<Cert>,
    source: String,
}

/// A verified document and the fingerprint of the (primary) key that vouched for it.
#[derive(Clone, Debug)]
pub struct Verified {
    pub body: Vec<u8>,
    /// Uppercase hex fingerprint of the certificate whose key made the good signature.
    pub signer: String,
}

impl Keyring {
    /// Loads one or several certificates from an armored or binary keyring file.
    pub fn load(path: &Path) -> Result<Keyring, SignatureError> {
        let read_err = |error| SignatureError::KeyringRead { path: path.to_owned(), error };
        let mut bytes = Vec::new();
        std::fs::File::open(path).and_then(|f| f.take(KEYRING_LIMIT + 1).read_to_end(&mut bytes)).map_err(read_err)?;
        if bytes.len() as u64 > KEYRING_LIMIT {
            return Err(SignatureError::KeyringTooLarge { path: path.to_owned() });
        }
        Keyring::from_bytes(&bytes, &path.display().to_string()).map_err(|e| match e {
            KeyringBytesError::Parse(reason) => SignatureError::KeyringParse { path: path.to_owned(), reason },
            KeyringBytesError::Empty => SignatureError::KeyringEmpty { path: path.to_owned() },
        })
    }

    /// Parses certificates from bytes; `source` names them in messages.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Keyring, KeyringBytesError> {
        let parser = CertParser::from_bytes(bytes).map_err(|e| KeyringBytesError::Parse(e.to_string()))?;
        let mut certs = Vec::new();
        for cert in parser {
            certs.push(cert.map_err(|e| KeyringBytesError::Parse(e.to_string()))?);
        }
        if certs.is_empty() {
            return Err(KeyringBytesError::Empty);
        }
        Ok(Keyring { certs, source: source.to_string() })
    }

    /// Uppercase hex fingerprints of the primary keys, in keyring order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs.iter().map(|c| c.fingerprint().to_hex()).collect()
    }

    /// Each certificate with its fingerprint, serialized (binary), for filtering keyrings.
    pub fn split(&self) -> Vec<(String, Vec<u8>)> {
        use openpgp::serialize::Serialize;
        self.certs
            .iter()
            .map(|c| {
                let mut bytes = Vec::new();
                // Serializing a parsed certificate into memory cannot fail short of OOM.
                let _ = c.serialize(&mut bytes);
                (c.fingerprint().to_hex(), bytes)
            })
            .collect()
    }

    /// Where the keys came from (a path or a URL), for messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Verifies a clear-signed document (InRelease) and returns its signed text.
    pub fn verify_cleartext(&self, signed: &[u8], url: &str) -> Result<Verified, SignatureError> {
        let policy = StandardPolicy::new();
        let mut helper = Helper::new(&self.certs);
        let result = VerifierBuilder::from_bytes(signed)
            .and_then(|b| b.with_policy(&policy, None, &mut helper))
            .and_then(|mut verifier| {
                let mut body = Vec::new();
                verifier.read_to_end(&mut body)?;
                Ok(body)
            });
        match (result, helper.signer) {
            (Ok(body), Some(signer)) => Ok(Verified { body, signer }),
            (result, _) => Err(not_verified(url, helper.reasons, result.err())),
        }
    }

    /// Verifies `data` (Release) against a detached signature (Release.gpg).
    pub fn verify_detached(&self, data: &[u8], signature: &[u8], url: &str) -> Result<Verified, SignatureError> {
        let policy = StandardPolicy::new();
        let mut helper = Helper::new(&self.certs);
        let result = DetachedVerifierBuilder::from_bytes(signature)
            .and_then(|b| b.with_policy(&policy, None, &mut helper))
            .and_then(|mut verifier| verifier.verify_bytes(data));
        match (result, helper.signer) {
            (Ok(()), Some(signer)) => Ok(Verified { body: data.to_vec(), signer }),
            (result, _) => Err(not_verified(url, helper.reasons, result.err())),
        }
    }
}

/// A keyring given as bytes could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyringBytesError {
    #[error("not an OpenPGP keyring: {0}")]
    Parse(String),
    #[error("no OpenPGP keys found")]
    Empty,
}

fn not_verified(url: &str, mut reasons: Vec<String>, err: Option<anyhow::Error>) -> SignatureError {
    if reasons.is_empty() {
        reasons.push(err.map(|e| e.to_string()).unwrap_or_else(|| "no signature found".into()));
    }
    let total = reasons.len();
    let mut listed: Vec<String> = reasons.iter().take(REASONS_LISTED).map(|r| crate::report::excerpt(r, 300)).collect();
    if total > REASONS_LISTED {
        listed.push(format!("and {} more signatures", total - REASONS_LISTED));
    }
    SignatureError::NotVerified { url: url.to_string(), reasons: listed.join("; ") }
}

/// Feeds the keyring to Sequoia and records what each signature amounted to.
struct Helper<'a> {
    certs: &'a [Cert],
    signer: Option<String>,
    reasons: Vec<String>,
}

impl<'a> Helper<'a> {
    fn new(certs: &'a [Cert]) -> Self {
        Helper { certs, signer: None, reasons: Vec::new() }
    }
}

impl VerificationHelper for &mut Helper<'_> {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(self.certs.to_vec())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        for layer in structure.into_iter() {
            let MessageLayer::SignatureGroup { results } = layer else {
                continue;
            };
            for result in results {
                match result {
                    Ok(good) => {
                        self.signer = Some(good.ka.cert().fingerprint().to_hex());
                        return Ok(());
                    }
                    Err(e) => self.reasons.push(describe(&e)),
                }
            }
        }
        if self.reasons.is_empty() {
            self.reasons.push("the file carries no signature".into());
        }
        Err(anyhow::anyhow!("no good signature"))
    }
}

fn describe(e: &VerificationError) -> String {
    match e {
        VerificationError::MissingKey { sig } => {
            let issuers: Vec<String> = sig.get_issuers().iter().map(|h| h.to_hex()).collect();
            format!("signed by key {} which is not in the keyring", issuers.join(", "))
        }
        VerificationError::UnboundKey { cert, error, .. } => {
            format!("key {} is not valid: {error}", cert.fingerprint())
        }
        VerificationError::BadKey { ka, error, .. } => {
            format!("key {} is not usable (expired or revoked?): {error}", ka.key().fingerprint())
        }
        VerificationError::BadSignature { ka, error, .. } => {
            format!("bad signature by key {}: {error}", ka.key().fingerprint())
        }
        VerificationError::MalformedSignature { error, .. } => format!("malformed signature: {error}"),
        VerificationError::UnknownSignature { .. } => "signature of an unknown kind".into(),
        other => format!("{other}"),
    }
}
