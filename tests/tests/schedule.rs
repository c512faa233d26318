//! Schedule triggers against a real API server (written for Kubernetes 1.36): the
//! controller's watch cache and the scheduler's status writes are the real ones, the
//! call is recorded in-process instead of going through an activator.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::events::Reporter;
use kube::runtime::wait::await_condition;
use zeroscale_api::{Function, FunctionSpec, Schedule, ScheduleStatus};
use zeroscale_operator::controller::{self, Context};
use zeroscale_operator::metrics::Metrics;
use zeroscale_operator::resources::Config;
use zeroscale_operator::schedule::KubeStore;
use zeroscale_tests::{cluster_client, in_temporary_namespace, install_crd};
use zeroscale_triggers::{Attempt, Call, Invoker, ScheduleMetrics, Scheduler, SystemClock};

/// Longer than two ticks of a schedule of every minute.
const WAIT: Duration = Duration::from_secs(150);

/// Records the `ce-id` of each call and answers 200.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<String>>>);

impl Invoker for Recorded {
    async fn call(&self, call: &Call) -> Attempt {
        let id = call
            .headers
            .iter()
            .find(|(name, _)| name.as_str() == "ce-id")
            .and_then(|(_, value)| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.0.lock().expect("lock").push(id);
        Attempt::Status(200)
    }
}

impl Recorded {
    fn ids(&self) -> Vec<String> {
        self.0.lock().expect("lock").clone()
    }
}

/// A replica of the operator for `namespace`: the controller (whose watch cache the
/// scheduler reads) and a scheduler named `identity`, until the returned sender drops.
fn start_replica(
    client: &Client,
    namespace: &str,
    identity: &str,
    invoker: Recorded,
) -> anyhow::Result<tokio::sync::oneshot::Sender<()>> {
    let registry = prometheus::Registry::new();
    let reporter = Reporter {
        controller: "zeroscale-tests".into(),
        instance: Some(identity.into()),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Config::test(),
        Metrics::register(&registry)?,
        reporter.clone(),
    ));
    let scheduler = Scheduler::new(
        KubeStore::new(client.clone(), reporter, Arc::clone(ctx.watched())),
        invoker,
        SystemClock,
        identity.into(),
        ScheduleMetrics::register(&registry)?,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let namespace = namespace.to_owned();
    tokio::spawn(async move {
        let controller = controller::run(ctx, Some(&namespace), std::future::pending());
        let scheduling = scheduler.run(std::future::pending());
        tokio::select! {
            _ = futures::future::join(controller, scheduling) => {}
            _ = stopped => {}
        }
    });
    Ok(stop)
}

fn every_minute() -> Function {
    let mut spec = FunctionSpec::with_image("registry.k8s.io/pause:3.10");
    spec.scaling.initial_replicas = Some(0);
    spec.triggers.schedules = vec![Schedule::new("tick", "* * * * *")];
    Function::new("cron", spec)
}

/// Creates the Function with a schedule of every minute in `namespace`; returns its API
/// and the recorder of the calls its replicas will make.
async fn create_every_minute(
    client: &Client,
    namespace: &str,
) -> anyhow::Result<(Api<Function>, Recorded)> {
    let functions: Api<Function> = Api::namespaced(client.clone(), namespace);
    functions
        .create(&PostParams::default(), &every_minute())
        .await?;
    Ok((functions, Recorded::default()))
}

/// Waits until the record of schedule `tick` satisfies `done`.
async fn await_record(
    functions: &Api<Function>,
    done: impl Fn(&ScheduleStatus) -> bool,
) -> anyhow::Result<ScheduleStatus> {
    let record = |function: Option<&Function>| {
        function
            .and_then(|f| f.status.as_ref())
            .and_then(|s| s.schedules.iter().find(|r| r.name == "tick"))
            .cloned()
    };
    let function = tokio::time::timeout(
        WAIT,
        await_condition(functions.clone(), "cron", |f: Option<&Function>| {
            record(f).is_some_and(|r| done(&r))
        }),
    )
    .await??;
    record(function.as_ref()).ok_or_else(|| anyhow::anyhow!("no record"))
}

#[tokio::test]
#[ignore = "needs a cluster: set ZEROSCALE_TEST_KUBECONFIG"]
async fn a_schedule_of_every_minute_fires_and_its_status_shows_it() -> anyhow::Result<()> {
    let client = cluster_client("schedule_fires").await?;
    install_crd(&client, Duration::from_secs(60)).await?;
    in_temporary_namespace(&client, "schedule", |client, namespace| async move {
        let (functions, calls) = create_every_minute(&client, &namespace).await?;
        let _replica = start_replica(&client, &namespace, "replica-a", calls.clone())?;

        let record = await_record(&functions, |r| r.last_result.is_some()).await?;
        let result = record.last_result.clone().expect("a result");
        assert!(result.succeeded);
        assert_eq!(result.status_code, Some(200));
        assert!(record.active.is_empty());
        assert!(record.last_fired_time.is_some());
        assert!(record.next_schedule_time.as_ref().map(|t| t.0) > Some(result.schedule_time.0));
        assert_eq!(calls.ids().len(), 1);
        Ok(())
    })
    .await
}

#[tokio::test]
#[ignore = "needs a cluster: set ZEROSCALE_TEST_KUBECONFIG"]
async fn a_replica_taking_over_from_a_stopped_one_sends_each_tick_once_and_marks_the_late_one()
-> anyhow::Result<()> {
    let client = cluster_client("schedule_takeover").await?;
    install_crd(&client, Duration::from_secs(60)).await?;
    in_temporary_namespace(&client, "schedule", |client, namespace| async move {
        let (functions, calls) = create_every_minute(&client, &namespace).await?;
        let first = start_replica(&client, &namespace, "replica-a", calls.clone())?;
        let record = await_record(&functions, |r| r.last_result.is_some()).await?;
        let first_tick = record.last_result.expect("a result").schedule_time.0;

        // The leader stops for a tick: the next tick passes with nobody to send it.
        drop(first);
        let next_tick = first_tick
            .checked_add(jiff::SignedDuration::from_secs(60))
            .expect("a time");
        let pause =
            next_tick.duration_since(jiff::Timestamp::now()) + jiff::SignedDuration::from_secs(15);
        tokio::time::sleep(Duration::try_from(pause).unwrap_or_default()).await;

        let _second = start_replica(&client, &namespace, "replica-b", calls.clone())?;
        let record = await_record(&functions, |r| {
            r.last_result
                .as_ref()
                .is_some_and(|result| result.schedule_time.0 >= next_tick)
        })
        .await?;
        let result = record.last_result.expect("a result");
        assert_eq!(
            result.schedule_time.0, next_tick,
            "the tick missed while stopped is sent"
        );
        assert!(result.late, "and marked late: {result:?}");
        let ids = calls.ids();
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(
            ids.len(),
            unique.len(),
            "exactly one call per tick: {ids:?}"
        );
        assert_eq!(ids.len(), 2, "{ids:?}");
        Ok(())
    })
    .await
}
