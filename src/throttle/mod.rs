//! Login throttling: a failure budget and exponential back-off per account
//! and per client address.
//!
//! Each key (a normalised email, or a client address: IPv4 in full, IPv6 by
//! its `/ipv6_prefix` network) has a budget of `free_failures` password
//! checks that fail. Attempts still running count against it, so a burst of
//! parallel guesses gets no more checks than a sequence would: an attempt
//! that would overdraw the budget waits until a running one ends (a success
//! refunds its slot, so honest parallel logins only wait), and is refused
//! with 429 once the running ones have failed. Once the budget is spent the
//! key is blocked for `base_delay`, and for twice as long after every
//! further failure, up to `max_delay`; between blocks one check at a time
//! is allowed. A blocked key is answered 429 before any password is hashed.
//! Nothing locks an account for good: blocks end, and failures older than
//! `forget_after` no longer count. A successful login clears its account's
//! failures (not its address's: one good password must not buy an attacker
//! more guesses elsewhere).
//!
//! Only a failed password check leaves a record behind (for an unknown email
//! as for a known one: both are checked, the unknown against a dummy hash).
//! Attempts refused with 429 or 503, and successful ones, leave nothing once
//! they end, so cheap requests cannot fill the tables. Each table holds at
//! most `capacity` records; when it is full, a new failure replaces the
//! record that protects least: a key that has not spent its budget (the one
//! whose last failure is oldest) if there is one, else a key that spent it
//! and is not blocked now (the one whose block ended first), else the
//! blocked key whose block ends soonest. A blocked key therefore stays
//! blocked until its block ends unless the table is full of blocked keys,
//! and a churn of cheap first failures cannot reset an escalated back-off.
//!
//! Keys are kept as 128-bit keyed hashes (a random key per process), so the
//! tables hold no email addresses and every record has the same small size.

pub mod shared;

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// Failed checks per account before back-off starts.
    pub account_free_failures: u32,
    /// Failed checks per client address before back-off starts.
    pub address_free_failures: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Failures older than this no longer count.
    pub forget_after: Duration,
    /// Most records kept per table (accounts, addresses).
    pub capacity: usize,
    /// IPv6 clients are counted by their network of this prefix length.
    pub ipv6_prefix: u8,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        ThrottlePolicy {
            account_free_failures: 5,
            address_free_failures: 20,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(60 * 60),
            capacity: 100_000,
            ipv6_prefix: 64,
        }
    }
}

/// How long an attempt may wait for running attempts on its keys to end
/// before it is refused.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// No block is longer, whatever the flags say (and `Instant` arithmetic
/// cannot overflow).
const LONGEST_BLOCK: Duration = Duration::from_secs(366 * 86_400);

/// A key as stored: a keyed hash of an email, or an address network.
type Key = u128;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
    /// When the block that the last failure started ends; when it started
    /// none (the budget was not spent yet), the time of that failure.
    blocked_until: Instant,
}

/// The order in which a full table gives records up: first keys whose
/// budget is not spent, then keys that spent it (whose escalation a churn
/// must not reset), each by `blocked_until`: not blocked before blocked, a
/// block that ends sooner before one that ends later.
type EvictionOrder = (bool, Instant, Key);

/// Attempts on one key that are running now, and how to wake those waiting.
struct Running {
    count: u32,
    ended: Arc<Notify>,
}

/// One table (accounts or addresses).
struct Table {
    records: HashMap<Key, Record>,
    /// Every record in [`EvictionOrder`]: the first one is dropped when full.
    by_release: BTreeSet<EvictionOrder>,
    /// Entries exist only while attempts run, so at most one per request in progress.
    running: HashMap<Key, Running>,
    free_failures: u32,
    capacity: usize,
}

/// Why an attempt may not start now.
enum Refusal {
    Blocked(Duration),
    /// The budget is taken by running attempts: wait for one to end.
    Busy(OwnedNotified),
}

impl Table {
    fn new(free_failures: u32, capacity: usize) -> Self {
        Table {
            records: HashMap::new(),
            by_release: BTreeSet::new(),
            running: HashMap::new(),
            free_failures,
            capacity: capacity.max(1),
        }
    }

    /// Failures of `record` that still count at `now`.
    fn recent_failures(record: &Record, policy: &ThrottlePolicy, now: Instant) -> u32 {
        if now.saturating_duration_since(record.last_failure) < policy.forget_after {
            record.failures
        } else {
            0
        }
    }

    /// Whether one more attempt on `key` may start at `now`.
    fn admit(&self, key: Key, policy: &ThrottlePolicy, now: Instant) -> Result<(), Refusal> {
        let failures = match self.records.get(&key) {
            Some(record) if record.blocked_until > now => {
                return Err(Refusal::Blocked(record.blocked_until - now))
            }
            Some(record) => Self::recent_failures(record, policy, now),
            None => 0,
        };
        // What is left of the budget, or one check at a time between blocks.
        let allowed = self.free_failures.saturating_sub(failures).max(1);
        match self.running.get(&key) {
            Some(running) if running.count >= allowed => {
                Err(Refusal::Busy(Arc::clone(&running.ended).notified_owned()))
            }
            _ => Ok(()),
        }
    }

    fn start(&mut self, key: Key) {
        self.running
            .entry(key)
            .or_insert_with(|| Running {
                count: 0,
                ended: Arc::new(Notify::new()),
            })
            .count += 1;
    }

    fn end(&mut self, key: Key) {
        if let Some(running) = self.running.get_mut(&key) {
            running.count = running.count.saturating_sub(1);
            running.ended.notify_waiters();
            if running.count == 0 {
                self.running.remove(&key);
            }
        }
    }

    /// Counts a failure; returns the block it starts, if it starts one.
    fn record_failure(
        &mut self,
        key: Key,
        policy: &ThrottlePolicy,
        now: Instant,
    ) -> Option<Duration> {
        let failures = self
            .records
            .get(&key)
            .map_or(0, |r| Self::recent_failures(r, policy, now))
            .saturating_add(1);
        let blocked_until = match failures.checked_sub(self.free_failures) {
            None => now,
            Some(extra) => {
                let factor = 2u32.saturating_pow(extra);
                let delay = policy
                    .base_delay
                    .saturating_mul(factor)
                    .min(policy.max_delay)
                    .min(LONGEST_BLOCK);
                now + delay
            }
        };
        self.put(
            key,
            Record {
                failures,
                last_failure: now,
                blocked_until,
            },
        );
        (blocked_until > now).then(|| blocked_until - now)
    }

    fn order(&self, key: Key, record: &Record) -> EvictionOrder {
        (
            record.failures >= self.free_failures,
            record.blocked_until,
            key,
        )
    }

    fn put(&mut self, key: Key, record: Record) {
        match self.records.insert(key, record) {
            Some(old) => {
                let old = self.order(key, &old);
                self.by_release.remove(&old);
            }
            None => {
                while self.records.len() > self.capacity {
                    self.drop_least_protective(key);
                }
            }
        }
        let order = self.order(key, &record);
        self.by_release.insert(order);
    }

    /// Drops the first record in [`EvictionOrder`] other than `keep`.
    fn drop_least_protective(&mut self, keep: Key) {
        let victim = self
            .by_release
            .iter()
            .find(|(_, _, key)| *key != keep)
            .copied();
        if let Some(entry) = victim {
            self.by_release.remove(&entry);
            self.records.remove(&entry.2);
        }
    }

    fn clear_failures(&mut self, key: Key) {
        if let Some(old) = self.records.remove(&key) {
            let old = self.order(key, &old);
            self.by_release.remove(&old);
        }
    }
}

/// IPv4 addresses (also IPv4-mapped IPv6) in full; IPv6 by network.
pub(crate) fn address_key(address: IpAddr, ipv6_prefix: u8) -> Key {
    match address {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => {
                let prefix = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                // Cannot equal an IPv4 key: only addresses in
                // ::ffff:0:0/96 mask to one, and those are IPv4 above.
                u128::from(v6) & mask
            }
        },
    }
}

/// Why a login attempt is refused, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    pub retry_after: Duration,
}

pub struct Throttle {
    policy: ThrottlePolicy,
    accounts: Mutex<Table>,
    addresses: Mutex<Table>,
    /// Two independent keyed hashers: a 128-bit key per email.
    email_hashers: (RandomState, RandomState),
    #[cfg(feature = "test-hooks")]
    hooks: Arc<crate::test_hooks::TestHooks>,
}

/// Locks a table, also after a panic while it was held: nothing between
/// the updates of the map and of its index can panic (only an allocation
/// failure, which aborts), so the table is consistent, and taking the lock
/// over is better than refusing every login from then on.
fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An admitted login attempt. Report how it ended with [`Attempt::failed`]
/// or [`Attempt::succeeded`]; dropped without either (an error before the
/// password was checked, such as 503), it leaves nothing behind.
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    account: Key,
    address: Option<Key>,
}

impl Attempt<'_> {
    /// The password check failed: counts against both keys' budgets.
    /// Returns the blocks this failure starts (account, address).
    pub fn failed(self) -> (Option<Duration>, Option<Duration>) {
        let throttle = self.throttle;
        let now = Instant::now();
        // Recorded before the running slot is given back, under the same
        // lock, so a waiting attempt never sees the slot without the failure.
        let account = {
            let mut accounts = lock(&throttle.accounts);
            let block = accounts.record_failure(self.account, &throttle.policy, now);
            accounts.end(self.account);
            block
        };
        let address = self.address.and_then(|address| {
            let mut addresses = lock(&throttle.addresses);
            let block = addresses.record_failure(address, &throttle.policy, now);
            addresses.end(address);
            block
        });
        std::mem::forget(self);
        (account, address)
    }

    /// The password was right: the account starts clean again.
    pub fn succeeded(self) {
        lock(&self.throttle.accounts).clear_failures(self.account);
        // Drop gives the running slots back.
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        lock(&self.throttle.accounts).end(self.account);
        if let Some(address) = self.address {
            lock(&self.throttle.addresses).end(address);
        }
    }
}

impl Throttle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        Throttle {
            policy,
            accounts: Mutex::new(Table::new(policy.account_free_failures, policy.capacity)),
            addresses: Mutex::new(Table::new(policy.address_free_failures, policy.capacity)),
            email_hashers: (RandomState::new(), RandomState::new()),
            #[cfg(feature = "test-hooks")]
            hooks: Arc::default(),
        }
    }

    pub fn policy(&self) -> &ThrottlePolicy {
        &self.policy
    }

    /// Shares the test hooks of the app (test builds only).
    #[cfg(feature = "test-hooks")]
    pub fn with_hooks(mut self, hooks: Arc<crate::test_hooks::TestHooks>) -> Self {
        self.hooks = hooks;
        self
    }

    fn account_key(&self, email: &str) -> Key {
        let high = self.email_hashers.0.hash_one(email);
        let low = self.email_hashers.1.hash_one(email);
        (u128::from(high) << 64) | u128::from(low)
    }

    fn address_key(&self, address: IpAddr) -> Key {
        address_key(address, self.policy.ipv6_prefix)
    }

    /// Admits a login attempt for `email` (normalised) from `address`, before
    /// any hashing: at once, or after waiting for running attempts on the
    /// same keys to end. Refused while a key is blocked, or when the wait
    /// would outlast `MAX_WAIT` (5 s). Hold the [`Attempt`] until the check is done.
    pub async fn begin(
        &self,
        email: &str,
        address: Option<IpAddr>,
    ) -> Result<Attempt<'_>, Blocked> {
        let account = self.account_key(email);
        let address = address.map(|a| self.address_key(a));
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            match self.try_begin(account, address, Instant::now()) {
                Ok(attempt) => return Ok(attempt),
                Err(Refusal::Blocked(retry_after)) => return Err(Blocked { retry_after }),
                Err(Refusal::Busy(ended)) => {
                    if tokio::time::timeout_at(deadline, ended).await.is_err() {
                        return Err(Blocked {
                            retry_after: self.policy.base_delay.max(Duration::from_secs(1)),
                        });
                    }
                }
            }
        }
    }

    fn try_begin(
        &self,
        account: Key,
        address: Option<Key>,
        now: Instant,
    ) -> Result<Attempt<'_>, Refusal> {
        let policy = &self.policy;
        // Always accounts first, then addresses: one lock order.
        let mut accounts = lock(&self.accounts);
        #[cfg(feature = "test-hooks")]
        self.hooks
            .panic_if_armed(crate::test_hooks::PanicPoint::ThrottleLock);
        let mut addresses = address.map(|_| lock(&self.addresses));
        let on_account = accounts.admit(account, policy, now);
        let on_address = match (&addresses, address) {
            (Some(table), Some(key)) => table.admit(key, policy, now),
            _ => Ok(()),
        };
        match (on_account, on_address) {
            (Ok(()), Ok(())) => {}
            (Err(Refusal::Blocked(a)), Err(Refusal::Blocked(b))) => {
                return Err(Refusal::Blocked(a.max(b)))
            }
            (Err(blocked @ Refusal::Blocked(_)), _) | (_, Err(blocked @ Refusal::Blocked(_))) => {
                return Err(blocked)
            }
            (Err(busy), _) | (_, Err(busy)) => return Err(busy),
        }
        accounts.start(account);
        if let (Some(table), Some(key)) = (addresses.as_mut(), address) {
            table.start(key);
        }
        Ok(Attempt {
            throttle: self,
            account,
            address,
        })
    }
}

#[cfg(test)]
impl Throttle {
    /// Records held (accounts, addresses).
    fn sizes(&self) -> (usize, usize) {
        (
            lock(&self.accounts).records.len(),
            lock(&self.addresses).records.len(),
        )
    }

    /// Whether an attempt could start at `now`, without starting one.
    fn check(&self, email: &str, address: Option<IpAddr>, now: Instant) -> Result<(), Blocked> {
        let account = self.account_key(email);
        let address = address.map(|a| self.address_key(a));
        match self.try_begin(account, address, now) {
            Ok(attempt) => {
                drop(attempt);
                Ok(())
            }
            Err(Refusal::Blocked(retry_after)) => Err(Blocked { retry_after }),
            Err(Refusal::Busy(_)) => Err(Blocked {
                retry_after: Duration::ZERO,
            }),
        }
    }

    /// Records one failed check at `now` without a running attempt.
    fn fail_at(&self, email: &str, address: Option<IpAddr>, now: Instant) {
        let key = self.account_key(email);
        let _ = lock(&self.accounts).record_failure(key, &self.policy, now);
        if let Some(address) = address {
            let key = self.address_key(address);
            let _ = lock(&self.addresses).record_failure(key, &self.policy, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            account_free_failures: 3,
            address_free_failures: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            forget_after: Duration::from_secs(600),
            capacity: 1000,
            ipv6_prefix: 64,
        }
    }

    fn running(throttle: &Throttle) -> (usize, usize) {
        (
            lock(&throttle.accounts).running.len(),
            lock(&throttle.addresses).running.len(),
        )
    }

    #[tokio::test]
    async fn running_attempts_count_against_the_budget_and_successes_refund() {
        let throttle = Throttle::new(policy());
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let account = throttle.account_key("a@b.c");
        let t0 = Instant::now();
        // A fresh account: three may run at once, not a fourth.
        let three: Vec<_> = (0..3)
            .map(|_| throttle.try_begin(account, None, t0).ok().unwrap())
            .collect();
        assert!(matches!(
            throttle.try_begin(account, None, t0),
            Err(Refusal::Busy(_))
        ));
        assert!(
            throttle.check("other@b.c", Some(ip), t0).is_ok(),
            "other accounts are not limited"
        );
        // Successes refund their slots.
        for attempt in three {
            attempt.succeeded();
        }
        assert!(throttle.check("a@b.c", None, t0).is_ok());
        assert_eq!(running(&throttle), (0, 0), "nothing left behind");
        assert_eq!(throttle.sizes(), (0, 0), "nothing left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parallel_burst_gets_exactly_the_budget_of_checks() {
        let throttle = Arc::new(Throttle::new(ThrottlePolicy {
            account_free_failures: 5,
            ..policy()
        }));
        let tasks: Vec<_> = (0..60)
            .map(|_| {
                let throttle = Arc::clone(&throttle);
                tokio::spawn(async move {
                    match throttle.begin("victim@b.c", None).await {
                        Ok(attempt) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            attempt.failed();
                            true
                        }
                        Err(_) => false,
                    }
                })
            })
            .collect();
        let mut checked = 0;
        for task in tasks {
            checked += usize::from(task.await.unwrap());
        }
        assert_eq!(checked, 5);
        assert!(throttle.check("victim@b.c", None, Instant::now()).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn honest_parallel_logins_wait_instead_of_being_refused() {
        let throttle = Arc::new(Throttle::new(policy()));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let throttle = Arc::clone(&throttle);
                tokio::spawn(async move {
                    let attempt = throttle.begin("busy@b.c", None).await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    attempt.succeeded();
                    Ok::<_, Blocked>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(throttle.sizes(), (0, 0));
    }

    #[test]
    fn back_off_starts_when_the_budget_is_spent_doubles_and_is_capped() {
        let throttle = Throttle::new(policy());
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(throttle.check("a@b.c", None, t0).is_ok());
            throttle.fail_at("a@b.c", None, t0);
        }
        assert!(throttle.check("a@b.c", None, t0).is_ok(), "a third check");
        throttle.fail_at("a@b.c", None, t0);
        assert_eq!(
            throttle.check("a@b.c", None, t0),
            Err(Blocked {
                retry_after: Duration::from_secs(1)
            })
        );
        let t1 = t0 + Duration::from_secs(1);
        assert!(throttle.check("a@b.c", None, t1).is_ok(), "the block ends");
        throttle.fail_at("a@b.c", None, t1);
        assert_eq!(
            throttle.check("a@b.c", None, t1),
            Err(Blocked {
                retry_after: Duration::from_secs(2)
            })
        );
        for _ in 0..20 {
            throttle.fail_at("a@b.c", None, t1);
        }
        assert_eq!(
            throttle.check("a@b.c", None, t1),
            Err(Blocked {
                retry_after: Duration::from_secs(60)
            })
        );
        assert!(throttle.check("other@b.c", None, t1).is_ok(), "per account");
    }

    #[test]
    fn success_clears_the_account_but_not_the_address() {
        let throttle = Throttle::new(policy());
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for n in 0..5 {
            throttle.fail_at(&format!("user{n}@b.c"), Some(ip), t0);
        }
        assert!(
            throttle.check("fresh@b.c", Some(ip), t0).is_err(),
            "the address is blocked for any account"
        );
        assert!(throttle.check("fresh@b.c", None, t0).is_ok());
        for _ in 0..2 {
            throttle.fail_at("victim@b.c", None, t0);
        }
        let attempt = throttle
            .try_begin(throttle.account_key("victim@b.c"), None, t0)
            .ok()
            .unwrap();
        attempt.succeeded();
        for _ in 0..2 {
            throttle.fail_at("victim@b.c", None, t0);
        }
        assert!(
            throttle.check("victim@b.c", None, t0).is_ok(),
            "the count started again"
        );
        assert!(throttle.check("victim@b.c", Some(ip), t0).is_err());
    }

    #[test]
    fn old_failures_are_forgotten() {
        let throttle = Throttle::new(policy());
        let t0 = Instant::now();
        for _ in 0..2 {
            throttle.fail_at("a@b.c", None, t0);
        }
        let later = t0 + Duration::from_secs(601);
        throttle.fail_at("a@b.c", None, later);
        assert!(
            throttle.check("a@b.c", None, later).is_ok(),
            "counting starts again"
        );
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix_and_ipv4_by_address() {
        let throttle = Throttle::new(policy());
        let t0 = Instant::now();
        for n in 0..5u16 {
            let ip = IpAddr::from([0x2001, 0xdb8, 1, 2, n, n, n, n]);
            throttle.fail_at(&format!("u{n}@b.c"), Some(ip), t0);
        }
        let same_network: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let next_network: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(throttle.check("x@b.c", Some(same_network), t0).is_err());
        assert!(throttle.check("x@b.c", Some(next_network), t0).is_ok());
        for n in 0..5u8 {
            throttle.fail_at(&format!("v{n}@b.c"), Some(IpAddr::from([10, 0, 0, n])), t0);
        }
        assert!(throttle
            .check("x@b.c", Some(IpAddr::from([10, 0, 0, 9])), t0)
            .is_ok());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        throttle.fail_at("w@b.c", Some(IpAddr::from([10, 0, 0, 1])), t0);
        throttle.fail_at("w@b.c", Some(IpAddr::from([10, 0, 0, 1])), t0);
        throttle.fail_at("w@b.c", Some(IpAddr::from([10, 0, 0, 1])), t0);
        throttle.fail_at("w@b.c", Some(IpAddr::from([10, 0, 0, 1])), t0);
        assert!(
            throttle.check("y@b.c", Some(mapped), t0).is_err(),
            "IPv4-mapped IPv6 is the IPv4 address"
        );
    }

    #[test]
    fn a_flood_of_keys_stays_bounded_and_cannot_push_out_a_block() {
        let throttle = Throttle::new(ThrottlePolicy {
            capacity: 100,
            ..policy()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            throttle.fail_at("victim@b.c", None, t0);
        }
        assert!(throttle.check("victim@b.c", None, t0).is_err());
        for n in 0..50_000u32 {
            let ip = IpAddr::from(n.to_be_bytes());
            throttle.fail_at(&format!("noise{n}@b.c"), Some(ip), t0);
        }
        let (accounts, addresses) = throttle.sizes();
        assert!(
            accounts <= 100 && addresses <= 100,
            "{accounts} {addresses}"
        );
        assert!(
            throttle.check("victim@b.c", None, t0).is_err(),
            "a blocked key survives a flood of keys that are not blocked"
        );
        // Refused and successful attempts leave no records at all.
        let sizes = throttle.sizes();
        for n in 0..1000u32 {
            let attempt = throttle
                .try_begin(throttle.account_key(&format!("ok{n}@b.c")), None, t0)
                .ok()
                .unwrap();
            if n % 2 == 0 {
                attempt.succeeded();
            }
        }
        assert_eq!(throttle.sizes(), sizes);
        assert_eq!(running(&throttle), (0, 0));
        assert!(throttle.check("victim@b.c", None, t0).is_err());
    }

    #[test]
    fn an_escalated_back_off_survives_a_churn_after_its_block_ends() {
        let throttle = Throttle::new(ThrottlePolicy {
            capacity: 50,
            ..policy()
        });
        let t0 = Instant::now();
        for _ in 0..4 {
            throttle.fail_at("victim@b.c", None, t0); // blocked 2 s
        }
        let t1 = t0 + Duration::from_secs(3);
        assert!(
            throttle.check("victim@b.c", None, t1).is_ok(),
            "the block ended"
        );
        for n in 0..500u32 {
            throttle.fail_at(&format!("noise{n}@b.c"), None, t1);
        }
        throttle.fail_at("victim@b.c", None, t1);
        assert_eq!(
            throttle.check("victim@b.c", None, t1),
            Err(Blocked {
                retry_after: Duration::from_secs(4)
            }),
            "the escalation was kept"
        );
    }

    #[test]
    fn a_table_full_of_blocks_drops_the_one_that_ends_soonest() {
        let throttle = Throttle::new(ThrottlePolicy {
            account_free_failures: 1,
            capacity: 3,
            ..policy()
        });
        let t0 = Instant::now();
        // Blocks of 1 s, 2 s, 4 s, by failing 1, 2 and 3 times.
        for (email, failures) in [("one@b.c", 1), ("two@b.c", 2), ("four@b.c", 3)] {
            for _ in 0..failures {
                throttle.fail_at(email, None, t0);
            }
        }
        throttle.fail_at("new@b.c", None, t0);
        assert!(
            throttle.check("one@b.c", None, t0).is_ok(),
            "ends soonest: dropped"
        );
        for email in ["two@b.c", "four@b.c", "new@b.c"] {
            assert!(throttle.check(email, None, t0).is_err(), "{email}");
        }
    }

    #[test]
    fn a_panic_while_the_lock_is_held_does_not_disable_logins() {
        let throttle = Throttle::new(policy());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = lock(&throttle.accounts);
            panic!("a bug while holding the lock");
        }));
        assert!(panicked.is_err());
        assert!(throttle.accounts.is_poisoned());
        assert!(throttle.check("a@b.c", None, Instant::now()).is_ok());
    }
}

/// Measures what full tables cost (run with `--ignored --nocapture`; the
/// figure is in the README's Hardening section).
#[cfg(test)]
mod measure {
    use super::*;

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    #[ignore = "a measurement, not a check"]
    fn memory_of_full_tables() {
        let policy = ThrottlePolicy::default();
        let before = rss_kib();
        let throttle = Throttle::new(policy);
        let t0 = Instant::now();
        for n in 0..(2 * policy.capacity as u32) {
            let ip = IpAddr::from(n.to_be_bytes());
            throttle.fail_at(&format!("user{n}@example.com"), Some(ip), t0);
        }
        let (accounts, addresses) = throttle.sizes();
        let after = rss_kib();
        println!(
            "{accounts} account and {addresses} address records: {} KiB ({} bytes a record)",
            after - before,
            (after - before) * 1024 / (accounts + addresses) as u64
        );
    }
}

/// Sign-ups per client address: at most `per_hour` in any hour-long window
/// that starts with an address's first sign-up. Bounded like the throttle's
/// tables: at most `capacity` addresses; when full, the window that ends
/// soonest is dropped (an address whose window ended first).
pub struct SignupLimit {
    per_hour: u32,
    capacity: usize,
    ipv6_prefix: u8,
    windows: Mutex<SignupWindows>,
}

#[derive(Default)]
struct SignupWindows {
    by_address: HashMap<Key, (Instant, u32)>,
    by_start: BTreeSet<(Instant, Key)>,
}

pub(crate) const SIGNUP_WINDOW: Duration = Duration::from_secs(3600);

impl SignupLimit {
    pub fn new(per_hour: u32, capacity: usize, ipv6_prefix: u8) -> Self {
        SignupLimit {
            per_hour,
            capacity: capacity.max(1),
            ipv6_prefix,
            windows: Mutex::new(SignupWindows::default()),
        }
    }

    /// The most sign-ups (or attempts) per key and hour.
    pub fn per_hour(&self) -> u32 {
        self.per_hour
    }

    /// The key `address` is counted under (IPv6 by network).
    pub fn key_of(&self, address: IpAddr) -> u128 {
        address_key(address, self.ipv6_prefix)
    }

    /// Counts one sign-up from `address` at `now`, or says how long to wait.
    pub fn take(&self, address: IpAddr, now: Instant) -> Result<(), Blocked> {
        self.take_key(address_key(address, self.ipv6_prefix), now)
    }

    /// Counts one attempt by user `id` (a limiter of its own: the keys
    /// are not addresses).
    pub fn take_for_user(&self, id: u64, now: Instant) -> Result<(), Blocked> {
        self.take_key(u128::from(id), now)
    }

    fn take_key(&self, key: Key, now: Instant) -> Result<(), Blocked> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let (start, count) = match windows.by_address.get(&key).copied() {
            Some((start, count)) if now.saturating_duration_since(start) < SIGNUP_WINDOW => {
                (start, count)
            }
            Some((start, _)) => {
                windows.by_start.remove(&(start, key));
                (now, 0)
            }
            None => (now, 0),
        };
        if count >= self.per_hour {
            return Err(Blocked {
                retry_after: (start + SIGNUP_WINDOW).saturating_duration_since(now),
            });
        }
        if count == 0 {
            while windows.by_address.len() >= self.capacity {
                let Some(oldest) = windows.by_start.pop_first() else {
                    windows.by_address.clear();
                    break;
                };
                windows.by_address.remove(&oldest.1);
            }
            windows.by_start.insert((start, key));
        }
        windows.by_address.insert(key, (start, count + 1));
        Ok(())
    }
}

#[cfg(test)]
mod signup_tests {
    use super::*;

    #[test]
    fn sign_ups_are_limited_per_address_per_hour_and_bounded() {
        let limit = SignupLimit::new(2, 10, 64);
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limit.take(ip, t0).is_ok());
        assert!(limit.take(ip, t0).is_ok());
        let refused = limit.take(ip, t0 + Duration::from_secs(60)).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(3540));
        assert!(limit.take("192.0.2.2".parse().unwrap(), t0).is_ok());
        assert!(limit.take(ip, t0 + SIGNUP_WINDOW).is_ok(), "a new hour");
        for n in 0..1000u32 {
            let _ = limit.take(IpAddr::from(n.to_be_bytes()), t0);
        }
        assert!(limit.windows.lock().unwrap().by_address.len() <= 10);
    }
}
