//! Where the scheduler finds Functions and keeps its per-trigger records: read them,
//! and write them only if nothing changed since the read. In a cluster that is the
//! Function's status ([`KubeStore`]: a patch of the status subresource that carries the
//! resourceVersion it read, so a stale or deposed replica's write fails with 409); in
//! tests, `zeroscale dev` and the bench, a map in memory ([`MemoryStore`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::{Function, ScheduleStatus};

use crate::watched::WatchedFunctions;
use crate::{Error, Result};

/// The field manager of the scheduler's status writes (merge patches of
/// `status.schedules` only; the reconciler's status apply never includes that field).
pub const SCHEDULER_FIELD_MANAGER: &str = "zeroscale-scheduler";

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
    /// [`Error::ScheduleConflict`] otherwise.
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

/// Records in the Function's status, read from the controllers' watch cache and
/// written with a resourceVersion precondition.
pub struct KubeStore {
    client: kube::Client,
    recorder: kube::runtime::events::Recorder,
    /// The Functions the controllers watch.
    functions: Arc<WatchedFunctions>,
    /// Per Function, the version this store last wrote over and what that write
    /// returned: while the watch cache still shows the overwritten version, reads return
    /// the write's result instead, so a lagging cache costs no conflict.
    written: Mutex<HashMap<FunctionKey, (String, Versioned)>>,
}

impl KubeStore {
    /// A store over the Functions the controllers watch, its Events naming `reporter`.
    pub fn new(
        client: kube::Client,
        reporter: kube::runtime::events::Reporter,
        functions: Arc<WatchedFunctions>,
    ) -> Self {
        Self {
            recorder: kube::runtime::events::Recorder::new(client.clone(), reporter),
            client,
            functions,
            written: Mutex::new(HashMap::new()),
        }
    }

    fn written(&self) -> MutexGuard<'_, HashMap<FunctionKey, (String, Versioned)>> {
        self.written.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ScheduleStore for KubeStore {
    fn functions(&self) -> Vec<Arc<Function>> {
        let functions: Vec<Arc<Function>> = self
            .functions
            .all()
            .into_iter()
            .filter(|function| !function.spec.triggers.schedules.is_empty())
            .collect();
        let keys: std::collections::HashSet<FunctionKey> =
            functions.iter().map(|function| key_of(function)).collect();
        self.written().retain(|key, _| keys.contains(key));
        functions
    }

    async fn read(&self, key: &FunctionKey) -> Result<Versioned> {
        let reference = ObjectRef::new(&key.name).within(&key.namespace);
        let function = self
            .functions
            .get(&reference)
            .ok_or_else(|| Error::FunctionGone {
                name: key.to_string(),
            })?;
        let version = function.resource_version().unwrap_or_default();
        if let Some((over, result)) = self.written().get(key)
            && *over == version
        {
            return Ok(result.clone());
        }
        Ok(Versioned {
            version,
            schedules: function
                .status
                .as_ref()
                .map(|status| status.schedules.clone())
                .unwrap_or_default(),
        })
    }

    async fn write(
        &self,
        key: &FunctionKey,
        version: &str,
        schedules: &[ScheduleStatus],
    ) -> Result<Versioned> {
        let api: Api<Function> = Api::namespaced(self.client.clone(), &key.namespace);
        let body = serde_json::json!({
            "metadata": {"resourceVersion": version},
            "status": {"schedules": schedules},
        });
        let params = PatchParams {
            field_manager: Some(SCHEDULER_FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let function = api
            .patch_status(&key.name, &params, &Patch::Merge(body))
            .await
            .map_err(|source| match source {
                kube::Error::Api(status) if status.code == 409 => Error::ScheduleConflict {
                    name: key.to_string(),
                },
                source => Error::WriteSchedules {
                    name: key.to_string(),
                    source,
                },
            })?;
        let result = Versioned {
            version: function.resource_version().unwrap_or_default(),
            schedules: function
                .status
                .map(|status| status.schedules)
                .unwrap_or_default(),
        };
        self.written()
            .insert(key.clone(), (version.to_owned(), result.clone()));
        Ok(result)
    }

    async fn notify(&self, function: &Function, notice: Notice) {
        let event = Event {
            type_: EventType::Warning,
            reason: notice.reason.into(),
            note: Some(notice.note),
            action: "Schedule".into(),
            secondary: None,
        };
        if let Err(error) = self
            .recorder
            .publish(&event, &function.object_ref(&()))
            .await
        {
            tracing::warn!(error = %zeroscale_admin::process::ErrorChain(&error), "publishing event failed");
        }
    }
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
            name: key.to_string(),
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
            name: key.to_string(),
        })?;
        if entry.version.to_string() != version {
            return Err(Error::ScheduleConflict {
                name: key.to_string(),
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
