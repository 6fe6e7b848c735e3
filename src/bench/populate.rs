//! `latchkey bench --populate`: fills a database with bench users and
//! sessions through the store's bulk-load path (the server must be stopped).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::BoxError;
use crate::cli::{BenchArgs, CommonArgs};
use crate::clock::system_millis;
use crate::config::Argon2Costs;
use crate::passwords::{Password, Passwords};
use crate::session::{IssuedRefresh, Session, SessionId, TokenId};
use crate::store::redb::RedbStore;
use crate::store::space::SpaceGuard;
use crate::store::NewUser;
use crate::tokens::TokenKeys;

/// `bench --populate`: creates `--users` users (password `--password`, one
/// shared hash so this takes seconds, not hours) and `--sessions` sessions
/// spread over them, created over the last 20 days in time order.
pub async fn populate(common: &CommonArgs, args: &BenchArgs) -> Result<(), BoxError> {
    const USERS_PER_TRANSACTION: u64 = 20_000;
    const CREATED_SPREAD_MS: u64 = 20 * 86_400_000;
    let session_ttl = Duration::from_secs(30 * 86_400);
    let refresh_ttl = Duration::from_secs(7 * 86_400);

    let keys = if args.sample_tokens > 0 {
        args.tokens
            .as_ref()
            .ok_or("--sample-tokens needs --tokens FILE")?;
        Some(TokenKeys::new(&crate::secrets::resolve_secret(
            &common.data,
            &args.secret,
        )?))
    } else {
        None
    };
    crate::credentials::check_new_password(&args.password)?;
    crate::store::folder::ensure_data_folder(&common.data)?;
    let path = common.data.clone();
    let cache = common.cache_mb.saturating_mul(1024 * 1024);
    let space = Arc::new(SpaceGuard::new(
        &common.data,
        common.min_free_mb.saturating_mul(1024 * 1024),
    ));
    let store = tokio::task::spawn_blocking(move || RedbStore::open(&path, cache, space)).await??;
    let passwords = Passwords::new(Argon2Costs::from_args(common)?, 1, 1)?;
    let password_hash = passwords.hash(Password::new(args.password.clone())).await?;

    let now = system_millis();
    let (users, sessions) = (args.users, args.sessions);
    let sample_every = sessions
        .checked_div(args.sample_tokens)
        .map_or(u64::MAX, |every| every.max(1));
    let mut sampled = Vec::new();
    let started = Instant::now();
    let mut session_index = 0u64;
    let mut first = 0u64;
    while first < users {
        let last = (first + USERS_PER_TRANSACTION).min(users);
        let batch: Vec<NewUser> = (first..last)
            .map(|n| NewUser {
                email: args.email_format.replace("{}", &(n + 1).to_string()),
                name: format!("Bench User {}", n + 1),
                role_id: args.role,
                password_hash: password_hash.clone(),
                created_at: now,
            })
            .collect();
        let ids = store.bulk_create_users(batch).await?;
        let mut batch_sessions = Vec::new();
        for (offset, user_id) in ids.into_iter().enumerate() {
            let n = first + offset as u64;
            // Sessions per user: an even share, the remainder to the first users.
            let count = sessions / users + u64::from(n < sessions % users);
            for _ in 0..count {
                let created =
                    now - CREATED_SPREAD_MS + session_index * CREATED_SPREAD_MS / sessions.max(1);
                let id = SessionId::generate(created);
                let mut session = Session::start(
                    user_id,
                    created,
                    session_ttl,
                    refresh_ttl,
                    TokenId::generate(),
                );
                // As if rotated recently, so sampled tokens are valid now.
                session.current = IssuedRefresh {
                    jti: session.current.jti,
                    issued_at: now / 1000,
                    expires_at: (now + refresh_ttl.as_millis() as u64).min(session.expires_at)
                        / 1000,
                };
                if session_index.is_multiple_of(sample_every) {
                    if let Some(keys) = &keys {
                        sampled.push(keys.refresh_token(user_id, id, &session.current)?);
                    }
                }
                batch_sessions.push((id, session));
                session_index += 1;
            }
        }
        store.bulk_create_sessions(batch_sessions).await?;
        first = last;
        eprint!("\rpopulated {first}/{users} users, {session_index}/{sessions} sessions");
    }
    eprintln!();
    if let Some(path) = &args.tokens {
        if keys.is_some() {
            write_tokens(path, &sampled)?;
            println!(
                "wrote {} refresh tokens to {}",
                sampled.len(),
                path.display()
            );
        }
    }
    println!(
        "populated {} with {users} users and {session_index} sessions in {:.1} s",
        common.data.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn write_tokens(path: &Path, tokens: &[String]) -> Result<(), BoxError> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for token in tokens {
        writeln!(file, "{token}")?;
    }
    file.flush()?;
    Ok(())
}
