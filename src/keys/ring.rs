//! The in-memory key ring: the keys of one version of the stored set,
//! parsed once, with what each may do. Built from the configuration and the
//! stored [`KeySet`]; replaced whole when the set changes.

use std::collections::HashMap;

use aws_lc_rs::hmac;
use aws_lc_rs::signature::ParsedPublicKey;
use bytes::Bytes;

use super::jws::encoded_header;
use super::material::{KeyError, PrivateKey};
use super::{secret_kid, KeySet, KeyState, SigningAlg, SigningConfig, StoredKey};
use crate::session::Millis;

/// JOSE `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TYP: &str = "at+jwt";
/// JOSE `typ` of refresh tokens: latchkey's own, distinct from `at+jwt`.
pub const REFRESH_TYP: &str = "refresh+jwt";

/// A key that signs, with the encoded header of the tokens it signs.
pub struct SigningKey {
    pub key: PrivateKey,
    pub header: String,
    pub kid: String,
}

enum Verifier {
    /// Boxed: an HMAC key holds its precomputed state (over a kilobyte).
    Hmac(Box<hmac::Key>),
    Public(ParsedPublicKey),
}

/// A key that verifies, and which tokens it may verify.
pub struct VerifyingKey {
    pub alg: SigningAlg,
    verifier: Verifier,
    /// Whether refresh tokens signed with it are accepted (HS256 secrets only).
    pub refresh: bool,
    /// Whether access tokens signed with it are accepted: `None` no;
    /// `Some(None)` yes; `Some(Some(t))` only those issued before `t`
    /// (an HS256 secret after access tokens moved to an asymmetric key).
    pub access: Option<Option<Millis>>,
}

impl VerifyingKey {
    /// Whether verifying costs more than hashing the token (public keys).
    pub fn is_costly(&self) -> bool {
        matches!(self.verifier, Verifier::Public(_))
    }

    /// Whether `signature` is this key's over `message` (constant time for HMAC).
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.verifier {
            Verifier::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
            Verifier::Public(key) => key.verify_sig(message, signature).is_ok(),
        }
    }
}

/// Numbers every ring this process builds, so that a memory of verified
/// tokens can tell which ring verified them.
static RING_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub struct KeyRing {
    /// Unique in this process.
    pub id: u64,
    /// The stored set it was built from, to rebuild it when a key expires
    /// even if the store cannot be read then.
    pub set: KeySet,
    /// The stored set's generation this ring was built from (0: no store).
    pub generation: u64,
    refresh: SigningKey,
    access: SigningKey,
    /// A key published ahead, and when it starts signing.
    access_next: Option<(Millis, SigningKey)>,
    verifiers: HashMap<String, VerifyingKey>,
    jwks: Bytes,
    /// Tokens issued before this may have an untyped header (`typ: JWT`).
    pub untyped_tokens_before: Millis,
    /// When a key of this ring expires, so the ring must be rebuilt.
    pub rebuild_at: Option<Millis>,
}

impl KeyRing {
    /// The ring of `config` alone, with no stored set: HS256 with the
    /// secret (tests and `bench` mint tokens with it).
    pub fn hs256_only(config: &SigningConfig) -> Result<KeyRing, KeyError> {
        Self::build(config, &KeySet::default(), 0)
    }

    /// The ring for `config` and the stored `set` at `now`.
    pub fn build(config: &SigningConfig, set: &KeySet, now: Millis) -> Result<KeyRing, KeyError> {
        let live: Vec<&StoredKey> = set
            .keys
            .iter()
            .filter(|k| k.state(now) != KeyState::Expired)
            .collect();
        let mut verifiers = HashMap::new();
        let current_kid = secret_kid(&config.secret);
        let secrets = std::iter::once(&config.secret).chain(&config.previous_secrets);
        for secret in secrets {
            let kid = secret_kid(secret);
            let access = match live.iter().find(|k| k.kid == kid) {
                Some(entry) => Some(entry.signs_until),
                // The current secret under HS256 in a ring without a store
                // (tests, bench). A previous secret verifies access tokens
                // only while its entry lives: one access lifetime after it
                // stopped signing, and never again after that.
                None if config.alg == SigningAlg::HS256 && kid == current_kid => Some(None),
                None => None,
            };
            verifiers.entry(kid).or_insert(VerifyingKey {
                alg: SigningAlg::HS256,
                verifier: Verifier::Hmac(Box::new(hmac::Key::new(
                    hmac::HMAC_SHA256,
                    secret.bytes(),
                ))),
                refresh: true,
                access,
            });
        }
        for key in live.iter().filter(|k| k.alg.is_asymmetric()) {
            let Some(jwk) = &key.public_jwk else {
                return Err(KeyError(format!(
                    "stored key {} has no public key",
                    key.kid
                )));
            };
            verifiers.insert(
                key.kid.clone(),
                VerifyingKey {
                    alg: key.alg,
                    verifier: Verifier::Public(jwk.verifier()?),
                    refresh: false,
                    access: Some(None),
                },
            );
        }

        let secret_kid = secret_kid(&config.secret);
        let refresh = SigningKey {
            key: PrivateKey::hmac(config.secret.bytes()),
            header: encoded_header("HS256", REFRESH_TYP, &secret_kid),
            kid: secret_kid.clone(),
        };
        let access = match live.iter().find(|k| k.state(now) == KeyState::Current) {
            Some(key) => signing_key(config, key)?,
            None if config.alg == SigningAlg::HS256 => SigningKey {
                key: PrivateKey::hmac(config.secret.bytes()),
                header: encoded_header("HS256", ACCESS_TYP, &secret_kid),
                kid: secret_kid,
            },
            None => return Err(KeyError("the key set has no current signing key".into())),
        };
        let access_next = match live.iter().find(|k| k.state(now) == KeyState::Next) {
            Some(key) => Some((key.signs_from, signing_key(config, key)?)),
            None => None,
        };

        // Published: current first, then the one published ahead, then the
        // retired ones, newest first.
        let mut published: Vec<&StoredKey> = live
            .iter()
            .copied()
            .filter(|k| k.public_jwk.is_some())
            .collect();
        let rank = |k: &StoredKey| match k.state(now) {
            KeyState::Current => 0,
            KeyState::Next => 1,
            _ => 2,
        };
        published.sort_by_key(|k| (rank(k), std::cmp::Reverse(k.signs_from)));
        let jwks = serde_json::json!({
            "keys": published.iter().map(|k| k.public_jwk.as_ref()).collect::<Vec<_>>()
        });
        let rebuild_at = live.iter().filter_map(|k| k.published_until).min();
        Ok(KeyRing {
            id: RING_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            set: set.clone(),
            generation: set.generation,
            refresh,
            access,
            access_next,
            verifiers,
            jwks: Bytes::from(jwks.to_string()),
            untyped_tokens_before: set.untyped_tokens_before,
            rebuild_at,
        })
    }

    /// The key that signs refresh tokens.
    pub fn refresh_signer(&self) -> &SigningKey {
        &self.refresh
    }

    /// The key that signs access tokens at `now`.
    pub fn access_signer(&self, now: Millis) -> &SigningKey {
        match &self.access_next {
            Some((from, next)) if now >= *from => next,
            _ => &self.access,
        }
    }

    /// The key with id `kid`, if this ring has it (an exact match in the
    /// ring's own set: a `kid` is never a path or a URL to us).
    pub fn verifier(&self, kid: &str) -> Option<&VerifyingKey> {
        self.verifiers.get(kid)
    }

    /// The JWKS document: the public keys that may have live access tokens.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }
}

/// The signing key for stored key `key`, with its private half from the
/// store (generated keys), the key file (file keys) or the secret (HS256).
fn signing_key(config: &SigningConfig, key: &StoredKey) -> Result<SigningKey, KeyError> {
    let private = match (&key.private_pkcs8, &config.key_file, key.alg) {
        (_, _, SigningAlg::HS256) => {
            if key.kid != secret_kid(&config.secret) {
                return Err(KeyError(format!(
                    "the key set signs with HS256 secret {}, which is not this server's --secret",
                    key.kid
                )));
            }
            PrivateKey::hmac(config.secret.bytes())
        }
        (Some(der), _, alg) => PrivateKey::from_pkcs8(alg, der)?,
        (None, Some(file), alg) if file.kid == key.kid => PrivateKey::from_pkcs8(alg, &file.pkcs8)?,
        (None, _, _) => {
            return Err(KeyError(format!(
                "the key set signs with key {} from a --signing-key-file that this server was not given",
                key.kid
            )))
        }
    };
    Ok(SigningKey {
        key: private,
        header: encoded_header(key.alg.as_str(), ACCESS_TYP, &key.kid),
        kid: key.kid.clone(),
    })
}
