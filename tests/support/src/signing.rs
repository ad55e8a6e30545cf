//! Fresh OpenPGP keys for test repositories, and the two signature forms apt uses:
//! clear-signed InRelease and detached, armored Release.gpg.

use std::io::Write;

use anyhow::{Context, Result};
use sequoia_openpgp as openpgp;
use openpgp::cert::prelude::*;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Armorer, Message, Signer};
use openpgp::serialize::{Serialize, SerializeInto};

/// Which kind of key to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa2048,
    Ed25519,
}

/// A certificate with its secret signing key.
#[derive(Clone)]
pub struct SigningKey {
    cert: Cert,
}

impl SigningKey {
    /// Generates a new certificate with a signing subkey.
    pub fn generate(kind: KeyKind, name: &str) -> Result<SigningKey> {
        let suite = match kind {
            KeyKind::Rsa2048 => CipherSuite::RSA2k,
            KeyKind::Ed25519 => CipherSuite::Cv25519,
        };
        let (cert, _revocation) = CertBuilder::new()
            .add_userid(format!("{name} <repo@ddslug.invalid>"))
            .set_cipher_suite(suite)
            .add_signing_subkey()
            .generate()
            .context("generating an OpenPGP key")?;
        Ok(SigningKey { cert })
    }

    /// Uppercase hex fingerprint of the primary key.
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint().to_hex()
    }

    /// The public certificate, ASCII-armored.
    pub fn public_armored(&self) -> Result<Vec<u8>> {
        self.cert.armored().to_vec()
    }

    /// The public certificate in binary form (as in /usr/share/keyrings/*.gpg).
    pub fn public_binary(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.cert.serialize(&mut out)?;
        Ok(out)
    }

    fn keypair(&self) -> Result<openpgp::crypto::KeyPair> {
        let policy = StandardPolicy::new();
        let key = self
            .cert
            .keys()
            .unencrypted_secret()
            .with_policy(&policy, None)
            .supported()
            .alive()
            .revoked(false)
            .for_signing()
            .next()
            .context("the generated key has no signing subkey")?;
        key.key().clone().into_keypair()
    }

    /// Clear-signs `text` (the InRelease form).
    pub fn clearsign(&self, text: &[u8]) -> Result<Vec<u8>> {
        let mut sink = Vec::new();
        {
            let message = Message::new(&mut sink);
            let mut signer = Signer::new(message, self.keypair()?)?.cleartext().build()?;
            signer.write_all(text)?;
            signer.finalize()?;
        }
        Ok(sink)
    }

    /// An armored detached signature of `data` (the Release.gpg form).
    pub fn detached_sign(&self, data: &[u8]) -> Result<Vec<u8>> {
        let mut sink = Vec::new();
        {
            let message = Message::new(&mut sink);
            let message = Armorer::new(message).kind(openpgp::armor::Kind::Signature).build()?;
            let mut signer = Signer::new(message, self.keypair()?)?.detached().build()?;
            signer.write_all(data)?;
            signer.finalize()?;
        }
        Ok(sink)
    }
}
