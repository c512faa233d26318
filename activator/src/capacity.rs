//! Capacity of one Function: which ready pod takes the next request, and the bounded
//! queue of requests that wait while none can (the Function is at zero, or every pod is
//! at `containerConcurrency`).
//!
//! The common case takes no lock: read the snapshot of ready pods, pick the less loaded
//! of two (power of two choices), and reserve a slot on it with an atomic increment.
//! When no slot is free, or others already wait, the request joins a FIFO queue; a slot
//! that frees up, or a pod that turns ready, is handed straight to the oldest waiter, so
//! waiters are served in arrival order and nobody overtakes them. A waiter that gives up
//! (deadline, client gone) leaves the queue at once.
//!
//! For usage metering it also sums, per Function, the time permits were held
//! (execution) and the time each pod had at least one permit out (busy), both counted
//! when the permit or the busy stretch ends.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::endpoints::PodProtocol;

/// Why a request got no pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    /// The queue already holds `maxQueuedRequests` requests.
    #[error("too many requests are waiting for this function")]
    QueueFull,
    /// No pod is ready and `maxQueuedRequests` is 0, so the request cannot be held; the
    /// caller wakes the Function, since no waiting request did.
    #[error(
        "the function is starting and holds no requests (maxQueuedRequests is 0): retry shortly"
    )]
    NotHeldWhileStarting,
    /// No pod could take the request within the wait allowed.
    #[error("no pod could take the request within {0:?}")]
    ActivationTimeout(Duration),
    /// The control plane says the Function cannot start; the message says why.
    #[error("the function cannot start: {0}")]
    CannotStart(String),
}

/// Limits of one Function's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight per pod; 0 means no limit.
    pub container_concurrency: usize,
    /// Requests that may wait at once.
    pub max_queued: usize,
}

/// One pod that can take requests, with the requests it has in flight.
#[derive(Debug)]
pub struct Pod {
    pub addr: SocketAddr,
    pub protocol: PodProtocol,
    in_flight: AtomicUsize,
    /// When the pod last went from idle to busy, in microseconds since `Shared::epoch`.
    busy_since: AtomicU64,
}

impl Pod {
    /// Requests this pod has in flight through this activator.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// A reserved slot on a pod; the slot frees when this is dropped.
#[derive(Debug)]
pub struct Permit {
    pod: Arc<Pod>,
    /// Where to hand the freed slot on drop; None when dropped while the queue is locked.
    shared: Option<Arc<Shared>>,
    /// When the slot was reserved.
    acquired: Instant,
}

impl Permit {
    /// The pod this request goes to.
    pub fn addr(&self) -> SocketAddr {
        self.pod.addr
    }

    /// The protocol that pod speaks.
    pub fn protocol(&self) -> PodProtocol {
        self.pod.protocol
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let before = self.pod.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(shared) = self.shared.take() {
            shared
                .execution_micros
                .fetch_add(micros(self.acquired.elapsed()), Ordering::Relaxed);
            if before == 1 {
                let since = self.pod.busy_since.load(Ordering::Acquire);
                shared
                    .busy_micros
                    .fetch_add(shared.now_micros().saturating_sub(since), Ordering::Relaxed);
            }
            shared.total_in_flight.fetch_sub(1, Ordering::AcqRel);
            if shared.waiting.load(Ordering::SeqCst) > 0 {
                shared.dispatch(&mut shared.lock());
            }
        }
    }
}

/// The capacity of one Function. Cheap to share: clone the `Arc`.
#[derive(Debug)]
pub struct Capacity {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Ready pods; replaced as a whole when endpoints change.
    pods: arc_swap::ArcSwap<Vec<Arc<Pod>>>,
    /// Requests in the queue (mirrors `queue.waiters.len()` for lock-free reads).
    waiting: AtomicUsize,
    total_in_flight: AtomicUsize,
    limit: AtomicUsize,
    max_queued: AtomicUsize,
    /// Seed of the cheap random choice of pods.
    picks: AtomicU64,
    /// Origin of the pods' `busy_since`.
    epoch: Instant,
    /// Time permits were held, in microseconds, counted as each is released.
    execution_micros: AtomicU64,
    /// Time pods had a permit out, in microseconds, counted as each busy stretch ends.
    busy_micros: AtomicU64,
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    waiters: VecDeque<Waiter>,
    next_id: u64,
    /// Set while the control plane says the Function cannot start.
    cannot_start: Option<String>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    /// Receives the slot; dropped unsent when the Function cannot start.
    reply: oneshot::Sender<Permit>,
}

/// What a request must do after [`Capacity::acquire`] queued it with no pod ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// It is the first to wait with no pod ready: the Function must be woken.
    FirstWithNoPods,
    /// Others wait already, or pods exist and are only busy.
    Behind,
}

impl Capacity {
    pub fn new(limits: Limits) -> Self {
        Self {
            shared: Arc::new(Shared {
                pods: arc_swap::ArcSwap::from_pointee(Vec::new()),
                waiting: AtomicUsize::new(0),
                total_in_flight: AtomicUsize::new(0),
                limit: AtomicUsize::new(per_pod_limit(limits.container_concurrency)),
                max_queued: AtomicUsize::new(limits.max_queued),
                picks: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
                epoch: Instant::now(),
                execution_micros: AtomicU64::new(0),
                busy_micros: AtomicU64::new(0),
                queue: Mutex::new(Queue::default()),
            }),
        }
    }

    /// Applies changed limits; waiters are re-examined, since a higher limit frees slots.
    pub fn set_limits(&self, limits: Limits) {
        let shared = &self.shared;
        shared.limit.store(
            per_pod_limit(limits.container_concurrency),
            Ordering::Release,
        );
        shared
            .max_queued
            .store(limits.max_queued, Ordering::Release);
        shared.dispatch(&mut shared.lock());
    }

    /// Replaces the set of ready pods. Pods that stay keep their in-flight counts; pods
    /// that leave get no new requests (those in flight finish). Waiters are served.
    pub fn set_ready_pods(&self, pods: impl IntoIterator<Item = (SocketAddr, PodProtocol)>) {
        let shared = &self.shared;
        let mut queue = shared.lock();
        let current = shared.pods.load();
        let pods: Vec<Arc<Pod>> = pods
            .into_iter()
            .map(|(addr, protocol)| {
                current
                    .iter()
                    .find(|pod| pod.addr == addr && pod.protocol == protocol)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Pod {
                            addr,
                            protocol,
                            in_flight: AtomicUsize::new(0),
                            busy_since: AtomicU64::new(0),
                        })
                    })
            })
            .collect();
        shared.pods.store(Arc::new(pods));
        if !shared.pods.load().is_empty() {
            queue.cannot_start = None;
        }
        shared.dispatch(&mut queue);
    }

    /// Records that the Function cannot start (Some) or no longer says so (None). While
    /// set and no pod is ready, waiting requests fail at once with the reason.
    pub fn set_cannot_start(&self, reason: Option<String>) {
        let shared = &self.shared;
        let mut queue = shared.lock();
        queue.cannot_start = reason;
        if queue.cannot_start.is_some() && shared.pods.load().is_empty() {
            // Dropping their senders tells waiters to read the reason.
            shared
                .waiting
                .fetch_sub(queue.waiters.len(), Ordering::SeqCst);
            queue.waiters.clear();
        }
    }

    /// The ready pods, for probing and diagnostics.
    pub fn ready_pods(&self) -> Arc<Vec<Arc<Pod>>> {
        self.shared.pods.load_full()
    }

    /// Requests in flight through this activator.
    pub fn in_flight(&self) -> usize {
        self.shared.total_in_flight.load(Ordering::Acquire)
    }

    /// Requests waiting for a pod.
    pub fn queued(&self) -> usize {
        self.shared.waiting.load(Ordering::Acquire)
    }

    /// Time permits were held, counted as each was released, in microseconds.
    pub fn execution_micros(&self) -> u64 {
        self.shared.execution_micros.load(Ordering::Relaxed)
    }

    /// Time pods had a request in flight, counted as each busy stretch ended, in
    /// microseconds.
    pub fn busy_micros(&self) -> u64 {
        self.shared.busy_micros.load(Ordering::Relaxed)
    }

    /// A slot on a pod, at once when one is free and nobody waits; otherwise the
    /// request waits in line until `deadline`. `on_queued` is called once if the request
    /// had to wait (to wake the Function when it is the first with no pod ready).
    pub async fn acquire(
        &self,
        deadline: Instant,
        on_queued: impl FnOnce(Queued),
    ) -> Result<Permit, CapacityError> {
        self.acquire_near(deadline, None, on_queued).await
    }

    /// [`Capacity::acquire`] for a caller that already has a connection to pod `near`:
    /// when that pod is ready, it is one of the two pods compared (instead of a second
    /// random one) and wins ties, so a client connection keeps using its pod connection
    /// while that pod is no busier than a random other.
    pub async fn acquire_near(
        &self,
        deadline: Instant,
        near: Option<SocketAddr>,
        on_queued: impl FnOnce(Queued),
    ) -> Result<Permit, CapacityError> {
        let shared = &self.shared;
        if shared.waiting.load(Ordering::SeqCst) == 0
            && let Some(permit) = shared.try_reserve(near)
        {
            return Ok(permit);
        }
        let started = Instant::now();
        let (id, reply, queued) = {
            let mut queue = shared.lock();
            if let Some(reason) = &queue.cannot_start
                && shared.pods.load().is_empty()
            {
                return Err(CapacityError::CannotStart(reason.clone()));
            }
            let max_queued = shared.max_queued.load(Ordering::Acquire);
            if queue.waiters.len() >= max_queued {
                // The queue may be full of requests a free slot could serve right now.
                shared.dispatch(&mut queue);
            }
            let first_with_no_pods = queue.waiters.is_empty() && shared.pods.load().is_empty();
            if queue.waiters.len() >= max_queued {
                return Err(if first_with_no_pods {
                    CapacityError::NotHeldWhileStarting
                } else {
                    CapacityError::QueueFull
                });
            }
            let (sender, reply) = oneshot::channel();
            let id = queue.next_id;
            queue.next_id += 1;
            let queued = if first_with_no_pods {
                Queued::FirstWithNoPods
            } else {
                Queued::Behind
            };
            queue.waiters.push_back(Waiter { id, reply: sender });
            shared.waiting.fetch_add(1, Ordering::SeqCst);
            // A slot freed between the fast path and joining the queue is served here.
            shared.dispatch(&mut queue);
            (id, reply, queued)
        };
        on_queued(queued);
        // Declared after `reply`, so dropped before it: the waiter leaves the queue under
        // the lock, then a permit that arrived too late is released outside it.
        let _leave = LeaveQueue { id, shared };
        match tokio::time::timeout_at(deadline, reply).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(CapacityError::CannotStart(
                shared
                    .lock()
                    .cannot_start
                    .clone()
                    .unwrap_or_else(|| "the control plane reported a failure".to_owned()),
            )),
            Err(_) => Err(CapacityError::ActivationTimeout(deadline - started)),
        }
    }
}

fn per_pod_limit(container_concurrency: usize) -> usize {
    if container_concurrency == 0 {
        usize::MAX
    } else {
        container_concurrency
    }
}

impl Shared {
    /// Takes a slot on `pod` if it has one free; a pod that was idle turns busy.
    fn reserve(&self, pod: &Pod, limit: usize) -> bool {
        let reserved = pod
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            });
        if reserved == Ok(0) {
            pod.busy_since.store(self.now_micros(), Ordering::Release);
        }
        reserved.is_ok()
    }

    fn now_micros(&self) -> u64 {
        micros(self.epoch.elapsed())
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue stays consistent across a panic elsewhere: keep serving.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot on the less loaded of two pods chosen at random (or `near` and one chosen at
    /// random, `near` winning ties), or on any pod with room.
    fn try_reserve(self: &Arc<Self>, near: Option<SocketAddr>) -> Option<Permit> {
        let pods = self.pods.load();
        let limit = self.limit.load(Ordering::Acquire);
        let count = pods.len();
        if count == 0 {
            return None;
        }
        let random = splitmix(self.picks.fetch_add(1, Ordering::Relaxed));
        let first = (random % count as u64) as usize;
        let second = ((random >> 32) % count as u64) as usize;
        let near = near.and_then(|addr| pods.iter().find(|pod| pod.addr == addr));
        let (a, b) = match near {
            Some(near) => (near, &pods[first]),
            None => (&pods[first], &pods[second]),
        };
        let preferred = if b.in_flight() < a.in_flight() { b } else { a };
        let pod = std::iter::once(preferred)
            .chain(pods.iter())
            .find(|pod| self.reserve(pod, limit))?;
        self.total_in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Permit {
            pod: Arc::clone(pod),
            shared: Some(Arc::clone(self)),
            acquired: Instant::now(),
        })
    }

    /// Hands free slots to waiters, oldest first. Runs with the queue locked, so a permit
    /// it cannot deliver is passed on or released without re-entering the lock.
    fn dispatch(self: &Arc<Self>, queue: &mut Queue) {
        while !queue.waiters.is_empty() {
            let Some(mut permit) = self.try_reserve(None) else {
                return;
            };
            loop {
                let Some(waiter) = queue.waiters.pop_front() else {
                    // Everyone left while we held the slot: free it quietly.
                    permit.shared = None;
                    self.total_in_flight.fetch_sub(1, Ordering::AcqRel);
                    return;
                };
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                match waiter.reply.send(permit) {
                    Ok(()) => break,
                    // That waiter is gone; offer the same slot to the next one.
                    Err(returned) => permit = returned,
                }
            }
        }
    }
}

/// Removes a waiter that gives up (deadline passed, client gone) from the queue at once.
struct LeaveQueue<'a> {
    id: u64,
    shared: &'a Arc<Shared>,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        if let Some(index) = queue.waiters.iter().position(|w| w.id == self.id) {
            queue.waiters.remove(index);
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A cheap, well-mixed pseudo-random number from a counter (SplitMix64).
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    /// Ready HTTP/1.1 pods on the given ports.
    fn pods(ports: &[u16]) -> Vec<(SocketAddr, PodProtocol)> {
        ports
            .iter()
            .map(|&port| (addr(port), PodProtocol::Http1))
            .collect()
    }

    fn capacity(container_concurrency: usize, max_queued: usize) -> Arc<Capacity> {
        Arc::new(Capacity::new(Limits {
            container_concurrency,
            max_queued,
        }))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    /// Starts an acquire in a task and waits until it has joined the queue.
    async fn queued(
        capacity: &Arc<Capacity>,
    ) -> tokio::task::JoinHandle<Result<Permit, CapacityError>> {
        let before = capacity.queued();
        let task = {
            let capacity = Arc::clone(capacity);
            tokio::spawn(async move { capacity.acquire(far(), |_| {}).await })
        };
        while capacity.queued() == before {
            tokio::task::yield_now().await;
        }
        task
    }

    #[tokio::test]
    async fn free_pod_is_taken_at_once_and_counted_until_released() {
        let capacity = capacity(0, 10);
        capacity.set_ready_pods(pods(&[1]));
        let permit = capacity
            .acquire(far(), |_| panic!("must not wait"))
            .await
            .expect("permit");
        assert_eq!(permit.addr(), addr(1));
        assert_eq!(capacity.in_flight(), 1);
        drop(permit);
        assert_eq!(capacity.in_flight(), 0);
        assert_eq!(capacity.ready_pods()[0].in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn execution_and_busy_time_are_counted_when_requests_end() {
        let capacity = capacity(0, 10);
        capacity.set_ready_pods(pods(&[1]));
        // Two overlapping requests on one pod: 3 s and 2 s held, the pod busy for 3 s.
        let first = capacity.acquire(far(), |_| {}).await.expect("permit");
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = capacity.acquire(far(), |_| {}).await.expect("permit");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            capacity.busy_micros(),
            0,
            "busy counts when the stretch ends"
        );
        drop(second);
        drop(first);
        assert_eq!(capacity.execution_micros(), 5_000_000);
        assert_eq!(capacity.busy_micros(), 3_000_000);
        // Idle for 10 s, then busy for 1 s more.
        tokio::time::advance(Duration::from_secs(10)).await;
        let third = capacity.acquire(far(), |_| {}).await.expect("permit");
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(third);
        assert_eq!(capacity.busy_micros(), 4_000_000);
        assert_eq!(capacity.execution_micros(), 6_000_000);
    }

    #[tokio::test]
    async fn request_at_zero_waits_asks_for_a_wake_and_runs_when_a_pod_is_ready() {
        let capacity = capacity(0, 10);
        let woke = Arc::new(AtomicBool::new(false));
        let task = {
            let capacity = Arc::clone(&capacity);
            let woke = Arc::clone(&woke);
            tokio::spawn(async move {
                capacity
                    .acquire(far(), |queued| {
                        assert_eq!(queued, Queued::FirstWithNoPods);
                        woke.store(true, Ordering::SeqCst);
                    })
                    .await
            })
        };
        while capacity.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(woke.load(Ordering::SeqCst));
        let second = queued(&capacity).await;
        capacity.set_ready_pods(pods(&[1]));
        assert_eq!(task.await.expect("task").expect("permit").addr(), addr(1));
        assert_eq!(second.await.expect("task").expect("permit").addr(), addr(1));
        assert_eq!(capacity.queued(), 0);
    }

    #[tokio::test]
    async fn container_concurrency_one_never_gives_a_pod_two_requests() {
        let capacity = capacity(1, 10);
        capacity.set_ready_pods(pods(&[1]));
        let first = capacity.acquire(far(), |_| {}).await.expect("permit");
        let second = queued(&capacity).await;
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "the only pod is busy");
        assert_eq!(capacity.ready_pods()[0].in_flight(), 1);
        drop(first);
        let second = second.await.expect("task").expect("permit");
        assert_eq!(capacity.ready_pods()[0].in_flight(), 1);
        drop(second);
        assert_eq!(capacity.ready_pods()[0].in_flight(), 0);
    }

    #[tokio::test]
    async fn waiters_are_served_in_arrival_order_and_newcomers_do_not_overtake() {
        let capacity = capacity(1, 10);
        capacity.set_ready_pods(pods(&[1]));
        let busy = capacity.acquire(far(), |_| {}).await.expect("permit");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for n in 0..3 {
            let before = capacity.queued();
            let task = {
                let capacity = Arc::clone(&capacity);
                let order = Arc::clone(&order);
                tokio::spawn(async move {
                    let permit = capacity.acquire(far(), |_| {}).await.expect("permit");
                    order.lock().expect("lock").push(n);
                    drop(permit);
                })
            };
            while capacity.queued() == before {
                tokio::task::yield_now().await;
            }
            tasks.push(task);
        }
        drop(busy);
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(*order.lock().expect("lock"), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn full_queue_refuses_at_once() {
        let capacity = capacity(0, 2);
        let _a = queued(&capacity).await;
        let _b = queued(&capacity).await;
        let refused = capacity.acquire(far(), |_| panic!("must not queue")).await;
        assert_eq!(refused.err(), Some(CapacityError::QueueFull));
    }

    #[tokio::test]
    async fn without_a_queue_a_request_at_zero_is_refused_as_not_held_while_starting() {
        let capacity = capacity(1, 0);
        let refused = capacity.acquire(far(), |_| panic!("must not queue")).await;
        assert_eq!(refused.err(), Some(CapacityError::NotHeldWhileStarting));

        capacity.set_ready_pods(pods(&[1]));
        let _busy = capacity.acquire(far(), |_| panic!("a pod is free")).await;
        let refused = capacity.acquire(far(), |_| panic!("must not queue")).await;
        assert_eq!(
            refused.err(),
            Some(CapacityError::QueueFull),
            "with a ready pod at its limit the queue is simply full"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_past_the_deadline_times_out_and_leaves_the_queue() {
        let capacity = capacity(0, 10);
        let deadline = Instant::now() + Duration::from_secs(5);
        let result = capacity.acquire(deadline, |_| {}).await;
        assert_eq!(
            result.err(),
            Some(CapacityError::ActivationTimeout(Duration::from_secs(5)))
        );
        assert_eq!(capacity.queued(), 0);
    }

    #[tokio::test]
    async fn client_that_goes_away_frees_its_place_at_once() {
        let capacity = capacity(0, 1);
        let waiter = queued(&capacity).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(capacity.queued(), 0);
        let _next = queued(&capacity).await;
        assert_eq!(capacity.queued(), 1);
    }

    #[tokio::test]
    async fn cannot_start_fails_waiters_and_newcomers_fast_with_the_reason() {
        let capacity = capacity(0, 10);
        let waiter = queued(&capacity).await;
        capacity.set_cannot_start(Some("ImagePullBackOff: no such image".into()));
        let expected = CapacityError::CannotStart("ImagePullBackOff: no such image".into());
        assert_eq!(waiter.await.expect("task").err(), Some(expected.clone()));
        assert_eq!(capacity.queued(), 0);
        assert_eq!(capacity.acquire(far(), |_| {}).await.err(), Some(expected));

        capacity.set_ready_pods(pods(&[1]));
        assert!(
            capacity.acquire(far(), |_| {}).await.is_ok(),
            "a ready pod clears the failure"
        );
    }

    #[tokio::test]
    async fn load_spreads_evenly_across_pods() {
        let capacity = capacity(0, 10);
        capacity.set_ready_pods(pods(&[1, 2, 3]));
        let mut permits = Vec::new();
        for _ in 0..300 {
            permits.push(capacity.acquire(far(), |_| {}).await.expect("permit"));
        }
        let loads: Vec<usize> = capacity
            .ready_pods()
            .iter()
            .map(|p| p.in_flight())
            .collect();
        let (min, max) = (loads.iter().min().copied(), loads.iter().max().copied());
        assert!(
            max.zip(min).is_some_and(|(max, min)| max - min <= 10),
            "{loads:?}"
        );
        drop(permits);
    }

    #[tokio::test]
    async fn five_hundred_waiters_at_zero_all_get_a_pod() {
        let capacity = capacity(0, 1000);
        let mut tasks = Vec::new();
        for _ in 0..500 {
            let capacity = Arc::clone(&capacity);
            tasks.push(tokio::spawn(async move {
                capacity.acquire(far(), |_| {}).await.map(|p| p.addr())
            }));
        }
        while capacity.queued() < 500 {
            tokio::task::yield_now().await;
        }
        capacity.set_ready_pods(pods(&[1, 2]));
        for task in tasks {
            assert!(task.await.expect("task").is_ok());
        }
        assert_eq!(capacity.in_flight(), 0);
    }

    #[tokio::test]
    async fn near_pod_wins_ties_and_gives_way_to_a_less_loaded_one() {
        let capacity = capacity(0, 10);
        capacity.set_ready_pods(pods(&[1, 2]));
        for _ in 0..20 {
            let permit = capacity
                .acquire_near(far(), Some(addr(2)), |_| {})
                .await
                .expect("permit");
            assert_eq!(permit.addr(), addr(2), "an idle near pod is kept");
        }
        let busy = capacity
            .acquire_near(far(), Some(addr(2)), |_| {})
            .await
            .expect("permit");
        let mut others = 0;
        let mut held = Vec::new();
        for _ in 0..20 {
            let permit = capacity
                .acquire_near(far(), Some(addr(2)), |_| {})
                .await
                .expect("permit");
            others += usize::from(permit.addr() == addr(1));
            held.push(permit);
        }
        assert!(
            others >= 5,
            "the busier near pod gave way {others} times of 20"
        );
        drop((busy, held));
        let gone = capacity
            .acquire_near(far(), Some(addr(9)), |_| {})
            .await
            .expect("a pod that is not ready is ignored");
        assert_ne!(gone.addr(), addr(9));
    }

    #[tokio::test]
    async fn pods_that_stay_keep_their_counts_across_endpoint_changes() {
        let capacity = capacity(1, 10);
        capacity.set_ready_pods(pods(&[1]));
        let busy = capacity.acquire(far(), |_| {}).await.expect("permit");
        capacity.set_ready_pods(pods(&[1, 2]));
        let next = capacity.acquire(far(), |_| {}).await.expect("permit");
        assert_eq!(next.addr(), addr(2), "pod 1 is still at its limit");
        drop(busy);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_acquire_and_release_never_exceeds_the_limit_or_loses_a_slot() {
        let capacity = capacity(1, 100);
        capacity.set_ready_pods(pods(&[1, 2]));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let capacity = Arc::clone(&capacity);
            tasks.push(tokio::spawn(async move {
                for _ in 0..500 {
                    let permit = capacity.acquire(far(), |_| {}).await.expect("permit");
                    let pod = capacity
                        .ready_pods()
                        .iter()
                        .find(|pod| pod.addr == permit.addr())
                        .map(|pod| pod.in_flight());
                    assert_eq!(pod, Some(1), "a pod holds more than its limit");
                    tokio::task::yield_now().await;
                    drop(permit);
                }
            }));
        }
        let all = async {
            for task in tasks {
                task.await.expect("task");
            }
        };
        tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .expect("no waiter is left without a slot");
        assert_eq!(capacity.in_flight(), 0);
        assert_eq!(capacity.queued(), 0);
    }
}
