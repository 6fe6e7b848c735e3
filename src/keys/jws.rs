//! The JWS compact serialisation (RFC 7515 §7.1) that latchkey's tokens use:
//! `base64url(header) . base64url(claims) . base64url(signature)`.
//!
//! Signing and verifying go through keys parsed once ([`super::material`]),
//! which is what makes asymmetric signatures affordable on the refresh path
//! (a library that parses the key on every call pays about as much for the
//! parse as for the signature). This file only splits, encodes and decodes;
//! it never chooses a key or an algorithm from the token: [`super::KeyRing`]
//! picks the key by `kid` from its own set, and the algorithm from that key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::material::{KeyError, PrivateKey};

/// The protected header of a token latchkey signs. Field order is the
/// serialised order, so the same key and type always give the same bytes.
#[derive(Serialize)]
struct OutgoingHeader<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

/// The header members latchkey reads from a presented token. Anything else
/// in it (`jku`, `x5u`, `jwk`, …) is ignored: never used to find a key.
#[derive(Debug, Deserialize)]
pub struct IncomingHeader {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub typ: Option<String>,
    /// RFC 7515 §4.1.11: a token with critical extensions the verifier does
    /// not understand must be refused; latchkey understands none.
    #[serde(default, deserialize_with = "present")]
    pub crit: Option<()>,
}

/// `Some` for a member that is there at all, even as `null`.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<()>, D::Error> {
    serde::de::IgnoredAny::deserialize(deserializer)?;
    Ok(Some(()))
}

/// The encoded header for tokens signed by key `kid` with `alg`, of JOSE
/// type `typ` (computed once per key and type).
pub fn encoded_header(alg: &str, typ: &str, kid: &str) -> String {
    let header = OutgoingHeader { alg, typ, kid };
    B64.encode(serde_json::to_vec(&header).expect("a header always serialises"))
}

/// Signs `claims` under an already encoded header.
pub fn sign<T: Serialize>(
    encoded_header: &str,
    claims: &T,
    key: &PrivateKey,
) -> Result<String, KeyError> {
    let payload = serde_json::to_vec(claims).map_err(|e| KeyError(format!("claims: {e}")))?;
    let mut token = String::with_capacity(encoded_header.len() + payload.len() * 4 / 3 + 360);
    token.push_str(encoded_header);
    token.push('.');
    B64.encode_string(&payload, &mut token);
    let signature = key.sign(token.as_bytes())?;
    token.push('.');
    B64.encode_string(&signature, &mut token);
    Ok(token)
}

/// A token split into its parts, the header decoded; nothing verified yet.
pub struct Unverified<'a> {
    pub header: IncomingHeader,
    /// `header . payload`, the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub payload: &'a str,
    pub signature: Vec<u8>,
}

/// Why a token could not even be split and decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Splits a compact JWS into exactly three base64url parts (no padding)
/// and decodes the header and signature.
pub fn split(token: &str) -> Result<Unverified<'_>, Malformed> {
    let mut parts = token.splitn(4, '.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed);
    };
    let header_bytes = B64.decode(header).map_err(|_| Malformed)?;
    let header: IncomingHeader = serde_json::from_slice(&header_bytes).map_err(|_| Malformed)?;
    let signature = B64.decode(signature).map_err(|_| Malformed)?;
    Ok(Unverified {
        header,
        signing_input: &token.as_bytes()[..token.len() - signature_len(token)],
        payload,
        signature,
    })
}

/// Length of `.signature` at the end of `token`.
fn signature_len(token: &str) -> usize {
    token.len() - token.rfind('.').unwrap_or(token.len())
}

/// Decodes the payload (claims JSON) of a token whose signature was verified.
pub fn decode_payload(payload: &str) -> Result<Vec<u8>, Malformed> {
    B64.decode(payload).map_err(|_| Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_splits_back_into_what_was_signed() {
        let key = PrivateKey::hmac(&[7; 32]);
        let header = encoded_header("HS256", "at+jwt", "k1");
        let token = sign(&header, &serde_json::json!({"sub": "1"}), &key).unwrap();
        let parts = split(&token).unwrap();
        assert_eq!(parts.header.alg, "HS256");
        assert_eq!(parts.header.kid.as_deref(), Some("k1"));
        assert_eq!(parts.header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(
            parts.signature,
            key.sign(parts.signing_input).unwrap(),
            "the signing input is header.payload"
        );
        assert_eq!(decode_payload(parts.payload).unwrap(), br#"{"sub":"1"}"#);
    }

    #[test]
    fn a_crit_member_is_seen_even_as_null() {
        for crit in [r#""crit":null,"#, r#""crit":["exp"],"#] {
            let header = B64.encode(format!(r#"{{{crit}"alg":"HS256","kid":"k"}}"#));
            let token = format!("{header}.e30.AAAA");
            assert!(split(&token).unwrap().header.crit.is_some(), "{crit}");
        }
        let header = B64.encode(r#"{"alg":"HS256","kid":"k"}"#);
        assert!(split(&format!("{header}.e30.AAAA"))
            .unwrap()
            .header
            .crit
            .is_none());
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let key = PrivateKey::hmac(&[7; 32]);
        let token = sign(&encoded_header("HS256", "at+jwt", "k"), &1, &key).unwrap();
        for bad in [
            String::new(),
            "a.b".into(),
            format!("{token}.extra"),
            format!("{token}="),
            token.replacen('.', "=.", 1),
            "!!.e30.".into(),
        ] {
            assert!(split(&bad).is_err(), "{bad}");
        }
    }
}
