//! The scheduler loop: each round it plans every trigger of every Function with
//! schedules, writes the records the plans changed (one conditional write per Function),
//! and only once that write succeeded starts the calls it claimed. Each call retries
//! within its tick's deadline, then records its result with another conditional write.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use tokio::task::JoinSet;
use zeroscale_admin::process::ErrorChain;
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::{Function, Schedule, ScheduleStatus};

use crate::Error;
use crate::invoke::{Call, Invoker, Target};
use crate::plan::{self, Attempt, Delivery, Firing, Trigger, add, backoff};
use crate::store::{Notice, ScheduleStore, key_of};

/// What time it is for the scheduler, and how it waits.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
    fn sleep_until(&self, time: Timestamp) -> impl Future<Output = ()> + Send;
}

/// The wall clock: what runs in a cluster.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    async fn sleep_until(&self, time: Timestamp) {
        let wait = time.duration_since(Timestamp::now());
        if let Ok(wait) = Duration::try_from(wait) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A clock that starts at `origin` and runs `speed` times as fast as tokio's clock:
/// under `tokio::time::pause` it is virtual time (tests, the bench); with a speed above
/// 1 a schedule of every minute ticks every few seconds (`zeroscale dev`'s tests).
/// Clones share the origin and start: replicas that start later see the same time.
#[derive(Clone, Copy, Debug)]
pub struct ScaledClock {
    origin: Timestamp,
    start: tokio::time::Instant,
    speed: u32,
}

impl ScaledClock {
    pub fn new(origin: Timestamp, speed: u32) -> Self {
        Self {
            origin,
            start: tokio::time::Instant::now(),
            speed: speed.max(1),
        }
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> Timestamp {
        add(self.origin, self.start.elapsed() * self.speed)
    }

    async fn sleep_until(&self, time: Timestamp) {
        let wait = time.duration_since(self.now());
        if let Ok(wait) = Duration::try_from(wait) {
            tokio::time::sleep(wait / self.speed).await;
        }
    }
}

/// The scheduler's metrics.
#[derive(Clone)]
pub struct ScheduleMetrics {
    /// Ticks by result: `succeeded`, `failed` (after retries), `missed`, `skipped`.
    pub ticks: IntCounterVec,
    /// Seconds from a tick's scheduled time to its first attempt.
    pub lateness: Histogram,
}

impl ScheduleMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let ticks = IntCounterVec::new(
            Opts::new(
                "zeroscale_schedule_ticks_total",
                "Schedule ticks by result: succeeded, failed, missed, skipped",
            ),
            &["result"],
        )?;
        let lateness = Histogram::with_opts(
            HistogramOpts::new(
                "zeroscale_schedule_lateness_seconds",
                "Time from a schedule tick's scheduled time to its first attempt",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )?;
        registry.register(Box::new(ticks.clone()))?;
        registry.register(Box::new(lateness.clone()))?;
        Ok(Self { ticks, lateness })
    }
}

/// How long after a tick's deadline its sender may still be busy with it, besides the
/// last attempt's timeout: time to record the result.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);

/// How soon a round follows one whose write met a newer version.
const CONFLICT_RETRY: Duration = Duration::from_millis(100);

/// How soon a round follows one that failed otherwise (API server unreachable, ...).
const ERROR_RETRY: Duration = Duration::from_secs(1);

/// How often recording a result is tried before it is given up (the tick is then sent
/// again once its claim expires).
const RECORD_TRIES: u32 = 30;

/// How long shutdown waits for calls in flight to record their results.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A tick being sent by this process.
type InFlight = (FunctionKey, String, Timestamp);

/// Fires the ticks of every Function in a [`ScheduleStore`].
pub struct Scheduler<S, I, C> {
    shared: Arc<Shared<S, I, C>>,
    /// Longest time between rounds (they also run at every tick due).
    pub max_sleep: Duration,
}

struct Shared<S, I, C> {
    store: S,
    invoker: I,
    clock: C,
    /// This replica's name in the records.
    identity: String,
    metrics: ScheduleMetrics,
    in_flight: Mutex<HashSet<InFlight>>,
}

impl<S: ScheduleStore, I: Invoker, C: Clock> Scheduler<S, I, C> {
    pub fn new(store: S, invoker: I, clock: C, identity: String, metrics: ScheduleMetrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                invoker,
                clock,
                identity,
                metrics,
                in_flight: Mutex::new(HashSet::new()),
            }),
            max_sleep: Duration::from_secs(30),
        }
    }

    /// Runs rounds until `shutdown` resolves; then waits a little for calls in flight to
    /// record their results. Dropping the future stops everything at once, calls
    /// included.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let mut calls = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            while calls.try_join_next().is_some() {}
            let wake = self.round(&mut calls).await;
            let wake = wake.min(add(self.shared.clock.now(), self.max_sleep));
            tokio::select! {
                () = &mut shutdown => break,
                () = self.shared.clock.sleep_until(wake) => {}
            }
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, calls.join_all())
            .await
            .is_err()
        {
            tracing::warn!(
                "schedule calls still running at shutdown; the next leader sends them again"
            );
        }
    }

    /// Plans every Function once; returns when the next round is due.
    async fn round(&self, calls: &mut JoinSet<()>) -> Timestamp {
        let now = self.shared.clock.now();
        let mut wake = add(now, self.max_sleep);
        for function in self.shared.store.functions() {
            let next = match self.plan_function(&function, calls).await {
                Ok(next) => next,
                Err(Error::Conflict { .. }) => add(now, CONFLICT_RETRY),
                Err(error) => {
                    tracing::warn!(function = %key_of(&function), error = %ErrorChain(&error), "planning schedules failed");
                    add(now, ERROR_RETRY)
                }
            };
            wake = wake.min(next);
        }
        wake
    }

    async fn plan_function(
        &self,
        function: &Arc<Function>,
        calls: &mut JoinSet<()>,
    ) -> Result<Timestamp, Error> {
        let shared = &self.shared;
        let key = key_of(function);
        // An invalid spec is reported by the reconciler (Ready=False, InvalidSpec).
        let Ok(durations) = function.spec.validate() else {
            return Ok(Timestamp::MAX);
        };
        let hold = durations.request_timeout + CLAIM_MARGIN;
        let current = shared.store.read(&key).await?;
        let now = shared.clock.now();
        let schedules = &function.spec.triggers.schedules;
        let mut records: Vec<ScheduleStatus> = current
            .schedules
            .iter()
            .filter(|record| schedules.iter().any(|s| s.name == record.name))
            .cloned()
            .collect();
        let mut wake = Timestamp::MAX;
        let mut planned = Vec::new();
        for schedule in schedules {
            let Ok(trigger) = Trigger::parse(schedule) else {
                continue;
            };
            let index = records.iter().position(|r| r.name == schedule.name);
            let plan = plan::plan(
                &trigger,
                index.map(|i| &records[i]),
                now,
                &shared.identity,
                hold,
            );
            if let Some(send) = &plan.send
                && send.redelivery
                && shared
                    .in_flight()
                    .contains(&(key.clone(), schedule.name.clone(), send.tick))
            {
                // Still being sent here: its claim ran out while the call or its record
                // took longer than expected. Never send it twice from one process.
                wake = wake.min(add(now, ERROR_RETRY));
                continue;
            }
            if let Some(record) = plan.record.clone() {
                match index {
                    Some(i) => records[i] = record,
                    None => records.push(record),
                }
            }
            wake = wake.min(plan.wake.unwrap_or(Timestamp::MAX));
            planned.push((schedule, plan));
        }
        if records != current.schedules {
            shared.store.write(&key, &current.version, &records).await?;
        }
        // The tick is recorded as started: now, and only now, send it.
        for (schedule, plan) in planned {
            self.report_skipped(function, schedule, &plan).await;
            if let Some(send) = plan.send {
                self.start(calls, function, &durations, schedule, send);
            }
        }
        Ok(wake)
    }

    async fn report_skipped(&self, function: &Function, schedule: &Schedule, plan: &plan::Plan) {
        let metrics = &self.shared.metrics;
        if plan.skipped > 0 {
            metrics
                .ticks
                .with_label_values(&["skipped"])
                .inc_by(u64::from(plan.skipped));
            tracing::info!(function = %key_of(function), schedule = %schedule.name, skipped = plan.skipped, "schedule ticks skipped (suspended, or the previous call still runs)");
        }
        if plan.missed > 0 {
            metrics
                .ticks
                .with_label_values(&["missed"])
                .inc_by(u64::from(plan.missed));
            let note = format!(
                "schedule {:?}: {} tick(s) missed: found past their startingDeadline",
                schedule.name, plan.missed
            );
            self.shared
                .store
                .notify(
                    function,
                    Notice {
                        reason: "ScheduleMissed",
                        note,
                    },
                )
                .await;
        }
    }

    fn start(
        &self,
        calls: &mut JoinSet<()>,
        function: &Arc<Function>,
        durations: &zeroscale_api::validate::Durations,
        schedule: &Schedule,
        send: Firing,
    ) {
        let key = key_of(function);
        let uid = function.uid().unwrap_or_else(|| key.to_string());
        let target = Target {
            namespace: &key.namespace,
            name: &key.name,
            uid: &uid,
        };
        let call = Call::new(target, schedule, send.tick, durations.request_timeout);
        let in_flight = (key.clone(), schedule.name.clone(), send.tick);
        self.shared.in_flight().insert(in_flight.clone());
        let shared = Arc::clone(&self.shared);
        let function = Arc::clone(function);
        let name = schedule.name.clone();
        calls.spawn(async move {
            shared.deliver(&function, &name, call, &send).await;
            shared.in_flight().remove(&in_flight);
        });
    }
}

impl<S: ScheduleStore, I: Invoker, C: Clock> Shared<S, I, C> {
    fn in_flight(&self) -> MutexGuard<'_, HashSet<InFlight>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the tick, retrying failures within its deadline, then records the result.
    async fn deliver(
        &self,
        function: &Function,
        schedule: &str,
        call: Result<Call, String>,
        send: &Firing,
    ) {
        let key = key_of(function);
        let first_attempt = self.clock.now();
        let mut attempts = 0;
        let last = match call {
            Err(error) => Attempt::Failed(error),
            Ok(call) => loop {
                attempts += 1;
                let attempt = self.invoker.call(&call).await;
                let retry_at = add(self.clock.now(), backoff(attempts));
                if attempt.succeeded() || retry_at > send.deadline {
                    break attempt;
                }
                self.clock.sleep_until(retry_at).await;
            },
        };
        let delivery = Delivery {
            tick: send.tick,
            first_attempt,
            finished: self.clock.now(),
            attempts: attempts.max(1),
            last,
        };
        let lateness = delivery.lateness();
        self.metrics.lateness.observe(lateness.as_secs_f64());
        let succeeded = delivery.last.succeeded();
        self.metrics
            .ticks
            .with_label_values(&[if succeeded { "succeeded" } else { "failed" }])
            .inc();
        tracing::info!(
            function = %key,
            schedule,
            tick = %send.tick,
            result = ?delivery.last,
            attempts = delivery.attempts,
            late_ms = lateness.as_millis() as u64,
            redelivery = send.redelivery,
            "schedule tick sent"
        );
        if !succeeded {
            let note = format!(
                "schedule {schedule:?}: the tick of {} failed after {} attempt(s): {:?}",
                send.tick, delivery.attempts, delivery.last
            );
            self.store
                .notify(
                    function,
                    Notice {
                        reason: "ScheduleFailed",
                        note,
                    },
                )
                .await;
        }
        self.record(&key, schedule, &delivery).await;
    }

    /// Records a delivery's result, retrying conflicts with writes of other ticks.
    async fn record(&self, key: &FunctionKey, schedule: &str, delivery: &Delivery) {
        for tries in 1..=RECORD_TRIES {
            let outcome = async {
                let current = self.store.read(key).await?;
                let mut records = current.schedules.clone();
                let Some(record) = records.iter_mut().find(|r| r.name == schedule) else {
                    return Ok(()); // The schedule was removed meanwhile.
                };
                *record = plan::finish(record, delivery);
                self.store.write(key, &current.version, &records).await?;
                Ok::<_, Error>(())
            }
            .await;
            match outcome {
                Ok(()) | Err(Error::FunctionGone { .. }) => return,
                Err(Error::Conflict { .. }) => {
                    self.clock
                        .sleep_until(add(self.clock.now(), CONFLICT_RETRY * tries))
                        .await;
                }
                Err(error) => {
                    tracing::warn!(function = %key, schedule, error = %ErrorChain(&error), "recording a schedule tick failed; retrying");
                    self.clock
                        .sleep_until(add(self.clock.now(), ERROR_RETRY))
                        .await;
                }
            }
        }
        tracing::warn!(function = %key, schedule, tick = %delivery.tick, "could not record a schedule tick as done; it will be sent again once its claim expires");
    }
}
