//! A bounded memory of access tokens whose signature was verified, so that
//! a client presenting the same token again (every request of its hour)
//! costs a SHA-256 instead of an Ed25519 or ECDSA verification (~40-50 µs).
//!
//! An entry says only "this exact token (its SHA-256) has a valid signature
//! under key ring R". Everything else (expiry, type, issuer, the session
//! being live) is checked on every use. Entries of an older ring are not
//! trusted, so a key that leaves the ring stops verifying at once. Only
//! tokens whose signature verified are remembered, so a client cannot fill
//! it with forgeries; a full shard is emptied, which costs only speed.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::digest;

const SHARDS: usize = 16;
/// Entries per shard: 16 × 4,096 tokens, about 3 MiB in all.
const PER_SHARD: usize = 4096;

pub type TokenDigest = [u8; 32];

pub struct VerifiedTokens {
    shards: Vec<Mutex<HashMap<TokenDigest, u64>>>,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        VerifiedTokens {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl VerifiedTokens {
    pub fn digest(token: &str) -> TokenDigest {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        out
    }

    fn shard(&self, digest: &TokenDigest) -> &Mutex<HashMap<TokenDigest, u64>> {
        &self.shards[usize::from(digest[0]) % SHARDS]
    }

    /// Whether the token with `digest` was verified under ring `ring_id`.
    pub fn contains(&self, digest: &TokenDigest, ring_id: u64) -> bool {
        let shard = self
            .shard(digest)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(digest) == Some(&ring_id)
    }

    /// Remembers that the token with `digest` verified under ring `ring_id`.
    pub fn insert(&self, digest: TokenDigest, ring_id: u64) {
        let mut shard = self
            .shard(&digest)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= PER_SHARD && !shard.contains_key(&digest) {
            shard.clear();
        }
        shard.insert(digest, ring_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_hold_for_their_ring_only_and_stay_bounded() {
        let cache = VerifiedTokens::default();
        let digest = VerifiedTokens::digest("a.b.c");
        assert!(!cache.contains(&digest, 1));
        cache.insert(digest, 1);
        assert!(cache.contains(&digest, 1));
        assert!(!cache.contains(&digest, 2));
        for n in 0..(SHARDS * PER_SHARD * 3) {
            cache.insert(VerifiedTokens::digest(&n.to_string()), 1);
        }
        let total: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= SHARDS * PER_SHARD);
    }
}
