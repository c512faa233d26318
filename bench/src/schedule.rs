//! `zeroscale-bench schedule`: schedule delivery across leader changes. Two scheduler
//! instances share one in-memory store; one leads at a time, and every few ticks the
//! leader's task is aborted at a random moment (between a send and its record
//! included) and the other takes over after a random delay. The clock runs 600 times
//! as fast (a tick of every minute each 100 ms). Prints ticks due, fired once, fired
//! twice, missed, and the lateness (first send minus scheduled time) p50 and max.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use zeroscale_api::{Function, FunctionSpec, Schedule};
use zeroscale_triggers::{
    Attempt, Call, Clock, Invoker, MemoryStore, ScaledClock, ScheduleMetrics, Scheduler,
};

/// How much faster than real time the schedulers' clock runs.
const SPEED: u32 = 600;
/// One tick of `* * * * *`, in real time at [`SPEED`].
const TICK: Duration = Duration::from_millis(60_000 / SPEED as u64);

/// What the bench measured.
#[derive(Debug)]
pub struct Outcome {
    pub due: usize,
    pub fired_once: usize,
    pub fired_twice: usize,
    pub fired_more: usize,
    pub missed: i64,
    pub lateness_p50: Duration,
    pub lateness_max: Duration,
    pub kills: usize,
}

/// Records the first receipt of each `ce-id`, and answers after a short random delay
/// (a window in which a kill lands between send and record).
#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<BTreeMap<String, (usize, Duration)>>>,
    clock: Arc<ScaledClock>,
    random: Arc<Mutex<Random>>,
}

impl Invoker for Receiver {
    async fn call(&self, call: &Call) -> Attempt {
        let now = self.clock.now();
        let lateness = call
            .header("ce-time")
            .parse::<Timestamp>()
            .ok()
            .and_then(|tick| Duration::try_from(now.duration_since(tick)).ok())
            .unwrap_or_default();
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(call.header("ce-id").to_owned())
            .and_modify(|(count, _)| *count += 1)
            .or_insert((1, lateness));
        let delay = self.random().below(TICK.as_millis() as u64 / 5);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        Attempt::Status(200)
    }
}

impl Receiver {
    fn random(&self) -> std::sync::MutexGuard<'_, Random> {
        self.random
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// xorshift64: enough randomness for kill times, without a dependency.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}

fn function() -> Function {
    let mut spec = FunctionSpec::with_image("example.com/report:1");
    // Short calls: a claim left by a killed leader expires within a few ticks.
    spec.requests.timeout = "5s".into();
    spec.triggers.schedules = vec![Schedule::new("report", "* * * * *")];
    let mut function = Function::new("report", spec);
    function.metadata.namespace = Some("bench".into());
    function.metadata.uid = Some("uid-report".into());
    function
}

/// Runs `ticks` ticks with a kill every few ticks.
pub async fn run(ticks: usize, seed: u64) -> anyhow::Result<Outcome> {
    let store = Arc::new(MemoryStore::default());
    store.apply(function());
    let origin = Timestamp::now();
    let clock = Arc::new(ScaledClock::new(origin, SPEED));
    let random = Arc::new(Mutex::new(Random(seed | 1)));
    let invoker = Receiver {
        seen: Arc::new(Mutex::new(BTreeMap::new())),
        clock: Arc::clone(&clock),
        random: Arc::clone(&random),
    };
    let metrics = ScheduleMetrics::register(&prometheus::Registry::new())?;
    let replica = |identity: &str| {
        let mut scheduler = Scheduler::new(
            Arc::clone(&store),
            invoker.clone(),
            *clock,
            identity.to_owned(),
            metrics.clone(),
        );
        scheduler.max_sleep = Duration::from_secs(5);
        tokio::spawn(async move { scheduler.run(std::future::pending()).await })
    };
    let end = tokio::time::Instant::now() + TICK * u32::try_from(ticks)?;
    let mut kills = 0;
    let mut leader = 0usize;
    while tokio::time::Instant::now() < end {
        let identity = format!("replica-{leader}");
        let task = replica(&identity);
        // Lead for 2 to 5 ticks, killed at a random moment within the last.
        let lead = TICK * (2 + random_below(&random, 4) as u32)
            + Duration::from_millis(random_below(&random, TICK.as_millis() as u64));
        tokio::time::sleep(lead).await;
        task.abort();
        let _ = task.await;
        kills += 1;
        // The standby takes over after a lease-like delay of up to half a tick.
        let takeover = random_below(&random, TICK.as_millis() as u64 / 2);
        tokio::time::sleep(Duration::from_millis(takeover)).await;
        leader = 1 - leader;
    }
    // A last leader runs long enough to send what was left started (claims expire
    // after the tick's deadline plus the call timeout and a margin) and to catch up.
    let last = replica("replica-final");
    tokio::time::sleep(TICK * 8).await;
    last.abort();
    let _ = last.await;

    let record = store
        .schedules(&zeroscale_api::routing::FunctionKey::new("bench", "report"))
        .into_iter()
        .next()
        .unwrap_or_default();
    let last_handled = record.last_schedule_time.map(|t| t.0).unwrap_or(origin);
    let seen = invoker
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut lateness: Vec<Duration> = seen.values().map(|(_, late)| *late).collect();
    lateness.sort();
    // Ticks of every minute in (origin, last handled].
    let first_minute = origin.as_second() - origin.as_second().rem_euclid(60);
    let due = usize::try_from(((last_handled.as_second() - first_minute) / 60).max(0))?;
    Ok(Outcome {
        due,
        fired_once: seen.values().filter(|(n, _)| *n == 1).count(),
        fired_twice: seen.values().filter(|(n, _)| *n == 2).count(),
        fired_more: seen.values().filter(|(n, _)| *n > 2).count(),
        missed: record.missed_ticks,
        lateness_p50: lateness
            .get(lateness.len() / 2)
            .copied()
            .unwrap_or_default(),
        lateness_max: lateness.last().copied().unwrap_or_default(),
        kills,
    })
}

fn random_below(random: &Mutex<Random>, bound: u64) -> u64 {
    random
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .below(bound)
}

/// Prints the outcome as the closing note of the issue quotes it.
pub fn print(outcome: &Outcome) {
    println!(
        "schedule delivery with a leader killed every 2-5 ticks ({} kills)",
        outcome.kills
    );
    println!("  ticks due:    {}", outcome.due);
    println!("  fired once:   {}", outcome.fired_once);
    println!("  fired twice:  {}", outcome.fired_twice);
    println!("  fired 3+:     {}", outcome.fired_more);
    println!("  missed:       {}", outcome.missed);
    println!(
        "  lateness p50: {:.1}s, max: {:.1}s (scheduler time)",
        outcome.lateness_p50.as_secs_f64(),
        outcome.lateness_max.as_secs_f64()
    );
}
