//! Tokens a Function verified lately, so a caller presenting the same token again pays
//! one SHA-256 digest instead of a signature check and a JSON parse. Direct-mapped and
//! fixed in size: memory stays bounded however many callers there are, and a collision
//! costs only one more verification. Only tokens that were admitted are kept.

use std::sync::{Arc, Mutex};

use super::jwt::{Claims, LEEWAY_SECONDS};
use super::keys::{Digest, digest, same_digest};
use super::lock;

/// Slots per Function.
const SLOTS: usize = 64;

/// Longest a verified token is trusted without checking its signature again, so a key
/// removed from the JWKS stops admitting its tokens within this time.
pub(crate) const TRUSTED_FOR_SECONDS: i64 = 60;

/// Tokens longer than this are verified every time, which bounds the cache's memory.
const LONGEST_CACHED: usize = 4096;

/// A Function's recently verified tokens.
#[derive(Debug)]
pub(crate) struct VerifiedTokens {
    slots: Box<[Mutex<Option<Entry>>]>,
}

#[derive(Debug)]
struct Entry {
    token: Digest,
    /// Seconds since the Unix epoch after which the entry no longer admits.
    until: i64,
    claims: Arc<Claims>,
}

impl VerifiedTokens {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// The cache key of `token`; None for a token too long to keep.
    pub(crate) fn key(token: &str) -> Option<Digest> {
        (token.len() <= LONGEST_CACHED).then(|| digest(token.as_bytes()))
    }

    /// The claims of the token with digest `key`, when it was verified and is still
    /// trusted at `now`.
    pub(crate) fn get(&self, key: &Digest, now: i64) -> Option<Arc<Claims>> {
        let slot = lock(&self.slots[slot_of(key)]);
        slot.as_ref()
            .filter(|entry| now <= entry.until && same_digest(&entry.token, key))
            .map(|entry| Arc::clone(&entry.claims))
    }

    /// Keeps the claims of the token with digest `key`, verified at `now`, until its
    /// `exp` (with the leeway verification allows) or for [`TRUSTED_FOR_SECONDS`],
    /// whichever comes first.
    pub(crate) fn insert(&self, key: Digest, claims: Arc<Claims>, now: i64) {
        let trusted = now.saturating_add(TRUSTED_FOR_SECONDS);
        let until = match claims.0.get("exp").and_then(serde_json::Value::as_f64) {
            Some(exp) => trusted.min((exp as i64).saturating_add(LEEWAY_SECONDS)),
            None => trusted,
        };
        *lock(&self.slots[slot_of(&key)]) = Some(Entry {
            token: key,
            until,
            claims,
        });
    }
}

fn slot_of(key: &Digest) -> usize {
    usize::from(key[0]) % SLOTS
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(value: serde_json::Value) -> Arc<Claims> {
        let serde_json::Value::Object(map) = value else {
            panic!("claims are an object");
        };
        Arc::new(Claims(map))
    }

    #[test]
    fn a_verified_token_is_trusted_until_its_exp_or_for_a_minute_at_most() {
        let cache = VerifiedTokens::new();
        let now = 1_000_000;
        let soon = VerifiedTokens::key("soon").expect("short");
        // Past its exp but within the leeway: admitted for five more seconds.
        let exp = now - LEEWAY_SECONDS + 5;
        cache.insert(soon, claims(json!({"sub": "a", "exp": exp})), now);
        assert_eq!(cache.get(&soon, now + 5).expect("kept").0["sub"], "a");
        assert!(cache.get(&soon, now + 6).is_none());

        let late = VerifiedTokens::key("late").expect("short");
        cache.insert(late, claims(json!({"exp": now + 3600})), now);
        assert!(cache.get(&late, now + TRUSTED_FOR_SECONDS).is_some());
        assert!(cache.get(&late, now + TRUSTED_FOR_SECONDS + 1).is_none());

        let never_seen = VerifiedTokens::key("never seen").expect("short");
        assert!(cache.get(&never_seen, now).is_none());
    }

    #[test]
    fn tokens_sharing_a_slot_replace_each_other_and_long_ones_are_not_kept() {
        let cache = VerifiedTokens::new();
        let first = VerifiedTokens::key("first").expect("short");
        let rival = (0..)
            .map(|n| format!("rival {n}"))
            .filter_map(|token| VerifiedTokens::key(&token))
            .find(|key| slot_of(key) == slot_of(&first) && *key != first)
            .expect("some token shares the slot");
        cache.insert(first, claims(json!({})), 0);
        cache.insert(rival, claims(json!({})), 0);
        assert!(cache.get(&first, 0).is_none());
        assert!(cache.get(&rival, 0).is_some());

        assert!(VerifiedTokens::key(&"x".repeat(LONGEST_CACHED + 1)).is_none());
    }
}
