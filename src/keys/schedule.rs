//! Decisions about the key set, as pure functions of the stored set, the
//! configuration and the time: what a starting server changes
//! ([`plan_start`]), what `keys rotate` changes ([`plan_rotation`]), and
//! what `keys list` shows ([`key_infos`]). The manager applies them to the
//! store with a compare-and-swap on the set's generation.

use serde::Serialize;

use super::material::{generate_pkcs8, KeyError, PrivateKey};
use super::{secret_kid, KeySet, KeyState, SigningAlg, SigningConfig, StoredKey};
use crate::session::Millis;

/// How far a stored key's creation may be ahead of this machine's clock
/// (another instance's clock a little ahead) before a start is refused.
const CLOCK_SLACK_MILLIS: Millis = 60_000;

/// Most keys kept at once (each rotation adds one for an access lifetime).
pub const MAX_KEYS: usize = 16;

/// How long verifiers may cache the JWKS (`Cache-Control: max-age`), in
/// seconds. A rotated key is published this long before it signs.
pub const JWKS_MAX_AGE_SECS: u64 = 300;

/// The key a starting server must sign access tokens with.
enum Wanted<'a> {
    /// The HS256 secret with this kid.
    Secret(String),
    /// The key from `--signing-key-file`.
    File(&'a super::KeyFile),
    /// A key latchkey generates and keeps, of this algorithm.
    Generated(SigningAlg),
}

/// A key generated now, signing from `signs_from`.
pub fn generate_key(
    alg: SigningAlg,
    now: Millis,
    signs_from: Millis,
) -> Result<StoredKey, KeyError> {
    let pkcs8 = generate_pkcs8(alg)?;
    let public_jwk = PrivateKey::from_pkcs8(alg, &pkcs8)?
        .public_jwk()
        .ok_or_else(|| KeyError("a generated key has no public half".into()))?;
    Ok(StoredKey {
        kid: public_jwk.kid.clone(),
        alg,
        private_pkcs8: Some(pkcs8),
        public_jwk: Some(public_jwk),
        created_at: now,
        signs_from,
        signs_until: None,
        published_until: None,
    })
}

/// Ends the signing window of `key` at `at`.
fn retire(key: &mut StoredKey, at: Millis, access_ttl: Millis) {
    key.signs_until = Some(at);
    key.published_until = Some(at.saturating_add(access_ttl));
}

/// What a starting server changes in the stored set, or `None` if nothing.
///
/// The key that signs now must be the configured one: the secret under
/// HS256, the key file's key, or a generated key of the configured
/// algorithm. Otherwise the configured one starts signing now, the old one
/// retires (it keeps verifying until its access tokens have expired), and
/// keys that were published ahead but never signed are dropped. Expired
/// keys are dropped. `has_sessions` is read only for a set never written:
/// sessions from before typed tokens mean untyped tokens may be in use.
pub fn plan_start(
    config: &SigningConfig,
    access_ttl: Millis,
    set: &KeySet,
    now: Millis,
    has_sessions: bool,
) -> Result<Option<KeySet>, KeyError> {
    // A clock stepped back behind the set would make the signing key look
    // like one that never signed (and drop it): refuse instead.
    if let Some(key) = set
        .keys
        .iter()
        .find(|k| k.created_at > now + CLOCK_SLACK_MILLIS)
    {
        return Err(KeyError(format!(
            "signing key {} was created at {} (Unix ms), after this machine's time {now}: \
             is the clock behind? Fix it before starting",
            key.kid, key.created_at
        )));
    }
    let mut next = set.clone();
    next.keys.retain(|k| k.state(now) != KeyState::Expired);
    if set.generation == 0 {
        next.untyped_tokens_before = if has_sessions { now } else { 0 };
        // Previous secrets named at the first start may have signed access
        // tokens before the set existed: they get the same one access
        // lifetime as a secret retired now (and none after it).
        for secret in &config.previous_secrets {
            let kid = secret_kid(secret);
            if kid != secret_kid(&config.secret) && next.keys.iter().all(|k| k.kid != kid) {
                next.keys.push(StoredKey {
                    kid,
                    alg: SigningAlg::HS256,
                    private_pkcs8: None,
                    public_jwk: None,
                    created_at: now,
                    signs_from: 0,
                    signs_until: Some(now),
                    published_until: Some(now.saturating_add(access_ttl)),
                });
            }
        }
    }
    // Tokens signed before a change of the lifetime may live as long as the
    // longer of the two: keys retired now, or scheduled to, stay that long.
    let retire_ttl = access_ttl.max(set.access_ttl);
    next.access_ttl = access_ttl;
    for key in &mut next.keys {
        if let Some(until) = key.signs_until.filter(|until| *until > now) {
            let wanted = until.saturating_add(retire_ttl);
            key.published_until = Some(key.published_until.map_or(wanted, |p| p.max(wanted)));
        }
    }
    let wanted = match (config.alg, &config.key_file) {
        (SigningAlg::HS256, _) => Wanted::Secret(secret_kid(&config.secret)),
        (_, Some(file)) => Wanted::File(file),
        (alg, None) => Wanted::Generated(alg),
    };
    let current = next
        .keys
        .iter()
        .position(|k| k.state(now) == KeyState::Current);
    let fine = current.is_some_and(|i| {
        let key = &next.keys[i];
        match &wanted {
            Wanted::Secret(kid) => key.kid == *kid,
            Wanted::File(file) => key.kid == file.kid,
            Wanted::Generated(alg) => key.alg == *alg && key.private_pkcs8.is_some(),
        }
    });
    if !fine {
        let fresh = match wanted {
            Wanted::Secret(kid) => StoredKey {
                kid,
                alg: SigningAlg::HS256,
                private_pkcs8: None,
                public_jwk: None,
                created_at: now,
                signs_from: now,
                signs_until: None,
                published_until: None,
            },
            Wanted::File(file) => StoredKey {
                kid: file.kid.clone(),
                alg: file.alg,
                private_pkcs8: None,
                public_jwk: Some(file.public_jwk.clone()),
                created_at: now,
                signs_from: now,
                signs_until: None,
                published_until: None,
            },
            Wanted::Generated(alg) => generate_key(alg, now, now)?,
        };
        if let Some(i) = current {
            retire(&mut next.keys[i], now, retire_ttl);
        }
        next.keys
            .retain(|k| k.state(now) != KeyState::Next && k.kid != fresh.kid);
        next.keys.push(fresh);
    }
    Ok((next != *set).then_some(next))
}

/// Why `keys rotate` cannot rotate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationRefused(pub String);

/// What `keys rotate` changes: a new key of the current key's algorithm,
/// published now and signing from `now + JWKS_MAX_AGE_SECS` (or now, with
/// `switch_now`). With a key already published ahead, `switch_now` makes
/// it sign now; without, the rotation is refused. Returns the new set and
/// the kid of the key that signs next.
pub fn plan_rotation(
    set: &KeySet,
    now: Millis,
    switch_now: bool,
) -> Result<Result<(KeySet, String), RotationRefused>, KeyError> {
    let refuse = |text: String| Ok(Err(RotationRefused(text)));
    let mut next = set.clone();
    next.keys.retain(|k| k.state(now) != KeyState::Expired);
    let Some(current) = next
        .keys
        .iter()
        .position(|k| k.state(now) == KeyState::Current)
    else {
        return refuse(
            "no key signs yet: start the server once with --signing-alg EdDSA, ES256 or RS256"
                .into(),
        );
    };
    let alg = next.keys[current].alg;
    if alg == SigningAlg::HS256 {
        return refuse(
            "access tokens are signed with the HS256 secret, which is rotated with --secret and \
             --previous-secret (see the README); keys rotate rotates EdDSA, ES256 and RS256 keys"
                .into(),
        );
    }
    if next.keys[current].private_pkcs8.is_none() {
        return refuse(
            "the signing key comes from --signing-key-file: to rotate it, start the server with \
             the new file (the old key keeps verifying until its tokens have expired)"
                .into(),
        );
    }
    let ttl = set.access_ttl;
    if next.keys.len() >= MAX_KEYS {
        return refuse(format!(
            "{} keys are kept already (at most {MAX_KEYS}); retired ones leave one access-token lifetime after they stop signing",
            next.keys.len()
        ));
    }
    if let Some(pending) = next
        .keys
        .iter()
        .position(|k| k.state(now) == KeyState::Next)
    {
        if !switch_now {
            let key = &next.keys[pending];
            return refuse(format!(
                "key {} is already published and signs from {} (Unix ms); `keys rotate --now` makes it sign now",
                key.kid, key.signs_from
            ));
        }
        next.keys[pending].signs_from = now;
        retire(&mut next.keys[current], now, ttl);
        let kid = next.keys[pending].kid.clone();
        return Ok(Ok((next, kid)));
    }
    let signs_from = if switch_now {
        now
    } else {
        now + JWKS_MAX_AGE_SECS * 1000
    };
    let fresh = generate_key(alg, now, signs_from)?;
    retire(&mut next.keys[current], signs_from, ttl);
    let kid = fresh.kid.clone();
    next.keys.push(fresh);
    Ok(Ok((next, kid)))
}

/// One key as `keys list` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub kid: String,
    pub alg: &'static str,
    pub state: KeyState,
    /// Whether it is in the JWKS (HS256 secrets never are).
    pub published: bool,
    pub created_at: Millis,
    pub signs_from: Millis,
    pub signs_until: Option<Millis>,
    /// When it leaves the JWKS and stops verifying access tokens.
    pub published_until: Option<Millis>,
}

/// The set as `keys list` shows it: newest first, expired keys left out.
pub fn key_infos(set: &KeySet, now: Millis) -> Vec<KeyInfo> {
    let mut keys: Vec<&StoredKey> = set
        .keys
        .iter()
        .filter(|k| k.state(now) != KeyState::Expired)
        .collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.signs_from));
    keys.into_iter()
        .map(|k| KeyInfo {
            kid: k.kid.clone(),
            alg: k.alg.as_str(),
            state: k.state(now),
            published: k.public_jwk.is_some(),
            created_at: k.created_at,
            signs_from: k.signs_from,
            signs_until: k.signs_until,
            published_until: k.published_until,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Secret;

    const TTL: Millis = 3_600_000;

    fn config(alg: SigningAlg) -> SigningConfig {
        SigningConfig {
            alg,
            ..SigningConfig::hs256(Secret::new(vec![5; 32]).unwrap())
        }
    }

    fn started(config: &SigningConfig, set: &KeySet, now: Millis) -> KeySet {
        let mut next = plan_start(config, TTL, set, now, false).unwrap().unwrap();
        next.generation += 1;
        next
    }

    fn current(set: &KeySet, now: Millis) -> &StoredKey {
        let mut current = set
            .keys
            .iter()
            .filter(|k| k.state(now) == KeyState::Current);
        let key = current.next().expect("a current key");
        assert!(current.next().is_none(), "one current key");
        key
    }

    #[test]
    fn a_first_start_records_the_key_and_a_second_changes_nothing() {
        let config = config(SigningAlg::EdDSA);
        let set = started(&config, &KeySet::default(), 1000);
        assert_eq!(set.untyped_tokens_before, 0);
        assert_eq!(current(&set, 1000).alg, SigningAlg::EdDSA);
        assert!(plan_start(&config, TTL, &set, 5000, false)
            .unwrap()
            .is_none());
        let legacy = plan_start(&config, TTL, &KeySet::default(), 7000, true)
            .unwrap()
            .unwrap();
        assert_eq!(legacy.untyped_tokens_before, 7000);
    }

    #[test]
    fn switching_algorithms_retires_the_old_key_for_one_access_lifetime() {
        let hs = started(&config(SigningAlg::HS256), &KeySet::default(), 1000);
        let old = current(&hs, 1000).clone();
        assert_eq!(old.alg, SigningAlg::HS256);
        let ed = started(&config(SigningAlg::ES256), &hs, 2000);
        assert_eq!(current(&ed, 2000).alg, SigningAlg::ES256);
        let retired = ed.keys.iter().find(|k| k.kid == old.kid).unwrap();
        assert_eq!(retired.state(2000), KeyState::Previous);
        assert_eq!(retired.published_until, Some(2000 + TTL));
        assert_eq!(retired.state(2000 + TTL), KeyState::Expired);
        // Past that, a restart drops it.
        let later = started(&config(SigningAlg::ES256), &ed, 2000 + TTL);
        assert!(later.keys.iter().all(|k| k.kid != old.kid));
    }

    #[test]
    fn rotation_publishes_first_then_switches_and_drops_after_the_lifetime() {
        let set = started(&config(SigningAlg::EdDSA), &KeySet::default(), 1000);
        let first = current(&set, 1000).kid.clone();
        let (rotated, new_kid) = plan_rotation(&set, 2000, false).unwrap().unwrap();
        let switch = 2000 + JWKS_MAX_AGE_SECS * 1000;
        assert_eq!(current(&rotated, switch - 1).kid, first);
        assert_eq!(current(&rotated, switch).kid, new_kid);
        let new = rotated.keys.iter().find(|k| k.kid == new_kid).unwrap();
        assert_eq!(new.state(2000), KeyState::Next);
        // A second rotation while one is pending is refused; --now promotes it.
        assert!(plan_rotation(&rotated, 3000, false).unwrap().is_err());
        let (promoted, kid) = plan_rotation(&rotated, 3000, true).unwrap().unwrap();
        assert_eq!(kid, new_kid);
        assert_eq!(current(&promoted, 3000).kid, new_kid);
        let old = promoted.keys.iter().find(|k| k.kid == first).unwrap();
        assert_eq!(old.published_until, Some(3000 + TTL));
        // A restart with the same configuration keeps the rotated key.
        assert!(
            plan_start(&config(SigningAlg::EdDSA), TTL, &promoted, 4000, false)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_clock_behind_the_set_is_refused_and_a_longer_lifetime_extends_retirements() {
        let start = 10_000_000;
        let set = started(&config(SigningAlg::EdDSA), &KeySet::default(), start);
        assert!(plan_start(&config(SigningAlg::EdDSA), TTL, &set, 1000, false).is_err());
        let (mut rotated, _) = plan_rotation(&set, start + 1000, false).unwrap().unwrap();
        rotated.generation += 1;
        let longer = plan_start(
            &config(SigningAlg::EdDSA),
            2 * TTL,
            &rotated,
            start + 2000,
            false,
        )
        .unwrap()
        .unwrap();
        let old = longer
            .keys
            .iter()
            .find(|k| k.signs_until.is_some())
            .unwrap();
        assert_eq!(
            old.published_until,
            Some(old.signs_until.unwrap() + 2 * TTL)
        );
    }

    #[test]
    fn hs256_and_key_files_are_not_rotated_by_keys_rotate() {
        let hs = started(&config(SigningAlg::HS256), &KeySet::default(), 1000);
        assert!(plan_rotation(&hs, 2000, true).unwrap().is_err());
        assert!(plan_rotation(&KeySet::default(), 2000, true)
            .unwrap()
            .is_err());

        let der = generate_pkcs8(SigningAlg::ES256).unwrap();
        let pem =
            pem_rfc7468::encode_string("PRIVATE KEY", pem_rfc7468::LineEnding::LF, &der).unwrap();
        let file = super::super::KeyFile::parse(pem.as_bytes()).unwrap();
        let with_file = SigningConfig {
            key_file: Some(file.clone()),
            ..config(SigningAlg::ES256)
        };
        let set = started(&with_file, &hs, 2000);
        assert_eq!(current(&set, 2000).kid, file.kid);
        assert!(current(&set, 2000).private_pkcs8.is_none());
        assert!(plan_rotation(&set, 3000, true).unwrap().is_err());
    }
}
