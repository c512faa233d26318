//! Delivering stored work: for each Function, one durable pull consumer of its calls
//! (and one per queue trigger, on the user's stream) shared by every activator replica,
//! so each message goes to one replica at a time. A replica fetches no more messages
//! than it has free delivery slots (`async.maxConcurrency`, also the consumer's
//! `max_ack_pending`, which bounds all replicas together), reports progress while a
//! delivery runs so the message is not handed to another replica, and then:
//!
//! - on success acknowledges;
//! - on an outcome `retry.retryOn` lists, with attempts and age left, asks for a
//!   redelivery after an exponential backoff with jitter (NAK with delay);
//! - otherwise, after the last attempt or past `maxEventAge`, publishes the message with
//!   its last error to the dead-letter stream and then acknowledges it; an outcome that
//!   is not retried ends the call as failed.
//!
//! Actual HTTP delivery is the [`Deliver`] implementation's (the activator's own
//! listener on loopback, so a delivery wakes a Function at zero and counts for the
//! autoscaler like any request).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::StreamExt as _;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use zeroscale_admin::process::ErrorChain;
use zeroscale_api::calls::{AsyncPolicy, Outcome, RetryPolicy};
use zeroscale_api::routing::FunctionKey;

use crate::calls::{self, CallState, CallStore, Phase, header, now_ms};
use crate::{Error, Result, names};

/// How long a delivered message stays with one replica without progress reports, by
/// default: a replica that dies mid-delivery hands its messages on after this.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// How long one fetch waits on the server for messages before asking again: idle
/// Functions cost one request per consumer this often.
const FETCH_EXPIRES: Duration = Duration::from_secs(5);

/// Wait before a consumer that failed (broker away, stream missing) is tried again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// One HTTP request to make to a Function.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub function: FunctionKey,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// What a delivery came to.
#[derive(Debug, Clone)]
pub enum Response {
    /// The Function answered.
    Answered {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// No answer from the Function, and why.
    NoResponse(String),
}

/// Makes deliveries and callbacks.
pub trait Deliver: Send + Sync + 'static {
    /// Sends `delivery` to its Function and returns what came back.
    fn deliver(&self, delivery: Delivery) -> impl Future<Output = Response> + Send;

    /// POSTs `outcome` (JSON) to a caller's callback URL.
    fn callback(
        &self,
        url: String,
        outcome: Bytes,
    ) -> impl Future<Output = Result<(), CallbackError>> + Send;
}

/// Why a callback was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// The address is not allowed; never retried.
    #[error("callback refused: {0}")]
    Refused(String),
    /// It failed this time.
    #[error("callback failed: {0}")]
    Failed(String),
}

/// A queue trigger to consume.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueTarget {
    pub name: String,
    pub stream: String,
    pub subject: Option<String>,
    pub path: String,
    pub retry: RetryPolicy,
}

/// What to consume for one Function.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub function: FunctionKey,
    pub policy: AsyncPolicy,
    pub queues: Vec<QueueTarget>,
}

/// The outcome a callback receives.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct CallbackOutcome<'a> {
    id: &'a str,
    state: Phase,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    headers: Vec<(String, String)>,
    /// The Function's response body, as UTF-8 (lossy).
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs the consumers of every Function it is given.
pub struct Dispatcher<D> {
    store: CallStore,
    deliver: Arc<D>,
    ack_wait: Duration,
    running: Mutex<HashMap<FunctionKey, Consumers>>,
}

/// The target a Function's consumers run for, and their tasks.
type Consumers = (Target, Vec<JoinHandle<()>>);

impl<D> std::fmt::Debug for Dispatcher<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl<D> Drop for Dispatcher<D> {
    fn drop(&mut self) {
        let running = self
            .running
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, tasks) in running.values() {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

impl<D: Deliver> Dispatcher<D> {
    pub fn new(store: CallStore, deliver: Arc<D>) -> Self {
        Self {
            store,
            deliver,
            ack_wait: ACK_WAIT,
            running: Mutex::default(),
        }
    }

    /// Sets the ack wait of the consumers this dispatcher creates (tests shorten it).
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Consumes for exactly `targets`: starts consumers for new or changed Functions and
    /// stops those of Functions no longer given. Deliveries in flight finish.
    pub fn sync(&self, targets: Vec<Target>) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted: HashMap<FunctionKey, Target> = targets
            .into_iter()
            .map(|target| (target.function.clone(), target))
            .collect();
        running.retain(|key, (target, tasks)| {
            let keep = wanted.get(key) == Some(target);
            if !keep {
                tasks.iter().for_each(JoinHandle::abort);
            }
            keep
        });
        for (key, target) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let slots = Arc::new(Semaphore::new(target.policy.max_concurrency));
            let mut tasks = vec![tokio::spawn(consume_forever(
                self.store.clone(),
                Arc::clone(&self.deliver),
                Arc::new(Source::Calls(target.clone())),
                Arc::clone(&slots),
                self.ack_wait,
            ))];
            for queue in &target.queues {
                tasks.push(tokio::spawn(consume_forever(
                    self.store.clone(),
                    Arc::clone(&self.deliver),
                    Arc::new(Source::Queue(target.clone(), queue.clone())),
                    Arc::clone(&slots),
                    self.ack_wait,
                )));
            }
            running.insert(key, (target, tasks));
        }
    }
}

/// What one consumer delivers.
#[derive(Debug)]
enum Source {
    Calls(Target),
    Queue(Target, QueueTarget),
}

impl Source {
    fn target(&self) -> &Target {
        match self {
            Source::Calls(target) | Source::Queue(target, _) => target,
        }
    }

    fn retry(&self) -> &RetryPolicy {
        match self {
            Source::Calls(target) => &target.policy.retry,
            Source::Queue(_, queue) => &queue.retry,
        }
    }

    fn consumer_name(&self) -> String {
        match self {
            Source::Calls(target) => names::calls_consumer(&target.function),
            Source::Queue(target, queue) => names::queue_consumer(&target.function, &queue.name),
        }
    }

    fn dead_subject(&self) -> String {
        match self {
            Source::Calls(target) => names::dead_calls_subject(&target.function),
            Source::Queue(target, queue) => {
                names::dead_queue_subject(&target.function, &queue.name)
            }
        }
    }
}

async fn consume_forever<D: Deliver>(
    store: CallStore,
    deliver: Arc<D>,
    source: Arc<Source>,
    slots: Arc<Semaphore>,
    ack_wait: Duration,
) {
    loop {
        if let Err(error) = consume(&store, &deliver, &source, &slots, ack_wait).await {
            tracing::warn!(
                function = %source.target().function,
                consumer = source.consumer_name(),
                error = %ErrorChain(&error),
                "consumer stopped; starting it again"
            );
        }
        tokio::time::sleep(RESTART_DELAY).await;
    }
}

async fn consume<D: Deliver>(
    store: &CallStore,
    deliver: &Arc<D>,
    source: &Arc<Source>,
    slots: &Arc<Semaphore>,
    ack_wait: Duration,
) -> Result<()> {
    let js = store.jetstream();
    let name = source.consumer_name();
    let (stream_name, filter_subject) = match &**source {
        Source::Calls(target) => {
            store.ensure_streams().await?;
            (
                names::CALLS_STREAM.to_owned(),
                names::calls_subject(&target.function),
            )
        }
        Source::Queue(_, queue) => (
            queue.stream.clone(),
            queue.subject.clone().unwrap_or_default(),
        ),
    };
    let consumer_error = |source: crate::error::NatsError| Error::CreateConsumer {
        name: name.clone(),
        source,
    };
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| consumer_error(e.into()))?;
    let max_ack_pending = i64::try_from(source.target().policy.max_concurrency).unwrap_or(i64::MAX);
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject,
                ack_policy: AckPolicy::Explicit,
                ack_wait,
                max_deliver: -1,
                max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| consumer_error(e.into()))?;
    loop {
        // Fetch only what can be delivered now, so waiting messages stay available to
        // the other replicas.
        let free = slots.available_permits();
        if free == 0 {
            drop(slots.acquire().await);
            continue;
        }
        let mut batch = consumer
            .fetch()
            .max_messages(free)
            .expires(FETCH_EXPIRES)
            .messages()
            .await
            .map_err(|e| Error::Fetch {
                name: name.clone(),
                source: e.into(),
            })?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| Error::Fetch {
                name: name.clone(),
                source: e,
            })?;
            let Ok(slot) = Arc::clone(slots).acquire_owned().await else {
                return Ok(());
            };
            let (store, deliver, source) = (store.clone(), Arc::clone(deliver), Arc::clone(source));
            tokio::spawn(async move {
                if let Err(error) = handle(&store, &deliver, &source, message, ack_wait).await {
                    tracing::warn!(
                        function = %source.target().function,
                        error = %ErrorChain(&error),
                        "delivery not settled; the message comes back after the ack wait"
                    );
                }
                drop(slot);
            });
        }
    }
}

/// What the dispatcher read from a message.
struct Work {
    /// The call id, or the stream sequence of a queue message.
    id: String,
    accepted_at_ms: u64,
    callback: Option<String>,
    delivery: Delivery,
}

fn header_value(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers
        .and_then(|headers| headers.get(name))
        .map(|value| value.as_str().to_owned())
}

fn read_work(source: &Source, message: &jetstream::Message) -> Option<Work> {
    let info = message.info().ok()?;
    let headers = message.headers.as_ref();
    let function = source.target().function.clone();
    match source {
        Source::Calls(_) => {
            let id = header_value(headers, header::CALL_ID)?;
            let mut passed = Vec::new();
            for (name, values) in headers?.iter() {
                if let Some(name) = AsRef::<str>::as_ref(name).strip_prefix(calls::HTTP_PREFIX) {
                    for value in values {
                        passed.push((name.to_owned(), value.as_str().to_owned()));
                    }
                }
            }
            passed.push(("x-call-id".into(), id.clone()));
            passed.push(("x-call-attempt".into(), info.delivered.to_string()));
            Some(Work {
                accepted_at_ms: header_value(headers, header::ACCEPTED_MS)?.parse().ok()?,
                callback: header_value(headers, header::CALLBACK),
                delivery: Delivery {
                    function,
                    method: header_value(headers, header::METHOD)?,
                    path: header_value(headers, header::PATH)?,
                    headers: passed,
                    body: message.payload.clone(),
                },
                id,
            })
        }
        Source::Queue(_, queue) => {
            let published_nanos = info.published.unix_timestamp_nanos();
            let time = jiff::Timestamp::from_nanosecond(published_nanos).ok()?;
            let id = info.stream_sequence.to_string();
            let mut passed = vec![
                ("ce-specversion".into(), "1.0".into()),
                ("ce-id".into(), id.clone()),
                (
                    "ce-source".into(),
                    format!("nats://jetstream/{}", queue.stream),
                ),
                ("ce-type".into(), "dev.zeroscale.queue.message".into()),
                ("ce-subject".into(), message.subject.to_string()),
                ("ce-time".into(), time.to_string()),
            ];
            if let Some(content_type) = header_value(headers, "Content-Type") {
                passed.push(("content-type".into(), content_type));
            }
            Some(Work {
                id,
                accepted_at_ms: u64::try_from(published_nanos / 1_000_000).unwrap_or(0),
                callback: None,
                delivery: Delivery {
                    function,
                    method: "POST".into(),
                    path: queue.path.clone(),
                    headers: passed,
                    body: message.payload.clone(),
                },
            })
        }
    }
}

/// A random duration in `[delay / 2, delay]` ("equal jitter"), so replicas that
/// failed together do not retry together.
fn jittered(delay: Duration, random: &SystemRandom) -> Duration {
    let mut bytes = [0u8; 4];
    let fraction = match random.fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 1.0,
    };
    delay / 2 + delay.mul_f64(fraction / 2.0)
}

async fn ack(message: &jetstream::Message, kind: AckKind) -> Result<()> {
    message.ack_with(kind).await.map_err(Error::Ack)
}

async fn handle<D: Deliver>(
    store: &CallStore,
    deliver: &Arc<D>,
    source: &Source,
    message: jetstream::Message,
    ack_wait: Duration,
) -> Result<()> {
    let target = source.target();
    let policy = &target.policy;
    let attempt = message
        .info()
        .map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let Some(work) = read_work(source, &message) else {
        dead_letter(
            store,
            source,
            &message,
            attempt,
            "not a message zeroscale can deliver",
        )
        .await?;
        return ack(&message, AckKind::Ack).await;
    };
    let bucket = match source {
        Source::Calls(_) => Some(
            store
                .bucket(&target.function, policy.result_retention)
                .await?,
        ),
        Source::Queue(..) => None,
    };
    let mut state = CallState {
        id: work.id.clone(),
        state: Phase::Running,
        attempts: attempt,
        status: None,
        last_error: None,
        accepted_at_ms: work.accepted_at_ms,
        updated_at_ms: now_ms(),
    };
    if let Some(bucket) = &bucket
        && let Some((prior, _)) = calls::read_state(bucket, &work.id).await?
    {
        if prior.state == Phase::Cancelled {
            return ack(&message, AckKind::Ack).await;
        }
        state.last_error = prior.last_error;
    }
    let age = Duration::from_millis(now_ms().saturating_sub(work.accepted_at_ms));
    if age > policy.max_event_age {
        let error = format!(
            "not delivered within maxEventAge ({:?}); last error: {}",
            policy.max_event_age,
            state.last_error.as_deref().unwrap_or("none")
        );
        return give_up(
            store,
            deliver,
            source,
            &message,
            bucket.as_ref(),
            state,
            &work,
            error,
        )
        .await;
    }
    if let Some(bucket) = &bucket {
        calls::write_state(bucket, &state).await?;
    }

    let message = Arc::new(message);
    let progress = {
        let message = Arc::clone(&message);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ack_wait / 3).await;
                if message.ack_with(AckKind::Progress).await.is_err() {
                    return;
                }
            }
        })
    };
    let response = deliver.deliver(work.delivery.clone()).await;
    progress.abort();

    let (outcome, status, error, headers, body) = match response {
        Response::Answered {
            status,
            headers,
            body,
        } => (
            Outcome::Status(status),
            Some(status),
            (status >= 400).then(|| format!("the Function answered {status}")),
            headers,
            Some(body),
        ),
        Response::NoResponse(reason) => (
            Outcome::ConnectFailure,
            None,
            Some(reason),
            Vec::new(),
            None,
        ),
    };
    state.status = status;
    state.updated_at_ms = now_ms();
    let Some(error) = error else {
        state.state = Phase::Succeeded;
        state.last_error = None;
        settle(deliver, bucket.as_ref(), &state, &work, headers, body).await;
        return ack(&message, AckKind::Ack).await;
    };
    state.last_error = Some(error.clone());
    let retry = source.retry();
    if !retry.retries(outcome) {
        state.state = Phase::Failed;
        settle(deliver, bucket.as_ref(), &state, &work, headers, body).await;
        return ack(&message, AckKind::Ack).await;
    }
    if attempt < retry.max_attempts {
        let delay = jittered(retry.backoff(attempt), &SystemRandom::new());
        state.state = Phase::Queued;
        if let Some(bucket) = &bucket {
            calls::write_state(bucket, &state).await?;
        }
        return ack(&message, AckKind::Nak(Some(delay))).await;
    }
    let error = format!("{error} on attempt {attempt} of {}", retry.max_attempts);
    give_up(
        store,
        deliver,
        source,
        &message,
        bucket.as_ref(),
        state,
        &work,
        error,
    )
    .await
}

/// Dead-letters the message with `error`, then acknowledges it.
#[allow(clippy::too_many_arguments)]
async fn give_up<D: Deliver>(
    store: &CallStore,
    deliver: &Arc<D>,
    source: &Source,
    message: &jetstream::Message,
    bucket: Option<&jetstream::kv::Store>,
    mut state: CallState,
    work: &Work,
    error: String,
) -> Result<()> {
    dead_letter(store, source, message, state.attempts, &error).await?;
    state.state = Phase::Dead;
    state.last_error = Some(error);
    state.updated_at_ms = now_ms();
    settle(deliver, bucket, &state, work, Vec::new(), None).await;
    ack(message, AckKind::Ack).await
}

async fn dead_letter(
    store: &CallStore,
    source: &Source,
    message: &jetstream::Message,
    attempts: u32,
    error: &str,
) -> Result<()> {
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(header::ERROR, error);
    headers.insert(header::ATTEMPTS, attempts.to_string().as_str());
    store
        .jetstream()
        .publish_with_headers(source.dead_subject(), headers, message.payload.clone())
        .await
        .map_err(|e| Error::Publish(e.into()))?
        .await
        .map_err(|e| Error::Publish(e.into()))?;
    tracing::info!(
        function = %source.target().function,
        subject = %message.subject,
        attempts,
        error,
        "dead-lettered"
    );
    Ok(())
}

/// Records a final state and sends the callback, if any, in the background.
async fn settle<D: Deliver>(
    deliver: &Arc<D>,
    bucket: Option<&jetstream::kv::Store>,
    state: &CallState,
    work: &Work,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
) {
    if let Some(bucket) = bucket
        && let Err(error) = calls::write_state(bucket, state).await
    {
        tracing::warn!(call = %state.id, error = %ErrorChain(&error), "final state not recorded");
    }
    let Some(url) = &work.callback else {
        return;
    };
    let outcome = CallbackOutcome {
        id: &state.id,
        state: state.state,
        attempts: state.attempts,
        status: state.status,
        headers,
        body: body.map(|body| String::from_utf8_lossy(&body).into_owned()),
        error: state.last_error.clone(),
    };
    let Ok(outcome) = serde_json::to_vec(&outcome) else {
        return;
    };
    let (deliver, url, id) = (Arc::clone(deliver), url.clone(), state.id.clone());
    tokio::spawn(async move { send_callback(&*deliver, url, Bytes::from(outcome), &id).await });
}

/// Attempts of one callback, and the wait before the second.
const CALLBACK_ATTEMPTS: u32 = 5;
const CALLBACK_FIRST_DELAY: Duration = Duration::from_millis(500);

async fn send_callback<D: Deliver>(deliver: &D, url: String, outcome: Bytes, id: &str) {
    let mut delay = CALLBACK_FIRST_DELAY;
    for attempt in 1..=CALLBACK_ATTEMPTS {
        match deliver.callback(url.clone(), outcome.clone()).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(call = %id, attempt, error = %ErrorChain(&error), "callback not delivered");
                if matches!(error, CallbackError::Refused(_)) {
                    return;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        let random = SystemRandom::new();
        for _ in 0..100 {
            let delay = jittered(Duration::from_secs(2), &random);
            assert!(
                delay >= Duration::from_secs(1) && delay <= Duration::from_secs(2),
                "{delay:?}"
            );
        }
    }
}
