//! Replays a load pattern through the autoscaler's decision code, one tick per second,
//! and prints the replica count over time: `cargo run -p zeroscale-autoscaler --example
//! load_pattern`. The pattern: idle, a ramp to 500 concurrent requests, a burst to
//! 2000, a decline, then idle until the Function scales to zero. Pods become ready two
//! ticks after they are asked for, as on a cluster with a fast image.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::{FunctionSpec, ScalingDefaults};
use zeroscale_autoscaler::{Fleet, Observed, Replicas, ScalingPolicy, Target};

fn offered_concurrency(second: u64) -> f64 {
    match second {
        0..10 => 0.0,
        10..70 => (second - 10) as f64 * 500.0 / 60.0,
        70..100 => 500.0,
        100..115 => 2000.0,
        115..160 => 300.0,
        _ => 0.0,
    }
}

fn main() {
    let mut spec = FunctionSpec::with_image("example.com/hello:1");
    spec.scaling.max_replicas = 50;
    let durations = match spec.validate() {
        Ok(durations) => durations,
        Err(error) => panic!("the example spec is valid: {error}"),
    };
    let policy = ScalingPolicy::from_spec(&spec.scaling, &durations, &ScalingDefaults::default());
    let key = FunctionKey::new("default", "hello");
    let mut fleet = Fleet::default();
    let start = Instant::now();
    let mut desired = 1;
    // Asked-for replicas turn ready two ticks later.
    let mut history = vec![1, 1];
    println!(
        "{:>4} {:>8} {:>7} {:>5}  reason",
        "t(s)", "offered", "desired", "ready"
    );
    for second in 0..260 {
        let ready = history[history.len() - 2];
        let offered = offered_concurrency(second);
        let observed = HashMap::from([(
            key.clone(),
            Observed {
                concurrency: offered,
                rps: 0.0,
                active: offered > 0.0,
                held: offered > 0.0 && ready == 0,
            },
        )]);
        let target = Target {
            key: key.clone(),
            policy: policy.clone(),
            replicas: Replicas { desired, ready },
            resources: Default::default(),
        };
        let now = start + Duration::from_secs(second);
        for (_, decision) in fleet.tick(now, vec![target], Some(&observed), &HashMap::new()) {
            if decision.desired != desired || second % 10 == 0 {
                println!(
                    "{second:>4} {offered:>8.0} {:>7} {ready:>5}  {}{}",
                    decision.desired,
                    decision.reason.as_str(),
                    if decision.panicking {
                        " (panicking)"
                    } else {
                        ""
                    }
                );
            }
            desired = decision.desired;
        }
        history.push(desired);
    }
}
