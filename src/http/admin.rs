//! The admin API (`/admin/…`): users and their sessions, import, export,
//! backup, and the signing keys (`keys`, `keys/rotate`). The same routes serve three callers: TCP clients with the admin
//! key or an admin role's access token (checked in [`super`]), the admin
//! Unix socket (its file permissions and the peer's uid are the check), and
//! the command line with no server running (it calls [`route`] in process).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::decode::{
    json_object, only_fields, optional_bool, optional_i64, optional_str, required_i64, required_str,
};
use super::{empty_response, json_response, HttpError, HttpResponse};
use crate::accounts::{
    AccountChange, Accounts, BadLine, Credential, ImportError, NewAccount, SessionInfo,
};
use crate::error::Error;
use crate::keys::KeyAdmin;
use crate::passwords::Password;
use crate::session::{SessionId, UserId};
use crate::store::User;

/// A user as the admin API shows it: never the password hash.
pub fn user_json(user: &User) -> Value {
    json!({
        "id": user.id.to_string(),
        "email": user.email,
        "name": user.name,
        "role_id": user.role_id,
        "disabled": user.disabled,
        "createdAt": user.created_at / 1000,
    })
}

/// A session; `current` is added by the self-service listing.
pub fn session_json(info: &SessionInfo) -> Value {
    json!({
        "id": info.id.to_hex(),
        "createdAt": info.created_at,
        "lastUsedAt": info.last_used_at,
        "expiresAt": info.expires_at,
    })
}

/// A user as `user export` writes it and `user import` reads it.
pub fn export_line(user: &User) -> Value {
    let mut line = json!({
        "email": user.email,
        "name": user.name,
        "role_id": user.role_id,
        "password_hash": user.password_hash,
    });
    if user.disabled {
        line["disabled"] = json!(true);
    }
    line
}

fn user_id(text: &str) -> Result<UserId, Error> {
    text.parse().map_err(|_| Error::UserNotFound)
}

fn session_id(text: &str) -> Result<SessionId, Error> {
    SessionId::from_hex(text).ok_or(Error::SessionNotFound)
}

/// The methods an admin path takes (for `Allow`); `None` for no such path.
/// Import, export and backup exist only on this machine (the admin socket,
/// the command line): they move password hashes and write files.
fn allowed(channel: Channel, path: &[&str]) -> Option<&'static str> {
    let local = channel == Channel::Local;
    Some(match path {
        ["users"] => "GET, POST",
        ["users", "import"] if local => "POST",
        ["users", "export"] if local => "GET",
        ["users", "import" | "export"] => return None,
        ["users", _] => "GET, PATCH, DELETE",
        ["users", _, "sessions"] => "GET, DELETE",
        ["sessions", _] => "DELETE",
        ["backup"] if local => "POST",
        ["keys"] => "GET",
        ["keys", "rotate"] => "POST",
        _ => return None,
    })
}

/// Who asks: backup writes a file on the server's machine, so only a caller
/// on that machine (the admin socket, or the command line itself) may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Tcp,
    Local,
}

/// Checks the path and method before a body is read: 404 for no such
/// path, 405 for a method it does not take.
pub fn check_route(channel: Channel, method: &Method, path: &str) -> Result<(), HttpError> {
    let parts: Vec<&str> = path.split('/').collect();
    let allow = allowed(channel, &parts).ok_or(HttpError::NotFound)?;
    if allow.split(", ").any(|m| m == method.as_str()) {
        Ok(())
    } else {
        Err(HttpError::MethodNotAllowed { allow })
    }
}

/// What admin requests act on.
pub struct Target<'a> {
    pub accounts: &'a Accounts,
    pub keys: &'a KeyAdmin,
}

/// Serves one admin request; `path` is what follows `/admin/`.
pub async fn route(
    target: &Target<'_>,
    channel: Channel,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> Result<HttpResponse, HttpError> {
    check_route(channel, method, path)?;
    let answer = dispatch(target, channel, method, path, query, body).await?;
    // Changes, and the export (it hands out every password hash).
    let audited = *method != Method::GET || path == "users/export";
    if audited && answer.status().is_success() {
        tracing::warn!(event = "admin_action", method = %method, path = %path, channel = ?channel, status = answer.status().as_u16(), "admin action");
    }
    Ok(answer)
}

async fn dispatch(
    target: &Target<'_>,
    channel: Channel,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> Result<HttpResponse, HttpError> {
    let accounts = target.accounts;
    let parts: Vec<&str> = path.split('/').collect();
    let answer = match (method, parts.as_slice()) {
        (&Method::GET, ["users"]) => list_users(accounts, query).await?,
        (&Method::POST, ["users"]) => {
            let user = accounts.create(new_account(&json_object(&body)?)?).await?;
            json_response(StatusCode::CREATED, &json!({ "user": user_json(&user) }))
        }
        (&Method::POST, ["users", "import"]) if channel == Channel::Local => {
            import(accounts, &body).await?
        }
        (&Method::GET, ["users", "export"]) if channel == Channel::Local => {
            export(accounts).await?
        }
        (&Method::GET, ["users", id]) => {
            let user = accounts.get(user_id(id)?).await?;
            json_response(StatusCode::OK, &json!({ "user": user_json(&user) }))
        }
        (&Method::PATCH, ["users", id]) => {
            let change = account_change(&json_object(&body)?)?;
            let user = accounts.update(user_id(id)?, change).await?;
            json_response(StatusCode::OK, &json!({ "user": user_json(&user) }))
        }
        (&Method::DELETE, ["users", id]) => {
            accounts.delete(user_id(id)?).await?;
            empty_response(StatusCode::NO_CONTENT)
        }
        (&Method::GET, ["users", id, "sessions"]) => {
            let sessions = accounts.sessions(user_id(id)?).await?;
            let sessions: Vec<Value> = sessions.iter().map(session_json).collect();
            json_response(StatusCode::OK, &json!({ "sessions": sessions }))
        }
        (&Method::DELETE, ["users", id, "sessions"]) => {
            accounts.revoke_sessions(user_id(id)?).await?;
            empty_response(StatusCode::NO_CONTENT)
        }
        (&Method::DELETE, ["sessions", sid]) => {
            accounts.revoke_session(session_id(sid)?, None).await?;
            empty_response(StatusCode::NO_CONTENT)
        }
        (&Method::POST, ["backup"]) if channel == Channel::Local => {
            let object = json_object(&body)?;
            let target = required_str(&object, "path")?;
            let target = std::path::PathBuf::from(target);
            if !target.is_absolute() {
                return Err(Error::InvalidRequest("path must be absolute".into()).into());
            }
            accounts.backup(&target).await?;
            empty_response(StatusCode::NO_CONTENT)
        }
        (&Method::GET, ["keys"]) => {
            let keys = target.keys.list().await?;
            json_response(StatusCode::OK, &json!({ "keys": keys }))
        }
        (&Method::POST, ["keys", "rotate"]) => {
            let object = if body.iter().all(u8::is_ascii_whitespace) {
                Map::new()
            } else {
                json_object(&body)?
            };
            only_fields(&object, &["now"])?;
            let switch_now = match object.get("now") {
                None => false,
                Some(Value::Bool(now)) => *now,
                Some(_) => return Err(Error::InvalidRequest("now must be a boolean".into()).into()),
            };
            let keys = target.keys.rotate(switch_now).await?;
            json_response(StatusCode::OK, &json!({ "keys": keys }))
        }
        _ => return Err(HttpError::NotFound),
    };
    Ok(answer)
}

async fn list_users(accounts: &Accounts, query: Option<&str>) -> Result<HttpResponse, HttpError> {
    let (mut limit, mut after, mut email) = (100usize, None, None);
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if value.is_empty() && key != "limit" {
            continue; // `?after=` is no `after`
        }
        match key.as_ref() {
            "limit" if value.is_empty() => {
                return Err(
                    Error::InvalidRequest("limit must be an integer from 1 to 1000".into()).into(),
                )
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=crate::accounts::MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        Error::InvalidRequest("limit must be an integer from 1 to 1000".into())
                    })?
            }
            "after" => {
                after = Some(
                    value
                        .parse::<UserId>()
                        .map_err(|_| Error::InvalidRequest("after must be a user id".into()))?,
                )
            }
            "email" => email = Some(value.into_owned()),
            _ => {}
        }
    }
    let page = accounts.page(after, limit, email.as_deref()).await?;
    let users: Vec<Value> = page.users.iter().map(user_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "users": users,
            "next": page.next.map(|id| id.to_string()),
            "total": page.total,
        }),
    ))
}

fn new_account(object: &Map<String, Value>) -> Result<NewAccount, Error> {
    only_fields(
        object,
        &[
            "email",
            "name",
            "role_id",
            "password",
            "password_hash",
            "disabled",
        ],
    )?;
    let credential = match (
        optional_str(object, "password")?,
        optional_str(object, "password_hash")?,
    ) {
        (Some(password), None) => Credential::Password(Password::new(password)),
        (None, Some(hash)) => Credential::Hash(hash),
        _ => {
            return Err(Error::InvalidRequest(
                "give password or password_hash (one of them)".into(),
            ))
        }
    };
    Ok(NewAccount {
        email: required_str(object, "email")?,
        name: required_str(object, "name")?,
        role_id: required_i64(object, "role_id")?,
        credential,
        disabled: optional_bool(object, "disabled")?.unwrap_or(false),
    })
}

fn account_change(object: &Map<String, Value>) -> Result<AccountChange, Error> {
    only_fields(
        object,
        &["email", "name", "role_id", "password", "disabled"],
    )?;
    let change = AccountChange {
        email: optional_str(object, "email")?,
        name: optional_str(object, "name")?,
        role_id: optional_i64(object, "role_id")?,
        password: optional_str(object, "password")?.map(Password::new),
        disabled: optional_bool(object, "disabled")?,
    };
    let empty = change.email.is_none()
        && change.name.is_none()
        && change.role_id.is_none()
        && change.password.is_none()
        && change.disabled.is_none();
    if empty {
        return Err(Error::InvalidRequest("nothing to change".into()));
    }
    Ok(change)
}

/// `{"users":[{"line":N, …account…}], "skipInvalid":bool}`: the command line
/// parses the JSON Lines file and sends each object with its line number.
async fn import(accounts: &Accounts, body: &[u8]) -> Result<HttpResponse, HttpError> {
    let object = json_object(body)?;
    let skip_invalid = optional_bool(&object, "skipInvalid")?.unwrap_or(false);
    let Some(Value::Array(lines)) = object.get("users") else {
        return Err(Error::InvalidRequest("users must be an array".into()).into());
    };
    let mut parsed = Vec::new();
    let mut bad = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Value::Object(fields) = line else {
            bad.push(BadLine {
                line: index + 1,
                reason: "not a JSON object".into(),
            });
            continue;
        };
        let mut fields = fields.clone();
        let number = match fields.remove("line") {
            Some(Value::Number(n)) => n.as_u64().map_or(index + 1, |n| n as usize),
            _ => index + 1,
        };
        match new_account(&fields) {
            Ok(account) => parsed.push((number, account)),
            Err(Error::InvalidRequest(reason)) => bad.push(BadLine {
                line: number,
                reason,
            }),
            Err(other) => return Err(other.into()),
        }
    }
    if !bad.is_empty() && !skip_invalid {
        return Err(bad_lines(&bad).into());
    }
    match accounts.import(parsed, skip_invalid).await {
        Ok((imported, skipped)) => {
            bad.extend(skipped);
            bad.sort_by_key(|b| b.line);
            let skipped: Vec<Value> = bad
                .iter()
                .map(|b| json!({ "line": b.line, "reason": b.reason }))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({ "imported": imported, "skipped": skipped }),
            ))
        }
        Err(ImportError::BadLines(more)) => {
            bad.extend(more);
            bad.sort_by_key(|b| b.line);
            Err(bad_lines(&bad).into())
        }
        Err(ImportError::Failed(error)) => Err(error.into()),
    }
}

/// The first few bad lines, as a 400 message; nothing was imported.
fn bad_lines(bad: &[BadLine]) -> Error {
    let shown: Vec<String> = bad
        .iter()
        .take(10)
        .map(|b| format!("line {}: {}", b.line, b.reason))
        .collect();
    let more = bad.len().saturating_sub(10);
    let mut message = format!("nothing imported; {}", shown.join("; "));
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    Error::InvalidRequest(message)
}

/// Every user as JSON Lines, with `password_hash` (and `disabled`).
async fn export(accounts: &Accounts) -> Result<HttpResponse, HttpError> {
    let users = accounts.export().await?;
    let mut out = Vec::new();
    for user in &users {
        serde_json::to_writer(&mut out, &export_line(user)).unwrap_or_default();
        out.push(b'\n');
    }
    let mut response = Response::new(Full::new(Bytes::from(out)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
