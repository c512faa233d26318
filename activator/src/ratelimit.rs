//! Rate limits (`spec.requests.rateLimit`): the generic cell rate algorithm (GCRA, a
//! token bucket kept as one timestamp), for the Function as a whole and per caller.
//!
//! A limit is one "theoretical arrival time" (TAT) in nanoseconds on the limiter's own
//! clock: a request at `now` is let through when `max(TAT, now) + interval - now` stays
//! within `burst * interval`, and moves the TAT by one interval. The Function-wide TAT is
//! one atomic updated by compare-and-swap; per-caller TATs live in a [`ClientTable`]
//! behind one short lock. The clock is injected: every check takes `now`, so tests drive
//! time by hand.
//!
//! Several activator replicas: each replica enforces `rate / replicas` with a burst of
//! `ceil(burst / replicas)`, so the replicas together let through about the limit when
//! the load balancer spreads requests evenly.
//!
//! Memory: a per-caller limit keeps at most [`CLIENTS_PER_FUNCTION`] callers (8 bytes of
//! hashed identity and 8 of TAT each, under 1 MiB with the hash table's overhead).
//! A caller whose bucket has refilled is the same as an absent one and is dropped first
//! when the table is full; if every tracked caller is still limited, arbitrary entries go,
//! and those callers start again with a full burst.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;
use zeroscale_api::gateway::{ClientKey, RateLimit};

use crate::body::ResponseBody;
use crate::errors::ERROR_HEADER;

/// Most callers a per-caller limit tracks for one Function.
pub(crate) const CLIENTS_PER_FUNCTION: usize = 16_384;

/// The metric label and `x-zeroscale-error` value of a refused request.
pub(crate) const LABEL: &str = "rate_limited";

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Who sent a request, as far as the activator knows: filled by the handler, read by a
/// per-caller limit. The auth step fills `api_key` and `subject` when it verified them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientIdentity<'a> {
    /// The caller's address (the TCP peer, or the one a trusted proxy named).
    pub address: IpAddr,
    /// The API key the caller authenticated with.
    pub api_key: Option<&'a str>,
    /// The subject of the caller's verified token.
    pub subject: Option<&'a str>,
}

/// One limit's parameters: `interval` nanoseconds per request, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rate {
    per_second: f64,
    burst: u32,
}

impl Rate {
    fn new(per_second: f64, burst: Option<i32>) -> Self {
        let default_burst = per_second.ceil().max(1.0) as u32;
        let burst = burst
            .and_then(|burst| u32::try_from(burst).ok())
            .filter(|burst| *burst > 0)
            .unwrap_or(default_burst);
        Self { per_second, burst }
    }

    /// The share one of `replicas` activators enforces.
    fn share(self, replicas: u32) -> Gcra {
        let replicas = replicas.max(1);
        let per_second = (self.per_second / f64::from(replicas)).max(1e-9);
        let interval = (1e9 / per_second).min(u64::MAX as f64 / 4.0) as u64;
        let burst = self.burst.div_ceil(replicas).max(1);
        Gcra {
            interval: interval.max(1),
            burst,
        }
    }
}

/// GCRA parameters as one replica enforces them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gcra {
    /// Nanoseconds per request.
    interval: u64,
    /// Requests let through at once.
    burst: u32,
}

impl Gcra {
    fn tolerance(self) -> u64 {
        self.interval.saturating_mul(u64::from(self.burst))
    }

    /// The new TAT if a request at `now` fits a bucket at `tat`, else how long until one
    /// would.
    fn admit(self, tat: u64, now: u64) -> Result<u64, Duration> {
        let next = tat.max(now).saturating_add(self.interval);
        let tolerance = self.tolerance();
        if next - now <= tolerance {
            Ok(next)
        } else {
            Err(Duration::from_nanos(next - tolerance - now))
        }
    }

    /// Seconds for an empty bucket to fill (the policy's window).
    fn window_seconds(self) -> u64 {
        Duration::from_nanos(self.tolerance()).as_secs_f64().ceil() as u64
    }
}

/// A refused request: when to retry, and under which policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limited {
    pub retry_after: Duration,
    /// `function` or `client`.
    pub policy: &'static str,
    /// Requests the policy lets through per window.
    pub quota: u32,
    pub window_seconds: u64,
}

impl Limited {
    /// The 429 answer: `Retry-After` in whole seconds (at least 1) and the IETF draft's
    /// (draft-ietf-httpapi-ratelimit-headers-10) `RateLimit-Policy` and `RateLimit`.
    pub(crate) fn into_response<G>(self) -> Response<ResponseBody<G>> {
        let seconds = self.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let mut response = Response::new(ResponseBody::full(
            "too many requests to this Function; slow down\n",
        ));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(ERROR_HEADER, HeaderValue::from_static(LABEL));
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        let policy = format!(
            "\"{}\";q={};w={}",
            self.policy,
            self.quota,
            self.window_seconds.max(1)
        );
        let current = format!("\"{}\";r=0;t={seconds}", self.policy);
        for (name, value) in [(RATELIMIT_POLICY, policy), (RATELIMIT, current)] {
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.insert(name, value);
            }
        }
        response
    }
}

/// A Function's rate limits, with their state.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    spec: RateLimit,
    epoch: Instant,
    function: Option<(Rate, AtomicU64)>,
    per_client: Option<PerClient>,
}

#[derive(Debug)]
struct PerClient {
    rate: Rate,
    by: ClientKey,
    header: Option<HeaderName>,
    table: ClientTable,
}

impl RateLimiter {
    pub(crate) fn new(spec: &RateLimit) -> Self {
        let per_client = spec.per_client.as_ref().map(|client| PerClient {
            rate: Rate::new(client.requests_per_second, client.burst),
            by: client.by,
            header: client
                .header
                .as_deref()
                .and_then(|name| HeaderName::try_from(name).ok()),
            table: ClientTable::new(CLIENTS_PER_FUNCTION),
        });
        Self {
            spec: spec.clone(),
            epoch: Instant::now(),
            function: spec
                .requests_per_second
                .map(|rate| (Rate::new(rate, spec.burst), AtomicU64::new(0))),
            per_client,
        }
    }

    /// The spec this limiter enforces.
    pub(crate) fn spec(&self) -> &RateLimit {
        &self.spec
    }

    /// Time on this limiter's clock.
    pub(crate) fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Lets a request from `client` at `now` through, or says why not; one of
    /// `replicas` activators enforcing the limit.
    pub(crate) fn check(
        &self,
        client: &ClientIdentity<'_>,
        headers: &HeaderMap,
        now: Duration,
        replicas: u32,
    ) -> Result<(), Limited> {
        // Never 0: a TAT of 0 means "never used".
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX / 2).max(1);
        if let Some(per_client) = &self.per_client {
            let gcra = per_client.rate.share(replicas);
            let key = per_client.key(client, headers);
            per_client
                .table
                .admit(key, gcra, now)
                .map_err(|retry_after| limited("client", gcra, retry_after))?;
        }
        if let Some((rate, tat)) = &self.function {
            let gcra = rate.share(replicas);
            let mut current = tat.load(Ordering::Relaxed);
            loop {
                let next = gcra
                    .admit(current, now)
                    .map_err(|retry_after| limited("function", gcra, retry_after))?;
                match tat.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => break,
                    Err(actual) => current = actual,
                }
            }
        }
        Ok(())
    }
}

fn limited(policy: &'static str, gcra: Gcra, retry_after: Duration) -> Limited {
    Limited {
        retry_after,
        policy,
        quota: gcra.burst,
        window_seconds: gcra.window_seconds(),
    }
}

impl PerClient {
    /// The caller's identity, hashed; its address when the chosen identity is missing,
    /// so leaving it out does not escape the limit.
    fn key<'a>(&self, client: &ClientIdentity<'a>, headers: &'a HeaderMap) -> Identity<'a> {
        let named = match self.by {
            ClientKey::ApiKey => client.api_key.map(str::as_bytes).or_else(|| {
                headers
                    .get(header::AUTHORIZATION)
                    .map(HeaderValue::as_bytes)
            }),
            ClientKey::Subject => client.subject.map(str::as_bytes),
            ClientKey::Header => self
                .header
                .as_ref()
                .and_then(|name| headers.get(name))
                .map(HeaderValue::as_bytes),
            ClientKey::ClientAddress => None,
        };
        match named {
            Some(bytes) => Identity::Named(bytes),
            None => Identity::Address(client.address),
        }
    }
}

/// What a per-caller limit tells callers apart by.
#[derive(Hash)]
enum Identity<'a> {
    Named(&'a [u8]),
    Address(IpAddr),
}

/// Per-caller TATs, keyed by a hash of the caller's identity (random per process, so
/// callers cannot pick colliding identities), holding at most `capacity` callers.
#[derive(Debug)]
struct ClientTable {
    capacity: usize,
    hasher: RandomState,
    tats: Mutex<HashMap<u64, u64>>,
}

impl ClientTable {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            hasher: RandomState::new(),
            tats: Mutex::new(HashMap::new()),
        }
    }

    fn admit(&self, identity: Identity<'_>, gcra: Gcra, now: u64) -> Result<(), Duration> {
        let key = self.hasher.hash_one(identity);
        let mut tats = self.tats.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tat) = tats.get_mut(&key) {
            *tat = gcra.admit(*tat, now)?;
            return Ok(());
        }
        let next = gcra.admit(0, now)?;
        if tats.len() >= self.capacity {
            // A bucket that has refilled is as good as no entry.
            tats.retain(|_, tat| *tat > now);
            if tats.len() >= self.capacity {
                // A sixteenth at once, so a full table's sweep is paid once per that
                // many new callers.
                let batch = (self.capacity / 16).max(1);
                let evicted: Vec<u64> = tats.keys().take(batch).copied().collect();
                for key in evicted {
                    tats.remove(&key);
                }
            }
        }
        tats.insert(key, next);
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use zeroscale_api::gateway::PerClientRateLimit;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn caller(last: u8) -> ClientIdentity<'static> {
        ClientIdentity {
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
            api_key: None,
            subject: None,
        }
    }

    fn limiter(rate: f64, burst: i32) -> RateLimiter {
        RateLimiter::new(&RateLimit {
            requests_per_second: Some(rate),
            burst: Some(burst),
            per_client: None,
        })
    }

    fn per_client(by: ClientKey, header: Option<&str>) -> RateLimiter {
        RateLimiter::new(&RateLimit {
            requests_per_second: None,
            burst: None,
            per_client: Some(PerClientRateLimit {
                by,
                header: header.map(str::to_owned),
                requests_per_second: 1.0,
                burst: Some(1),
            }),
        })
    }

    #[test]
    fn a_burst_passes_then_one_request_per_interval() {
        let limiter = limiter(10.0, 3);
        let headers = HeaderMap::new();
        let start = Duration::from_secs(1);
        for _ in 0..3 {
            assert_eq!(limiter.check(&caller(1), &headers, start, 1), Ok(()));
        }
        let refused = limiter
            .check(&caller(1), &headers, start, 1)
            .expect_err("the fourth at once is over the burst");
        assert_eq!(refused.retry_after, 100 * MS);
        assert_eq!(refused.policy, "function");
        assert_eq!(refused.quota, 3);
        assert_eq!(refused.window_seconds, 1);

        assert!(
            limiter
                .check(&caller(1), &headers, start + 99 * MS, 1)
                .is_err()
        );
        assert_eq!(
            limiter.check(&caller(1), &headers, start + 100 * MS, 1),
            Ok(())
        );
        assert!(
            limiter
                .check(&caller(1), &headers, start + 100 * MS, 1)
                .is_err()
        );
        // Idle for a second: the whole burst is back, and no more.
        let later = start + Duration::from_secs(2);
        for _ in 0..3 {
            assert_eq!(limiter.check(&caller(1), &headers, later, 1), Ok(()));
        }
        assert!(limiter.check(&caller(1), &headers, later, 1).is_err());
    }

    #[test]
    fn each_of_several_replicas_enforces_its_share() {
        let limiter = limiter(10.0, 4);
        let headers = HeaderMap::new();
        let now = Duration::from_secs(1);
        assert_eq!(limiter.check(&caller(1), &headers, now, 2), Ok(()));
        assert_eq!(limiter.check(&caller(1), &headers, now, 2), Ok(()));
        let refused = limiter
            .check(&caller(1), &headers, now, 2)
            .expect_err("half the burst each");
        assert_eq!(refused.quota, 2);
        // 5 per second each: one request per 200 ms.
        assert_eq!(refused.retry_after, 200 * MS);
    }

    #[test]
    fn callers_are_limited_apart_by_address_header_or_key() {
        let headers = HeaderMap::new();
        let now = Duration::from_secs(1);
        let by_address = per_client(ClientKey::ClientAddress, None);
        assert_eq!(by_address.check(&caller(1), &headers, now, 1), Ok(()));
        let refused = by_address
            .check(&caller(1), &headers, now, 1)
            .expect_err("same caller");
        assert_eq!(refused.policy, "client");
        assert_eq!(by_address.check(&caller(2), &headers, now, 1), Ok(()));

        let by_header = per_client(ClientKey::Header, Some("x-client"));
        let tenant = |name: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-client", HeaderValue::from_static(name));
            headers
        };
        assert_eq!(by_header.check(&caller(1), &tenant("a"), now, 1), Ok(()));
        assert!(by_header.check(&caller(2), &tenant("a"), now, 1).is_err());
        assert_eq!(by_header.check(&caller(1), &tenant("b"), now, 1), Ok(()));
        // No header: limited by address instead.
        assert_eq!(by_header.check(&caller(1), &headers, now, 1), Ok(()));
        assert!(by_header.check(&caller(1), &headers, now, 1).is_err());

        let by_key = per_client(ClientKey::ApiKey, None);
        let keyed = |key: &'static str| ClientIdentity {
            api_key: Some(key),
            ..caller(1)
        };
        assert_eq!(by_key.check(&keyed("k1"), &headers, now, 1), Ok(()));
        assert!(by_key.check(&keyed("k1"), &headers, now, 1).is_err());
        assert_eq!(by_key.check(&keyed("k2"), &headers, now, 1), Ok(()));
    }

    #[test]
    fn the_client_table_stays_within_its_capacity() {
        let table = ClientTable::new(64);
        let gcra = Rate::new(1.0, Some(1)).share(1);
        let now = 1_000_000_000;
        for n in 0..1000u16 {
            let address = IpAddr::from([10, 0, (n >> 8) as u8, n as u8]);
            assert_eq!(table.admit(Identity::Address(address), gcra, now), Ok(()));
            assert!(table.len() <= 64, "{} callers tracked", table.len());
        }
        assert_eq!(table.len(), 64);
        // Refilled buckets go first: a second later every entry is stale.
        let later = now + 2_000_000_000;
        table
            .admit(Identity::Named(b"new"), gcra, later)
            .expect("a new caller");
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn the_answer_carries_retry_after_and_the_draft_headers() {
        let response = Limited {
            retry_after: 1500 * MS,
            policy: "client",
            quota: 5,
            window_seconds: 1,
        }
        .into_response::<()>();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let headers = response.headers();
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert_eq!(headers["ratelimit-policy"], "\"client\";q=5;w=1");
        assert_eq!(headers["ratelimit"], "\"client\";r=0;t=2");
        assert_eq!(headers[ERROR_HEADER], LABEL);
    }
}
