//! The refresh-token state machine: sessions, rotation, reuse detection and
//! the grace window. Pure functions over plain data; storage backends call
//! [`Session::refresh`] inside their write transaction so that the decision
//! and its effect are one atomic step.
//!
//! A session (token family) remembers only what the rules need:
//! - `current`: the one refresh token that may be rotated now;
//! - `previous`: the token rotated most recently and when, for the grace window;
//! - `revoked`, and the absolute end of the session.
//!
//! Refresh tokens are deterministic functions of this record (HS256 over
//! fixed claims), so a grace-window answer can re-create the token that the
//! first rotation issued byte for byte without storing it.

use std::fmt;
use std::time::Duration;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;
pub type UserId = u64;

/// Session ids are time-ordered (milliseconds in the high 64 bits, random
/// low bits) so new sessions land at the right edge of the session table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u128);

/// A random token id (`jti`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenId(pub u128);

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // getrandom fails only when the OS has no entropy source at all; the
    // server cannot issue tokens safely then, so this is a fatal condition.
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    u64::from_le_bytes(bytes)
}

impl SessionId {
    pub fn generate(now: Millis) -> Self {
        SessionId((u128::from(now) << 64) | u128::from(random_u64()))
    }
}

impl TokenId {
    pub fn generate() -> Self {
        TokenId((u128::from(random_u64()) << 64) | u128::from(random_u64()))
    }
}

macro_rules! hex_id {
    ($ty:ident) => {
        impl $ty {
            /// 32 lowercase hex digits.
            pub fn to_hex(self) -> String {
                format!("{:032x}", self.0)
            }

            pub fn from_hex(text: &str) -> Option<Self> {
                let valid = text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                valid.then(|| u128::from_str_radix(text, 16).ok().map($ty)).flatten()
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:032x})", stringify!($ty), self.0)
            }
        }
    };
}
hex_id!(SessionId);
hex_id!(TokenId);

/// The refresh token a session currently accepts. Its JWT is re-created from
/// these fields, so they are exactly the token's `jti`, `iat` and `exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuedRefresh {
    pub jti: TokenId,
    /// `iat`, in seconds.
    pub issued_at: u64,
    /// `exp`, in seconds.
    pub expires_at: u64,
}

/// The refresh token rotated most recently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub jti: TokenId,
    pub rotated_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: UserId,
    pub created_at: Millis,
    /// Absolute end of the session: no token of it is valid past this.
    pub expires_at: Millis,
    pub current: IssuedRefresh,
    pub previous: Option<Rotation>,
    pub revoked: bool,
}

/// Rotation settings.
#[derive(Debug, Clone, Copy)]
pub struct RotationPolicy {
    pub refresh_ttl: Duration,
    /// Zero turns the grace window off.
    pub reuse_grace: Duration,
}

/// What presenting a refresh token to its session leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshDecision {
    /// The current token was presented: the session now holds a new current token.
    Rotated,
    /// The token rotated most recently was presented again within the grace
    /// window: answer with the current token, change nothing.
    GraceReplay,
    /// A token that was already rotated was presented outside the grace
    /// window: the session is now revoked.
    Reused,
    /// The session was revoked before (logout or an earlier reuse).
    Revoked,
    /// The session has passed its absolute lifetime.
    Expired,
}

impl RefreshDecision {
    /// Whether the decision changed the session (so it must be written).
    pub fn changes_session(self) -> bool {
        matches!(self, RefreshDecision::Rotated | RefreshDecision::Reused)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Session {
    /// A new session whose first refresh token has id `jti`.
    pub fn start(
        user_id: UserId,
        now: Millis,
        session_ttl: Duration,
        refresh_ttl: Duration,
        jti: TokenId,
    ) -> Self {
        let expires_at = now.saturating_add(millis(session_ttl));
        Session {
            user_id,
            created_at: now,
            expires_at,
            current: issue(jti, now, refresh_ttl, expires_at),
            previous: None,
            revoked: false,
        }
    }

    /// Whether access tokens of this session are still honoured at `now`.
    pub fn is_live(&self, now: Millis) -> bool {
        !self.revoked && now < self.expires_at
    }

    /// What presenting refresh token `presented` at `now` would decide,
    /// without changing anything. [`Session::refresh`] applies the same
    /// decision; a refresh that would change nothing (revoked, expired, a
    /// replay within the grace window) can be answered from a read.
    pub fn decide(
        &self,
        presented: TokenId,
        now: Millis,
        policy: RotationPolicy,
    ) -> RefreshDecision {
        if self.revoked {
            return RefreshDecision::Revoked;
        }
        if now >= self.expires_at {
            return RefreshDecision::Expired;
        }
        if presented == self.current.jti {
            return RefreshDecision::Rotated;
        }
        match self.previous {
            // Counted from the first rotation; replays do not extend it. A
            // clock behind the rotation (stepped back across a restart) is
            // outside the window: such a presentation counts as reuse.
            Some(previous)
                if previous.jti == presented
                    && now >= previous.rotated_at
                    && now
                        < previous
                            .rotated_at
                            .saturating_add(millis(policy.reuse_grace)) =>
            {
                RefreshDecision::GraceReplay
            }
            // An older ancestor, or the last one outside the window: theft is
            // the safe assumption; the whole family goes.
            _ => RefreshDecision::Reused,
        }
    }

    /// Applies a presented refresh token `presented` at `now`. On
    /// [`RefreshDecision::Rotated`] the new current token gets id `fresh_jti`;
    /// on [`RefreshDecision::Reused`] the session is revoked.
    pub fn refresh(
        &mut self,
        presented: TokenId,
        now: Millis,
        policy: RotationPolicy,
        fresh_jti: TokenId,
    ) -> RefreshDecision {
        let decision = self.decide(presented, now, policy);
        match decision {
            RefreshDecision::Rotated => {
                self.previous = Some(Rotation {
                    jti: presented,
                    rotated_at: now,
                });
                self.current = issue(fresh_jti, now, policy.refresh_ttl, self.expires_at);
            }
            RefreshDecision::Reused => self.revoked = true,
            RefreshDecision::GraceReplay | RefreshDecision::Revoked | RefreshDecision::Expired => {}
        }
        decision
    }

    /// Whether `presented` may log out every session of the user: only a
    /// token that refresh would accept now (the current one, or the one
    /// rotated last, within the grace window). A stale token is treated as
    /// refresh treats it: its own session is revoked as a reuse, and the
    /// decision says so. `Ok` when the global logout may go ahead.
    pub fn authorise_global_logout(
        &mut self,
        presented: TokenId,
        now: Millis,
        policy: RotationPolicy,
    ) -> Result<(), RefreshDecision> {
        match self.decide(presented, now, policy) {
            RefreshDecision::Rotated | RefreshDecision::GraceReplay => Ok(()),
            RefreshDecision::Reused => {
                self.revoked = true;
                Err(RefreshDecision::Reused)
            }
            refused => Err(refused),
        }
    }
}

/// A refresh token valid for `ttl` from `now`, never past the session's end.
fn issue(jti: TokenId, now: Millis, ttl: Duration, session_end: Millis) -> IssuedRefresh {
    let expires = now.saturating_add(millis(ttl)).min(session_end);
    IssuedRefresh {
        jti,
        issued_at: now / 1000,
        expires_at: expires / 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const T0: Millis = 1_700_000_000_000;

    fn policy(grace_secs: u64) -> RotationPolicy {
        RotationPolicy {
            refresh_ttl: Duration::from_secs(7 * 86_400),
            reuse_grace: Duration::from_secs(grace_secs),
        }
    }

    fn fresh() -> Session {
        Session::start(
            7,
            T0,
            Duration::from_secs(30 * 86_400),
            Duration::from_secs(7 * 86_400),
            TokenId(1),
        )
    }

    #[test]
    fn rotation_moves_current_to_previous() {
        let mut s = fresh();
        assert_eq!(
            s.refresh(TokenId(1), T0 + 5, policy(10), TokenId(2)),
            RefreshDecision::Rotated
        );
        assert_eq!(s.current.jti, TokenId(2));
        assert_eq!(
            s.previous,
            Some(Rotation {
                jti: TokenId(1),
                rotated_at: T0 + 5
            })
        );
        assert!(!s.revoked);
    }

    #[test]
    fn a_rotated_token_within_grace_replays_without_change() {
        let mut s = fresh();
        s.refresh(TokenId(1), T0, policy(10), TokenId(2));
        let before = s.clone();
        assert_eq!(
            s.refresh(TokenId(1), T0 + 9_999, policy(10), TokenId(3)),
            RefreshDecision::GraceReplay
        );
        assert_eq!(s, before, "a replay must not rotate or restart the window");
    }

    #[test]
    fn grace_window_is_counted_from_the_first_rotation() {
        let mut s = fresh();
        s.refresh(TokenId(1), T0, policy(10), TokenId(2));
        assert_eq!(
            s.refresh(TokenId(1), T0 + 6_000, policy(10), TokenId(3)),
            RefreshDecision::GraceReplay
        );
        assert_eq!(
            s.refresh(TokenId(1), T0 + 10_000, policy(10), TokenId(3)),
            RefreshDecision::Reused
        );
        assert!(s.revoked);
        assert_eq!(
            s.refresh(TokenId(2), T0 + 10_001, policy(10), TokenId(3)),
            RefreshDecision::Revoked
        );
    }

    #[test]
    fn a_clock_behind_the_rotation_does_not_reopen_the_window() {
        let mut s = fresh();
        s.refresh(TokenId(1), T0 + 60_000, policy(10), TokenId(2));
        assert_eq!(
            s.decide(TokenId(1), T0, policy(10)),
            RefreshDecision::Reused
        );
    }

    #[test]
    fn older_ancestors_are_always_reuse() {
        let mut s = fresh();
        s.refresh(TokenId(1), T0, policy(10), TokenId(2));
        s.refresh(TokenId(2), T0 + 1, policy(10), TokenId(3));
        assert_eq!(
            s.refresh(TokenId(1), T0 + 2, policy(10), TokenId(4)),
            RefreshDecision::Reused
        );
        assert_eq!(
            s.refresh(TokenId(3), T0 + 3, policy(10), TokenId(4)),
            RefreshDecision::Revoked
        );
    }

    #[test]
    fn zero_grace_means_any_second_presentation_is_reuse() {
        let mut s = fresh();
        s.refresh(TokenId(1), T0, policy(0), TokenId(2));
        assert_eq!(
            s.refresh(TokenId(1), T0, policy(0), TokenId(3)),
            RefreshDecision::Reused
        );
    }

    #[test]
    fn rotation_never_extends_past_the_session() {
        let mut s = Session::start(7, T0, 2 * HOUR, HOUR, TokenId(1));
        assert_eq!(s.current.expires_at, (T0 + 3_600_000) / 1000);
        s.refresh(TokenId(1), T0 + 5_400_000, policy(0), TokenId(2));
        assert_eq!(
            s.current.expires_at,
            s.expires_at / 1000,
            "capped at the session's end"
        );
        assert_eq!(
            s.refresh(TokenId(2), s.expires_at, policy(0), TokenId(3)),
            RefreshDecision::Expired
        );
        assert!(!s.is_live(s.expires_at));
    }

    #[test]
    fn decide_predicts_refresh_without_changing_anything() {
        let mut s = fresh();
        s.refresh(TokenId(1), T0, policy(10), TokenId(2));
        let before = s.clone();
        assert_eq!(
            s.decide(TokenId(2), T0 + 1, policy(10)),
            RefreshDecision::Rotated
        );
        assert_eq!(
            s.decide(TokenId(1), T0 + 1, policy(10)),
            RefreshDecision::GraceReplay
        );
        assert_eq!(
            s.decide(TokenId(1), T0 + 10_000, policy(10)),
            RefreshDecision::Reused
        );
        assert_eq!(
            s.decide(TokenId(2), s.expires_at, policy(10)),
            RefreshDecision::Expired
        );
        assert_eq!(s, before);
    }

    #[test]
    fn only_a_token_refresh_would_accept_may_log_out_everywhere() {
        let mut s = fresh();
        s.refresh(TokenId(1), T0, policy(10), TokenId(2));
        s.refresh(TokenId(2), T0 + 1, policy(10), TokenId(3));
        assert_eq!(
            s.authorise_global_logout(TokenId(3), T0 + 2, policy(10)),
            Ok(())
        );
        assert_eq!(
            s.authorise_global_logout(TokenId(2), T0 + 2, policy(10)),
            Ok(()),
            "within grace"
        );
        assert!(!s.revoked);
        assert_eq!(
            s.authorise_global_logout(TokenId(1), T0 + 2, policy(10)),
            Err(RefreshDecision::Reused),
            "an old token"
        );
        assert!(s.revoked, "its own session goes, as on a reuse");
        assert_eq!(
            s.authorise_global_logout(TokenId(3), T0 + 3, policy(10)),
            Err(RefreshDecision::Revoked)
        );
    }

    #[test]
    fn ids_round_trip_through_hex() {
        let sid = SessionId::generate(T0);
        assert_eq!(SessionId::from_hex(&sid.to_hex()), Some(sid));
        assert_eq!((sid.0 >> 64) as u64, T0);
        assert!(SessionId::generate(T0 + 1) > sid, "time-ordered");
        assert_eq!(TokenId::from_hex("xyz"), None);
        assert_eq!(
            TokenId::from_hex(&"A".repeat(32)),
            None,
            "only the canonical lowercase form"
        );
    }
}
