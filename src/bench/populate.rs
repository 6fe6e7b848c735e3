//! `latchkey bench --populate`: fills a database with bench users and
//! sessions through the store's bulk-load path (the server must be stopped).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use super::BoxError;
use crate::cli::{BenchArgs, CommonArgs};
use crate::clock::system_millis;
use crate::config::Argon2Costs;
use crate::passwords::{Password, Passwords};
use crate::session::{IssuedRefresh, Session, SessionId, TokenId};
use crate::store::redb::RedbStore;
use crate::store::NewUser;
use crate::tokens::TokenKeys;

/// `bench --populate`: creates `--users` users (password `--password`, one
/// shared hash so this takes seconds, not hours) and `--sessions` sessions
/// spread over them, created over the last 20 days in time order.
pub async fn populate(common: &CommonArgs, args: &BenchArgs) -> Result<(), BoxError> {
    const USERS_PER_TRANSACTION: u64 = 20_000;
    if common.database.is_some() {
        return Err(
            "--populate fills a redb file (--data); for PostgreSQL, populate a file and \
                    use `latchkey store copy`, or `user import`"
                .into(),
        );
    }
    let keys = sampling_keys(common, args)?;
    crate::credentials::check_new_password(&args.password)?;
    let (store, _) = RedbStore::open_at(&crate::config::store_location(common)).await?;
    let passwords = Passwords::new(Argon2Costs::from_args(common)?, 1, 1)?;
    let password_hash = passwords.hash(Password::new(args.password.clone())).await?;

    let mut plan = SessionPlan {
        now: system_millis(),
        users: args.users,
        sessions: args.sessions,
        sample_every: args
            .sessions
            .checked_div(args.sample_tokens)
            .map_or(u64::MAX, |every| every.max(1)),
        keys,
        next_index: 0,
        sampled: Vec::new(),
    };
    let started = Instant::now();
    let mut first = 0u64;
    while first < args.users {
        let last = (first + USERS_PER_TRANSACTION).min(args.users);
        let batch: Vec<NewUser> = (first..last)
            .map(|n| NewUser {
                email: args.email_format.replace("{}", &(n + 1).to_string()),
                name: format!("Bench User {}", n + 1),
                role_id: args.role,
                password_hash: password_hash.clone(),
                created_at: plan.now,
                disabled: false,
            })
            .collect();
        let ids = store.bulk_create_users(batch).await?;
        let mut batch_sessions = Vec::new();
        for (offset, user_id) in ids.into_iter().enumerate() {
            plan.sessions_of(first + offset as u64, user_id, &mut batch_sessions)?;
        }
        store.bulk_create_sessions(batch_sessions).await?;
        first = last;
        eprint!(
            "\rpopulated {first}/{} users, {}/{} sessions",
            args.users, plan.next_index, args.sessions
        );
    }
    eprintln!();
    if let (Some(path), Some(_)) = (&args.tokens, &plan.keys) {
        write_tokens(path, &plan.sampled)?;
        println!(
            "wrote {} refresh tokens to {}",
            plan.sampled.len(),
            path.display()
        );
    }
    println!(
        "populated {} with {} users and {} sessions in {:.1} s",
        common.data.display(),
        args.users,
        plan.next_index,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The server's keys, when refresh tokens of sampled sessions are wanted.
fn sampling_keys(common: &CommonArgs, args: &BenchArgs) -> Result<Option<TokenKeys>, BoxError> {
    if args.sample_tokens == 0 {
        return Ok(None);
    }
    args.tokens
        .as_ref()
        .ok_or("--sample-tokens needs --tokens FILE")?;
    let secret = crate::secrets::resolve_secret(&common.data, &args.secret)?;
    Ok(Some(TokenKeys::new(&secret)))
}

/// How the sessions are spread over users and time, and which are sampled.
struct SessionPlan {
    now: u64,
    users: u64,
    sessions: u64,
    sample_every: u64,
    keys: Option<TokenKeys>,
    /// Sessions planned so far; also the position of the next one in time.
    next_index: u64,
    sampled: Vec<String>,
}

impl SessionPlan {
    const CREATED_SPREAD_MS: u64 = 20 * 86_400_000;
    const SESSION_TTL: Duration = Duration::from_secs(30 * 86_400);
    const REFRESH_TTL: Duration = Duration::from_secs(7 * 86_400);

    /// Adds the sessions of user number `n` (0-based), id `user_id`, to `out`.
    fn sessions_of(
        &mut self,
        n: u64,
        user_id: u64,
        out: &mut Vec<(SessionId, Session)>,
    ) -> Result<(), BoxError> {
        // Sessions per user: an even share, the remainder to the first users.
        let count = self.sessions / self.users + u64::from(n < self.sessions % self.users);
        for _ in 0..count {
            let created = self.now - Self::CREATED_SPREAD_MS
                + self.next_index * Self::CREATED_SPREAD_MS / self.sessions.max(1);
            let id = SessionId::generate(created);
            let mut session = Session::start(
                user_id,
                created,
                Self::SESSION_TTL,
                Self::REFRESH_TTL,
                TokenId::generate(),
            );
            // As if rotated recently, so sampled tokens are valid now.
            session.current = IssuedRefresh {
                jti: session.current.jti,
                issued_at: self.now / 1000,
                expires_at: (self.now + Self::REFRESH_TTL.as_millis() as u64)
                    .min(session.expires_at)
                    / 1000,
            };
            if self.next_index.is_multiple_of(self.sample_every) {
                if let Some(keys) = &self.keys {
                    self.sampled
                        .push(keys.refresh_token(user_id, id, &session.current)?);
                }
            }
            out.push((id, session));
            self.next_index += 1;
        }
        Ok(())
    }
}

fn write_tokens(path: &Path, tokens: &[String]) -> Result<(), BoxError> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for token in tokens {
        writeln!(file, "{token}")?;
    }
    file.flush()?;
    Ok(())
}
