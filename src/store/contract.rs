//! The contract every [`Store`] backend keeps, written once as checks that
//! take any store. A backend runs them all with [`store_contract_tests!`]
//! (the redb backend in its tests; a second backend does the same), so the
//! domain core can rely on the same behaviour from each.
//!
//! Each check starts from an empty store and says what it holds to.

use std::sync::Arc;
use std::time::Duration;

use super::{
    GlobalLogout, Import, LoginAdmission, LoginBudget, LoginClaim, LoginEnd, NewSession, NewUser,
    RefreshOutcome, RevokeSessions, Store, UserChange, UserUpdate, LOGIN_ATTEMPT_LEASE,
};
use crate::clock::Clock;
use crate::keys::{KeySet, SigningAlg, StoredKey};
use crate::session::{RefreshDecision, RotationPolicy, Session, SessionId, TokenId};

const HASH: &str = "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

fn new_user(email: &str) -> NewUser {
    NewUser {
        email: email.into(),
        name: "Ana".into(),
        role_id: 1,
        password_hash: HASH.into(),
        created_at: 1,
        disabled: false,
    }
}

fn policy() -> RotationPolicy {
    RotationPolicy {
        refresh_ttl: Duration::from_secs(600),
        reuse_grace: Duration::ZERO,
    }
}

/// A session of `user_id` started now, and its id.
fn session_of(user_id: u64, clock: &Clock) -> (SessionId, Session) {
    let now = clock.now_millis();
    let session = Session::start(
        user_id,
        now,
        Duration::from_secs(3600),
        Duration::from_secs(600),
        TokenId::generate(),
    );
    (SessionId::generate(now), session)
}

async fn started_session(store: &dyn Store, user_id: u64, clock: &Clock) -> (SessionId, Session) {
    let (id, session) = session_of(user_id, clock);
    let created = store.create_session(id, &session, 10, HASH).await.unwrap();
    assert_eq!(created, NewSession::Created { capped: 0 });
    (id, session)
}

/// Users: unique emails, lookup, pages, updates, deletion, import.
pub async fn users(store: Arc<dyn Store>) {
    let ana = store
        .create_user(new_user("ana@example.com"))
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .create_user(new_user("ana@example.com"))
        .await
        .unwrap()
        .is_none());
    let bo = store
        .create_user(new_user("bo@example.com"))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(ana.id, bo.id);
    assert_eq!(
        store.user_by_email("bo@example.com").await.unwrap(),
        Some(bo.clone())
    );
    assert_eq!(store.user(ana.id).await.unwrap(), Some(ana.clone()));

    let page = store.users_page(None, 1).await.unwrap();
    assert_eq!((page.users.len(), page.total), (1, 2));
    let rest = store.users_page(page.next, 10).await.unwrap();
    assert_eq!(rest.users, vec![bo.clone()]);
    assert_eq!(rest.next, None);

    let change = |email: &str| UserChange {
        email: Some(email.into()),
        name: None,
        role_id: Some(2),
        password_hash: None,
        disabled: None,
        revoke_sessions: RevokeSessions::None,
    };
    assert!(matches!(
        store
            .update_user(ana.id, change("bo@example.com"))
            .await
            .unwrap(),
        UserUpdate::EmailTaken
    ));
    let UserUpdate::Updated(renamed) = store
        .update_user(ana.id, change("cy@example.com"))
        .await
        .unwrap()
    else {
        panic!("not updated");
    };
    assert_eq!(
        (renamed.email.as_str(), renamed.role_id),
        ("cy@example.com", 2)
    );
    assert!(store
        .user_by_email("ana@example.com")
        .await
        .unwrap()
        .is_none());

    let imported = store
        .import_users(vec![new_user("di@example.com"), new_user("bo@example.com")])
        .await
        .unwrap();
    assert_eq!(imported, Import::EmailTaken(1));
    assert!(
        store
            .user_by_email("di@example.com")
            .await
            .unwrap()
            .is_none(),
        "all or nothing"
    );
    assert_eq!(
        store
            .import_users(vec![new_user("di@example.com")])
            .await
            .unwrap(),
        Import::Imported(1)
    );

    let clock = Clock::default();
    let (sid, _) = started_session(store.as_ref(), bo.id, &clock).await;
    assert!(store.delete_user(bo.id).await.unwrap().is_some());
    assert!(
        store.session(sid).await.unwrap().is_none(),
        "sessions go with the user"
    );
    assert!(store.delete_user(bo.id).await.unwrap().is_none());
}

/// Rotation is decided and applied in one step: of two presentations of
/// the same token, exactly one rotates; a reuse revokes the session.
pub async fn rotation(store: Arc<dyn Store>) {
    let clock = Clock::default();
    let ana = store
        .create_user(new_user("ana@example.com"))
        .await
        .unwrap()
        .unwrap();
    let (sid, session) = started_session(store.as_ref(), ana.id, &clock).await;
    let presented = session.current.jti;
    let present = |fresh: TokenId| {
        let (store, clock) = (Arc::clone(&store), clock.clone());
        async move {
            match store
                .refresh_session(sid, ana.id, presented, &clock, policy(), fresh)
                .await
                .unwrap()
            {
                RefreshOutcome::Decided { decision, .. } => decision,
                other => panic!("{other:?}"),
            }
        }
    };
    let (one, two) = tokio::join!(present(TokenId::generate()), present(TokenId::generate()));
    let mut decisions = [one, two];
    decisions.sort_by_key(|d| *d != RefreshDecision::Rotated);
    assert_eq!(
        decisions,
        [RefreshDecision::Rotated, RefreshDecision::Reused]
    );
    let stored = store.session(sid).await.unwrap().unwrap();
    assert!(stored.revoked, "the reuse revoked the family");
    assert!(matches!(
        store
            .refresh_session(
                sid,
                ana.id + 1,
                presented,
                &clock,
                policy(),
                TokenId::generate()
            )
            .await
            .unwrap(),
        RefreshOutcome::UserGone | RefreshOutcome::UnknownSession
    ));
}

/// The session cap, a login racing a password change, revocation, global
/// logout, the sweep.
pub async fn sessions(store: Arc<dyn Store>) {
    let clock = Clock::default();
    let ana = store
        .create_user(new_user("ana@example.com"))
        .await
        .unwrap()
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, session) = session_of(ana.id, &clock);
        let created = store.create_session(id, &session, 2, HASH).await.unwrap();
        ids.push(id);
        if ids.len() == 3 {
            assert_eq!(created, NewSession::Created { capped: 1 });
        }
    }
    assert!(!store
        .session(ids[0])
        .await
        .unwrap()
        .unwrap()
        .is_live(clock.now_millis()));
    let (id, session) = session_of(ana.id, &clock);
    assert_eq!(
        store
            .create_session(id, &session, 10, "another hash")
            .await
            .unwrap(),
        NewSession::UserChanged
    );

    assert!(store
        .revoke_session(ids[1], ana.id, clock.now_millis())
        .await
        .unwrap());
    assert!(!store
        .revoke_session(ids[1], ana.id, clock.now_millis())
        .await
        .unwrap());

    let (id, session) = started_session(store.as_ref(), ana.id, &clock).await;
    let outcome = store
        .logout_everywhere(id, ana.id, session.current.jti, &clock, policy())
        .await
        .unwrap();
    assert_eq!(outcome, GlobalLogout::Done { revoked: 2 });
    let live = store
        .sessions_of_user(ana.id)
        .await
        .unwrap()
        .iter()
        .filter(|(_, s)| s.is_live(clock.now_millis()))
        .count();
    assert_eq!(live, 0);

    let before = store.count_sessions().await.unwrap();
    let far = clock.now_millis() + 10 * 3_600_000;
    assert_eq!(store.sweep_expired_sessions(far, 2).await.unwrap(), 2);
    assert_eq!(store.count_sessions().await.unwrap(), before - 2);
}

/// Every early end of a session is logged once, in order; pruning moves
/// the floor; plain expiry is not logged.
pub async fn revocation_log(store: Arc<dyn Store>) {
    let clock = Clock::default();
    let ana = store
        .create_user(new_user("ana@example.com"))
        .await
        .unwrap()
        .unwrap();
    let start = store.revocations(None, 100).await.unwrap();
    assert!(start.entries.is_empty());
    assert_ne!(start.epoch, 0, "a log names itself");

    let (first, _) = started_session(store.as_ref(), ana.id, &clock).await;
    let (second, _) = started_session(store.as_ref(), ana.id, &clock).await;
    let (third, _) = started_session(store.as_ref(), ana.id, &clock).await;
    let mut changes = store.watch_revocations();
    changes.borrow_and_update();
    store
        .revoke_session(first, ana.id, clock.now_millis())
        .await
        .unwrap();
    assert!(
        changes.has_changed().unwrap(),
        "a commit that logs wakes the feed"
    );
    store.revoke_sessions_of_user(ana.id).await.unwrap();
    store.revoke_sessions_of_user(ana.id).await.unwrap();

    let log = store.revocations(Some(start.last_seq), 100).await.unwrap();
    let sessions: Vec<SessionId> = log.entries.iter().map(|r| r.session_id).collect();
    assert_eq!(sessions[0], first);
    let mut rest = sessions[1..].to_vec();
    rest.sort();
    let mut expected = vec![second, third];
    expected.sort();
    assert_eq!(rest, expected, "each ending once: {sessions:?}");
    assert!(log.entries.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(log.last_seq, log.entries.last().unwrap().seq);
    assert!(log.entries.iter().all(|r| r.user_id == ana.id));

    let (_, _) = started_session(store.as_ref(), ana.id, &clock).await;
    let far = clock.now_millis() + 10 * 3_600_000;
    store.sweep_expired_sessions(far, 100).await.unwrap();
    let after = store.revocations(Some(log.last_seq), 100).await.unwrap();
    assert!(after.entries.is_empty(), "expiry is not logged");

    let pruned = store.prune_revocations(far, 2).await.unwrap();
    assert_eq!(pruned, 2);
    let rest = store.revocations(None, 100).await.unwrap();
    assert_eq!(rest.entries.len(), 1);
    assert_eq!(rest.pruned_through, log.entries[1].seq);
    assert_eq!(rest.epoch, start.epoch);
}

/// The key set is replaced whole, and only by who read the last version.
pub async fn signing_keys(store: Arc<dyn Store>) {
    let empty = store.signing_keys().await.unwrap();
    assert_eq!(empty, KeySet::default());
    let key = StoredKey {
        kid: "hs256-abcdefgh".into(),
        alg: SigningAlg::HS256,
        private_pkcs8: None,
        public_jwk: None,
        created_at: 1,
        signs_from: 1,
        signs_until: None,
        published_until: None,
    };
    let set = KeySet {
        generation: 0,
        keys: vec![key.clone()],
        untyped_tokens_before: 7,
        access_ttl: 3_600_000,
    };
    assert!(store.replace_signing_keys(set.clone()).await.unwrap());
    assert!(
        !store.replace_signing_keys(set.clone()).await.unwrap(),
        "a stale generation loses"
    );
    let stored = store.signing_keys().await.unwrap();
    assert_eq!(
        stored,
        KeySet {
            generation: 1,
            ..set
        }
    );
}

/// What `store copy` relies on: restored records keep their ids, later
/// ids continue after them, pages walk everything in id order.
pub async fn restore(store: Arc<dyn Store>) {
    use super::{Restore, Revocation};
    let clock = Clock::default();
    assert!(store.is_empty().await.unwrap());
    let user = new_user("ana@example.com").into_user(41);
    store
        .restore(Restore::Users(vec![user.clone()]))
        .await
        .unwrap();
    assert!(!store.is_empty().await.unwrap());
    assert_eq!(store.user(41).await.unwrap(), Some(user));
    let next = store
        .create_user(new_user("bo@example.com"))
        .await
        .unwrap()
        .unwrap();
    assert!(next.id > 41, "ids continue after the restored ones");
    // The source's counter (users above 41 were deleted there): never back.
    store.restore(Restore::NextUserId(100)).await.unwrap();
    store.restore(Restore::NextUserId(50)).await.unwrap();
    store
        .restore(Restore::Users(vec![
            new_user("cy@example.com").into_user(60)
        ]))
        .await
        .unwrap();
    assert_eq!(store.next_user_id().await.unwrap(), 100);
    let after_counter = store
        .create_user(new_user("di@example.com"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after_counter.id, 100);
    assert_eq!(store.next_user_id().await.unwrap(), 101);

    let mut sessions: Vec<(SessionId, Session)> = (0..5).map(|_| session_of(41, &clock)).collect();
    sessions.sort_by_key(|(id, _)| *id);
    store
        .restore(Restore::Sessions(sessions.clone()))
        .await
        .unwrap();
    let first = store.sessions_page(None, 3).await.unwrap();
    let rest = store.sessions_page(Some(first[2].0), 10).await.unwrap();
    let walked: Vec<_> = first.into_iter().chain(rest).collect();
    assert_eq!(walked, sessions);
    assert_eq!(
        store.sessions_of_user(41).await.unwrap().len(),
        5,
        "indexed by user"
    );

    let entry = Revocation {
        seq: 7,
        session_id: sessions[0].0,
        user_id: 41,
        ended_at: clock.now_millis(),
    };
    store
        .restore(Restore::Revocations(vec![entry]))
        .await
        .unwrap();
    store
        .revoke_session(sessions[1].0, 41, clock.now_millis())
        .await
        .unwrap();
    let log = store.revocations(None, 10).await.unwrap();
    let seqs: Vec<u64> = log.entries.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        vec![7, 8],
        "the log continues after the restored entries"
    );

    // Cleared (`store copy --replace`): as new, with a log of another identity.
    store
        .replace_signing_keys(KeySet {
            keys: vec![StoredKey {
                kid: "hs256-abcdefgh".into(),
                alg: SigningAlg::HS256,
                private_pkcs8: None,
                public_jwk: None,
                created_at: 1,
                signs_from: 1,
                signs_until: None,
                published_until: None,
            }],
            untyped_tokens_before: 7,
            ..store.signing_keys().await.unwrap()
        })
        .await
        .unwrap();
    store.clear().await.unwrap();
    assert!(store.is_empty().await.unwrap());
    assert_eq!(store.user(41).await.unwrap(), None);
    assert_eq!(store.session(sessions[2].0).await.unwrap(), None);
    let cleared = store.revocations(None, 10).await.unwrap();
    assert!(cleared.entries.is_empty());
    assert_eq!(cleared.last_seq, 0);
    assert_ne!(cleared.epoch, log.epoch, "old cursors must not pass");
    assert_eq!(store.signing_keys().await.unwrap(), KeySet::default());
    let first = store
        .create_user(new_user("ana@example.com"))
        .await
        .unwrap()
        .expect("the email is free again");
    assert_eq!(first.id, 1, "ids start again");
}

/// Fixed windows shared by instances: `limit` events a window, then
/// refused until it ends; a store of one process keeps none.
pub async fn rate_windows(store: Arc<dyn Store>) {
    let t = 5_000_000;
    let (name, other) = ([9; 16], [8; 16]);
    if !store.is_shared() {
        for _ in 0..10 {
            assert_eq!(
                store.take_rate_window(name, 2, 1_000, t).await.unwrap(),
                None
            );
        }
        return;
    }
    let take = |name, now| {
        let store = Arc::clone(&store);
        async move { store.take_rate_window(name, 2, 1_000, now).await.unwrap() }
    };
    assert_eq!(take(name, t).await, None);
    assert_eq!(take(name, t + 10).await, None);
    assert_eq!(take(name, t + 20).await, Some(t + 1_000));
    assert_eq!(
        take(name, t + 999).await,
        Some(t + 1_000),
        "refusals do not count"
    );
    assert_eq!(take(other, t + 999).await, None, "each name its own");
    assert_eq!(take(name, t + 1_000).await, None, "a new window");
    assert_eq!(take(name, t + 1_500).await, None);
    assert_eq!(take(name, t + 1_600).await, Some(t + 2_000));
}

/// Shared login failure budgets: a store of one process keeps none (the
/// in-process throttle does); a shared one counts failures and running
/// attempts exactly, across every caller.
pub async fn login_budgets(store: Arc<dyn Store>) {
    let budget = LoginBudget {
        free: 3,
        base_delay: 1_000,
        max_delay: 4_000,
        forget_after: 60_000,
    };
    let account = LoginClaim {
        name: [1; 16],
        budget,
    };
    let address = LoginClaim {
        name: [2; 16],
        budget: LoginBudget { free: 10, ..budget },
    };
    let both = [account, address];
    let t = 1_000_000;
    if !store.is_shared() {
        for _ in 0..10 {
            assert!(matches!(
                store.begin_login_attempt(&both, t).await.unwrap(),
                LoginAdmission::Admitted { .. }
            ));
        }
        return;
    }
    let begin = |claims: [LoginClaim; 2], now| {
        let store = Arc::clone(&store);
        async move { store.begin_login_attempt(&claims, now).await.unwrap() }
    };
    let admitted = |claims: [LoginClaim; 2], now| {
        let store = Arc::clone(&store);
        async move {
            match store.begin_login_attempt(&claims, now).await.unwrap() {
                LoginAdmission::Admitted { attempt } => attempt,
                other => panic!("not admitted at {now}: {other:?}"),
            }
        }
    };
    let end = |attempt, account_end: LoginEnd, address_end: LoginEnd, now| {
        let store = Arc::clone(&store);
        async move {
            store
                .end_login_attempt(
                    attempt,
                    &[(account, account_end), (address, address_end)],
                    now,
                )
                .await
                .unwrap()
        }
    };
    use LoginEnd::{Cleared, Failed, Released};
    // Three may run at once (the budget), the fourth waits for one.
    let mut running = Vec::new();
    for _ in 0..3 {
        running.push(admitted(both, t).await);
    }
    assert_eq!(begin(both, t).await, LoginAdmission::Busy);
    // Two fail: still within the budget, no block.
    assert_eq!(end(running[0], Failed, Failed, t).await, vec![None, None]);
    assert_eq!(end(running[1], Failed, Failed, t).await, vec![None, None]);
    // The third spends it: a block of base_delay starts.
    assert_eq!(
        end(running[2], Failed, Failed, t).await,
        vec![Some(t + 1_000), None]
    );
    assert_eq!(
        begin(both, t + 999).await,
        LoginAdmission::Blocked { until: t + 1_000 }
    );
    // After the block, one at a time; the next failure doubles it.
    let one = admitted(both, t + 1_000).await;
    assert_eq!(begin(both, t + 1_000).await, LoginAdmission::Busy);
    assert_eq!(
        end(one, Failed, Failed, t + 1_000).await,
        vec![Some(t + 3_000), None]
    );
    // An instance that died mid-check: its place is free after the lease,
    // counted from its own start (attempts since do not extend it).
    let later = t + 3_000;
    let _dead = admitted(both, later).await;
    assert_eq!(begin(both, later + 1).await, LoginAdmission::Busy);
    let now = later + LOGIN_ATTEMPT_LEASE;
    // A success clears the account (and releases the address: its
    // failures stay, four so far).
    let right = admitted(both, now).await;
    end(right, Cleared, Released, now).await;
    // Running attempts count: three at once, with a dead one among them
    // only until its lease ends.
    let other = LoginClaim {
        name: [3; 16],
        budget,
    };
    // Never ended: its instance died.
    let _ghost = admitted([other, address], now).await;
    let a = admitted([other, address], now + 20_000).await;
    let b = admitted([other, address], now + 20_000).await;
    assert_eq!(
        begin([other, address], now + 20_000).await,
        LoginAdmission::Busy
    );
    for attempt in [a, b] {
        end_other(&store, attempt, other, address, now + 21_000).await;
    }
    let after_ghost = now + LOGIN_ATTEMPT_LEASE + 1;
    for _ in 0..3 {
        admitted([other, address], after_ghost).await;
    }
    assert_eq!(
        begin([other, address], after_ghost).await,
        LoginAdmission::Busy
    );
    // The address budget (ten) blocks every account from it; its four
    // failures so far are older than forget_after and no longer count.
    let fresh = LoginClaim {
        name: [4; 16],
        budget: LoginBudget {
            free: 100,
            ..budget
        },
    };
    let until_blocked = {
        let mut failures = 0;
        let mut blocked = None;
        while blocked.is_none() {
            let attempt = admitted([fresh, address], after_ghost + 40_000).await;
            let blocks = store
                .end_login_attempt(
                    attempt,
                    &[(fresh, Released), (address, Failed)],
                    after_ghost + 40_000,
                )
                .await
                .unwrap();
            failures += 1;
            blocked = blocks[1];
        }
        failures
    };
    assert_eq!(until_blocked, 10, "the address's tenth failure blocks it");
    assert!(matches!(
        begin(both, after_ghost + 40_000).await,
        LoginAdmission::Blocked { .. }
    ));
    // Failures older than forget_after no longer count.
    let much_later = after_ghost + 3_600_000;
    for _ in 0..3 {
        admitted(both, much_later).await;
    }
}

async fn end_other(
    store: &Arc<dyn Store>,
    attempt: u128,
    other: LoginClaim,
    address: LoginClaim,
    now: crate::session::Millis,
) {
    store
        .end_login_attempt(
            attempt,
            &[(other, LoginEnd::Released), (address, LoginEnd::Released)],
            now,
        )
        .await
        .unwrap();
}

/// Runs every check of the contract against a backend: `$make` is an
/// async expression giving a fresh, empty `Arc<dyn Store>` (and whatever
/// must live as long, e.g. a temporary folder, as the second element).
#[macro_export]
macro_rules! store_contract_tests {
    ($make:expr) => {
        mod store_contract {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn users() {
                let (store, _keep) = $make.await;
                $crate::store::contract::users(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rotation() {
                let (store, _keep) = $make.await;
                $crate::store::contract::rotation(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sessions() {
                let (store, _keep) = $make.await;
                $crate::store::contract::sessions(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn revocation_log() {
                let (store, _keep) = $make.await;
                $crate::store::contract::revocation_log(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn restore() {
                let (store, _keep) = $make.await;
                $crate::store::contract::restore(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn signing_keys() {
                let (store, _keep) = $make.await;
                $crate::store::contract::signing_keys(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rate_windows() {
                let (store, _keep) = $make.await;
                $crate::store::contract::rate_windows(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn login_budgets() {
                let (store, _keep) = $make.await;
                $crate::store::contract::login_budgets(store).await;
            }
        }
    };
}
