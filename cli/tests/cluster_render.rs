//! Golden tests of the human output of `list` and `describe`: Function values and a
//! fixed "now" in, the exact text out.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use zeroscale_api::conditions::Reason;
use zeroscale_api::{Function, FunctionSpec, FunctionStatus};
use zeroscale_cli::cluster::render::{self, EventLine, LiveFigures};

fn now() -> Timestamp {
    "2026-12-07T12:00:00Z".parse().expect("timestamp")
}

fn ago(seconds: i64) -> Time {
    Time(now() - jiff::SignedDuration::from_secs(seconds))
}

/// A Function as the API server returns it, created `age` seconds ago.
fn function(namespace: &str, name: &str, age: i64) -> Function {
    let mut function = Function::new(name, FunctionSpec::with_image("ghcr.io/acme/hello:1"));
    function.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        creation_timestamp: Some(ago(age)),
        generation: Some(1),
        ..ObjectMeta::default()
    };
    function
}

/// With the status the operator writes: `Ready` for `reason`, replicas and last scale.
fn with_status(
    mut function: Function,
    reason: Reason,
    message: &str,
    (ready, desired): (i32, i32),
    last_scale: Option<(&str, i64)>,
) -> Function {
    let name = function.metadata.name.clone().unwrap_or_default();
    let namespace = function.metadata.namespace.clone().unwrap_or_default();
    let mut status = FunctionStatus {
        observed_generation: Some(1),
        ready_replicas: Some(ready),
        desired_replicas: Some(desired),
        url: Some(format!("http://{name}.{namespace}.svc.cluster.local")),
        last_scale_reason: last_scale.map(|(reason, _)| reason.to_owned()),
        last_scale_time: last_scale.map(|(_, seconds)| ago(seconds)),
        ..FunctionStatus::default()
    };
    status.set_ready(reason, message.into(), Some(1), ago(300));
    function.status = Some(status);
    function
}

#[test]
fn list_shows_url_readiness_replicas_last_scale_and_age() {
    let functions = [
        with_status(
            function("default", "hello", 3 * 86400),
            Reason::Serving,
            "2 of 2 pods ready",
            (2, 2),
            Some(("Stable: 1 -> 2", 90)),
        ),
        with_status(
            function("default", "payments", 600),
            Reason::ScaledToZero,
            "no pods; the next request wakes it",
            (0, 0),
            Some(("ScaleToZero: 1 -> 0", 7200)),
        ),
        function("default", "new", 5),
    ];
    assert_eq!(
        render::list(&functions, false, now()),
        "\
NAME       URL                                         READY               REPLICAS   LAST SCALE                     AGE
hello      http://hello.default.svc.cluster.local      True Serving        2/2        Stable: 1 -> 2 (90s ago)       3d
payments   http://payments.default.svc.cluster.local   True ScaledToZero   0/0        ScaleToZero: 1 -> 0 (2h ago)   10m
new        -                                           Unknown             0/0        -                              5s
"
    );
}

#[test]
fn list_of_every_namespace_starts_with_the_namespace() {
    let functions = [with_status(
        function("team", "hello", 120),
        Reason::DeploymentFailed,
        "ImagePullBackOff",
        (0, 1),
        None,
    )];
    assert_eq!(
        render::list(&functions, true, now()),
        "\
NAMESPACE   NAME    URL                                   READY                    REPLICAS   LAST SCALE   AGE
team        hello   http://hello.team.svc.cluster.local   False DeploymentFailed   0/1        -            2m
"
    );
}

#[test]
fn describe_shows_spec_conditions_decisions_events_and_live_figures() {
    let mut hello = with_status(
        function("default", "hello", 3600),
        Reason::Serving,
        "1 of 1 pods ready",
        (1, 1),
        Some(("Wake: 0 -> 1", 60)),
    );
    hello.spec.scaling.min_replicas = 0;
    hello.spec.scaling.max_replicas = 5;
    hello.spec.scaling.target = Some(10);
    hello.spec.scaling.scale_to_zero_grace_period = Some("1m".into());
    let events = [
        EventLine {
            time: Some(now() - jiff::SignedDuration::from_secs(300)),
            type_: "Normal".into(),
            reason: "Serving".into(),
            message: "1 of 1 pods ready".into(),
            count: 1,
        },
        EventLine {
            time: Some(now() - jiff::SignedDuration::from_secs(60)),
            type_: "Normal".into(),
            reason: "ScaledFromZero".into(),
            message: "hello: 0 -> 1 (Wake)".into(),
            count: 3,
        },
    ];
    let live = Ok(LiveFigures {
        activators: 2,
        requests_per_second: 12.345,
        concurrency: 1.5,
        in_flight: 1,
        queued: 0,
        cold_starts: 4,
        cold_start_p50: Some(0.85),
        cold_start_p95: Some(2.31),
    });
    assert_eq!(
        render::describe(&hello, &events, &live, now()),
        "\
Name:        hello
Namespace:   default
URL:         http://hello.default.svc.cluster.local
Image:       ghcr.io/acme/hello:1
Port:        8080 (http1)
Scaling:     0..5 replicas on concurrency (target 10 per pod), to zero after 1m idle
Requests:    timeout 5m, queue up to 1000 for 60s
Replicas:    1 ready / 1 desired
Last scale:  Wake: 0 -> 1, 60s ago

Conditions:
  TYPE    STATUS   REASON    AGE   MESSAGE
  Ready   True     Serving   5m    1 of 1 pods ready

Scaling decisions:
  AGE   TYPE     REASON           MESSAGE
  60s   Normal   ScaledFromZero   hello: 0 -> 1 (Wake) (x3)

Events:
  AGE   TYPE     REASON    MESSAGE
  5m    Normal   Serving   1 of 1 pods ready

Activators (live):
  Requests/s:    12.3
  Concurrency:   1.5 (in flight 1, queued 0)
  Cold starts:   4 (p50 850ms, p95 2.3s)
  Activators:    2
"
    );
}

#[test]
fn describe_says_why_live_figures_are_missing() {
    let hello = function("default", "hello", 10);
    let text = render::describe(
        &hello,
        &[],
        &Err("forbidden: you may not get pods/proxy".into()),
        now(),
    );
    assert!(
        text.contains("Conditions:\n  none yet\n"),
        "no conditions yet:\n{text}"
    );
    assert!(
        text.ends_with(
            "Activators (live):\n  not available: forbidden: you may not get pods/proxy\n"
        ),
        "{text}"
    );
}
