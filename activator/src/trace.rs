//! W3C Trace Context (`traceparent`): read the caller's, or start a trace when there is
//! none or it is malformed, and give the pod a `traceparent` naming the activator's own
//! span as its parent, so each hop has a new span id. `tracestate` passes through
//! untouched, except that it is dropped with a malformed `traceparent`, as the
//! recommendation asks.
//!
//! Ids come from a per-thread SplitMix64 generator seeded from the process's random
//! hasher keys: unique enough for trace ids, not for secrets.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::BuildHasher;

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A request's place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub trace_id: u128,
    /// The caller's span, the parent of the activator's; None when the trace starts here.
    pub parent_id: Option<u64>,
    pub flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value (version 00, or a later version read as 00).
    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?.trim();
        let version = text.get(0..2)?;
        if version == "ff" || !is_lower_hex(version) {
            return None;
        }
        // Version 00 is exactly 55 characters; later versions may append fields.
        if text.len() < 55 || (version == "00" && text.len() != 55) {
            return None;
        }
        if text.len() > 55 && text.as_bytes()[55] != b'-' {
            return None;
        }
        let bytes = text.as_bytes();
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let (trace, parent, flags) = (&text[3..35], &text[36..52], &text[53..55]);
        if !(is_lower_hex(trace) && is_lower_hex(parent) && is_lower_hex(flags)) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id: Some(parent_id),
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// The caller's context, or a new sampled trace.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get(TRACEPARENT)
            .and_then(|value| Self::parse(value.as_bytes()))
            .unwrap_or_else(|| Self {
                trace_id: random_trace_id(),
                parent_id: None,
                flags: 1,
            })
    }

    /// The `traceparent` for a hop whose parent is `span_id`.
    pub(crate) fn header(&self, span_id: u64) -> HeaderValue {
        let mut text = String::with_capacity(55);
        let _ = write!(
            text,
            "00-{:032x}-{span_id:016x}-{:02x}",
            self.trace_id, self.flags
        );
        HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static(""))
    }

    /// Sets the request's `traceparent` to this trace with `span_id` as parent, and
    /// drops a `tracestate` that came with a malformed or missing `traceparent`.
    pub(crate) fn propagate(&self, span_id: u64, headers: &mut HeaderMap) {
        if self.parent_id.is_none() {
            headers.remove(TRACESTATE);
        }
        headers.insert(TRACEPARENT, self.header(span_id));
    }
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()));
}

/// The next SplitMix64 value of this thread's generator.
fn next_u64() -> u64 {
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A new span id (never 0).
pub(crate) fn random_span_id() -> u64 {
    next_u64().max(1)
}

fn random_trace_id() -> u128 {
    ((u128::from(next_u64()) << 64) | u128::from(next_u64())).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_parsed_and_a_malformed_one_is_not() {
        let context = TraceContext::parse(VALID.as_bytes()).expect("valid");
        assert_eq!(context.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(context.parent_id, Some(0x00f067aa0ba902b7));
        assert_eq!(context.flags, 1);
        // A later version may carry more fields.
        assert!(TraceContext::parse(format!("01{}-extra", &VALID[2..]).as_bytes()).is_some());
        for bad in [
            "",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn propagation_keeps_the_trace_and_gives_the_pod_a_new_parent() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        let context = TraceContext::from_headers(&headers);
        context.propagate(0x1234, &mut headers);
        assert_eq!(
            headers[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000001234-01"
        );
        assert_eq!(headers[TRACESTATE], "vendor=1");
    }

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_new_trace() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        let first = TraceContext::from_headers(&headers);
        let second = TraceContext::from_headers(&HeaderMap::new());
        assert_eq!(first.parent_id, None);
        assert_ne!(first.trace_id, second.trace_id);
        let span = random_span_id();
        first.propagate(span, &mut headers);
        let sent = TraceContext::parse(headers[TRACEPARENT].as_bytes()).expect("well formed");
        assert_eq!(sent.trace_id, first.trace_id);
        assert_eq!(sent.parent_id, Some(span));
        assert!(!headers.contains_key(TRACESTATE));
        assert_ne!(random_span_id(), random_span_id());
    }
}
