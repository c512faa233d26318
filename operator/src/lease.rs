//! Leader election on a `coordination.k8s.io/v1` Lease, so that several operator
//! replicas can run and only the one holding the Lease acts.
//!
//! kube-runtime 5.0.0 ships no leader-election helper, so this is a small one in the
//! style of client-go's `leaderelection` package:
//!
//! - [`next_step`] is the whole decision, pure and with time passed in: create the
//!   Lease, renew it, wait for another holder's Lease to expire, or take it over.
//! - [`LeaderElector`] carries that decision out against the API server. Every write
//!   is optimistic: a create, or a replace carrying the `resourceVersion` that was
//!   read. When two replicas race, the API server accepts one write and answers the
//!   other with 409 Conflict, and the loser keeps following.
//! - [`LeaderElector::acquire`] waits until this replica holds the Lease and returns a
//!   [`Leadership`], whose background task renews the Lease and reports when
//!   leadership is lost. [`crate::leader`] runs the leader's work around it.
//!
//! Expiry is judged from the Lease's `renewTime`, so replicas' clocks must agree to
//! well within the lease duration. A holder stops considering itself the leader once
//! a renewal has not succeeded for the lease duration minus one renew period (10 s
//! with the defaults), before any other replica can see the Lease expire.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zeroscale_admin::Readiness;
use zeroscale_admin::process::ErrorChain;

use crate::{Error, Result};

/// How long a Lease stays valid after its last renewal, unless configured otherwise.
const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// How often the holder renews its Lease and followers retry, unless configured
/// otherwise.
const DEFAULT_RENEW_PERIOD: Duration = Duration::from_secs(5);

/// The field manager recorded on the Lease writes.
const FIELD_MANAGER: &str = "zeroscale-operator";

/// What a replica should do next, given the Lease it just read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// No Lease exists: create one that names this replica.
    Create,
    /// This replica holds the Lease: renew it.
    Renew,
    /// Another replica holds a Lease that has not expired: leave it alone.
    Wait {
        /// The replica holding the Lease.
        holder: String,
        /// When the Lease expires unless its holder renews it.
        expires: Timestamp,
    },
    /// The Lease has no holder, or its holder let it expire: take it over, recording
    /// one more transition between holders.
    TakeOver {
        /// The `leaseTransitions` value to write.
        lease_transitions: i32,
    },
}

/// Decides what the replica called `identity` should do with `lease` at `now`.
///
/// A Lease expires `leaseDurationSeconds` after its `renewTime` (its `acquireTime` if
/// it was never renewed); `lease_duration` stands in when the Lease does not say. A
/// Lease held by another replica that records neither time cannot be shown to be
/// fresh, so it counts as expired.
fn next_step(
    lease: Option<&Lease>,
    identity: &str,
    now: Timestamp,
    lease_duration: Duration,
) -> Step {
    let Some(lease) = lease else {
        return Step::Create;
    };
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|spec| spec.holder_identity.as_deref())
        .filter(|holder| !holder.is_empty());
    let lease_transitions = spec.and_then(|spec| spec.lease_transitions).unwrap_or(0);
    let take_over = Step::TakeOver {
        lease_transitions: lease_transitions.saturating_add(1),
    };
    let Some(holder) = holder else {
        return take_over;
    };
    if holder == identity {
        return Step::Renew;
    }
    let Some(expires) = spec.and_then(|spec| expiry(spec, lease_duration)) else {
        return take_over;
    };
    if now < expires {
        Step::Wait {
            holder: holder.to_owned(),
            expires,
        }
    } else {
        take_over
    }
}

/// When `spec` expires, or `None` when it records neither a renew nor an acquire time.
fn expiry(spec: &LeaseSpec, lease_duration: Duration) -> Option<Timestamp> {
    let MicroTime(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let duration = spec
        .lease_duration_seconds
        .and_then(|seconds| u64::try_from(seconds).ok())
        .filter(|&seconds| seconds > 0)
        .map_or(lease_duration, Duration::from_secs);
    // A duration too large to add lasts forever.
    Some(renewed.checked_add(duration).unwrap_or(Timestamp::MAX))
}

/// Whole seconds of `duration`, rounded up, as `leaseDurationSeconds` expects.
fn whole_seconds(duration: Duration) -> i32 {
    let seconds = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// Whether `error` is the API server refusing a write because another write won:
/// a create of a Lease that now exists, or a replace of a stale `resourceVersion`.
fn lost_race(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// What came of one attempt to acquire or renew the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the Lease.
    Leading,
    /// This replica does not hold the Lease.
    Following {
        /// The replica holding the Lease, when known; `None` when this replica lost a
        /// race against a write it has not read yet.
        holder: Option<String>,
    },
}

/// Which steps an attempt may carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Create, renew or take over the Lease, whichever [`next_step`] says.
    Acquire,
    /// Only renew. A holder that finds the Lease gone or changed hands has lost
    /// leadership, even if it could take the Lease back.
    RenewOnly,
}

/// Elects one leader among the replicas that share a Lease.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_period: Duration,
    /// Marked not ready while the Lease cannot be read or written, if set.
    readiness: Option<Readiness>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("lease_duration", &self.lease_duration)
            .field("renew_period", &self.renew_period)
            .finish_non_exhaustive()
    }
}

impl LeaderElector {
    /// An elector for the Lease `name` in `api`'s namespace, competing as `identity`
    /// (unique per replica, e.g. the pod name), with the default lease duration and
    /// renew period.
    pub fn new(api: Api<Lease>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_period: DEFAULT_RENEW_PERIOD,
            readiness: None,
        }
    }

    /// Sets how long the Lease stays valid after each renewal; it should be several
    /// renew periods long so that one failed renewal does not cost leadership.
    pub fn with_lease_duration(mut self, lease_duration: Duration) -> Self {
        self.lease_duration = lease_duration;
        self
    }

    /// Sets how often the holder renews the Lease and followers retry; it must be
    /// shorter than the lease duration.
    pub fn with_renew_period(mut self, renew_period: Duration) -> Self {
        self.renew_period = renew_period;
        self
    }

    /// Reports through `readiness` whether the Lease can be reached: not ready, with the
    /// cause, while reading or writing it fails; ready once it works again.
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Reads the Lease once and creates, renews or takes it over if [`next_step`] says
    /// so. Losing a race to another replica's write is not an error: it leaves this
    /// replica following.
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt> {
        self.attempt(Mode::Acquire).await
    }

    /// Waits until this replica holds the Lease, retrying every renew period, then
    /// starts renewing it in the background.
    ///
    /// API errors are retried, except those that retrying cannot fix (forbidden,
    /// unauthorized, invalid), which are returned.
    pub async fn acquire(&self) -> Result<Leadership> {
        let mut failing = Failing::new("acquiring the Lease");
        loop {
            let started = Instant::now();
            let attempt = self.try_acquire_or_renew().await;
            self.report(&mut failing, attempt.as_ref().err());
            match attempt {
                Ok(Attempt::Leading) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                    return Ok(self.lead(started));
                }
                Ok(Attempt::Following { holder }) => {
                    tracing::debug!(lease = %self.name, ?holder, "another replica is leading");
                }
                Err(error) if is_permanent(&error) => return Err(error),
                Err(_) => {}
            }
            tokio::time::sleep(self.renew_period).await;
        }
    }

    /// Logs how an attempt at the Lease went, through `failing`, and reports it to the
    /// readiness if there is one.
    fn report(&self, failing: &mut Failing, error: Option<&Error>) {
        match error {
            Some(error) => {
                let cause = self.explain(error);
                failing.failed(&self.name, &cause);
                if let Some(readiness) = &self.readiness {
                    readiness.set_not_ready(format!("cannot reach the leader Lease: {cause}"));
                }
            }
            None => {
                failing.succeeded(&self.name);
                if let Some(readiness) = &self.readiness {
                    readiness.set_ready();
                }
            }
        }
    }

    /// `error` with its whole cause chain, led by what it means when the API server
    /// answers a create with 404: the Lease's namespace does not exist.
    fn explain(&self, error: &Error) -> String {
        let chain = ErrorChain(error).to_string();
        match error {
            Error::Lease {
                action: "creating",
                source: kube::Error::Api(status),
                ..
            } if status.code == 404 => {
                let namespace = self.api.namespace().unwrap_or("default");
                format!("the Lease's namespace {namespace:?} does not exist: {chain}")
            }
            _ => chain,
        }
    }

    /// Starts renewing a Lease this replica acquired in an attempt begun at `renewed`.
    fn lead(&self, renewed: Instant) -> Leadership {
        let (leading, watch) = watch::channel(true);
        let task = tokio::spawn(self.clone().renew_until_lost(leading, renewed));
        Leadership {
            elector: self.clone(),
            watch,
            task,
        }
    }

    /// Renews the Lease every renew period until a renewal finds another holder, or no
    /// renewal has succeeded for the renew deadline; then reports leadership lost.
    async fn renew_until_lost(self, leading: watch::Sender<bool>, mut renewed: Instant) {
        // Give up before another replica can see the Lease expire: one renew period
        // short of the lease duration after the last attempt that succeeded.
        let deadline = self.lease_duration.saturating_sub(self.renew_period);
        let mut failing = Failing::new("renewing the Lease");
        loop {
            tokio::time::sleep(self.renew_period).await;
            let started = Instant::now();
            let lost_at = renewed + deadline;
            let attempt = tokio::time::timeout_at(lost_at, self.attempt(Mode::RenewOnly)).await;
            if let Ok(attempt) = &attempt {
                self.report(&mut failing, attempt.as_ref().err());
            }
            match attempt {
                Ok(Ok(Attempt::Leading)) => renewed = started,
                Ok(Ok(Attempt::Following { holder })) => {
                    tracing::warn!(lease = %self.name, ?holder, "lost leadership to another replica");
                    break;
                }
                Ok(Err(_)) if Instant::now() < lost_at => {}
                Ok(Err(error)) => {
                    tracing::warn!(lease = %self.name, error = %self.explain(&error), "lost leadership: could not renew the Lease in time");
                    break;
                }
                Err(_elapsed) => {
                    tracing::warn!(lease = %self.name, "lost leadership: renewing the Lease timed out");
                    break;
                }
            }
        }
        leading.send_replace(false);
    }

    /// Reads the Lease and carries out the step [`next_step`] decides, if `mode`
    /// allows it.
    async fn attempt(&self, mode: Mode) -> Result<Attempt> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|source| self.error("reading", source))?;
        let now = Timestamp::now();
        let step = next_step(current.as_ref(), &self.identity, now, self.lease_duration);
        let holder = current
            .as_ref()
            .and_then(|lease| lease.spec.as_ref())
            .and_then(|spec| spec.holder_identity.clone())
            .filter(|holder| !holder.is_empty());
        if mode == Mode::RenewOnly && step != Step::Renew {
            return Ok(Attempt::Following { holder });
        }
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let written = match (step, current) {
            (Step::Wait { holder, .. }, _) => {
                return Ok(Attempt::Following {
                    holder: Some(holder),
                });
            }
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.claim(now, 0)),
                };
                self.api
                    .create(&params, &lease)
                    .await
                    .map_err(|source| ("creating", source))
            }
            (Step::Renew, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.renew_time = Some(MicroTime(now));
                spec.lease_duration_seconds = Some(whole_seconds(self.lease_duration));
                self.api
                    .replace(&self.name, &params, &lease)
                    .await
                    .map_err(|source| ("renewing", source))
            }
            (Step::TakeOver { lease_transitions }, Some(mut lease)) => {
                // Keep the metadata read, resourceVersion included, so that the
                // replace fails if anyone wrote the Lease since.
                lease.spec = Some(self.claim(now, lease_transitions));
                self.api
                    .replace(&self.name, &params, &lease)
                    .await
                    .map_err(|source| ("taking over", source))
            }
            // next_step only renews or takes over a Lease that exists.
            (Step::Renew | Step::TakeOver { .. }, None) => {
                return Ok(Attempt::Following { holder: None });
            }
        };
        match written {
            Ok(_) => Ok(Attempt::Leading),
            Err((_, source)) if lost_race(&source) => Ok(Attempt::Following { holder: None }),
            Err((action, source)) => Err(self.error(action, source)),
        }
    }

    /// A Lease spec naming this replica as holder since `now`.
    fn claim(&self, now: Timestamp, lease_transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(whole_seconds(self.lease_duration)),
            lease_transitions: Some(lease_transitions),
            ..LeaseSpec::default()
        }
    }

    fn error(&self, action: &'static str, source: kube::Error) -> Error {
        Error::Lease {
            action,
            name: self.name.clone(),
            source,
        }
    }
}

/// Whether retrying the Lease operation that failed with `error` cannot help.
fn is_permanent(error: &Error) -> bool {
    matches!(
        error,
        Error::Lease { source: kube::Error::Api(status), .. }
            if matches!(status.code, 401 | 403 | 422)
    )
}

/// Proof that this replica holds the Lease, renewed in the background until
/// leadership is lost or this value is released or dropped.
///
/// Dropping it stops renewing, so the Lease expires after the lease duration;
/// [`Leadership::release`] hands it over at once.
#[derive(Debug)]
pub struct Leadership {
    elector: LeaderElector,
    watch: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Resolves once leadership is lost; at once if it already has been.
    pub async fn lost(&self) {
        let mut watch = self.watch.clone();
        // An error means the renew task is gone, which also ends leadership.
        let _ = watch.wait_for(|leading| !leading).await;
    }

    /// Stops renewing and, if this replica still holds the Lease, clears its holder so
    /// that another replica can take over without waiting for it to expire.
    pub async fn release(mut self) -> Result<()> {
        self.task.abort();
        // Wait for the task to stop so that no renewal races the release; it ends
        // cancelled, or finished if leadership was already lost.
        let _ = (&mut self.task).await;
        let elector = &self.elector;
        let Some(mut lease) = elector
            .api
            .get_opt(&elector.name)
            .await
            .map_err(|source| elector.error("reading", source))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(elector.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match elector.api.replace(&elector.name, &params, &lease).await {
            Ok(_) => {
                tracing::info!(lease = %elector.name, "released leadership");
                Ok(())
            }
            // Someone else wrote the Lease since: it is no longer ours to release.
            Err(source) if lost_race(&source) => Ok(()),
            Err(source) => Err(elector.error("releasing", source)),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A failure that may repeat at every retry, logged when it starts, when its cause
/// changes and when it ends, rather than at every retry.
struct Failing {
    /// What is being retried, such as "renewing the Lease".
    what: &'static str,
    /// The cause of the last failure, while failing.
    cause: Option<String>,
}

impl Failing {
    fn new(what: &'static str) -> Self {
        Self { what, cause: None }
    }

    /// Records a failure for `cause`, logging it unless the last attempt failed the
    /// same way; says whether it logged.
    fn failed(&mut self, lease: &str, cause: &str) -> bool {
        let new = self.cause.as_deref() != Some(cause);
        if new {
            tracing::warn!(%lease, error = %cause, "{} failed; retrying", self.what);
            self.cause = Some(cause.to_owned());
        }
        new
    }

    /// Records a success, logging it if it ends a failure; says whether it logged.
    fn succeeded(&mut self, lease: &str) -> bool {
        let ended = self.cause.take().is_some();
        if ended {
            tracing::info!(%lease, "{} works again", self.what);
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};

    const ME: &str = "replica-a";
    const OTHER: &str = "replica-b";
    const LEASE: &str = "zeroscale-operator";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("a valid timestamp")
    }

    /// A Lease held by `holder` (`""` for none), last renewed at `renewed`.
    fn lease(holder: &str, renewed: Timestamp, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(LEASE.to_owned()),
                namespace: Some("default".to_owned()),
                resource_version: Some("7".to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                acquire_time: Some(MicroTime(renewed)),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(15),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn next_step_follows_the_lease_rules() {
        let fifteen = Duration::from_secs(15);
        let no_duration = {
            let mut lease = lease(OTHER, at(0), 1);
            if let Some(spec) = lease.spec.as_mut() {
                spec.lease_duration_seconds = None;
            }
            lease
        };
        let never_renewed = {
            let mut lease = lease(OTHER, at(0), 1);
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = None;
            }
            lease
        };
        let no_times = {
            let mut lease = lease(OTHER, at(0), 1);
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = None;
                spec.acquire_time = None;
            }
            lease
        };
        let no_spec = Lease {
            spec: None,
            ..lease(OTHER, at(0), 0)
        };
        let cases: Vec<(&str, Option<Lease>, Timestamp, Duration, Step)> = vec![
            ("no lease is created", None, at(0), fifteen, Step::Create),
            (
                "our own lease is renewed",
                Some(lease(ME, at(0), 3)),
                at(5),
                fifteen,
                Step::Renew,
            ),
            (
                "our own expired lease is still renewed",
                Some(lease(ME, at(0), 3)),
                at(60),
                fifteen,
                Step::Renew,
            ),
            (
                "another holder's fresh lease is waited on",
                Some(lease(OTHER, at(0), 3)),
                at(14),
                fifteen,
                Step::Wait {
                    holder: OTHER.to_owned(),
                    expires: at(15),
                },
            ),
            (
                "another holder's lease expires exactly at renewTime plus its duration",
                Some(lease(OTHER, at(0), 3)),
                at(15),
                fifteen,
                Step::TakeOver {
                    lease_transitions: 4,
                },
            ),
            (
                "another holder's expired lease is taken over",
                Some(lease(OTHER, at(0), 3)),
                at(60),
                fifteen,
                Step::TakeOver {
                    lease_transitions: 4,
                },
            ),
            (
                "the lease's own duration wins over ours",
                Some(lease(OTHER, at(0), 3)),
                at(20),
                Duration::from_secs(60),
                Step::TakeOver {
                    lease_transitions: 4,
                },
            ),
            (
                "our duration stands in when the lease has none",
                Some(no_duration),
                at(20),
                Duration::from_secs(60),
                Step::Wait {
                    holder: OTHER.to_owned(),
                    expires: at(60),
                },
            ),
            (
                "acquireTime stands in for a missing renewTime",
                Some(never_renewed),
                at(10),
                fifteen,
                Step::Wait {
                    holder: OTHER.to_owned(),
                    expires: at(15),
                },
            ),
            (
                "a held lease with no times counts as expired",
                Some(no_times),
                at(0),
                fifteen,
                Step::TakeOver {
                    lease_transitions: 2,
                },
            ),
            (
                "an empty holder is taken even when freshly renewed",
                Some(lease("", at(0), 3)),
                at(1),
                fifteen,
                Step::TakeOver {
                    lease_transitions: 4,
                },
            ),
            (
                "a lease without a spec is taken",
                Some(no_spec),
                at(0),
                fifteen,
                Step::TakeOver {
                    lease_transitions: 1,
                },
            ),
            (
                "transitions saturate instead of overflowing",
                Some(lease(OTHER, at(0), i32::MAX)),
                at(60),
                fifteen,
                Step::TakeOver {
                    lease_transitions: i32::MAX,
                },
            ),
        ];
        for (name, lease, now, duration, expected) in cases {
            assert_eq!(
                next_step(lease.as_ref(), ME, now, duration),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn lease_durations_are_written_in_whole_seconds_rounded_up() {
        assert_eq!(whole_seconds(Duration::from_secs(15)), 15);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::MAX), i32::MAX);
    }

    #[test]
    fn a_repeated_failure_is_logged_when_it_starts_changes_and_ends() {
        let mut failing = Failing::new("renewing the Lease");
        let logged: Vec<bool> = vec![
            failing.succeeded(LEASE),
            failing.failed(LEASE, "503"),
            failing.failed(LEASE, "503"),
            failing.failed(LEASE, "connection refused"),
            failing.failed(LEASE, "connection refused"),
            failing.succeeded(LEASE),
            failing.succeeded(LEASE),
            failing.failed(LEASE, "connection refused"),
        ];
        assert_eq!(logged, [false, true, false, true, false, true, false, true]);
    }

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// The API server side of a mocked client: receives each request in turn.
    struct ApiServer(Handle);

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

    impl ApiServer {
        /// Receives the next request, checks its method and path, and returns its
        /// JSON body (`Value::Null` when empty) and the means to answer it.
        async fn expect(
            &mut self,
            method: Method,
            path: &str,
        ) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
            let (request, respond) = self.0.next_request().await.expect("a request");
            assert_eq!(request.method(), method);
            assert_eq!(request.uri().path(), path);
            if method != Method::GET {
                let query = request.uri().query().unwrap_or_default();
                assert!(query.contains("fieldManager=zeroscale-operator"), "{query}");
            }
            let bytes = request.into_body().collect_bytes().await.expect("a body");
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("a JSON body")
            };
            (body, respond)
        }

        async fn get_lease(&mut self, lease: Option<&Lease>) {
            let (_, respond) = self.expect(Method::GET, &format!("{LEASES}/{LEASE}")).await;
            match lease {
                Some(lease) => respond.send_response(json_response(StatusCode::OK, lease)),
                None => respond.send_response(status_response(404, "NotFound")),
            }
        }
    }

    fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
        let bytes = serde_json::to_vec(body).expect("serializable");
        Response::builder()
            .status(status)
            .body(Body::from(bytes))
            .expect("a valid response")
    }

    fn status_response(code: u16, reason: &str) -> Response<Body> {
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": format!("{reason} (test)"),
            "reason": reason,
            "code": code,
        });
        json_response(StatusCode::from_u16(code).expect("a status code"), &status)
    }

    /// An elector for `LEASE` as `ME`, talking to a mocked API server.
    fn elector() -> (LeaderElector, ApiServer) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let elector = LeaderElector::new(Api::default_namespaced(client), LEASE, ME);
        (elector, ApiServer(handle))
    }

    /// Runs `test` within a second, so a missing request fails instead of hanging.
    async fn within_a_second(test: impl Future<Output = ()>) {
        tokio::time::timeout(Duration::from_secs(1), test)
            .await
            .expect("the test finished within a second");
    }

    #[tokio::test]
    async fn acquiring_without_a_lease_creates_one_naming_this_replica() {
        let (elector, mut server) = elector();
        within_a_second(async {
            let attempt = tokio::spawn(async move { elector.try_acquire_or_renew().await });
            server.get_lease(None).await;
            let (body, respond) = server.expect(Method::POST, LEASES).await;
            assert_eq!(body["metadata"]["name"], LEASE);
            assert_eq!(body["spec"]["holderIdentity"], ME);
            assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
            assert_eq!(body["spec"]["leaseTransitions"], 0);
            assert!(body["spec"]["renewTime"].is_string(), "{body}");
            respond.send_response(json_response(StatusCode::CREATED, &body));
            let attempt = attempt.await.expect("the attempt ran");
            assert_eq!(attempt.expect("no error"), Attempt::Leading);
        })
        .await;
    }

    #[tokio::test]
    async fn a_conflict_on_create_leaves_this_replica_following() {
        let (elector, mut server) = elector();
        within_a_second(async {
            let attempt = tokio::spawn(async move { elector.try_acquire_or_renew().await });
            server.get_lease(None).await;
            let (_, respond) = server.expect(Method::POST, LEASES).await;
            respond.send_response(status_response(409, "AlreadyExists"));
            let attempt = attempt.await.expect("the attempt ran");
            assert_eq!(
                attempt.expect("no error"),
                Attempt::Following { holder: None }
            );
        })
        .await;
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_at_the_resource_version_read() {
        let (elector, mut server) = elector();
        within_a_second(async {
            let attempt = tokio::spawn(async move { elector.try_acquire_or_renew().await });
            let expired = lease(OTHER, at(0), 2);
            server.get_lease(Some(&expired)).await;
            let (body, respond) = server
                .expect(Method::PUT, &format!("{LEASES}/{LEASE}"))
                .await;
            assert_eq!(body["metadata"]["resourceVersion"], "7");
            assert_eq!(body["spec"]["holderIdentity"], ME);
            assert_eq!(body["spec"]["leaseTransitions"], 3);
            respond.send_response(json_response(StatusCode::OK, &body));
            let attempt = attempt.await.expect("the attempt ran");
            assert_eq!(attempt.expect("no error"), Attempt::Leading);
        })
        .await;
    }

    #[tokio::test]
    async fn a_conflict_on_take_over_leaves_this_replica_following() {
        let (elector, mut server) = elector();
        within_a_second(async {
            let attempt = tokio::spawn(async move { elector.try_acquire_or_renew().await });
            server.get_lease(Some(&lease(OTHER, at(0), 2))).await;
            let (_, respond) = server
                .expect(Method::PUT, &format!("{LEASES}/{LEASE}"))
                .await;
            respond.send_response(status_response(409, "Conflict"));
            let attempt = attempt.await.expect("the attempt ran");
            assert_eq!(
                attempt.expect("no error"),
                Attempt::Following { holder: None }
            );
        })
        .await;
    }

    #[tokio::test]
    async fn a_fresh_lease_held_by_another_replica_is_left_alone() {
        let (elector, mut server) = elector();
        within_a_second(async {
            let attempt = tokio::spawn(async move { elector.try_acquire_or_renew().await });
            server
                .get_lease(Some(&lease(OTHER, Timestamp::now(), 2)))
                .await;
            let attempt = attempt.await.expect("the attempt ran");
            assert_eq!(
                attempt.expect("no error"),
                Attempt::Following {
                    holder: Some(OTHER.to_owned())
                }
            );
            // The elector and its client are gone, and they wrote nothing.
            assert!(server.0.next_request().await.is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn a_forbidden_lease_fails_acquiring_instead_of_retrying() {
        let (elector, mut server) = elector();
        within_a_second(async {
            let acquired = tokio::spawn(async move { elector.acquire().await.map(drop) });
            let (_, respond) = server
                .expect(Method::GET, &format!("{LEASES}/{LEASE}"))
                .await;
            respond.send_response(status_response(403, "Forbidden"));
            let acquired = acquired.await.expect("acquire ran");
            assert!(
                matches!(
                    acquired,
                    Err(Error::Lease {
                        action: "reading",
                        ..
                    })
                ),
                "{acquired:?}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn a_missing_namespace_is_named_as_the_cause_until_creating_the_lease_works() {
        let (elector, mut server) = elector();
        let readiness = Readiness::not_ready("starting");
        let elector = elector
            .with_renew_period(Duration::from_millis(10))
            .with_readiness(readiness.clone());
        within_a_second(async {
            let acquired = tokio::spawn(async move { elector.acquire().await });
            server.get_lease(None).await;
            let (_, respond) = server.expect(Method::POST, LEASES).await;
            respond.send_response(status_response(404, "NotFound"));
            // The retry's read comes after the failure was reported.
            server.get_lease(None).await;
            let reason = readiness.reason().unwrap_or_default();
            assert!(
                reason.starts_with(
                    "cannot reach the leader Lease: the Lease's namespace \"default\" does not \
                     exist: creating Lease zeroscale-operator: "
                ),
                "{reason}"
            );
            assert!(reason.contains("NotFound (test)"), "{reason}");

            let (created, respond) = server.expect(Method::POST, LEASES).await;
            respond.send_response(json_response(StatusCode::CREATED, &created));
            acquired.await.expect("acquire ran").expect("leadership");
            assert_eq!(readiness.reason(), None);
        })
        .await;
    }

    #[tokio::test]
    async fn the_leader_renews_its_lease_until_another_replica_holds_it() {
        let (elector, mut server) = elector();
        let elector = elector.with_renew_period(Duration::from_millis(10));
        within_a_second(async {
            let acquired = tokio::spawn(async move { elector.acquire().await });
            server.get_lease(None).await;
            let (created, respond) = server.expect(Method::POST, LEASES).await;
            respond.send_response(json_response(StatusCode::CREATED, &created));
            let leadership = acquired.await.expect("acquire ran").expect("leadership");

            let mut ours: Lease = serde_json::from_value(created).expect("a Lease");
            ours.metadata.resource_version = Some("8".to_owned());
            server.get_lease(Some(&ours)).await;
            let (renewed, respond) = server
                .expect(Method::PUT, &format!("{LEASES}/{LEASE}"))
                .await;
            assert_eq!(renewed["metadata"]["resourceVersion"], "8");
            assert_eq!(renewed["spec"]["holderIdentity"], ME);
            respond.send_response(json_response(StatusCode::OK, &renewed));

            server
                .get_lease(Some(&lease(OTHER, Timestamp::now(), 1)))
                .await;
            leadership.lost().await;
        })
        .await;
    }

    #[tokio::test]
    async fn releasing_leadership_clears_the_holder() {
        let (elector, mut server) = elector();
        within_a_second(async {
            let acquired = tokio::spawn(async move { elector.acquire().await });
            server.get_lease(None).await;
            let (created, respond) = server.expect(Method::POST, LEASES).await;
            respond.send_response(json_response(StatusCode::CREATED, &created));
            let leadership = acquired.await.expect("acquire ran").expect("leadership");

            let released = tokio::spawn(leadership.release());
            let ours: Lease = serde_json::from_value(created).expect("a Lease");
            server.get_lease(Some(&ours)).await;
            let (body, respond) = server
                .expect(Method::PUT, &format!("{LEASES}/{LEASE}"))
                .await;
            assert_eq!(body["spec"].get("holderIdentity"), None, "{body}");
            assert_eq!(body["spec"]["leaseTransitions"], 0);
            respond.send_response(json_response(StatusCode::OK, &body));
            released.await.expect("release ran").expect("released");
        })
        .await;
    }
}
