//! `zeroscale dev` fires schedule triggers too: the scheduler of `zeroscale-triggers` over an
//! in-memory store, calling the in-process activator (so a tick wakes a Function at
//! zero), with the same CloudEvents headers as in a cluster. Each attempt is printed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use zeroscale_triggers::{
    Attempt, Call, Clock, HttpInvoker, Invoker, MemoryStore, ScaledClock, ScheduleMetrics,
    Scheduler, SystemClock, key_of,
};

use super::console;
use super::runtime::ProcessRuntime;

/// Test-only: run the schedulers' clock this many times as fast, so that a schedule of
/// every minute ticks within a test's time. Unset in real use.
const SPEED_ENV: &str = "ZEROSCALE_DEV_SCHEDULE_SPEED";

/// Fires the schedules of the Functions `runtime` runs (looked at again every `reload`)
/// through the activator listening on `activator`, until `shutdown` resolves.
pub async fn run(
    runtime: Arc<ProcessRuntime>,
    activator: SocketAddr,
    reload: Duration,
    metrics: ScheduleMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let store = Arc::new(MemoryStore::default());
    let invoker = Printed(HttpInvoker::new(activator.to_string()));
    let speed = std::env::var(SPEED_ENV)
        .ok()
        .and_then(|speed| speed.parse::<u32>().ok())
        .filter(|speed| *speed > 1);
    match speed {
        Some(speed) => {
            let clock = ScaledClock::new(jiff::Timestamp::now(), speed);
            drive(store, invoker, clock, runtime, reload, metrics, shutdown).await;
        }
        None => {
            drive(
                store,
                invoker,
                SystemClock,
                runtime,
                reload,
                metrics,
                shutdown,
            )
            .await
        }
    }
}

async fn drive(
    store: Arc<MemoryStore>,
    invoker: Printed,
    clock: impl Clock,
    runtime: Arc<ProcessRuntime>,
    reload: Duration,
    metrics: ScheduleMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let mut scheduler = Scheduler::new(
        Arc::clone(&store),
        invoker,
        clock,
        "zeroscale-dev".into(),
        metrics,
    );
    // New or changed manifests are picked up within a reload period.
    scheduler.max_sleep = reload;
    let sync = async {
        let mut reloads = tokio::time::interval(reload);
        reloads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            reloads.tick().await;
            load(&store, &runtime);
        }
    };
    load(&store, &runtime);
    tokio::select! {
        () = scheduler.run(shutdown) => {}
        _ = sync => {}
    }
}

/// Puts the Functions `runtime` runs now in `store` and drops the others: the same
/// Functions `zeroscale dev` loaded, so a manifest is read once, by its reload loop.
fn load(store: &MemoryStore, runtime: &ProcessRuntime) {
    let mut keys = Vec::new();
    for function in runtime.functions() {
        keys.push(key_of(&function));
        store.apply(function);
    }
    store.retain(|key| keys.contains(key));
}

/// Sends through the activator and prints each attempt.
struct Printed(HttpInvoker);

impl Invoker for Printed {
    async fn call(&self, call: &Call) -> Attempt {
        let attempt = self.0.call(call).await;
        let outcome = match &attempt {
            Attempt::Status(code) => code.to_string(),
            Attempt::Failed(error) => error.clone(),
        };
        console::event(format_args!(
            "{}: schedule tick {} ({}) {} {} -> {outcome}",
            call.host,
            call.header("ce-time"),
            call.header("ce-id"),
            call.method,
            call.path,
        ));
        attempt
    }
}
