//! The supervisor of one Function: a task that keeps as many replicas running as the
//! autoscaler (or a wake) asks for, replaces replicas that exit, publishes the ready ones
//! to the activator, and marks the Function as unable to start when its command cannot
//! run, so held requests fail at once with the reason instead of waiting out their
//! deadline. It also tells the person running `zeroscale dev` how to call the Function,
//! once it can serve, or why it cannot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::{mpsc, watch};
use zeroscale_activator::endpoints::{EndpointSet, EndpointState, PodEndpoint, PodProtocol};
use zeroscale_activator::functions::Functions;
use zeroscale_api::FunctionStatus;
use zeroscale_api::conditions::Reason;

use super::console;
use super::local::LocalFunction;
use super::replica::{Event, Replica};

/// Tells the activator about `function` and whether it can start (`failure` says why
/// not), through the Ready condition it reads in a cluster too.
pub fn publish_status(functions: &Functions, function: &LocalFunction, failure: Option<&str>) {
    let mut routed = function.routed.clone();
    if let Some(message) = failure {
        let reason = match &function.plan {
            Err((reason, _)) => *reason,
            Ok(_) => Reason::DeploymentFailed,
        };
        let mut status = FunctionStatus::default();
        status.set_ready(reason, message.to_owned(), None, Time(Timestamp::now()));
        routed.status = Some(status);
    }
    functions.apply(&routed);
}

/// Prints why the Function `label` cannot start.
fn print_failure(label: &str, reason: &str) {
    console::event(format_args!(
        "{label}: cannot start: {reason} (fix it and save the manifest to retry)"
    ));
}

/// Replicas that exit before they are ready this many times in a row mark the Function
/// as unable to start.
const FAILED_STARTS_LIMIT: u32 = 3;

/// What the rest of `zeroscale dev` sees of a supervisor: shared counters and the
/// channels that steer it.
#[derive(Debug)]
pub struct Shared {
    /// Ready replicas now.
    pub ready: AtomicI32,
    /// Whether the Function cannot start until its manifest changes.
    pub failed: AtomicBool,
}

/// The supervisor's own state.
pub struct Supervisor {
    function: Arc<LocalFunction>,
    functions: Arc<Functions>,
    shared: Arc<Shared>,
    desired: watch::Receiver<i32>,
    replicas: Vec<(Replica, bool)>,
    events: mpsc::Sender<(u64, Event)>,
    next_id: u64,
    failure: Option<String>,
    failed_starts: u32,
    /// Whether the Function's URLs were printed since it last could not start.
    announced: bool,
}

impl Supervisor {
    /// Runs until the `updates` sender is dropped, then stops every replica and returns
    /// once they have all exited.
    pub async fn run(
        mut updates: watch::Receiver<Arc<LocalFunction>>,
        desired: watch::Receiver<i32>,
        functions: Arc<Functions>,
        shared: Arc<Shared>,
    ) {
        let (events, mut received) = mpsc::channel(64);
        let function = Arc::clone(&updates.borrow_and_update());
        let mut supervisor = Supervisor {
            failure: function.plan_failure().map(str::to_owned),
            function,
            functions,
            shared,
            desired,
            replicas: Vec::new(),
            events,
            next_id: 0,
            failed_starts: 0,
            announced: false,
        };
        // The runtime published the status before it started this task.
        supervisor.announce();
        supervisor.reconcile();
        loop {
            tokio::select! {
                changed = updates.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let function = Arc::clone(&updates.borrow_and_update());
                    supervisor.update(function);
                }
                changed = supervisor.desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    supervisor.reconcile();
                }
                Some((id, event)) = received.recv() => supervisor.handle(id, event),
            }
        }
        for (replica, _) in &mut supervisor.replicas {
            replica.stop();
        }
        while !supervisor.replicas.is_empty() {
            let Some((id, event)) = received.recv().await else {
                break;
            };
            supervisor.handle(id, event);
        }
    }

    /// A new version of the manifest: replicas restart with it at the current scale.
    fn update(&mut self, function: Arc<LocalFunction>) {
        let running = self.replicas.iter().filter(|(r, _)| !r.stopping()).count();
        if running > 0 {
            console::event(format_args!(
                "{}: manifest changed; restarting {running} replica(s)",
                function.label
            ));
        }
        for (replica, _) in &mut self.replicas {
            replica.stop();
        }
        self.failure = function.plan_failure().map(str::to_owned);
        self.failed_starts = 0;
        if function.urls != self.function.urls {
            self.announced = false;
        }
        self.function = function;
        self.publish_status();
        self.announce();
        self.reconcile();
    }

    /// Says why the Function cannot start, or prints its URLs when it is at zero (a
    /// request wakes it). One that starts replicas gets its URLs when the first is
    /// ready, so a command that fails at once never gets them.
    fn announce(&mut self) {
        if let Some(reason) = &self.failure {
            print_failure(&self.function.label, reason);
            self.announced = false;
        } else if *self.desired.borrow() == 0 {
            self.print_urls();
        }
    }

    /// Prints how to call the Function, unless that was done since it last failed.
    fn print_urls(&mut self) {
        if !self.announced {
            for url in &self.function.urls {
                console::event(url);
            }
            self.announced = true;
        }
    }

    /// Starts or stops replicas to match the desired count.
    fn reconcile(&mut self) {
        let desired = usize::try_from(*self.desired.borrow()).unwrap_or(0);
        let running = self.replicas.iter().filter(|(r, _)| !r.stopping()).count();
        if running < desired && self.failure.is_none() {
            for _ in running..desired {
                if !self.start_one() {
                    break;
                }
            }
        }
        if running > desired {
            // Starting replicas go first, then the highest numbers.
            let mut candidates: Vec<usize> = (0..self.replicas.len())
                .filter(|&i| !self.replicas[i].0.stopping())
                .collect();
            candidates.sort_by_key(|&i| {
                (
                    self.replicas[i].1,
                    std::cmp::Reverse(self.replicas[i].0.slot),
                )
            });
            for &i in candidates.iter().take(running - desired) {
                self.replicas[i].0.stop();
            }
        }
        self.publish_endpoints();
    }

    /// Starts one replica in the lowest free slot; false when it could not start.
    fn start_one(&mut self) -> bool {
        let Ok(plan) = &self.function.plan else {
            return false;
        };
        let slot = (0..)
            .find(|slot| self.replicas.iter().all(|(r, _)| r.slot != *slot))
            .unwrap_or(0);
        self.next_id += 1;
        match Replica::start(
            self.next_id,
            slot,
            &self.function.label,
            &plan.replica,
            self.events.clone(),
        ) {
            Ok(replica) => {
                self.replicas.push((replica, false));
                true
            }
            Err(error) => {
                self.fail(format!(
                    "cannot start {}: {error}",
                    plan.replica.launch.program.display()
                ));
                false
            }
        }
    }

    fn handle(&mut self, id: u64, event: Event) {
        let Some(index) = self.replicas.iter().position(|(r, _)| r.id == id) else {
            return;
        };
        let label = &self.function.label;
        match event {
            Event::Ready { after } => {
                let (replica, ready) = &mut self.replicas[index];
                if replica.stopping() {
                    return;
                }
                *ready = true;
                self.failed_starts = 0;
                console::event(format_args!(
                    "{label}[{}] ready on {} after {} ms",
                    replica.slot,
                    replica.addr,
                    after.as_millis()
                ));
                self.print_urls();
            }
            Event::Exited { status, last_line } => {
                let (replica, was_ready) = self.replicas.remove(index);
                if replica.stopping() {
                    console::event(format_args!("{label}[{}] stopped ({status})", replica.slot));
                } else if !was_ready && self.failed_starts + 1 >= FAILED_STARTS_LIMIT {
                    self.fail(format!(
                        "the command exits before it is ready ({status}); last output: {}",
                        if last_line.is_empty() {
                            "none"
                        } else {
                            &last_line
                        }
                    ));
                } else {
                    if !was_ready {
                        self.failed_starts += 1;
                    }
                    console::event(format_args!(
                        "{label}[{}] exited unexpectedly ({status}); starting a replacement",
                        replica.slot
                    ));
                    // Publishes the endpoints too.
                    self.reconcile();
                    return;
                }
            }
        }
        self.publish_endpoints();
    }

    /// Marks the Function as unable to start until its manifest changes.
    fn fail(&mut self, reason: String) {
        print_failure(&self.function.label, &reason);
        self.failure = Some(reason);
        self.announced = false;
        self.publish_status();
    }

    fn publish_status(&self) {
        publish_status(&self.functions, &self.function, self.failure.as_deref());
        self.shared
            .failed
            .store(self.failure.is_some(), Ordering::Relaxed);
    }

    /// Gives the activator the replicas: ready ones take requests, starting ones are
    /// probed while requests wait, stopping ones get nothing new.
    fn publish_endpoints(&self) {
        let protocol = PodProtocol::from(self.function.routed.spec.protocol);
        let endpoints = self
            .replicas
            .iter()
            .map(|(replica, ready)| PodEndpoint {
                addr: replica.addr,
                pod: None,
                state: match (replica.stopping(), ready) {
                    (true, _) => EndpointState::Terminating,
                    (false, true) => EndpointState::Ready,
                    (false, false) => EndpointState::NotReady,
                },
                protocol,
            })
            .collect();
        self.functions
            .set_endpoints(&self.function.key, EndpointSet::new(endpoints));
        let ready = self
            .replicas
            .iter()
            .filter(|(replica, ready)| *ready && !replica.stopping())
            .count();
        self.shared
            .ready
            .store(i32::try_from(ready).unwrap_or(i32::MAX), Ordering::Relaxed);
    }
}
