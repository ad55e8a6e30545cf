//! Ed25519 signatures over shared layers, Nix-substituter style: a builder signs what it
//! pushes with `DD_CACHE_SIGNING_KEY`; a puller uses a layer only when it carries a valid
//! signature by a key listed in `DD_CACHE_TRUSTED_KEYS`.
//!
//! Keys are text, `NAME:BASE64` (as Nix writes them): the public key is the 32-byte Ed25519
//! point, the secret key the 32-byte seed. The name only says which key signed; it is
//! bound to the key by being listed with it. What is signed is [`statement`]: the layer key,
//! the tree hash, the layer blob's digest and the record blob's digest, each on its own line
//! under a fixed header, so that no field can be read as another.
//!
//! Contract: a secret key is never printed (its `Debug` shows the name only), and a key file
//! is read within [`KEY_FILE_LIMIT`] and written 0600 without following a symlink.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::hash::Sha256;
use crate::store::treehash::TreeHash;

/// The largest key file read (a real one is under 100 bytes).
pub const KEY_FILE_LIMIT: u64 = 4096;

/// Why a key or a signature was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{what}: expected NAME:BASE64 with a name of letters, digits, '.', '_' or '-' and {len} bytes of key in base64 ({why}); make one with `ddslug cache keygen`")]
    BadKey { what: String, len: usize, why: String },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
}

/// A public key trusted to sign shared layers.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    key: VerifyingKey,
}

/// A key that signs shared layers. Never printed.
pub struct SecretKey {
    pub name: String,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, <secret>)", self.name)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `NAME:BASE64` split and decoded to `N` bytes; `what` names the input in the error
/// (never the value: it may be a secret).
fn parse_named<const N: usize>(text: &str, what: &str) -> Result<(String, [u8; N]), SignError> {
    let bad = |why: &str| SignError::BadKey { what: what.into(), len: N, why: why.into() };
    let (name, b64) = text.trim().split_once(':').ok_or_else(|| bad("no ':'"))?;
    if !valid_name(name) {
        return Err(bad("the name is empty, too long or has other characters"));
    }
    let bytes = B64.decode(b64.trim()).map_err(|_| bad("the key is not base64"))?;
    let bytes: [u8; N] = bytes.try_into().map_err(|v: Vec<u8>| bad(&format!("the key has {} bytes", v.len())))?;
    Ok((name.to_string(), bytes))
}

impl PublicKey {
    /// Parses `NAME:BASE64`; `what` names the setting in the error.
    pub fn parse(text: &str, what: &str) -> Result<PublicKey, SignError> {
        let (name, bytes) = parse_named::<32>(text, what)?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| SignError::BadKey { what: what.into(), len: 32, why: "not an Ed25519 public key".into() })?;
        Ok(PublicKey { name, key })
    }

    /// A list of keys separated by spaces or commas (as `DD_CACHE_TRUSTED_KEYS` holds them).
    pub fn parse_list(text: &str, what: &str) -> Result<Vec<PublicKey>, SignError> {
        text.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty()).map(|k| PublicKey::parse(k, what)).collect()
    }

    /// Whether `signature` (`NAME:BASE64`) is this key's valid signature over `message`.
    fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.key.verify(message, &Signature::from_bytes(signature)).is_ok()
    }
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(name: &str) -> Result<SecretKey, SignError> {
        if !valid_name(name) {
            return Err(SignError::BadKey { what: "the key name".into(), len: 32, why: "the name is empty, too long or has other characters".into() });
        }
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| SignError::Io { path: "the system's random source".into(), error: std::io::Error::other(e.to_string()) })?;
        Ok(SecretKey { name: name.into(), key: SigningKey::from_bytes(&seed) })
    }

    /// Parses `NAME:BASE64` (the seed); `what` names the setting or file in the error.
    pub fn parse(text: &str, what: &str) -> Result<SecretKey, SignError> {
        let (name, seed) = parse_named::<32>(text, what)?;
        Ok(SecretKey { name, key: SigningKey::from_bytes(&seed) })
    }

    /// `DD_CACHE_SIGNING_KEY`'s value: the key itself (`NAME:BASE64`), or the path of a file
    /// holding it.
    pub fn from_setting(value: &str, setting: &str) -> Result<SecretKey, SignError> {
        let value = value.trim();
        if value.contains(':') && !value.starts_with('/') && !value.starts_with('.') {
            return SecretKey::parse(value, setting);
        }
        let text = read_key_file(Path::new(value))?;
        SecretKey::parse(&text, &format!("{setting} (the file {value})"))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey { name: self.name.clone(), key: self.key.verifying_key() }
    }

    /// The secret key as text, for its key file only.
    pub fn to_text(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_bytes()))
    }

    /// `NAME:BASE64` of the signature over `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.sign(message).to_bytes()))
    }
}

/// A key file, read within [`KEY_FILE_LIMIT`] without following a symlink.
pub fn read_key_file(path: &Path) -> Result<String, SignError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |error| SignError::Io { path: path.display().to_string(), error };
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io)?;
    let mut text = String::new();
    file.take(KEY_FILE_LIMIT + 1).read_to_string(&mut text).map_err(io)?;
    if text.len() as u64 > KEY_FILE_LIMIT {
        return Err(io(std::io::Error::other(format!("larger than {KEY_FILE_LIMIT} bytes, the limit for a key file"))));
    }
    Ok(text)
}

/// What a signature covers: the layer key, its tree hash, and the digests of the layer blob
/// and of the record blob (which holds the layer's description), under a versioned header.
pub fn statement(layer_key: &Sha256, tree_hash: &TreeHash, layer_digest: &Sha256, record_digest: &Sha256) -> Vec<u8> {
    format!("ddslug shared layer v1\nlayer-key sha256:{layer_key}\ntree-hash {tree_hash}\nlayer sha256:{layer_digest}\nrecord sha256:{record_digest}\n")
        .into_bytes()
}

/// Why a signature was not accepted, as one line for people (with what to do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untrusted {
    Unsigned,
    Malformed,
    UnknownKey(String),
    BadSignature(String),
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Untrusted::Unsigned => write!(f, "it is not signed; only layers signed by a key in DD_CACHE_TRUSTED_KEYS are used (builders that push set DD_CACHE_SIGNING_KEY)"),
            Untrusted::Malformed => write!(f, "its signature is not NAME:BASE64 of 64 bytes"),
            Untrusted::UnknownKey(name) => write!(
                f,
                "it is signed by key {name:?}, which is not in DD_CACHE_TRUSTED_KEYS; if you trust that builder, add its public key ({name}.pub from `ddslug cache keygen`) to DD_CACHE_TRUSTED_KEYS"
            ),
            Untrusted::BadSignature(name) => write!(f, "its signature by key {name:?} does not match what it signs (the layer, its record or its tree hash were changed)"),
        }
    }
}

/// Checks `signature` (`NAME:BASE64`, or none) over `message` against the trusted keys.
pub fn check(signature: Option<&str>, message: &[u8], trusted: &[PublicKey]) -> Result<PublicKey, Untrusted> {
    let signature = signature.ok_or(Untrusted::Unsigned)?;
    let (name, bytes) = parse_named::<64>(signature, "signature").map_err(|_| Untrusted::Malformed)?;
    let keys: Vec<&PublicKey> = trusted.iter().filter(|k| k.name == name).collect();
    if keys.is_empty() {
        return Err(Untrusted::UnknownKey(name));
    }
    keys.into_iter().find(|k| k.verifies(message, &bytes)).cloned().ok_or(Untrusted::BadSignature(name))
}

/// Writes a new key pair as `DIR/NAME.secret` (0600) and `DIR/NAME.pub`; refuses to replace
/// either. Returns the public key.
pub fn keygen(dir: &Path, name: &str) -> Result<PublicKey, SignError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let secret = SecretKey::generate(name)?;
    let public = secret.public();
    for (file, text, mode) in [(format!("{name}.secret"), secret.to_text(), 0o600), (format!("{name}.pub"), public.to_string(), 0o644)] {
        let path = dir.join(&file);
        let io = |error| SignError::Io { path: path.display().to_string(), error };
        // create_new: never replaces a key, never follows a symlink planted at its name.
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(libc::O_NOFOLLOW).open(&path).map_err(io)?;
        f.write_all(format!("{text}\n").as_bytes()).map_err(io)?;
    }
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Vec<u8> {
        statement(&Sha256::of(b"key"), &TreeHash(Sha256::of(b"tree")), &Sha256::of(b"layer"), &Sha256::of(b"record"))
    }

    #[test]
    fn signs_and_checks_against_trusted_keys_only() {
        let secret = SecretKey::generate("builder-1").unwrap();
        let other = SecretKey::generate("builder-1").unwrap();
        let sig = secret.sign(&message());
        let trusted = PublicKey::parse_list(&format!("{} , {}", SecretKey::generate("x").unwrap().public(), secret.public()), "DD_CACHE_TRUSTED_KEYS").unwrap();
        assert_eq!(check(Some(&sig), &message(), &trusted).unwrap().name, "builder-1");
        // Same name, another key: refused.
        assert_eq!(check(Some(&sig), &message(), &[other.public()]), Err(Untrusted::BadSignature("builder-1".into())));
        // Another statement (one field changed): refused.
        let changed = statement(&Sha256::of(b"key"), &TreeHash(Sha256::of(b"tree2")), &Sha256::of(b"layer"), &Sha256::of(b"record"));
        assert_eq!(check(Some(&sig), &changed, &trusted), Err(Untrusted::BadSignature("builder-1".into())));
        assert_eq!(check(Some(&sig), &message(), &[]), Err(Untrusted::UnknownKey("builder-1".into())));
        assert_eq!(check(None, &message(), &trusted), Err(Untrusted::Unsigned));
        assert_eq!(check(Some("builder-1:AAAA"), &message(), &trusted), Err(Untrusted::Malformed));
    }

    #[test]
    fn keys_round_trip_and_bad_keys_are_named_not_shown() {
        let secret = SecretKey::generate("k").unwrap();
        let again = SecretKey::parse(&secret.to_text(), "DD_CACHE_SIGNING_KEY").unwrap();
        assert_eq!(again.public(), secret.public());
        assert!(!format!("{again:?}").contains(&secret.to_text()[2..]));
        let e = SecretKey::from_setting("k:bm90IGEga2V5", "DD_CACHE_SIGNING_KEY").unwrap_err().to_string();
        assert!(e.starts_with("DD_CACHE_SIGNING_KEY: expected NAME:BASE64") && e.contains("the key has 9 bytes") && !e.contains("bm90"), "{e}");
        let e = PublicKey::parse_list("nocolon", "DD_CACHE_TRUSTED_KEYS").unwrap_err().to_string();
        assert!(e.contains("DD_CACHE_TRUSTED_KEYS") && e.contains("ddslug cache keygen"), "{e}");
    }

    #[test]
    fn keygen_writes_a_private_secret_and_never_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let public = keygen(dir.path(), "ci").unwrap();
        let mode = std::fs::metadata(dir.path().join("ci.secret")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let secret = SecretKey::from_setting(dir.path().join("ci.secret").to_str().unwrap(), "DD_CACHE_SIGNING_KEY").unwrap();
        assert_eq!(secret.public(), public);
        assert_eq!(PublicKey::parse(&std::fs::read_to_string(dir.path().join("ci.pub")).unwrap(), "x").unwrap(), public);
        assert!(keygen(dir.path(), "ci").is_err());
    }
}
