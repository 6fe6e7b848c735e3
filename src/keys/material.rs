//! Key material: generating key pairs, reading a PKCS#8 PEM key file,
//! turning keys into the objects that sign and verify (parsed once), and
//! their public JWKs (RFC 7517/7518) and thumbprints (RFC 7638).
//!
//! All cryptography is aws-lc-rs; this file only moves bytes between its
//! types and the JWK text form.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ParsedPublicKey, RsaKeyPair,
};
use aws_lc_rs::{digest, hmac, rsa};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::SigningAlg;

/// RSA keys that latchkey generates (RFC 7518 §3.3: at least 2048 bits).
const RSA_GENERATED: rsa::KeySize = rsa::KeySize::Rsa2048;

/// A failure to create or read key material. Its text names no key bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

fn key_error(text: impl Into<String>) -> KeyError {
    KeyError(text.into())
}

/// A public key as an RFC 7517 JWK, with exactly the members latchkey
/// publishes. It has no field for private or symmetric material, so none
/// can ever be serialised into the JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kty: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub e: Option<String>,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub key_use: String,
}

impl PublicJwk {
    fn new(alg: SigningAlg, members: JwkMembers) -> Self {
        let mut jwk = PublicJwk {
            kty: String::new(),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            kid: String::new(),
            alg: alg.as_str().to_string(),
            key_use: "sig".to_string(),
        };
        match members {
            JwkMembers::Okp { x } => {
                jwk.kty = "OKP".into();
                jwk.crv = Some("Ed25519".into());
                jwk.x = Some(B64.encode(x));
            }
            JwkMembers::Ec { x, y } => {
                jwk.kty = "EC".into();
                jwk.crv = Some("P-256".into());
                jwk.x = Some(B64.encode(x));
                jwk.y = Some(B64.encode(y));
            }
            JwkMembers::Rsa { n, e } => {
                jwk.kty = "RSA".into();
                jwk.n = Some(B64.encode(n));
                jwk.e = Some(B64.encode(e));
            }
        }
        jwk.kid = jwk.thumbprint();
        jwk
    }

    /// The RFC 7638 SHA-256 thumbprint: the required members in
    /// lexicographic order, no whitespace. Used as the key id, so a key
    /// always has the same `kid`, wherever it was loaded.
    pub fn thumbprint(&self) -> String {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        let canonical = match self.kty.as_str() {
            "OKP" => format!(
                r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
                s(&self.crv),
                s(&self.x)
            ),
            "EC" => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                s(&self.crv),
                s(&self.x),
                s(&self.y)
            ),
            _ => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                s(&self.e),
                s(&self.n)
            ),
        };
        B64.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    }

    /// The key that verifies signatures made with this JWK's private key,
    /// parsed once.
    pub fn verifier(&self) -> Result<ParsedPublicKey, KeyError> {
        let field = |v: &Option<String>, name: &str| -> Result<Vec<u8>, KeyError> {
            let text = v
                .as_deref()
                .ok_or_else(|| key_error(format!("stored key {} has no `{name}`", self.kid)))?;
            B64.decode(text)
                .map_err(|_| key_error(format!("stored key {}: bad `{name}`", self.kid)))
        };
        let rejected = |_| key_error(format!("stored key {} is not a valid public key", self.kid));
        match SigningAlg::parse(&self.alg) {
            Some(SigningAlg::EdDSA) => {
                ParsedPublicKey::new(&signature::ED25519, field(&self.x, "x")?).map_err(rejected)
            }
            Some(SigningAlg::ES256) => {
                let mut point = vec![4u8];
                point.extend(field(&self.x, "x")?);
                point.extend(field(&self.y, "y")?);
                ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).map_err(rejected)
            }
            Some(SigningAlg::RS256) => rsa::PublicKeyComponents {
                n: field(&self.n, "n")?,
                e: field(&self.e, "e")?,
            }
            .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
            .map_err(rejected),
            _ => Err(key_error(format!(
                "stored key {} has algorithm {}, which has no public key",
                self.kid, self.alg
            ))),
        }
    }
}

enum JwkMembers<'a> {
    Okp { x: &'a [u8] },
    Ec { x: &'a [u8], y: &'a [u8] },
    Rsa { n: &'a [u8], e: &'a [u8] },
}

/// A private key, parsed once, that signs messages for one algorithm.
pub enum PrivateKey {
    /// Boxed: an HMAC key holds its precomputed state (over a kilobyte).
    Hmac(Box<hmac::Key>),
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl PrivateKey {
    /// The signature over `message`, as JWS wants it (ECDSA as fixed-size `r‖s`).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let failed = |_| key_error("signing failed");
        match self {
            PrivateKey::Hmac(key) => Ok(hmac::sign(key, message).as_ref().to_vec()),
            PrivateKey::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            PrivateKey::Ecdsa(pair) => pair
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(failed),
            PrivateKey::Rsa(pair) => {
                let mut out = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut out,
                )
                .map_err(failed)?;
                Ok(out)
            }
        }
    }

    /// The public JWK of an asymmetric key; `None` for HMAC.
    pub fn public_jwk(&self) -> Option<PublicJwk> {
        match self {
            PrivateKey::Hmac(_) => None,
            PrivateKey::Ed25519(pair) => Some(PublicJwk::new(
                SigningAlg::EdDSA,
                JwkMembers::Okp {
                    x: pair.public_key().as_ref(),
                },
            )),
            PrivateKey::Ecdsa(pair) => {
                // Uncompressed SEC1 point: 0x04 ‖ x (32) ‖ y (32).
                let point = pair.public_key().as_ref();
                Some(PublicJwk::new(
                    SigningAlg::ES256,
                    JwkMembers::Ec {
                        x: &point[1..33],
                        y: &point[33..65],
                    },
                ))
            }
            PrivateKey::Rsa(pair) => {
                let public = pair.public_key();
                Some(PublicJwk::new(
                    SigningAlg::RS256,
                    JwkMembers::Rsa {
                        n: public.modulus().big_endian_without_leading_zero(),
                        e: public.exponent().big_endian_without_leading_zero(),
                    },
                ))
            }
        }
    }

    /// Parses an unencrypted PKCS#8 (DER) private key of algorithm `alg`.
    pub fn from_pkcs8(alg: SigningAlg, der: &[u8]) -> Result<Self, KeyError> {
        let rejected = |e: aws_lc_rs::error::KeyRejected| {
            key_error(format!("not a usable {} private key ({e})", alg.as_str()))
        };
        Ok(match alg {
            SigningAlg::HS256 => return Err(key_error("HS256 has no private key file")),
            SigningAlg::EdDSA => PrivateKey::Ed25519(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rejected)?,
            ),
            SigningAlg::ES256 => PrivateKey::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(rejected)?,
            ),
            SigningAlg::RS256 => {
                let pair = RsaKeyPair::from_pkcs8(der).map_err(rejected)?;
                if pair.public_modulus_len() < 256 {
                    return Err(key_error(
                        "RSA keys must have at least 2048 bits (RFC 7518 §3.3)",
                    ));
                }
                PrivateKey::Rsa(pair)
            }
        })
    }

    /// An HMAC-SHA256 key.
    pub fn hmac(secret: &[u8]) -> Self {
        PrivateKey::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }
}

/// A new private key for `alg`, as unencrypted PKCS#8 DER.
pub fn generate_pkcs8(alg: SigningAlg) -> Result<Vec<u8>, KeyError> {
    let failed = |_| key_error(format!("generating a {} key failed", alg.as_str()));
    let rng = SystemRandom::new();
    Ok(match alg {
        SigningAlg::HS256 => return Err(key_error("HS256 keys are secrets, not generated pairs")),
        SigningAlg::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        SigningAlg::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(failed)?
                .as_ref()
                .to_vec()
        }
        SigningAlg::RS256 => {
            let pair = RsaKeyPair::generate(RSA_GENERATED).map_err(failed)?;
            let der: Pkcs8V1Der = pair.as_der().map_err(failed)?;
            der.as_ref().to_vec()
        }
    })
}

/// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`) and
/// finds its algorithm from the key itself.
pub fn read_pkcs8_pem(pem: &[u8]) -> Result<(SigningAlg, Vec<u8>), KeyError> {
    let (label, der) = pem_rfc7468::decode_vec(pem)
        .map_err(|_| key_error("not a PEM file (expected -----BEGIN PRIVATE KEY-----, PKCS#8)"))?;
    if label == "ENCRYPTED PRIVATE KEY" {
        return Err(key_error(
            "the key is encrypted; latchkey reads unencrypted PKCS#8 (mode 0600 protects it). \
             Decrypt it with: openssl pkcs8 -in encrypted.pem -out key.pem",
        ));
    }
    if label != "PRIVATE KEY" {
        return Err(key_error(format!(
            "the PEM block is `{label}`; latchkey reads unencrypted PKCS#8 (`PRIVATE KEY`). \
             Convert it with: openssl pkcs8 -topk8 -nocrypt -in old.pem -out key.pem"
        )));
    }
    for alg in [SigningAlg::EdDSA, SigningAlg::ES256, SigningAlg::RS256] {
        if PrivateKey::from_pkcs8(alg, &der).is_ok() {
            return Ok((alg, der));
        }
    }
    Err(key_error(
        "the key is none of Ed25519 (EdDSA), P-256 (ES256) or RSA of at least 2048 bits (RS256)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_their_jwk_verifies() {
        for alg in [SigningAlg::EdDSA, SigningAlg::ES256, SigningAlg::RS256] {
            let der = generate_pkcs8(alg).unwrap();
            let key = PrivateKey::from_pkcs8(alg, &der).unwrap();
            let jwk = key.public_jwk().unwrap();
            assert_eq!(jwk.alg, alg.as_str());
            assert_eq!(jwk.kid, jwk.thumbprint());
            let signature = key.sign(b"message").unwrap();
            let verifier = jwk.verifier().unwrap();
            assert!(
                verifier.verify_sig(b"message", &signature).is_ok(),
                "{alg:?}"
            );
            assert!(
                verifier.verify_sig(b"massage", &signature).is_err(),
                "{alg:?}"
            );
            let text = serde_json::to_string(&jwk).unwrap();
            for private in ["\"d\"", "\"p\"", "\"q\"", "\"k\"", "\"dp\"", "\"qi\""] {
                assert!(!text.contains(private), "{text}");
            }
            // A key of another algorithm does not parse as this one.
            let other = if alg == SigningAlg::EdDSA {
                SigningAlg::ES256
            } else {
                SigningAlg::EdDSA
            };
            assert!(PrivateKey::from_pkcs8(other, &der).is_err());
        }
    }

    #[test]
    fn the_rfc_7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = PublicJwk {
            kty: "RSA".into(),
            crv: None,
            x: None,
            y: None,
            n: Some("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into()),
            e: Some("AQAB".into()),
            kid: String::new(),
            alg: "RS256".into(),
            key_use: "sig".into(),
        };
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn pem_files_are_read_by_their_key_type() {
        let der = generate_pkcs8(SigningAlg::ES256).unwrap();
        let pem =
            pem_rfc7468::encode_string("PRIVATE KEY", pem_rfc7468::LineEnding::LF, &der).unwrap();
        assert_eq!(
            read_pkcs8_pem(pem.as_bytes()).unwrap(),
            (SigningAlg::ES256, der.clone())
        );
        let wrong = pem_rfc7468::encode_string("EC PRIVATE KEY", pem_rfc7468::LineEnding::LF, &der)
            .unwrap();
        assert!(read_pkcs8_pem(wrong.as_bytes()).is_err());
        assert!(read_pkcs8_pem(b"not pem").is_err());
    }
}

#[cfg(test)]
mod cost {
    use super::*;

    /// `cargo test --release --lib -- --ignored --nocapture signature_costs`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn signature_costs() {
        let message = vec![b'x'; 420];
        for alg in [SigningAlg::EdDSA, SigningAlg::ES256, SigningAlg::RS256] {
            let key = PrivateKey::from_pkcs8(alg, &generate_pkcs8(alg).unwrap()).unwrap();
            let verifier = key.public_jwk().unwrap().verifier().unwrap();
            let signature = key.sign(&message).unwrap();
            let rounds = if alg == SigningAlg::RS256 { 200 } else { 5000 };
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                key.sign(&message).unwrap();
            }
            let sign = started.elapsed() / rounds;
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                verifier.verify_sig(&message, &signature).unwrap();
            }
            let verify = started.elapsed() / rounds;
            println!("{}: sign {sign:?}, verify {verify:?}", alg.as_str());
        }
        let key = PrivateKey::hmac(&[1; 32]);
        let started = std::time::Instant::now();
        for _ in 0..100_000 {
            key.sign(&message).unwrap();
        }
        println!("HS256: sign {:?}", started.elapsed() / 100_000);
    }
}
