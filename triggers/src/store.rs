//! Where the scheduler finds Functions and keeps its per-trigger records: read them,
//! and write them only if nothing changed since the read. In a cluster that is the
//! Function's status (the operator's `KubeStore`: a patch of the status subresource
//! that carries the resourceVersion it read, so a stale or deposed replica's write
//! fails with 409); in tests, `zeroscale dev` and the bench, a map in memory
//! ([`MemoryStore`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kube::ResourceExt;
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::{Function, ScheduleStatus};

use crate::{Error, Result};

/// A Function's trigger records and the version they were read at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Versioned {
    /// Opaque; a write must name the version it read.
    pub version: String,
    pub schedules: Vec<ScheduleStatus>,
}

/// A tick the store should tell people about (an Event in a cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub reason: &'static str,
    pub note: String,
}

/// Where the scheduler reads Functions and reads and conditionally writes their
/// trigger records.
pub trait ScheduleStore: Send + Sync + 'static {
    /// The Functions that have schedules.
    fn functions(&self) -> Vec<Arc<Function>>;
    /// The records of `key` now.
    fn read(&self, key: &FunctionKey) -> impl Future<Output = Result<Versioned>> + Send;
    /// Replaces the records of `key` if they are still at `version`; fails with
    /// [`Error::Conflict`] otherwise.
    fn write(
        &self,
        key: &FunctionKey,
        version: &str,
        schedules: &[ScheduleStatus],
    ) -> impl Future<Output = Result<Versioned>> + Send;
    /// Tells about a failed or missed tick of `function`.
    fn notify(&self, function: &Function, notice: Notice) -> impl Future<Output = ()> + Send;
}

/// The key of a Function.
pub fn key_of(function: &Function) -> FunctionKey {
    FunctionKey::new(
        function.namespace().unwrap_or_default(),
        function.name_any(),
    )
}

/// Records in memory, versioned by a counter: for tests, `zeroscale dev` and the bench.
/// Several schedulers sharing one store behave as replicas sharing one API server.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<HashMap<FunctionKey, Entry>>,
}

struct Entry {
    version: u64,
    function: Arc<Function>,
    schedules: Vec<ScheduleStatus>,
}

impl MemoryStore {
    /// Adds `function`, or replaces a changed one keeping its records (a new version, as
    /// a spec change is in a cluster).
    pub fn apply(&self, function: Function) {
        let key = key_of(&function);
        let mut state = self.state();
        match state.get_mut(&key) {
            Some(entry) if *entry.function == function => {}
            Some(entry) => {
                entry.version += 1;
                entry.function = Arc::new(function);
            }
            None => {
                state.insert(
                    key,
                    Entry {
                        version: 1,
                        function: Arc::new(function),
                        schedules: Vec::new(),
                    },
                );
            }
        }
    }

    /// Removes the Functions `keep` rejects.
    pub fn retain(&self, mut keep: impl FnMut(&FunctionKey) -> bool) {
        self.state().retain(|key, _| keep(key));
    }

    /// The records of `key`.
    pub fn schedules(&self, key: &FunctionKey) -> Vec<ScheduleStatus> {
        self.state()
            .get(key)
            .map(|entry| entry.schedules.clone())
            .unwrap_or_default()
    }

    fn state(&self) -> MutexGuard<'_, HashMap<FunctionKey, Entry>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ScheduleStore for MemoryStore {
    fn functions(&self) -> Vec<Arc<Function>> {
        self.state()
            .values()
            .filter(|entry| !entry.function.spec.triggers.schedules.is_empty())
            .map(|entry| Arc::clone(&entry.function))
            .collect()
    }

    async fn read(&self, key: &FunctionKey) -> Result<Versioned> {
        let state = self.state();
        let entry = state.get(key).ok_or_else(|| Error::FunctionGone {
            function: key.clone(),
        })?;
        Ok(Versioned {
            version: entry.version.to_string(),
            schedules: entry.schedules.clone(),
        })
    }

    async fn write(
        &self,
        key: &FunctionKey,
        version: &str,
        schedules: &[ScheduleStatus],
    ) -> Result<Versioned> {
        let mut state = self.state();
        let entry = state.get_mut(key).ok_or_else(|| Error::FunctionGone {
            function: key.clone(),
        })?;
        if entry.version.to_string() != version {
            return Err(Error::Conflict {
                function: key.clone(),
            });
        }
        entry.version += 1;
        entry.schedules = schedules.to_vec();
        Ok(Versioned {
            version: entry.version.to_string(),
            schedules: entry.schedules.clone(),
        })
    }

    async fn notify(&self, function: &Function, notice: Notice) {
        tracing::warn!(
            function = %key_of(function),
            reason = notice.reason,
            "{}",
            notice.note
        );
    }
}

/// A store shared by several schedulers (replicas in tests and the bench).
impl<S: ScheduleStore> ScheduleStore for Arc<S> {
    fn functions(&self) -> Vec<Arc<Function>> {
        S::functions(self)
    }

    fn read(&self, key: &FunctionKey) -> impl Future<Output = Result<Versioned>> + Send {
        S::read(self, key)
    }

    fn write(
        &self,
        key: &FunctionKey,
        version: &str,
        schedules: &[ScheduleStatus],
    ) -> impl Future<Output = Result<Versioned>> + Send {
        S::write(self, key, version, schedules)
    }

    fn notify(&self, function: &Function, notice: Notice) -> impl Future<Output = ()> + Send {
        S::notify(self, function, notice)
    }
}
