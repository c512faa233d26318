//! Schedule triggers in a cluster: the scheduler of `zeroscale-triggers` over the
//! Functions the controllers watch, its records kept in each Function's status
//! ([`KubeStore`]: a patch of the status subresource that carries the resourceVersion
//! it read, so a stale or deposed replica's write fails with 409), its calls sent
//! through the activator Service ([`in_cluster`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::{Function, ScheduleStatus};
use zeroscale_triggers::{
    Error, HttpInvoker, Notice, Result, ScheduleMetrics, ScheduleStore, Scheduler, SystemClock,
    Versioned, key_of,
};

use crate::watched::WatchedFunctions;

/// The field manager of the scheduler's status writes (merge patches of
/// `status.schedules` only; the reconciler's status apply never includes that field).
pub const SCHEDULER_FIELD_MANAGER: &str = "zeroscale-scheduler";

/// A scheduler for the cluster: records in the status of the Functions the controllers
/// watch (`functions`), calls through the activator Service (`activator_host`),
/// wall-clock time.
pub fn in_cluster(
    client: kube::Client,
    reporter: kube::runtime::events::Reporter,
    functions: Arc<WatchedFunctions>,
    activator_host: &str,
    identity: String,
    metrics: ScheduleMetrics,
) -> Scheduler<KubeStore, HttpInvoker, SystemClock> {
    // Port 80 of the activator Service, where Function Services send their callers too.
    let address = format!("{activator_host}:80");
    Scheduler::new(
        KubeStore::new(client, reporter, functions),
        HttpInvoker::new(address),
        SystemClock,
        identity,
        metrics,
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
        let keys: HashSet<FunctionKey> =
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
                function: key.clone(),
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
                kube::Error::Api(status) if status.code == 409 => Error::Conflict {
                    function: key.clone(),
                },
                source => Error::Write {
                    function: key.clone(),
                    source: Box::new(source),
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
