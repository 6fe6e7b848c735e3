//! JWT claims, signing and verification (HS256).
//!
//! Functions of their inputs, with no clock of their own: issuing and
//! verifying take `now`, so tests can mint expired tokens and the server
//! passes its process clock. Verification pins HS256 (no `alg: none`, no
//! algorithm confusion), rejects a token from its `exp` second on (RFC 7519
//! §4.1.4: "on or after", no leeway) and checks `type`. Header fields such
//! as `kid`, `jku` or `x5u` are never used to pick or fetch a key.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::secrets::Secret;
use crate::session::{IssuedRefresh, SessionId, TokenId, UserId};

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

/// Claims of both token types; `profile` is present in access tokens only.
/// Field order is the serialised order, which keeps re-signing deterministic.
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
}

/// A verified token's identifiers, parsed.
#[derive(Debug, Clone)]
pub struct Verified {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub token_id: TokenId,
    pub claims: Claims,
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    header: Header,
    validation: Validation,
}

impl TokenKeys {
    pub fn new(secret: &Secret) -> Self {
        let encoding = EncodingKey::from_secret(secret.bytes());
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key_id(&encoding));
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        // Checked in `verify` against the caller's clock: jsonwebtoken reads
        // the system clock and accepts a token in its `exp` second.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        TokenKeys {
            encoding,
            decoding: DecodingKey::from_secret(secret.bytes()),
            header,
            validation,
        }
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, Error> {
        jsonwebtoken::encode(&self.header, claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("signing a token failed: {e}")))
    }

    /// The refresh token a session currently holds (deterministic: the same
    /// inputs give the same bytes).
    pub fn refresh_token(
        &self,
        user_id: UserId,
        session_id: SessionId,
        current: &IssuedRefresh,
    ) -> Result<String, Error> {
        self.sign(&Claims {
            sub: user_id.to_string(),
            token_type: TokenType::Refresh,
            profile: None,
            iat: current.issued_at,
            exp: current.expires_at,
            jti: current.jti.to_hex(),
            sid: session_id.to_hex(),
        })
    }

    pub fn access_token(
        &self,
        profile: Profile,
        session_id: SessionId,
        now_secs: u64,
        ttl_secs: u64,
    ) -> Result<String, Error> {
        self.sign(&Claims {
            sub: profile.id.clone(),
            token_type: TokenType::Access,
            profile: Some(profile),
            iat: now_secs,
            exp: now_secs.saturating_add(ttl_secs),
            jti: TokenId::generate().to_hex(),
            sid: session_id.to_hex(),
        })
    }

    /// Verifies signature, algorithm, `exp` (against `now_secs`) and `type`,
    /// and parses the ids.
    pub fn verify(
        &self,
        token: &str,
        expected: TokenType,
        now_secs: u64,
    ) -> Result<Verified, Error> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::InvalidToken("too long"));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => Error::InvalidToken("bad signature"),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        Error::InvalidToken("algorithm not allowed")
                    }
                    _ => Error::InvalidToken("malformed"),
                }
            })?;
        let claims = data.claims;
        if now_secs >= claims.exp {
            return Err(Error::TokenExpired);
        }
        if claims.token_type != expected {
            return Err(Error::InvalidToken(match expected {
                TokenType::Access => "not an access token",
                TokenType::Refresh => "not a refresh token",
            }));
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

/// A short, stable id for the key (lets a later version rotate keys), derived
/// from the key itself with HMAC so it reveals nothing about it.
fn key_id(key: &EncodingKey) -> String {
    let mac =
        jsonwebtoken::crypto::sign(b"latchkey key id", key, Algorithm::HS256).unwrap_or_default();
    format!("hs256-{}", &mac[..mac.len().min(8)])
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
        jsonwebtoken::get_current_timestamp()
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
