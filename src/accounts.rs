//! Account management: the use cases behind the admin API and the `user` /
//! `session` commands (list, create, read, change, disable, delete users;
//! list and revoke their sessions; import, export, backup). No HTTP here;
//! the same [`Accounts`] serves the admin API on TCP, on the admin socket,
//! and the command line when no server runs.

use std::path::Path;
use std::sync::Arc;

use crate::clock::Clock;
use crate::credentials::{check_new_password, normalize_email};
use crate::error::Error;
use crate::passwords::{is_supported_hash, Password, Passwords};
use crate::session::{Session, SessionId, UserId};
use crate::store::{
    Import, NewUser, RevokeSessions, Store, User, UserChange, UserPage, UserUpdate,
};

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Most users one page of a listing holds.
pub const MAX_PAGE: usize = 1000;

/// A name as stored: trimmed, not empty, at most [`MAX_NAME_CHARS`].
pub fn check_name(name: &str) -> Result<String, Error> {
    // Checked before trimming: trim() would take a trailing tab or
    // vertical tab away unseen.
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidRequest(
            "name must not contain control characters".into(),
        ));
    }
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::InvalidRequest(format!(
            "name must have 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(name.to_string())
}

/// An email as stored (normalised), or 400.
pub fn check_email(email: &str) -> Result<String, Error> {
    normalize_email(email)
        .ok_or_else(|| Error::InvalidRequest("email is not a valid email address".into()))
}

/// A new password, or 400.
pub fn check_password(password: &Password) -> Result<(), Error> {
    check_new_password(password.as_str())
        .map_err(|why| Error::InvalidRequest(why.replace("the password", "password")))
}

/// The user a [`Store::update_user`] left, or why there is none.
pub fn updated_user(update: UserUpdate) -> Result<User, Error> {
    match update {
        UserUpdate::Updated(user) => Ok(user),
        UserUpdate::NotFound => Err(Error::UserNotFound),
        UserUpdate::EmailTaken => Err(Error::EmailTaken),
    }
}

/// How a new or imported account gets its password.
pub enum Credential {
    Password(Password),
    /// An argon2 PHC string or a bcrypt hash from another backend.
    Hash(String),
}

pub struct NewAccount {
    pub email: String,
    pub name: String,
    pub role_id: i64,
    pub credential: Credential,
    pub disabled: bool,
}

/// A change by an administrator: every field given is set.
#[derive(Default)]
pub struct AccountChange {
    pub email: Option<String>,
    pub name: Option<String>,
    pub role_id: Option<i64>,
    pub password: Option<Password>,
    pub disabled: Option<bool>,
}

/// A session as its owner and administrators see it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: SessionId,
    /// Unix seconds.
    pub created_at: u64,
    /// When it was last refreshed (or created), Unix seconds.
    pub last_used_at: u64,
    /// Its absolute end, Unix seconds.
    pub expires_at: u64,
}

impl SessionInfo {
    pub fn of(id: SessionId, session: &Session) -> Self {
        let last_used = session
            .previous
            .map_or(session.created_at, |rotation| rotation.rotated_at);
        SessionInfo {
            id,
            created_at: session.created_at / 1000,
            last_used_at: last_used / 1000,
            expires_at: session.expires_at / 1000,
        }
    }
}

/// One line of `user import` that could not be taken.
#[derive(Debug)]
pub struct BadLine {
    /// 1-based.
    pub line: usize,
    pub reason: String,
}

#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn Store>,
    passwords: Arc<Passwords>,
    clock: Clock,
}

impl Accounts {
    pub fn new(store: Arc<dyn Store>, passwords: Arc<Passwords>, clock: Clock) -> Self {
        Accounts {
            store,
            passwords,
            clock,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Hashes a password for an administrator: when the pool is full (a
    /// login flood), waits for room (up to a minute) instead of failing, so
    /// an import through the server answers as one without a server does.
    async fn hash(&self, password: Password) -> Result<String, Error> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self.passwords.hash(password.clone()).await {
                Err(Error::Overloaded) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Checks an account's fields and turns it into what the store keeps.
    async fn prepare(&self, account: NewAccount) -> Result<NewUser, Error> {
        let email = check_email(&account.email)?;
        let name = check_name(&account.name)?;
        let password_hash = match account.credential {
            Credential::Password(password) => {
                check_password(&password)?;
                self.hash(password).await?
            }
            Credential::Hash(hash) if is_supported_hash(&hash) => hash,
            Credential::Hash(_) => {
                return Err(Error::InvalidRequest(
                    "password_hash must be an argon2 PHC string or a bcrypt hash".into(),
                ))
            }
        };
        Ok(NewUser {
            email,
            name,
            role_id: account.role_id,
            password_hash,
            created_at: self.clock.now_millis(),
            disabled: account.disabled,
        })
    }

    pub async fn create(&self, account: NewAccount) -> Result<User, Error> {
        let email = check_email(&account.email)?;
        if self.store.user_by_email(&email).await?.is_some() {
            return Err(Error::EmailTaken);
        }
        let new = self.prepare(account).await?;
        self.store.create_user(new).await?.ok_or(Error::EmailTaken)
    }

    pub async fn get(&self, id: UserId) -> Result<User, Error> {
        self.store.user(id).await?.ok_or(Error::UserNotFound)
    }

    pub async fn by_email(&self, email: &str) -> Result<User, Error> {
        let email = check_email(email)?;
        self.store
            .user_by_email(&email)
            .await?
            .ok_or(Error::UserNotFound)
    }

    /// A page of users by id, or the one user with `email`.
    pub async fn page(
        &self,
        after: Option<UserId>,
        limit: usize,
        email: Option<&str>,
    ) -> Result<UserPage, Error> {
        let limit = limit.clamp(1, MAX_PAGE);
        if let Some(email) = email {
            let users: Vec<User> = match normalize_email(email) {
                Some(email) => self
                    .store
                    .user_by_email(&email)
                    .await?
                    .into_iter()
                    .collect(),
                None => Vec::new(),
            };
            let users: Vec<User> = users
                .into_iter()
                .filter(|u| after.is_none_or(|a| u.id > a))
                .collect();
            let total = users.len() as u64;
            return Ok(UserPage {
                users,
                next: None,
                total,
            });
        }
        Ok(self.store.users_page(after, limit).await?)
    }

    /// Changes a user. A new password or `disabled: true` revokes all of
    /// the user's sessions.
    pub async fn update(&self, id: UserId, change: AccountChange) -> Result<User, Error> {
        let email = change.email.as_deref().map(check_email).transpose()?;
        let name = change.name.as_deref().map(check_name).transpose()?;
        let password_hash = match change.password {
            Some(password) => {
                check_password(&password)?;
                Some(self.hash(password).await?)
            }
            None => None,
        };
        let revoke = password_hash.is_some() || change.disabled == Some(true);
        let change = UserChange {
            email,
            name,
            role_id: change.role_id,
            password_hash,
            disabled: change.disabled,
            revoke_sessions: if revoke {
                RevokeSessions::All
            } else {
                RevokeSessions::None
            },
        };
        updated_user(self.store.update_user(id, change).await?)
    }

    /// Deletes a user and their sessions.
    pub async fn delete(&self, id: UserId) -> Result<User, Error> {
        self.store.delete_user(id).await?.ok_or(Error::UserNotFound)
    }

    /// The live sessions of user `id`, oldest first.
    pub async fn sessions(&self, id: UserId) -> Result<Vec<SessionInfo>, Error> {
        self.get(id).await?;
        let now = self.clock.now_millis();
        Ok(self
            .store
            .sessions_of_user(id)
            .await?
            .into_iter()
            .filter(|(_, s)| s.is_live(now))
            .map(|(sid, s)| SessionInfo::of(sid, &s))
            .collect())
    }

    /// Revokes every session of user `id`.
    pub async fn revoke_sessions(&self, id: UserId) -> Result<usize, Error> {
        self.get(id).await?;
        Ok(self.store.revoke_sessions_of_user(id).await?)
    }

    /// Revokes one live session: of `owner` if given (a user ending one of
    /// their own), else of whoever it belongs to (an administrator).
    pub async fn revoke_session(&self, sid: SessionId, owner: Option<UserId>) -> Result<(), Error> {
        let now = self.clock.now_millis();
        let session = self.store.session(sid).await?;
        let Some(session) =
            session.filter(|s| s.is_live(now) && owner.is_none_or(|owner| s.user_id == owner))
        else {
            return Err(Error::SessionNotFound);
        };
        self.store.revoke_session(sid, session.user_id, now).await?;
        Ok(())
    }

    /// Imports accounts all or nothing: a bad account (an invalid field, an
    /// email taken in the database or earlier in the import) stops the
    /// import with its line number, unless `skip_invalid`; then bad lines
    /// are reported and the rest imported. Lines are numbered from 1.
    pub async fn import(
        &self,
        accounts: Vec<(usize, NewAccount)>,
        skip_invalid: bool,
    ) -> Result<(usize, Vec<BadLine>), ImportError> {
        let mut bad = Vec::new();
        let mut ready = Vec::new();
        let mut lines = Vec::new();
        for (line, account) in accounts {
            match self.prepare(account).await {
                Ok(user) => {
                    ready.push(user);
                    lines.push(line);
                }
                Err(Error::InvalidRequest(reason)) => bad.push(BadLine { line, reason }),
                Err(other) => return Err(ImportError::Failed(other)),
            }
        }
        if !bad.is_empty() && !skip_invalid {
            return Err(ImportError::BadLines(bad));
        }
        loop {
            match self
                .store
                .import_users(ready.clone())
                .await
                .map_err(|e| ImportError::Failed(e.into()))?
            {
                Import::Imported(count) => return Ok((count, bad)),
                Import::EmailTaken(index) => {
                    let taken = BadLine {
                        line: lines[index],
                        reason: "the email is taken".into(),
                    };
                    if !skip_invalid {
                        return Err(ImportError::BadLines(vec![taken]));
                    }
                    bad.push(taken);
                    ready.remove(index);
                    lines.remove(index);
                }
            }
        }
    }

    /// Every user, in id order, a page at a time.
    pub async fn export(&self) -> Result<Vec<User>, Error> {
        let mut users = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.users_page(after, MAX_PAGE).await?;
            users.extend(page.users);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(users),
            }
        }
    }

    pub async fn backup(&self, target: &Path) -> Result<(), Error> {
        Ok(self.store.backup(target).await?)
    }
}

/// Why an import took nothing.
#[derive(Debug)]
pub enum ImportError {
    BadLines(Vec<BadLine>),
    Failed(Error),
}
