// Verify a latchkey access token with the `jsonwebtoken` crate, using the
// server's JWKS (Cargo.toml: jsonwebtoken = { version = "11", features =
// ["rust_crypto"] }, serde_json = "1").
use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};

/// `jwks`: GET /.well-known/jwks.json, cached; fetch it again when a token
/// names a key it does not have (after a rotation).
pub fn verify(
    token: &str,
    jwks: &JwkSet,
    issuer: &str,
    audience: &str,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let header = decode_header(token)?;
    if header.typ.as_deref() != Some("at+jwt") {
        return Err("not an access token".into());
    }
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks.find(&kid).ok_or("unknown key: fetch the JWKS again")?;
    // The key's algorithm, never the token's.
    let alg: Algorithm = jwk
        .common
        .key_algorithm
        .ok_or("no alg")?
        .to_string()
        .parse()?;
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
    let key = DecodingKey::from_jwk(jwk)?;
    Ok(decode::<serde_json::Value>(token, &key, &validation)?.claims)
}
