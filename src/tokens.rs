//! JWT claims, signing and verification.
//!
//! Functions of their inputs, with no clock of their own: issuing and
//! verifying take `now`, so tests can mint expired tokens and the server
//! passes its process clock. The keys come from a [`KeyRing`]: verification
//! picks the key by `kid` from the ring's own set and takes the algorithm
//! from that key, never from the token (no `alg: none`, no algorithm
//! confusion); header fields such as `jku` or `x5u` are never used. A token
//! is rejected from its `exp` second on (RFC 7519 §4.1.4: "on or after", no
//! leeway). The JOSE `typ` header (`at+jwt`, `refresh+jwt`) is checked
//! together with the `type` claim, so neither kind passes as the other
//! (RFC 8725 §3.11); `iss` and `aud`, when configured, are required.

use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::keys::jws;
use crate::keys::ring::{ACCESS_TYP, REFRESH_TYP};
use crate::keys::verified::VerifiedTokens;
use crate::keys::{KeyRing, SigningConfig};
use crate::secrets::Secret;
use crate::session::{IssuedRefresh, SessionId, TokenId, UserId};

/// Why a token whose `kid` is not in the ring is refused (with several
/// instances, the caller may reload the keys and try again).
pub const UNKNOWN_KEY: &str = "unknown key";

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The user data carried in an access token and answered by `/auth/profile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub id: String,
    pub email: String,
    pub name: String,
    pub role_id: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    Access,
    Refresh,
}

/// `aud`: one audience as a string, several as an array (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(one) => one == audience,
            Audience::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

/// Claims of both token types; `profile`, `iss` and `aud` are in access
/// tokens only. Field order is the serialised order, which keeps re-signing
/// deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(rename = "type")]
    pub token_type: TokenType,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub profile: Option<Profile>,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    pub sid: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub aud: Option<Audience>,
}

/// A verified token's identifiers, parsed.
#[derive(Debug, Clone)]
pub struct Verified {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub token_id: TokenId,
    pub claims: Claims,
}

/// Signs and verifies tokens with the current key ring (which
/// [`crate::keys::Keys`] replaces when the key set changes).
pub struct TokenKeys {
    ring: RwLock<Arc<KeyRing>>,
    /// Access tokens whose (public-key) signature verified already.
    verified: VerifiedTokens,
    issuer: Option<String>,
    audiences: Vec<String>,
    audience_claim: Option<Audience>,
}

impl TokenKeys {
    /// HS256 with `secret` alone, no issuer or audience: for tests and
    /// `bench`, which mint tokens a server with the same secret accepts.
    pub fn new(secret: &Secret) -> Self {
        let config = SigningConfig::hs256(secret.clone());
        let ring = KeyRing::hs256_only(&config).expect("an HS256 ring always builds");
        Self::from_ring(ring, &config)
    }

    pub fn from_ring(ring: KeyRing, config: &SigningConfig) -> Self {
        let audience_claim = match config.audiences.as_slice() {
            [] => None,
            [one] => Some(Audience::One(one.clone())),
            many => Some(Audience::Many(many.to_vec())),
        };
        TokenKeys {
            ring: RwLock::new(Arc::new(ring)),
            verified: VerifiedTokens::default(),
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            audience_claim,
        }
    }

    /// The ring in use now.
    pub fn ring(&self) -> Arc<KeyRing> {
        Arc::clone(&self.ring.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn replace_ring(&self, ring: KeyRing) {
        *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
    }

    /// The refresh token a session currently holds (deterministic: the same
    /// inputs give the same bytes, whatever happened to the access keys).
    pub fn refresh_token(
        &self,
        user_id: UserId,
        session_id: SessionId,
        current: &IssuedRefresh,
    ) -> Result<String, Error> {
        let ring = self.ring();
        let signer = ring.refresh_signer();
        let claims = Claims {
            sub: user_id.to_string(),
            token_type: TokenType::Refresh,
            profile: None,
            iat: current.issued_at,
            exp: current.expires_at,
            jti: current.jti.to_hex(),
            sid: session_id.to_hex(),
            iss: None,
            aud: None,
        };
        jws::sign(&signer.header, &claims, &signer.key)
            .map_err(|e| Error::Internal(format!("signing a token failed: {e}")))
    }

    pub fn access_token(
        &self,
        profile: Profile,
        session_id: SessionId,
        now_secs: u64,
        ttl_secs: u64,
    ) -> Result<String, Error> {
        let ring = self.ring();
        let signer = ring.access_signer(now_secs.saturating_mul(1000));
        let claims = Claims {
            sub: profile.id.clone(),
            token_type: TokenType::Access,
            profile: Some(profile),
            iat: now_secs,
            exp: now_secs.saturating_add(ttl_secs),
            jti: TokenId::generate().to_hex(),
            sid: session_id.to_hex(),
            iss: self.issuer.clone(),
            aud: self.audience_claim.clone(),
        };
        jws::sign(&signer.header, &claims, &signer.key)
            .map_err(|e| Error::Internal(format!("signing a token failed: {e}")))
    }

    /// Verifies key, algorithm, signature, `exp` (against `now_secs`), the
    /// token type (header and claim), issuer and audience, and parses the ids.
    pub fn verify(
        &self,
        token: &str,
        expected: TokenType,
        now_secs: u64,
    ) -> Result<Verified, Error> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::InvalidToken("too long"));
        }
        let parts = jws::split(token).map_err(|_| Error::InvalidToken("malformed"))?;
        if parts.header.crit.is_some() {
            return Err(Error::InvalidToken("unsupported critical header"));
        }
        let ring = self.ring();
        let key = parts
            .header
            .kid
            .as_deref()
            .and_then(|kid| ring.verifier(kid))
            .ok_or(Error::InvalidToken(UNKNOWN_KEY))?;
        if parts.header.alg != key.alg.as_str() {
            return Err(Error::InvalidToken("algorithm not allowed"));
        }
        let access_window = match expected {
            TokenType::Refresh if !key.refresh => {
                return Err(Error::InvalidToken("not a refresh token"))
            }
            TokenType::Refresh => None,
            TokenType::Access => match key.access {
                None => return Err(Error::InvalidToken("key not valid for access tokens")),
                Some(window) => window,
            },
        };
        // A public-key verification costs 20-50 µs; a client presents the
        // same access token many times, so remember the ones that verified.
        let digest = key.is_costly().then(|| VerifiedTokens::digest(token));
        let known = digest.is_some_and(|d| self.verified.contains(&d, ring.id));
        if !known {
            if !key.verifies(parts.signing_input, &parts.signature) {
                return Err(Error::InvalidToken("bad signature"));
            }
            if let Some(digest) = digest {
                self.verified.insert(digest, ring.id);
            }
        }
        let payload =
            jws::decode_payload(parts.payload).map_err(|_| Error::InvalidToken("malformed"))?;
        let claims: Claims =
            serde_json::from_slice(&payload).map_err(|_| Error::InvalidToken("malformed"))?;
        if now_secs >= claims.exp {
            return Err(Error::TokenExpired);
        }
        if claims.token_type != expected {
            return Err(Error::InvalidToken(match expected {
                TokenType::Access => "not an access token",
                TokenType::Refresh => "not a refresh token",
            }));
        }
        let issued_at_millis = claims.iat.saturating_mul(1000);
        let expected_typ = match expected {
            TokenType::Access => ACCESS_TYP,
            TokenType::Refresh => REFRESH_TYP,
        };
        let typ = parts.header.typ.as_deref();
        let typed = typ.is_some_and(|t| {
            t.eq_ignore_ascii_case(expected_typ)
                || t.strip_prefix("application/")
                    .is_some_and(|t| t.eq_ignore_ascii_case(expected_typ))
        });
        // Versions before explicit types wrote `typ: JWT`; their tokens stay
        // valid, but nothing issued since may look like them.
        let legacy = typ.is_none_or(|t| t.eq_ignore_ascii_case("JWT"))
            && issued_at_millis < ring.untyped_tokens_before;
        if !typed && !legacy {
            return Err(Error::InvalidToken("wrong token type header"));
        }
        if let Some(before) = access_window {
            if issued_at_millis >= before {
                return Err(Error::InvalidToken("key no longer signs access tokens"));
            }
        }
        if expected == TokenType::Access {
            if let Some(issuer) = &self.issuer {
                if claims.iss.as_deref() != Some(issuer.as_str()) {
                    return Err(Error::InvalidToken("wrong issuer"));
                }
            }
            if !self.audiences.is_empty()
                && !claims
                    .aud
                    .as_ref()
                    .is_some_and(|aud| self.audiences.iter().any(|a| aud.contains(a)))
            {
                return Err(Error::InvalidToken("wrong audience"));
            }
        }
        let user_id = claims
            .sub
            .parse()
            .map_err(|_| Error::InvalidToken("malformed subject"))?;
        let session_id =
            SessionId::from_hex(&claims.sid).ok_or(Error::InvalidToken("malformed session id"))?;
        let token_id =
            TokenId::from_hex(&claims.jti).ok_or(Error::InvalidToken("malformed token id"))?;
        if expected == TokenType::Access
            && claims.profile.as_ref().is_none_or(|p| p.id != claims.sub)
        {
            return Err(Error::InvalidToken("malformed profile"));
        }
        Ok(Verified {
            user_id,
            session_id,
            token_id,
            claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64_engine::encode as b64;

    mod base64_engine {
        /// Unpadded base64url, enough to build hostile tokens in tests.
        pub fn encode(data: &[u8]) -> String {
            const ALPHABET: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in data.chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
                for i in 0..=chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }

    fn keys() -> TokenKeys {
        TokenKeys::new(&Secret::new(b"an-example-secret-of-at-least-32-bytes!".to_vec()).unwrap())
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn refresh(keys: &TokenKeys, exp: u64) -> String {
        let current = IssuedRefresh {
            jti: TokenId(42),
            issued_at: now(),
            expires_at: exp,
        };
        keys.refresh_token(3, SessionId(99), &current).unwrap()
    }

    #[test]
    fn refresh_tokens_round_trip_and_are_deterministic() {
        let keys = keys();
        let exp = now() + 60;
        let token = refresh(&keys, exp);
        let verified = keys.verify(&token, TokenType::Refresh, now()).unwrap();
        assert_eq!(
            (verified.user_id, verified.session_id, verified.token_id),
            (3, SessionId(99), TokenId(42))
        );
        let current = IssuedRefresh {
            jti: TokenId(42),
            issued_at: verified.claims.iat,
            expires_at: exp,
        };
        assert_eq!(
            keys.refresh_token(3, SessionId(99), &current).unwrap(),
            token
        );
    }

    #[test]
    fn type_is_checked() {
        let keys = keys();
        let token = refresh(&keys, now() + 60);
        assert!(matches!(
            keys.verify(&token, TokenType::Access, now()),
            Err(Error::InvalidToken(_))
        ));
        let profile = Profile {
            id: "3".into(),
            email: "a@b.c".into(),
            name: "A".into(),
            role_id: 1,
        };
        let access = keys.access_token(profile, SessionId(1), now(), 60).unwrap();
        assert!(keys.verify(&access, TokenType::Access, now()).is_ok());
        assert!(matches!(
            keys.verify(&access, TokenType::Refresh, now()),
            Err(Error::InvalidToken(_))
        ));
    }

    #[test]
    fn a_token_is_rejected_from_its_exp_second_on() {
        let keys = keys();
        let exp = now() + 100;
        let token = refresh(&keys, exp);
        assert!(keys.verify(&token, TokenType::Refresh, exp - 1).is_ok());
        for at in [exp, exp + 1] {
            assert!(matches!(
                keys.verify(&token, TokenType::Refresh, at),
                Err(Error::TokenExpired)
            ));
        }
    }

    /// A refresh token as versions before explicit types wrote it.
    fn untyped_refresh(keys: &TokenKeys, iat: u64) -> String {
        let ring = keys.ring();
        let kid = ring.refresh_signer().kid.clone();
        let header = b64(format!(r#"{{"typ":"JWT","alg":"HS256","kid":"{kid}"}}"#).as_bytes());
        let claims = Claims {
            sub: "3".into(),
            token_type: TokenType::Refresh,
            profile: None,
            iat,
            exp: iat + 600,
            jti: TokenId(42).to_hex(),
            sid: SessionId(99).to_hex(),
            iss: None,
            aud: None,
        };
        crate::keys::jws::sign(&header, &claims, &ring.refresh_signer().key).unwrap()
    }

    #[test]
    fn untyped_tokens_pass_only_if_issued_before_typed_ones_existed() {
        let secret = Secret::new(b"an-example-secret-of-at-least-32-bytes!".to_vec()).unwrap();
        let config = SigningConfig::hs256(secret);
        let cutoff_secs = now() - 100;
        let set = crate::keys::KeySet {
            untyped_tokens_before: cutoff_secs * 1000,
            ..Default::default()
        };
        let keys = TokenKeys::from_ring(KeyRing::build(&config, &set, 0).unwrap(), &config);
        let old = untyped_refresh(&keys, cutoff_secs - 1);
        assert!(keys.verify(&old, TokenType::Refresh, now()).is_ok());
        let new = untyped_refresh(&keys, cutoff_secs);
        assert!(matches!(
            keys.verify(&new, TokenType::Refresh, now()),
            Err(Error::InvalidToken(_))
        ));
        // On a database that never had untyped tokens, none passes.
        let fresh = self::keys();
        assert!(fresh
            .verify(&untyped_refresh(&fresh, 1), TokenType::Refresh, 2)
            .is_err());
    }

    #[test]
    fn a_previous_secret_verifies_access_tokens_for_one_lifetime_only() {
        use crate::keys::schedule::plan_start;
        const TTL: u64 = 3_600_000;
        let (a, b) = (
            Secret::new(vec![1; 32]).unwrap(),
            Secret::new(vec![2; 32]).unwrap(),
        );
        let profile = Profile {
            id: "3".into(),
            email: "a@b.c".into(),
            name: "A".into(),
            role_id: 1,
        };
        let now_ms = now() * 1000;
        let with_a = SigningConfig::hs256(a.clone());
        let mut first = plan_start(&with_a, TTL, &Default::default(), now_ms - 60_000, false)
            .unwrap()
            .unwrap();
        first.generation += 1;
        let old_keys =
            TokenKeys::from_ring(KeyRing::build(&with_a, &first, now_ms).unwrap(), &with_a);
        let before = old_keys
            .access_token(profile.clone(), SessionId(1), now() - 10, 3600)
            .unwrap();
        let after = old_keys
            .access_token(profile, SessionId(1), now() + 5, 3600)
            .unwrap();
        // Rollover now: --secret B --previous-secret A.
        let with_b = SigningConfig {
            previous_secrets: vec![a],
            ..SigningConfig::hs256(b)
        };
        let mut second = plan_start(&with_b, TTL, &first, now_ms, false)
            .unwrap()
            .unwrap();
        second.generation += 1;
        let keys = TokenKeys::from_ring(KeyRing::build(&with_b, &second, now_ms).unwrap(), &with_b);
        assert!(keys.verify(&before, TokenType::Access, now()).is_ok());
        assert!(keys.verify(&after, TokenType::Access, now() + 6).is_err());
        // One access lifetime later the old secret verifies no access token.
        let later = now_ms + TTL + 1000;
        let keys = TokenKeys::from_ring(KeyRing::build(&with_b, &second, later).unwrap(), &with_b);
        assert!(keys.verify(&before, TokenType::Access, now()).is_err());
    }

    #[test]
    fn other_keys_algorithms_and_none_are_refused() {
        let keys = keys();
        let other = TokenKeys::new(&Secret::new(vec![7; 32]).unwrap());
        let foreign = refresh(&other, now() + 60);
        assert!(matches!(
            keys.verify(&foreign, TokenType::Refresh, now()),
            Err(Error::InvalidToken(_))
        ));

        let (_, rest) = foreign.split_once('.').unwrap();
        let payload = rest.split_once('.').unwrap().0;
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
        ] {
            let forged = format!("{}.{payload}.", b64(header.as_bytes()));
            assert!(
                matches!(
                    keys.verify(&forged, TokenType::Refresh, now()),
                    Err(Error::InvalidToken(_))
                ),
                "{header}"
            );
        }
        assert!(matches!(
            keys.verify(&"a".repeat(MAX_TOKEN_BYTES + 1), TokenType::Refresh, now()),
            Err(Error::InvalidToken(_))
        ));
        assert!(matches!(
            keys.verify("not.a.token", TokenType::Refresh, now()),
            Err(Error::InvalidToken(_))
        ));
    }
}
