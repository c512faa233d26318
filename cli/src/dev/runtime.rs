//! The process runtime: local processes behind the same two narrow interfaces the
//! Kubernetes runtime implements. The autoscaler loop sees it as a
//! [`Runtime`] (targets and scale), the activator as a [`Wake`]. Each Function has a
//! [`Supervisor`] task; this table only steers them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zeroscale_activator::functions::Functions;
use zeroscale_activator::wake::Wake;
use zeroscale_api::conditions::Reason as ConditionReason;
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::{Function, FunctionStatus};
use zeroscale_autoscaler::{Decision, Reason, Replicas, Runtime, Target};

use super::console;
use super::local::LocalFunction;
use super::supervisor::{self, Shared, Supervisor};

/// Every Function `zeroscale dev` runs.
pub struct ProcessRuntime {
    functions: Arc<Functions>,
    entries: Mutex<BTreeMap<FunctionKey, Entry>>,
}

struct Entry {
    /// The Function as last loaded, sent to its supervisor.
    updates: watch::Sender<Arc<LocalFunction>>,
    desired: watch::Sender<i32>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Entry {
    /// The Function as last loaded.
    fn function(&self) -> Arc<LocalFunction> {
        Arc::clone(&self.updates.borrow())
    }
}

impl ProcessRuntime {
    /// A runtime that publishes replicas to the activator's `functions`.
    pub fn new(functions: Arc<Functions>) -> Self {
        Self {
            functions,
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    fn entries(&self) -> MutexGuard<'_, BTreeMap<FunctionKey, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a Function at its initial scale, or updates one whose manifest changed.
    /// Returns false when nothing changed.
    pub fn upsert(&self, function: LocalFunction) -> bool {
        let mut entries = self.entries();
        if let Some(entry) = entries.get(&function.key) {
            if !entry.updates.borrow().differs_from(&function) {
                return false;
            }
            entry.updates.send_replace(Arc::new(function));
            return true;
        }
        let initial = match &function.plan {
            Ok(plan) => plan.policy.initial_replicas,
            Err(_) => 0,
        };
        // Routed before this returns, so a request right after the load finds it.
        supervisor::publish_status(&self.functions, &function, function.plan_failure());
        let function = Arc::new(function);
        let (updates, updates_rx) = watch::channel(Arc::clone(&function));
        let (desired, desired_rx) = watch::channel(initial);
        let shared = Arc::new(Shared {
            ready: AtomicI32::new(0),
            failed: AtomicBool::new(function.plan.is_err()),
        });
        let task = tokio::spawn(Supervisor::run(
            updates_rx,
            desired_rx,
            Arc::clone(&self.functions),
            Arc::clone(&shared),
        ));
        entries.insert(
            function.key.clone(),
            Entry {
                updates,
                desired,
                shared,
                task,
            },
        );
        true
    }

    /// Stops a Function's replicas and forgets it; resolves once they have exited.
    pub async fn remove(&self, key: &FunctionKey) {
        let entry = self.entries().remove(key);
        self.functions.remove(key);
        if let Some(entry) = entry {
            drop(entry.updates);
            let _ = entry.task.await;
        }
    }

    /// Stops every Function's replicas; resolves once all have exited.
    pub async fn shutdown(&self) {
        let entries = std::mem::take(&mut *self.entries());
        let tasks: Vec<_> = entries
            .into_values()
            .map(|entry| {
                drop(entry.updates);
                entry.task
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    /// The Functions loaded from `source`.
    pub fn keys_from(&self, source: &std::path::Path) -> Vec<FunctionKey> {
        self.entries()
            .values()
            .map(Entry::function)
            .filter(|function| function.source == source)
            .map(|function| function.key.clone())
            .collect()
    }

    /// Every Function as the manifests define it now.
    pub fn functions(&self) -> Vec<Function> {
        self.entries()
            .values()
            .map(|entry| entry.function().routed.clone())
            .collect()
    }

    /// The Function `key` as its manifest defines it now, when it has queue triggers.
    pub fn with_queue_triggers(&self, key: &FunctionKey) -> Option<Arc<Function>> {
        let function = self.entries().get(key)?.function();
        (!function.routed.spec.triggers.queues.is_empty())
            .then(|| Arc::new(function.routed.clone()))
    }

    /// Every Function with the status a cluster would show: replicas ready and desired,
    /// and `Ready` (cannot start, serving, at zero, or starting). `url` names the
    /// Function's URL.
    pub fn view(&self, url: impl Fn(&LocalFunction) -> String) -> Vec<Function> {
        let now = Time(jiff::Timestamp::now());
        self.entries()
            .values()
            .map(|entry| {
                let local = entry.function();
                let desired = *entry.desired.borrow();
                let ready = entry.shared.ready.load(Ordering::Relaxed);
                let (reason, message) = match (&local.plan, local.plan_failure()) {
                    (Err((reason, _)), Some(message)) => (*reason, message.to_owned()),
                    _ if entry.shared.failed.load(Ordering::Relaxed) => (
                        ConditionReason::DeploymentFailed,
                        "replicas keep exiting".into(),
                    ),
                    _ if ready > 0 => (
                        ConditionReason::Serving,
                        format!("{ready} of {desired} replicas ready"),
                    ),
                    _ if desired == 0 => (ConditionReason::ScaledToZero, "at zero".into()),
                    _ => (ConditionReason::Deploying, "replicas starting".into()),
                };
                let mut status = FunctionStatus {
                    replicas: Some(desired),
                    ready_replicas: Some(ready),
                    desired_replicas: Some(desired),
                    url: Some(url(&local)),
                    ..FunctionStatus::default()
                };
                status.set_ready(reason, message, None, now.clone());
                let mut function = local.routed.clone();
                function.status = Some(status);
                function
            })
            .collect()
    }

    /// The manifest a Function was loaded from.
    pub fn source_of(&self, key: &FunctionKey) -> Option<std::path::PathBuf> {
        self.entries()
            .get(key)
            .map(|entry| entry.function().source.clone())
    }
}

impl Runtime for ProcessRuntime {
    fn targets(&self) -> Vec<Target> {
        self.entries()
            .values()
            .filter(|entry| !entry.shared.failed.load(Ordering::Relaxed))
            .filter_map(|entry| {
                let function = entry.function();
                let plan = function.plan.as_ref().ok()?;
                Some(Target {
                    key: function.key.clone(),
                    policy: plan.policy.clone(),
                    replicas: Replicas {
                        desired: *entry.desired.borrow(),
                        ready: entry.shared.ready.load(Ordering::Relaxed),
                    },
                    resources: zeroscale_api::usage::PodResources::from_requirements(
                        function.routed.spec.resources.as_ref(),
                    ),
                })
            })
            .collect()
    }

    async fn scale(
        &self,
        function: &FunctionKey,
        from: i32,
        decision: Decision,
    ) -> zeroscale_autoscaler::Result<()> {
        let entries = self.entries();
        let Some(entry) = entries.get(function) else {
            return Ok(());
        };
        entry.desired.send_replace(decision.desired);
        let function = entry.function();
        let why = match decision.reason {
            Reason::ScaleToZero => match &function.plan {
                Ok(plan) => format!(
                    "idle {}",
                    console::duration(plan.policy.scale_to_zero_grace_period)
                ),
                Err(_) => "idle".into(),
            },
            Reason::Wake => "wake".into(),
            Reason::Stable => "load".into(),
            Reason::Panic => "load burst".into(),
            Reason::HoldingForGracePeriod => "holding for the grace period".into(),
            Reason::ScaleDownDelayed => "scale-down delay".into(),
            Reason::AtMin => "minReplicas".into(),
            Reason::AtMax => "maxReplicas".into(),
            Reason::NoData => "no data".into(),
            Reason::Backlog => "queue backlog".into(),
        };
        console::event(format_args!(
            "{}: {from} -> {} ({why})",
            function.label, decision.desired
        ));
        Ok(())
    }
}

impl Wake for ProcessRuntime {
    fn wake(&self, function: &FunctionKey) {
        let entries = self.entries();
        let Some(entry) = entries.get(function) else {
            return;
        };
        let function = entry.function();
        let Ok(plan) = &function.plan else {
            return;
        };
        if entry.shared.failed.load(Ordering::Relaxed) {
            return;
        }
        let to = plan.policy.wake_scale();
        let woke = entry.desired.send_if_modified(|desired| {
            let wake = *desired == 0;
            if wake {
                *desired = to;
            }
            wake
        });
        if woke {
            console::event(format_args!("{}: 0 -> {to} (wake)", function.label));
        }
    }
}
