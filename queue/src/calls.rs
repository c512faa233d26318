//! Storing asynchronous calls: [`CallStore::accept`] publishes a call to
//! [`names::CALLS_STREAM`] and returns its id only once JetStream acknowledged it;
//! [`CallStore::state`] and [`CallStore::cancel`] read and change the call's state in
//! the Function's key-value bucket, kept for its result retention.
//!
//! A stored call is one JetStream message: the request body as payload, the request
//! head in headers (`Zs-*` for zeroscale's own, `Http-<name>` for the caller's).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroscale_api::routing::FunctionKey;

use zeroscale_admin::process::ErrorChain;

use crate::connect::REQUEST_TIMEOUT;
use crate::{Error, Result, names};

/// Header names of a stored call.
pub(crate) mod header {
    pub const CALL_ID: &str = "Zs-Call-Id";
    pub const METHOD: &str = "Zs-Method";
    pub const PATH: &str = "Zs-Path";
    pub const ACCEPTED_MS: &str = "Zs-Accepted-Ms";
    pub const CALLBACK: &str = "Zs-Callback";
    pub const ERROR: &str = "Zs-Error";
    pub const ATTEMPTS: &str = "Zs-Attempts";
    /// Prefix of the caller's own headers.
    pub const HTTP_PREFIX: &str = "Http-";
}

/// How long JetStream remembers a message id to drop a second publish of one call.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long dead calls are kept in [`names::DEAD_LETTER_STREAM`].
const DEAD_LETTER_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// A request to store.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The caller's headers worth passing on (no hop-by-hop ones, no Host).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The caller's `Idempotency-Key`: a second call with it gets the first one's id.
    pub idempotency_key: Option<String>,
    /// Where the outcome is POSTed (`X-Callback-Url`).
    pub callback_url: Option<String>,
}

/// Where a call is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Queued,
    Running,
    Succeeded,
    /// The Function answered with an error that is not retried.
    Failed,
    /// Attempts or age exhausted: in the dead-letter stream.
    Dead,
    Cancelled,
}

impl Phase {
    /// Whether nothing will happen to the call any more.
    pub fn is_final(self) -> bool {
        !matches!(self, Phase::Queued | Phase::Running)
    }
}

/// What `GET /.zeroscale/calls/<id>` answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CallState {
    pub id: String,
    pub state: Phase,
    pub attempts: u32,
    /// Status of the Function's last response, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub accepted_at_ms: u64,
    pub updated_at_ms: u64,
}

/// What [`CallStore::cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// The call will not be delivered.
    Done,
    /// No such call (or its state expired).
    Unknown,
    /// Too late: the call is being delivered or is over.
    TooLate(Phase),
}

/// Stores calls and their state. Cheap to clone.
#[derive(Clone)]
pub struct CallStore {
    client: async_nats::Client,
    js: jetstream::Context,
    buckets: Arc<Mutex<HashMap<FunctionKey, kv::Store>>>,
    random: SystemRandom,
    /// Set once the streams are known to exist, so the first call after a start does
    /// not wait for the dispatcher to create them (it was refused with 503 before).
    streams_ready: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for CallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStore").finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` has the shape of a call id (so it can be used as a key safely).
pub fn is_call_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn state_key(id: &str) -> String {
    format!("call.{id}")
}

impl CallStore {
    pub fn new(client: async_nats::Client) -> Self {
        let js = jetstream::new(client.clone());
        Self {
            client,
            js,
            buckets: Arc::default(),
            random: SystemRandom::new(),
            streams_ready: Arc::default(),
        }
    }

    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Whether the client is connected to the broker right now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Creates the calls and dead-letter streams unless they exist.
    pub async fn ensure_streams(&self) -> Result<()> {
        let streams = [
            stream::Config {
                name: names::CALLS_STREAM.into(),
                subjects: vec![names::CALLS_SUBJECTS.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            },
            stream::Config {
                name: names::DEAD_LETTER_STREAM.into(),
                subjects: vec![names::DEAD_LETTER_SUBJECTS.into()],
                max_age: DEAD_LETTER_AGE,
                ..Default::default()
            },
        ];
        for config in streams {
            let name = config.name.clone();
            self.js
                .get_or_create_stream(config)
                .await
                .map_err(|source| Error::CreateStream {
                    name,
                    source: source.into(),
                })?;
        }
        Ok(())
    }

    /// The Function's state bucket, created with `retention` as its age limit.
    pub(crate) async fn bucket(
        &self,
        function: &FunctionKey,
        retention: Duration,
    ) -> Result<kv::Store> {
        if let Some(store) = self
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(function)
        {
            return Ok(store.clone());
        }
        let name = names::call_state_bucket(function);
        // The bucket's stream, created as the client's create_key_value would; that one
        // first reads account limits in a form nats-server 2.9 does not answer in.
        self.js
            .get_or_create_stream(stream::Config {
                name: format!("KV_{name}"),
                subjects: vec![format!("$KV.{name}.>")],
                max_messages_per_subject: 1,
                max_age: retention,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|source| Error::CreateBucket {
                name: name.clone(),
                source: source.into(),
            })?;
        let store = self
            .js
            .get_key_value(&name)
            .await
            .map_err(|source| Error::CreateBucket {
                name,
                source: source.into(),
            })?;
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(function.clone(), store.clone());
        Ok(store)
    }

    fn new_id(&self) -> Result<String> {
        let mut bytes = [0u8; 16];
        self.random.fill(&mut bytes).map_err(|_| Error::Random)?;
        Ok(hex(&bytes))
    }

    /// Stores `call` for `function` and returns its id once JetStream acknowledged it.
    /// With an idempotency key already seen within `retention`, returns the first
    /// call's id and stores nothing new.
    pub async fn accept(
        &self,
        function: &FunctionKey,
        retention: Duration,
        call: NewCall,
    ) -> Result<String> {
        if !self.connected() {
            return Err(Error::NotConnected);
        }
        if !self
            .streams_ready
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.ensure_streams().await?;
            self.streams_ready
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let bucket = self.bucket(function, retention).await?;
        let id = match &call.idempotency_key {
            None => self.new_id()?,
            Some(key) => {
                let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
                let idem_key = format!("idem.{}", hex(digest.as_ref()));
                let id = self.new_id()?;
                match bucket.create(&idem_key, Bytes::from(id.clone())).await {
                    Ok(_) => id,
                    Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                        let first = bucket
                            .get(&idem_key)
                            .await
                            .map_err(|source| Error::ReadState(source.into()))?
                            .and_then(|value| String::from_utf8(value.to_vec()).ok())
                            .filter(|id| is_call_id(id))
                            .ok_or(Error::IdempotencyRace)?;
                        let stored = bucket
                            .get(state_key(&first))
                            .await
                            .map_err(|source| Error::ReadState(source.into()))?;
                        if stored.is_some() {
                            return Ok(first);
                        }
                        // The first call's publish may have failed: publish again under
                        // its id (JetStream drops it if the first one did arrive).
                        first
                    }
                    Err(error) => return Err(Error::WriteState(error.into())),
                }
            }
        };
        let accepted_at_ms = now_ms();
        let mut headers = HeaderMap::new();
        headers.insert(header::CALL_ID, id.as_str());
        headers.insert(header::METHOD, call.method.as_str());
        headers.insert(header::PATH, call.path.as_str());
        headers.insert(header::ACCEPTED_MS, accepted_at_ms.to_string().as_str());
        if let Some(url) = &call.callback_url {
            headers.insert(header::CALLBACK, url.as_str());
        }
        for (name, value) in &call.headers {
            headers.append(
                format!("{}{name}", header::HTTP_PREFIX).as_str(),
                value.as_str(),
            );
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(call.body)
            .headers(headers)
            .message_id(&id);
        self.js
            .send_publish(names::calls_subject(function), publish)
            .await
            .map_err(|source| Error::Publish(source.into()))?
            .await
            .map_err(|source| Error::Publish(source.into()))?;
        let state = CallState {
            id: id.clone(),
            state: Phase::Queued,
            attempts: 0,
            status: None,
            last_error: None,
            accepted_at_ms,
            updated_at_ms: accepted_at_ms,
        };
        // The dispatcher may have written a later state already: keep it.
        if let Err(error) = bucket.create(state_key(&id), encode(&state)?).await
            && error.kind() != kv::CreateErrorKind::AlreadyExists
        {
            tracing::warn!(
                function = %function,
                call = %id,
                error = %ErrorChain(&error),
                "call stored but its state not written; GET answers 404 until delivery starts"
            );
        }
        Ok(id)
    }

    /// The call's state, None when unknown or expired.
    pub async fn state(
        &self,
        function: &FunctionKey,
        retention: Duration,
        id: &str,
    ) -> Result<Option<CallState>> {
        if !is_call_id(id) {
            return Ok(None);
        }
        let bucket = self.bucket(function, retention).await?;
        Ok(read_state(&bucket, id).await?.map(|(state, _)| state))
    }

    /// Cancels a call that is still queued.
    pub async fn cancel(
        &self,
        function: &FunctionKey,
        retention: Duration,
        id: &str,
    ) -> Result<Cancelled> {
        if !is_call_id(id) {
            return Ok(Cancelled::Unknown);
        }
        let bucket = self.bucket(function, retention).await?;
        let Some((mut state, revision)) = read_state(&bucket, id).await? else {
            return Ok(Cancelled::Unknown);
        };
        if state.state != Phase::Queued {
            return Ok(Cancelled::TooLate(state.state));
        }
        state.state = Phase::Cancelled;
        state.updated_at_ms = now_ms();
        match bucket
            .update(state_key(id), encode(&state)?, revision)
            .await
        {
            Ok(_) => Ok(Cancelled::Done),
            // Changed in between: the dispatcher took it.
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Ok(Cancelled::TooLate(Phase::Running))
            }
            Err(error) => Err(Error::WriteState(error.into())),
        }
    }
}

pub(crate) fn encode(state: &CallState) -> Result<Bytes> {
    serde_json::to_vec(state)
        .map(Bytes::from)
        .map_err(Error::Encode)
}

/// The call's state and its revision in the bucket.
pub(crate) async fn read_state(bucket: &kv::Store, id: &str) -> Result<Option<(CallState, u64)>> {
    let entry = tokio::time::timeout(REQUEST_TIMEOUT, bucket.entry(state_key(id)))
        .await
        .map_err(|_| Error::NotConnected)?
        .map_err(|source| Error::ReadState(source.into()))?;
    let Some(entry) = entry else {
        return Ok(None);
    };
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    let state = serde_json::from_slice(&entry.value).map_err(Error::Encode)?;
    Ok(Some((state, entry.revision)))
}

/// Writes the call's new state.
pub(crate) async fn write_state(bucket: &kv::Store, state: &CallState) -> Result<()> {
    bucket
        .put(state_key(&state.id), encode(state)?)
        .await
        .map_err(|source| Error::WriteState(source.into()))?;
    Ok(())
}

pub(crate) use header::HTTP_PREFIX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_32_lowercase_hex_digits() {
        assert!(is_call_id(&hex(&[0xab; 16])));
        assert!(!is_call_id("../../etc"));
        assert!(!is_call_id(&"A".repeat(32)));
    }

    #[test]
    fn only_queued_and_running_calls_are_pending() {
        assert!(!Phase::Queued.is_final());
        assert!(!Phase::Running.is_final());
        assert!(Phase::Dead.is_final());
        assert!(Phase::Cancelled.is_final());
    }
}
