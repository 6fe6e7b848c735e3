//! Request decoders: bytes in, typed requests or a 4xx [`Error`] out.
//!
//! Pure functions with no I/O, so property tests can feed them anything.
//! Messages name the field at fault and never repeat what the client sent.

use hyper::header::HeaderValue;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::passwords::Password;
use crate::store::LogoutScope;

pub struct LoginRequest {
    pub email: String,
    pub password: Password,
    pub client_type: Option<String>,
}

pub struct LogoutRequest {
    pub refresh_token: String,
    pub scope: LogoutScope,
}

/// A JSON object body. serde_json bounds nesting depth (128), so hostile
/// nesting is an error, not a stack overflow. A key given twice is refused:
/// parsers disagree on which one wins, and a proxy or a log may read the
/// other one.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, Error> {
    match serde_json::from_slice::<UniqueKeys>(body) {
        Ok(UniqueKeys(object)) => Ok(object),
        Err(e) if e.to_string().starts_with(DUPLICATE_KEY) => {
            Err(Error::InvalidRequest("the body has a duplicate key".into()))
        }
        Err(e) if e.classify() == serde_json::error::Category::Data => Err(Error::InvalidRequest(
            "the body must be a JSON object".into(),
        )),
        Err(_) => Err(Error::InvalidRequest("the body is not valid JSON".into())),
    }
}

const DUPLICATE_KEY: &str = "duplicate key";

/// A top-level JSON object whose keys are all different.
struct UniqueKeys(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueKeys;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut object = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    if object.contains_key(&key) {
                        return Err(serde::de::Error::custom(DUPLICATE_KEY));
                    }
                    let value: Value = access.next_value()?;
                    object.insert(key, value);
                }
                Ok(UniqueKeys(object))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// A required string field.
pub fn required_str(object: &Map<String, Value>, field: &str) -> Result<String, Error> {
    optional_str(object, field)?
        .ok_or_else(|| Error::InvalidRequest(format!("{field} is required")))
}

/// An optional string field; `null` counts as absent.
pub fn optional_str(object: &Map<String, Value>, field: &str) -> Result<Option<String>, Error> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(Error::InvalidRequest(format!("{field} must be a string"))),
    }
}

pub fn login_request(body: &[u8]) -> Result<LoginRequest, Error> {
    let object = json_object(body)?;
    Ok(LoginRequest {
        email: required_str(&object, "email")?,
        password: Password::new(required_str(&object, "password")?),
        client_type: optional_str(&object, "type")?,
    })
}

/// The `refreshToken` of a refresh request.
pub fn refresh_request(body: &[u8]) -> Result<String, Error> {
    required_str(&json_object(body)?, "refreshToken")
}

pub fn logout_request(body: &[u8]) -> Result<LogoutRequest, Error> {
    let object = json_object(body)?;
    let scope = match optional_str(&object, "scope")?.as_deref() {
        None | Some("local") => LogoutScope::Local,
        Some("global") => LogoutScope::Global,
        Some(_) => {
            return Err(Error::InvalidRequest(
                "scope must be \"local\" or \"global\"".into(),
            ))
        }
    };
    Ok(LogoutRequest {
        refresh_token: required_str(&object, "refreshToken")?,
        scope,
    })
}

/// A sign-up: `{"email","password","name"}` and an optional `type`.
pub struct RegisterRequest {
    pub email: String,
    pub password: Password,
    pub name: String,
    pub client_type: Option<String>,
}

pub fn register_request(body: &[u8]) -> Result<RegisterRequest, Error> {
    let object = json_object(body)?;
    Ok(RegisterRequest {
        email: required_str(&object, "email")?,
        password: Password::new(required_str(&object, "password")?),
        name: required_str(&object, "name")?,
        client_type: optional_str(&object, "type")?,
    })
}

/// `PATCH /auth/profile`: `name` and `email`, each optional, one at least.
pub fn profile_change(body: &[u8]) -> Result<(Option<String>, Option<String>), Error> {
    let object = json_object(body)?;
    only_fields(&object, &["name", "email"])?;
    Ok((
        optional_str(&object, "name")?,
        optional_str(&object, "email")?,
    ))
}

/// `POST /auth/password`: `currentPassword` and `newPassword`.
pub fn password_change(body: &[u8]) -> Result<(Password, Password), Error> {
    let object = json_object(body)?;
    Ok((
        Password::new(required_str(&object, "currentPassword")?),
        Password::new(required_str(&object, "newPassword")?),
    ))
}

/// Refuses fields other than `allowed` (a typo must not be ignored quietly
/// where it would change an account).
pub fn only_fields(object: &Map<String, Value>, allowed: &[&str]) -> Result<(), Error> {
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) if key.len() <= 64 => Err(Error::InvalidRequest(format!(
            "unknown field {key:?}; expected {}",
            allowed.join(", ")
        ))),
        Some(_) => Err(Error::InvalidRequest("unknown field".into())),
        None => Ok(()),
    }
}

/// A required integer field.
pub fn required_i64(object: &Map<String, Value>, field: &str) -> Result<i64, Error> {
    optional_i64(object, field)?
        .ok_or_else(|| Error::InvalidRequest(format!("{field} is required")))
}

/// An optional integer field; `null` counts as absent.
pub fn optional_i64(object: &Map<String, Value>, field: &str) -> Result<Option<i64>, Error> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| Error::InvalidRequest(format!("{field} must be an integer"))),
        Some(_) => Err(Error::InvalidRequest(format!("{field} must be an integer"))),
    }
}

/// An optional boolean field; `null` counts as absent.
pub fn optional_bool(object: &Map<String, Value>, field: &str) -> Result<Option<bool>, Error> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::InvalidRequest(format!(
            "{field} must be true or false"
        ))),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(header: Option<&HeaderValue>) -> Result<&str, Error> {
    let header = header.ok_or(Error::InvalidToken("missing bearer token"))?;
    let header = header
        .to_str()
        .map_err(|_| Error::InvalidToken("malformed Authorization header"))?;
    match header.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(Error::InvalidToken(
            "expected Authorization: Bearer <token>",
        )),
    }
}

#[cfg(test)]
mod tests {
    //! Property tests: any input decodes or fails with a client error; none panics.
    use super::*;
    use proptest::prelude::*;

    use crate::secrets::Secret;
    use crate::tokens::{TokenKeys, TokenType};

    fn is_client_error<T>(result: &Result<T, Error>) -> bool {
        match result {
            Ok(_) => true,
            Err(e) => crate::http::error::describe_domain(e).0.is_client_error(),
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("email".to_string()),
                        Just("password".to_string()),
                        Just("type".to_string()),
                        Just("refreshToken".to_string()),
                        Just("scope".to_string()),
                        ".*"
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(is_client_error(&login_request(&body)));
            prop_assert!(is_client_error(&refresh_request(&body)));
            prop_assert!(is_client_error(&logout_request(&body)));
        }

        #[test]
        fn arbitrary_json_never_panics(value in json_value()) {
            let body = serde_json::to_vec(&value).unwrap();
            prop_assert!(is_client_error(&login_request(&body)));
            prop_assert!(is_client_error(&refresh_request(&body)));
            prop_assert!(is_client_error(&logout_request(&body)));
        }

        #[test]
        fn arbitrary_tokens_are_refused_with_401(token in prop_oneof![
            ".*",
            "[A-Za-z0-9_-]{0,64}\\.[A-Za-z0-9_-]{0,128}\\.[A-Za-z0-9_-]{0,64}",
        ]) {
            let keys = TokenKeys::new(&Secret::new(vec![42; 32]).unwrap());
            for kind in [TokenType::Access, TokenType::Refresh] {
                let result = keys.verify(&token, kind, 0);
                prop_assert!(matches!(&result, Err(e) if crate::http::error::describe_domain(e).0.as_u16() == 401));
            }
        }

        #[test]
        fn arbitrary_authorization_headers_never_panic(raw in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(header) = HeaderValue::from_bytes(&raw) {
                prop_assert!(is_client_error(&bearer_token(Some(&header))));
            }
        }
    }

    #[test]
    fn hostile_shapes_are_client_errors() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            login_request(deep.as_bytes()),
            Err(Error::InvalidRequest(_))
        ));
        let duplicate = br#"{"refreshToken":"a","refreshToken":"b"}"#;
        assert!(
            matches!(refresh_request(duplicate), Err(Error::InvalidRequest(m)) if m.contains("duplicate")),
            "a key given twice is refused"
        );
        assert!(
            matches!(json_object(b"[1]"), Err(Error::InvalidRequest(m)) if m.contains("object"))
        );
        assert!(
            matches!(json_object(b"{\"a\":"), Err(Error::InvalidRequest(m)) if m.contains("valid JSON"))
        );
        let nested = br#"{"refreshToken":"a","x":{"k":1}}"#;
        assert_eq!(refresh_request(nested).unwrap(), "a");
        let huge_number = br#"{"email":1e999999,"password":"x"}"#;
        assert!(login_request(huge_number).is_err());
        assert!(
            login_request(b"{\"email\":\"\xff\"}").is_err(),
            "invalid UTF-8"
        );
        assert!(
            login_request(br#"{"email":"a@b.c","password":"x""#).is_err(),
            "truncated"
        );
    }
}
