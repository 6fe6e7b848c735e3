//! argon2id password hashing on a small dedicated pool with admission control.
//!
//! Each hash takes ~17 ms of CPU and 19 MiB of memory at the OWASP
//! parameters. Hashes run on `workers` dedicated threads (never on the async
//! workers); at most `queue` more may wait, and past that a login is refused
//! at once with [`Error::Overloaded`] instead of queueing without bound.
//!
//! Every worker keeps one argon2 memory buffer and reuses it: allocating and
//! zeroing 19 MiB per hash cost ~25 % of the hash time and, through the
//! allocator's per-thread arenas, let the resident size grow past 1 GiB
//! under a login flood. A buffer idle for [`IDLE_RELEASE`] is returned.
//!
//! Unknown emails are verified against a dummy hash with the configured
//! parameters, so a login takes as long whether or not the account exists,
//! except for accounts whose stored hash still has other parameters (until
//! their next login re-hashes them; see the README).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

use crate::config::{Argon2Costs, ConfigError};
use crate::error::Error;

/// Niceness of the hashing threads (0 is normal, 19 the lowest).
const HASH_THREAD_NICE: i32 = 10;

/// A worker's memory buffer is released after this long without work.
const IDLE_RELEASE: Duration = Duration::from_secs(10);

/// Buffers are allocated with at least this many 1 KiB blocks of capacity
/// (only the blocks in use are ever touched). glibc serves allocations over
/// 32 MiB with mmap and unmaps them on free without raising its mmap
/// threshold, so a released buffer really leaves the process; a 19 MiB one
/// would stay behind in a thread arena.
const MIN_BUFFER_CAPACITY_BLOCKS: usize = 32 * 1024 + 1;

/// A password in memory; `Debug` never shows it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(text: String) -> Self {
        Password(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<hidden>)")
    }
}

/// The outcome of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    pub matches: bool,
    /// The stored hash uses other parameters than the configured ones.
    pub needs_rehash: bool,
}

enum Job {
    Hash {
        password: Password,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Verify {
        password: Password,
        stored: Arc<str>,
        reply: oneshot::Sender<Verification>,
    },
}

/// The jobs waiting for a worker, and how many are admitted in all.
struct Queue {
    state: Mutex<QueueState>,
    work_available: Condvar,
    /// Most jobs admitted at once: running (at most one per worker) plus waiting.
    admit_limit: usize,
    #[cfg(feature = "test-hooks")]
    hooks: std::sync::OnceLock<Arc<crate::test_hooks::TestHooks>>,
    /// Where workers record how long each job took, once set.
    duration: std::sync::OnceLock<metrics::Histogram>,
}

impl Queue {
    /// The state, also after a panic elsewhere while it was locked: every
    /// update under this lock is a single push, pop or count, so it cannot
    /// be left half done.
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted job's place in the queue; dropping it (also while a panic
/// unwinds) gives the place back.
struct Admitted<'a>(&'a Queue);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.admitted = state.admitted.saturating_sub(1);
    }
}

struct QueueState {
    waiting: VecDeque<Job>,
    /// Jobs submitted and not yet finished.
    admitted: usize,
    closed: bool,
}

pub struct Passwords {
    queue: Arc<Queue>,
    dummy_hash: Arc<str>,
}

impl Passwords {
    /// Starts `workers` hashing threads with room for `queue` waiting jobs.
    pub fn new(costs: Argon2Costs, workers: usize, queue: usize) -> Result<Self, ConfigError> {
        let params = costs.to_params()?;
        let mut buffer = Vec::new();
        let dummy_hash = hash_with(
            &params,
            b"latchkey dummy password for unknown accounts",
            &mut buffer,
        )
        .map_err(|e| ConfigError(format!("argon2 self-test failed: {e}")))?;
        drop(buffer);
        let workers = workers.max(1);
        let state = QueueState {
            waiting: VecDeque::new(),
            admitted: 0,
            closed: false,
        };
        let queue = Arc::new(Queue {
            state: Mutex::new(state),
            work_available: Condvar::new(),
            admit_limit: workers + queue,
            #[cfg(feature = "test-hooks")]
            hooks: std::sync::OnceLock::new(),
            duration: std::sync::OnceLock::new(),
        });
        for index in 0..workers {
            let (queue, params) = (Arc::clone(&queue), params.clone());
            std::thread::Builder::new()
                .name(format!("latchkey-hash-{index}"))
                .spawn(move || run_worker_replacing_after_panics(&queue, &params))
                .map_err(|e| ConfigError(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Passwords {
            queue,
            dummy_hash: dummy_hash.into(),
        })
    }

    /// Hashes a new password (PHC string, random salt).
    pub async fn hash(&self, password: Password) -> Result<String, Error> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash { password, reply })?;
        answer
            .await
            .map_err(|_| Error::Internal("hashing worker stopped".into()))?
            .map_err(Error::Internal)
    }

    /// Checks `password` against `stored`, or against the dummy hash when
    /// there is no account (then it never matches).
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<&str>,
    ) -> Result<Verification, Error> {
        let account_exists = stored.is_some();
        let stored: Arc<str> = stored.map_or_else(|| Arc::clone(&self.dummy_hash), Arc::from);
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify {
            password,
            stored,
            reply,
        })?;
        let verification = answer
            .await
            .map_err(|_| Error::Internal("hashing worker stopped".into()))?;
        Ok(Verification {
            matches: verification.matches && account_exists,
            needs_rehash: verification.needs_rehash && account_exists,
        })
    }

    /// Shares the app's test hooks with the workers (test builds only).
    #[cfg(feature = "test-hooks")]
    pub fn install_hooks(&self, hooks: Arc<crate::test_hooks::TestHooks>) {
        let _ = self.queue.hooks.set(hooks);
    }

    /// Records each job's duration into `histogram` from now on.
    pub fn install_metrics(&self, histogram: metrics::Histogram) {
        let _ = self.queue.duration.set(histogram);
    }

    /// Jobs running or waiting now.
    pub fn queue_depth(&self) -> usize {
        self.queue.lock().admitted
    }

    /// Admits a job unless `workers + queue` jobs are already admitted.
    fn submit(&self, job: Job) -> Result<(), Error> {
        let mut state = self.queue.lock();
        if state.admitted >= self.queue.admit_limit {
            return Err(Error::Overloaded);
        }
        state.admitted += 1;
        state.waiting.push_back(job);
        drop(state);
        self.queue.work_available.notify_one();
        Ok(())
    }
}

impl Drop for Passwords {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.work_available.notify_all();
    }
}

/// Runs a worker; if it panics (a bug in hashing), a fresh one takes its
/// place on the same thread, with a new buffer. The job it was running is
/// answered with an internal error (its reply is dropped) and its queue
/// place is given back, so the pool never shrinks and never leaks places.
fn run_worker_replacing_after_panics(queue: &Queue, params: &Params) {
    while std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_worker(queue, params)))
        .is_err()
    {
        tracing::error!("a hashing worker panicked; a fresh one replaces it");
    }
}

fn run_worker(queue: &Queue, params: &Params) {
    // Lower priority than the request workers: when logins and refreshes
    // compete for the cores, refresh and profile keep their latency and
    // hashing takes what is left. Alone, hashing still gets every core.
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), HASH_THREAD_NICE)
    {
        tracing::debug!(error = %e, "could not lower the priority of a hashing thread");
    }
    let mut buffer: Vec<Block> = Vec::new();
    loop {
        let job = {
            let mut state = queue.lock();
            loop {
                if let Some(job) = state.waiting.pop_front() {
                    break job;
                }
                if state.closed {
                    return;
                }
                let (next, wait) = queue
                    .work_available
                    .wait_timeout(state, IDLE_RELEASE)
                    .unwrap_or_else(PoisonError::into_inner);
                state = next;
                if wait.timed_out() && state.waiting.is_empty() {
                    buffer = Vec::new();
                }
            }
        };
        let _place = Admitted(queue);
        let started = std::time::Instant::now();
        #[cfg(feature = "test-hooks")]
        if let Some(hooks) = queue.hooks.get() {
            hooks.panic_if_armed(crate::test_hooks::PanicPoint::HashWorker);
        }
        match job {
            Job::Hash { password, reply } => {
                let _ = reply.send(hash_with(params, password.as_str().as_bytes(), &mut buffer));
            }
            Job::Verify {
                password,
                stored,
                reply,
            } => {
                let _ = reply.send(verify_with(
                    params,
                    password.as_str().as_bytes(),
                    &stored,
                    &mut buffer,
                ));
            }
        }
        if let Some(duration) = queue.duration.get() {
            duration.record(started.elapsed().as_secs_f64());
        }
    }
}

/// Computes an argon2 output into `out`, reusing `buffer` as the memory.
fn compute(
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    buffer: &mut Vec<Block>,
) -> Result<(), argon2::Error> {
    let blocks = params.block_count();
    if buffer.len() < blocks {
        let mut fresh = Vec::with_capacity(blocks.max(MIN_BUFFER_CAPACITY_BLOCKS));
        fresh.resize(blocks, Block::default());
        *buffer = fresh;
    }
    let argon2 = Argon2::new(algorithm, version, params.clone());
    argon2.hash_password_into_with_memory(password, salt, out, &mut buffer[..blocks])
}

fn hash_with(params: &Params, password: &[u8], buffer: &mut Vec<Block>) -> Result<String, String> {
    let salt = Salt::generate();
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    compute(
        Algorithm::Argon2id,
        Version::V0x13,
        params,
        password,
        salt.as_ref(),
        &mut out,
        buffer,
    )
    .map_err(|e| format!("hashing failed: {e}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| format!("hashing failed: {e}"))?,
        salt: Some(salt),
        hash: Some(Output::new(&out).map_err(|e| format!("hashing failed: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Whether `hash` is a bcrypt hash (`$2a$`, `$2b$` or `$2y$`, a cost, 53
/// characters of salt and hash).
pub fn is_bcrypt_hash(hash: &str) -> bool {
    let bytes = hash.as_bytes();
    hash.len() == 60
        && (hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"))
        && bytes[4].is_ascii_digit()
        && bytes[5].is_ascii_digit()
        && bytes[6] == b'$'
        && hash[7..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
}

/// The costliest imported hashes accepted: a login checks an unknown
/// account's hash on the shared pool, so a hash of absurd cost would tie a
/// worker up (or allocate gigabytes) for anyone who tries that email.
const MAX_IMPORTED_BCRYPT_COST: u32 = 16;
const MAX_IMPORTED_ARGON2_KIB: u32 = 256 * 1024;
const MAX_IMPORTED_ARGON2_ITERATIONS: u32 = 16;
const MAX_IMPORTED_ARGON2_LANES: u32 = 16;

/// Whether `hash` is a stored password hash latchkey can verify at a
/// reasonable cost: an argon2 PHC string or a bcrypt hash.
pub fn is_supported_hash(hash: &str) -> bool {
    if is_bcrypt_hash(hash) {
        return hash[4..6]
            .parse::<u32>()
            .is_ok_and(|cost| (4..=MAX_IMPORTED_BCRYPT_COST).contains(&cost));
    }
    let Ok(phc) = PasswordHash::new(hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&phc) else {
        return false;
    };
    Algorithm::new(phc.algorithm.as_str()).is_ok()
        && params.m_cost() <= MAX_IMPORTED_ARGON2_KIB
        && params.t_cost() <= MAX_IMPORTED_ARGON2_ITERATIONS
        && params.p_cost() <= MAX_IMPORTED_ARGON2_LANES
        && phc.salt.is_some()
        && phc.hash.is_some()
}

/// Verifies against a bcrypt hash, or a PHC string in any argon2 variant
/// and parameters; a hash that cannot be parsed never matches.
fn verify_with(
    configured: &Params,
    password: &[u8],
    stored: &str,
    buffer: &mut Vec<Block>,
) -> Verification {
    let no = Verification {
        matches: false,
        needs_rehash: false,
    };
    if is_bcrypt_hash(stored) {
        // Imported from another backend: verified once, re-hashed to
        // argon2id at the first successful login.
        let matches = bcrypt::verify(password, stored).unwrap_or(false);
        return Verification {
            matches,
            needs_rehash: true,
        };
    }
    let Ok(phc) = PasswordHash::new(stored) else {
        return no;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::new(phc.algorithm.as_str()),
        Params::try_from(&phc),
    ) else {
        return no;
    };
    let version = match phc.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(version)) => version,
        Some(Err(_)) => return no,
    };
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return no;
    };
    let mut out = vec![0u8; expected.len()];
    if compute(
        algorithm,
        version,
        &params,
        password,
        salt.as_ref(),
        &mut out,
        buffer,
    )
    .is_err()
    {
        return no;
    }
    // `Output`'s equality is constant-time.
    let matches = Output::new(&out).is_ok_and(|computed| computed == *expected);
    let needs_rehash = algorithm != Algorithm::Argon2id
        || version != Version::V0x13
        || params.m_cost() != configured.m_cost()
        || params.t_cost() != configured.t_cost()
        || params.p_cost() != configured.p_cost();
    Verification {
        matches,
        needs_rehash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    const CHEAP: Argon2Costs = Argon2Costs {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[tokio::test]
    async fn hashes_verify_and_report_outdated_parameters() {
        let passwords = Passwords::new(CHEAP, 2, 8).unwrap();
        let hash = passwords
            .hash(Password::new("correct horse".into()))
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        let ok = passwords
            .verify(Password::new("correct horse".into()), Some(&hash))
            .await
            .unwrap();
        assert_eq!(
            ok,
            Verification {
                matches: true,
                needs_rehash: false
            }
        );
        let wrong = passwords
            .verify(Password::new("wrong horse".into()), Some(&hash))
            .await
            .unwrap();
        assert!(!wrong.matches);

        let stronger = Passwords::new(
            Argon2Costs {
                memory_kib: 128,
                ..CHEAP
            },
            1,
            8,
        )
        .unwrap();
        let upgrade = stronger
            .verify(Password::new("correct horse".into()), Some(&hash))
            .await
            .unwrap();
        assert_eq!(
            upgrade,
            Verification {
                matches: true,
                needs_rehash: true
            }
        );
    }

    #[test]
    fn agrees_with_the_reference_implementation() {
        let params = CHEAP.to_params().unwrap();
        let mut buffer = Vec::new();
        let ours = hash_with(&params, b"pw", &mut buffer).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"pw", &parsed).is_ok());

        // Hashes made elsewhere (argon2i, other costs) verify with a reused, dirty buffer.
        for algorithm in [Algorithm::Argon2i, Algorithm::Argon2id] {
            let other = Argon2::new(
                algorithm,
                Version::V0x13,
                Params::new(96, 2, 2, None).unwrap(),
            );
            let theirs = other.hash_password(b"pw").unwrap().to_string();
            let verification = verify_with(&params, b"pw", &theirs, &mut buffer);
            assert_eq!(
                verification,
                Verification {
                    matches: true,
                    needs_rehash: true
                }
            );
            assert!(!verify_with(&params, b"px", &theirs, &mut buffer).matches);
        }
        assert!(!verify_with(&params, b"pw", "$argon2id$garbage", &mut buffer).matches);
    }

    #[test]
    fn bcrypt_hashes_verify_and_ask_for_a_rehash() {
        let params = CHEAP.to_params().unwrap();
        let mut buffer = Vec::new();
        let hash = bcrypt::hash("old password", 4).unwrap();
        assert!(is_bcrypt_hash(&hash) && is_supported_hash(&hash), "{hash}");
        let right = verify_with(&params, b"old password", &hash, &mut buffer);
        assert_eq!(
            right,
            Verification {
                matches: true,
                needs_rehash: true
            }
        );
        assert!(!verify_with(&params, b"wrong", &hash, &mut buffer).matches);
        assert!(!is_supported_hash("$2b$04$tooshort"));
        let costly = format!("$2b$31${}", &hash[7..]);
        assert!(!is_supported_hash(&costly), "cost 31 is refused");
        assert!(!is_supported_hash("plain text"));
        assert!(is_supported_hash(
            &hash_with(&params, b"pw", &mut buffer).unwrap()
        ));
    }

    #[tokio::test]
    async fn unknown_accounts_never_match() {
        let passwords = Passwords::new(CHEAP, 1, 8).unwrap();
        let dummy = passwords.verify(
            Password::new("latchkey dummy password for unknown accounts".into()),
            None,
        );
        assert!(!dummy.await.unwrap().matches);
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let slow = Argon2Costs {
            memory_kib: 8192,
            iterations: 8,
            parallelism: 1,
        };
        let passwords = Arc::new(Passwords::new(slow, 1, 1).unwrap());
        let attempts: Vec<_> = (0..6)
            .map(|_| {
                let passwords = Arc::clone(&passwords);
                tokio::spawn(async move { passwords.hash(Password::new("pw".into())).await })
            })
            .collect();
        let mut overloaded = 0;
        for attempt in attempts {
            if matches!(attempt.await.unwrap(), Err(Error::Overloaded)) {
                overloaded += 1;
            }
        }
        // One runs, one waits; the rest of the six are turned away.
        assert!(overloaded >= 3, "overloaded: {overloaded}");
    }
}
