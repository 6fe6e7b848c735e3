//! Signing keys: which key signs tokens now, which keys still verify, which
//! are published in the JWKS, and how they rotate.
//!
//! Two kinds of key sign latchkey's tokens:
//! - **Refresh tokens** are only ever verified by latchkey itself, so they
//!   are always HMAC-SHA256 (HS256) with the server's secret: the cheapest
//!   signature there is, and it lets a grace-window replay re-create the
//!   token byte for byte whatever happened to the other keys. `--previous-secret`
//!   keeps tokens of an old secret verifying.
//! - **Access tokens** are what other services verify. Under `--signing-alg
//!   HS256` (the default) they use the same secret; under EdDSA, ES256 or
//!   RS256 a private key that latchkey generates and keeps in the store (or
//!   reads from `--signing-key-file`), whose public half is published at
//!   `/.well-known/jwks.json`.
//!
//! The key set lives in the store ([`KeySet`]), not in process memory
//! alone, so that every instance on one database agrees on it. Each key has
//! a signing window `[signs_from, signs_until)`; it is published from its
//! creation until `published_until` (the end of its window plus the access
//! token lifetime: when the last access token it signed expires), and then
//! dropped. HS256 entries in the set record when the secret signed access
//! tokens, so that after a switch to an asymmetric algorithm HS256 access
//! tokens are accepted only if they were issued before the switch.
//!
//! Files: `material.rs` (generation, PEM, JWKs), `jws.rs` (the compact
//! serialisation), `schedule.rs` (pure decisions: start, rotation, states),
//! `ring.rs` (the in-memory set that signs and verifies), `manager.rs`
//! (loading, reloading and rotating against the store), `verified.rs` (a
//! bounded memory of tokens whose signature verified).

pub mod jws;
pub mod manager;
pub mod material;
pub mod ring;
pub mod schedule;
pub mod verified;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::secrets::Secret;
use crate::session::Millis;
pub use manager::{KeyAdmin, Keys};
pub use material::{KeyError, PublicJwk};
pub use ring::KeyRing;

/// The JWS algorithms latchkey signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum SigningAlg {
    HS256,
    EdDSA,
    ES256,
    RS256,
}

impl SigningAlg {
    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::HS256 => "HS256",
            SigningAlg::EdDSA => "EdDSA",
            SigningAlg::ES256 => "ES256",
            SigningAlg::RS256 => "RS256",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            SigningAlg::HS256,
            SigningAlg::EdDSA,
            SigningAlg::ES256,
            SigningAlg::RS256,
        ]
        .into_iter()
        .find(|alg| alg.as_str() == text)
    }

    pub fn is_asymmetric(self) -> bool {
        self != SigningAlg::HS256
    }
}

/// One key of the stored set.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    pub alg: SigningAlg,
    /// Unencrypted PKCS#8 DER of a key latchkey generated. `None` for a key
    /// from `--signing-key-file` (its private half stays in that file) and
    /// for HS256 entries (the secret comes from the configuration).
    pub private_pkcs8: Option<Vec<u8>>,
    /// The public half, for asymmetric keys.
    pub public_jwk: Option<PublicJwk>,
    pub created_at: Millis,
    /// When it starts signing access tokens (in the future for a key that
    /// `keys rotate` published ahead).
    pub signs_from: Millis,
    /// When it stopped (or will stop) signing: the next key's `signs_from`.
    pub signs_until: Option<Millis>,
    /// Set with `signs_until`: when the last access token it signed expires.
    /// Until then it verifies and is published; after it, it is dropped.
    pub published_until: Option<Millis>,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("private", &self.private_pkcs8.as_ref().map(|_| "<hidden>"))
            .field("signs_from", &self.signs_from)
            .field("signs_until", &self.signs_until)
            .field("published_until", &self.published_until)
            .finish_non_exhaustive()
    }
}

/// The stored key set, read and replaced as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySet {
    /// Advanced by every replacement; a replacement names the generation
    /// it read, so two instances changing the set at once cannot both win.
    /// 0: never written (a database this version has not served yet).
    pub generation: u64,
    pub keys: Vec<StoredKey>,
    /// Tokens issued before this moment may carry the untyped header
    /// (`typ: JWT`) of versions before explicit token types; 0 when the
    /// database never held such tokens.
    pub untyped_tokens_before: Millis,
    /// The access-token lifetime of the last server that wrote the set
    /// (what `keys rotate` on a stopped database uses).
    pub access_ttl: Millis,
}

/// Where a key is in its life at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published, not signing yet.
    Next,
    /// Signing access tokens.
    Current,
    /// No longer signing; still verifying and published.
    Previous,
    /// Past `published_until`: dropped at the next change of the set.
    Expired,
}

impl StoredKey {
    pub fn state(&self, now: Millis) -> KeyState {
        if now < self.signs_from {
            KeyState::Next
        } else if self.signs_until.is_none_or(|until| now < until) {
            KeyState::Current
        } else if self.published_until.is_none_or(|until| now < until) {
            KeyState::Previous
        } else {
            KeyState::Expired
        }
    }
}

/// How this process signs, from its configuration.
#[derive(Debug, Clone)]
pub struct SigningConfig {
    pub alg: SigningAlg,
    /// Signs refresh tokens (and access tokens under HS256).
    pub secret: Secret,
    /// Older secrets whose tokens still verify.
    pub previous_secrets: Vec<Secret>,
    /// `--signing-key-file`, parsed: the key's algorithm and PKCS#8 DER.
    pub key_file: Option<KeyFile>,
    /// Added to access tokens as `iss`, and required of them.
    pub issuer: Option<String>,
    /// Added to access tokens as `aud`; one of them is required of them.
    pub audiences: Vec<String>,
}

impl SigningConfig {
    /// HS256 with `secret` and nothing else: what tests and `bench` use.
    pub fn hs256(secret: Secret) -> Self {
        SigningConfig {
            alg: SigningAlg::HS256,
            secret,
            previous_secrets: Vec::new(),
            key_file: None,
            issuer: None,
            audiences: Vec::new(),
        }
    }
}

/// A private key read from `--signing-key-file`.
#[derive(Clone)]
pub struct KeyFile {
    pub alg: SigningAlg,
    pub pkcs8: Vec<u8>,
    pub kid: String,
    pub public_jwk: PublicJwk,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyFile({} {})", self.alg.as_str(), self.kid)
    }
}

impl KeyFile {
    pub fn parse(pem: &[u8]) -> Result<Self, KeyError> {
        let (alg, pkcs8) = material::read_pkcs8_pem(pem)?;
        let public_jwk = material::PrivateKey::from_pkcs8(alg, &pkcs8)?
            .public_jwk()
            .ok_or_else(|| KeyError("the key has no public half".into()))?;
        Ok(KeyFile {
            alg,
            pkcs8,
            kid: public_jwk.kid.clone(),
            public_jwk,
        })
    }
}

/// The key id of an HS256 secret: derived from the secret with HMAC, so it
/// names the secret without revealing anything about it (and is the same
/// `kid` that earlier versions put in their tokens).
pub fn secret_kid(secret: &Secret) -> String {
    use base64::Engine as _;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.bytes());
    let mac = aws_lc_rs::hmac::sign(&key, b"latchkey key id");
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.as_ref());
    format!("hs256-{}", &text[..8])
}
