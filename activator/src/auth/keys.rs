//! API keys as the activator knows them: SHA-256 digests, never the keys. A presented key
//! is hashed and compared with every digest in constant time, so neither the comparison
//! nor which digest matched shows in the timing.

use ring::digest::{SHA256, digest as sha256};

/// The SHA-256 digest of one key.
pub type Digest = [u8; 32];

/// The digest of `key`, with surrounding whitespace trimmed as the operator does.
pub fn digest(key: &[u8]) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(sha256(&SHA256, key.trim_ascii()).as_ref());
    out
}

/// Digests from the operator's Secret: one lowercase hex digest per line; other lines
/// are skipped.
pub fn parse_digests(text: &str) -> Vec<Digest> {
    text.lines()
        .filter_map(|line| parse_hex(line.trim()))
        .collect()
}

fn parse_hex(text: &str) -> Option<Digest> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Lowercase hex of a digest, as the Secret holds it.
pub fn to_hex(digest: &Digest) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether `presented` is one of the keys. Every digest is compared in full.
pub(crate) fn is_known(presented: &[u8], digests: &[Digest]) -> bool {
    let presented = digest(presented);
    let mut found = 0u8;
    for known in digests {
        found |= u8::from(same_digest(&presented, known));
    }
    found == 1
}

/// Whether two digests are equal, compared in full whatever the first difference.
pub(crate) fn same_digest(a: &Digest, b: &Digest) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_key_is_known_and_others_are_not() {
        let text = format!(
            "{}\n{}\nnot a digest\n",
            to_hex(&digest(b"alice-key")),
            to_hex(&digest(b"bob-key\n"))
        );
        let digests = parse_digests(&text);
        assert_eq!(digests.len(), 2);
        assert!(is_known(b"alice-key", &digests));
        assert!(is_known(b"bob-key", &digests));
        assert!(!is_known(b"alice-key2", &digests));
        assert!(!is_known(b"", &digests));
        assert!(!is_known(b"alice-key", &[]));
    }
}
