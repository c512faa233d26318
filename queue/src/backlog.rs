//! The queue triggers' backlog, read from NATS JetStream for the autoscaler: each tick,
//! one consumer info request per queue trigger of the Functions it scales (a few at a
//! time), counting the messages not yet delivered (`num_pending`) and those delivered
//! but not acknowledged (`num_ack_pending`). A trigger that cannot be read makes its
//! Function's backlog unknown, which holds its scale: a broker outage never reads as an
//! empty queue. Used by the operator's autoscaler and by `zeroscale dev`'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use zeroscale_admin::process::ErrorChain;
use zeroscale_api::Function;
use zeroscale_api::routing::FunctionKey;
use zeroscale_autoscaler::{Backlog, BacklogSource};

use crate::names;
use crate::{Error, Result};

/// Consumer info requests in flight at once.
const CONCURRENCY: usize = 16;

/// The backlog of the queue triggers of the Functions `functions` finds by key, from
/// JetStream; none at all without a NATS server.
pub struct QueueBacklog<F> {
    jetstream: Option<jetstream::Context>,
    functions: F,
    /// Longest one consumer info request may take.
    timeout: Duration,
    /// The consumers whose last read failed, with the error's text: a failure is logged
    /// when it starts, when it changes and when it ends, not every tick.
    failing: Mutex<HashMap<String, String>>,
}

impl<F> QueueBacklog<F>
where
    F: Fn(&FunctionKey) -> Option<Arc<Function>> + Send + Sync,
{
    /// Reads the triggers of the Functions `functions` finds through `jetstream`, each
    /// within `timeout`.
    pub fn new(jetstream: Option<jetstream::Context>, functions: F, timeout: Duration) -> Self {
        Self {
            jetstream,
            functions,
            timeout,
            failing: Mutex::default(),
        }
    }

    /// Notes the outcome of reading `consumer`, logging only what changed.
    fn note(&self, consumer: &str, outcome: &Result<u64>) {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(_) => {
                if failing.remove(consumer).is_some() {
                    tracing::info!(consumer, "queue backlog readable again");
                }
            }
            Err(error) => {
                let text = ErrorChain(error).to_string();
                if failing.get(consumer) != Some(&text) {
                    tracing::warn!(consumer, error = %ErrorChain(error), "queue backlog unknown; holding the Function's scale");
                    failing.insert(consumer.to_owned(), text);
                }
            }
        }
    }
}

impl<F> BacklogSource for QueueBacklog<F>
where
    F: Fn(&FunctionKey) -> Option<Arc<Function>> + Send + Sync,
{
    async fn backlog(&self, keys: &[FunctionKey]) -> HashMap<FunctionKey, Backlog> {
        let Some(jetstream) = &self.jetstream else {
            return HashMap::new();
        };
        let functions: Vec<Arc<Function>> = keys.iter().filter_map(&self.functions).collect();
        let counts = pending_counts(jetstream, &functions, self.timeout).await;
        for (_, consumer, _, outcome) in &counts {
            self.note(consumer, outcome);
        }
        backlogs(counts)
    }
}

/// One read trigger: its Function, consumer name, target and pending count.
type Count = (FunctionKey, String, i32, Result<u64>);

/// Reads the pending count of every queue trigger of `functions`, a few at a time.
async fn pending_counts(
    jetstream: &jetstream::Context,
    functions: &[Arc<Function>],
    timeout: Duration,
) -> Vec<Count> {
    // Owned, so the reads' futures borrow nothing and the loop's future stays `Send`.
    let triggers: Vec<(FunctionKey, String, String, i32)> = functions
        .iter()
        .flat_map(|function| {
            let key = FunctionKey::new(
                function.metadata.namespace.as_deref().unwrap_or_default(),
                function.metadata.name.as_deref().unwrap_or_default(),
            );
            function.spec.triggers.queues.iter().map(move |trigger| {
                let consumer = names::queue_consumer(&key, &trigger.name);
                (
                    key.clone(),
                    trigger.stream.clone(),
                    consumer,
                    trigger.target,
                )
            })
        })
        .collect();
    let jetstream = jetstream.clone();
    futures::stream::iter(triggers)
        .map(move |(key, stream, consumer, target)| {
            let jetstream = jetstream.clone();
            async move {
                let pending = pending(&jetstream, &stream, &consumer, timeout).await;
                (key, consumer, target, pending)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Messages of `consumer` on `stream` not yet acknowledged: waiting, or delivered and
/// not yet acknowledged.
async fn pending(
    jetstream: &jetstream::Context,
    stream: &str,
    consumer: &str,
    timeout: Duration,
) -> Result<u64> {
    let failed = |source: crate::error::NatsError| Error::ConsumerInfo {
        stream: stream.to_owned(),
        consumer: consumer.to_owned(),
        source,
    };
    let read = async {
        // No stream info request: one request per trigger.
        let handle = jetstream
            .get_stream_no_info(stream)
            .await
            .map_err(|e| failed(e.into()))?;
        handle
            .consumer_info(consumer)
            .await
            .map_err(|e| failed(e.into()))
    };
    let info =
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| Error::ConsumerInfoTimeout {
                stream: stream.to_owned(),
                consumer: consumer.to_owned(),
                timeout,
            })??;
    Ok(info
        .num_pending
        .saturating_add(u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX)))
}

/// The backlog of each Function that has queue triggers, from their `counts`.
fn backlogs(counts: Vec<Count>) -> HashMap<FunctionKey, Backlog> {
    let mut by_function: HashMap<FunctionKey, Vec<Option<(u64, i32)>>> = HashMap::new();
    for (key, _, target, pending) in counts {
        by_function
            .entry(key)
            .or_default()
            .push(pending.ok().map(|pending| (pending, target)));
    }
    by_function
        .into_iter()
        .map(|(key, triggers)| (key, Backlog::of_triggers(triggers)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
    use tokio::time::Instant;
    use zeroscale_api::ScalingDefaults;
    use zeroscale_api::{FunctionSpec, QueueTrigger};
    use zeroscale_autoscaler::{Fleet, Observed, Reason, Replicas, ScalingPolicy, Target};

    use crate::harness::NatsServer;

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// `default/orders`, fed by the `orders.>` messages of stream ORDERS, 100 per replica.
    fn function() -> Arc<Function> {
        let mut function =
            Function::new("orders", FunctionSpec::with_image("example.com/orders:1"));
        function.metadata.namespace = Some("default".into());
        let mut trigger = QueueTrigger::new("orders", "ORDERS");
        trigger.subject = Some("orders.>".into());
        trigger.target = 100;
        function.spec.triggers.queues.push(trigger);
        Arc::new(function)
    }

    fn key() -> FunctionKey {
        FunctionKey::new("default", "orders")
    }

    /// The stream and the durable consumer the dispatcher would create.
    async fn consumer(jetstream: &jetstream::Context) -> PullConsumer {
        let stream = jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: "ORDERS".into(),
                subjects: vec!["orders.>".into()],
                ..Default::default()
            })
            .await
            .expect("stream created");
        let name = names::queue_consumer(&key(), "orders");
        stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: "orders.>".into(),
                    ack_policy: AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .expect("consumer created")
    }

    async fn read(jetstream: &jetstream::Context) -> HashMap<FunctionKey, Backlog> {
        backlogs(pending_counts(jetstream, &[function()], TIMEOUT).await)
    }

    /// The autoscaler's decisions for `default/orders` over `ticks` one-second ticks
    /// from `*second`, with no HTTP load and the Deployment following each decision.
    fn decide(
        fleet: &mut Fleet,
        start: Instant,
        second: &mut u64,
        replicas: &mut i32,
        backlog: &HashMap<FunctionKey, Backlog>,
        ticks: u64,
    ) -> Vec<(i32, Reason)> {
        let function = function();
        let durations = function.spec.validate().expect("valid spec");
        let policy = ScalingPolicy::from_spec(
            &function.spec.scaling,
            &durations,
            &ScalingDefaults::default(),
        );
        let idle = HashMap::from([(key(), Observed::default())]);
        (0..ticks)
            .map(|_| {
                *second += 1;
                let target = Target {
                    key: key(),
                    policy: policy.clone(),
                    replicas: Replicas {
                        desired: *replicas,
                        ready: *replicas,
                    },
                    resources: Default::default(),
                };
                let now = start + Duration::from_secs(*second);
                let (_, decision) = fleet.tick(now, vec![target], Some(&idle), backlog)[0];
                *replicas = decision.desired;
                (decision.desired, decision.reason)
            })
            .collect()
    }

    #[tokio::test]
    async fn pending_messages_of_a_queue_trigger_scale_its_function_from_zero_and_back_once_drained()
     {
        let mut server = NatsServer::for_test();
        let client = async_nats::connect(server.url())
            .await
            .expect("connects to the test server");
        let jetstream = jetstream::new(client);
        let consumer = consumer(&jetstream).await;
        for n in 0..250 {
            jetstream
                .publish(format!("orders.{}", n % 3), "order".into())
                .await
                .expect("published")
                .await
                .expect("stored");
        }

        let backlog = read(&jetstream).await;
        assert_eq!(
            backlog.get(&key()),
            Some(&Backlog::Pending {
                messages: 250,
                replicas: 2.5
            })
        );
        let (mut fleet, start, mut second, mut replicas) = (Fleet::default(), Instant::now(), 0, 0);
        let woken = decide(&mut fleet, start, &mut second, &mut replicas, &backlog, 1);
        assert_eq!(
            woken,
            [(3, Reason::Backlog)],
            "ceil(250 / 100) pods from zero"
        );

        // Delivered and acknowledged: drained.
        let mut messages = consumer
            .fetch()
            .max_messages(250)
            .expires(TIMEOUT)
            .messages()
            .await
            .expect("fetching");
        let mut acked = 0;
        while acked < 250 {
            let message = messages
                .next()
                .await
                .expect("a message")
                .expect("a readable message");
            message.double_ack().await.expect("acknowledged");
            acked += 1;
        }
        let backlog = read(&jetstream).await;
        assert_eq!(
            backlog.get(&key()),
            Some(&Backlog::Pending {
                messages: 0,
                replicas: 0.0
            })
        );
        let drained = decide(&mut fleet, start, &mut second, &mut replicas, &backlog, 40);
        assert_eq!(
            drained.last(),
            Some(&(0, Reason::ScaleToZero)),
            "{drained:?}"
        );

        // The broker down: unknown, never "empty", and the scale held.
        let woken = decide(
            &mut fleet,
            start,
            &mut second,
            &mut replicas,
            &HashMap::from([(key(), Backlog::of_triggers([Some((500, 100))]))]),
            1,
        );
        assert_eq!(woken, [(5, Reason::Backlog)]);
        server.stop();
        let backlog = read(&jetstream).await;
        assert_eq!(backlog.get(&key()), Some(&Backlog::Unknown));
        let held = decide(&mut fleet, start, &mut second, &mut replicas, &backlog, 60);
        assert!(held.iter().all(|(desired, _)| *desired == 5), "{held:?}");
    }

    #[tokio::test]
    async fn a_missing_consumer_is_no_signal_rather_than_an_empty_queue() {
        let server = NatsServer::for_test();
        let client = async_nats::connect(server.url())
            .await
            .expect("connects to the test server");
        let backlog = read(&jetstream::new(client)).await;
        assert_eq!(backlog.get(&key()), Some(&Backlog::Unknown));
    }
}
