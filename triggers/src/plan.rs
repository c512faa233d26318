//! The scheduler's decisions, pure: when each tick of a trigger is due, which ticks are
//! missed or skipped, which to send, and how a finished call is recorded. Time is passed
//! in, so tests drive it with any clock.

use std::time::Duration;

use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use zeroscale_api::validate::{parse_cron, parse_time_zone};
use zeroscale_api::{ActiveTick, ConcurrencyPolicy, Schedule, ScheduleStatus, TickResult};

/// A tick sent later than this after its scheduled time is marked late.
pub(crate) const LATE_AFTER: Duration = Duration::from_secs(10);

/// Most due ticks one plan walks through; an outage longer than that many ticks is
/// caught up over several plans.
const MAX_TICKS_PER_PLAN: u32 = 10_000;

/// A schedule trigger, parsed.
#[derive(Debug, Clone)]
pub(crate) struct Trigger {
    pub(crate) name: String,
    cron: Cron,
    zone: TimeZone,
    starting_deadline: Option<Duration>,
    policy: ConcurrencyPolicy,
    suspend: bool,
}

impl Trigger {
    /// Parses a schedule of a spec that passed validation (the error says why it did not).
    pub(crate) fn parse(schedule: &Schedule) -> Result<Self, String> {
        let zone = match &schedule.time_zone {
            Some(zone) => parse_time_zone(zone)?,
            None => TimeZone::UTC,
        };
        let starting_deadline = schedule
            .starting_deadline
            .as_deref()
            .map(zeroscale_api::duration::parse)
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            name: schedule.name.clone(),
            cron: parse_cron(&schedule.cron)?,
            zone,
            starting_deadline,
            policy: schedule.concurrency_policy,
            suspend: schedule.suspend,
        })
    }

    /// The first tick at or after `from` (strictly after when not `inclusive`), read in
    /// the trigger's time zone; None when the expression never matches again.
    fn next(&self, from: Timestamp, inclusive: bool) -> Option<Timestamp> {
        let zoned = from.to_zoned(self.zone.clone());
        self.cron
            .find_next_occurrence(&zoned, inclusive)
            .ok()
            .map(|next| next.timestamp())
    }

    /// The first tick strictly after `after`.
    pub(crate) fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        self.next(after, false)
    }

    /// The last moment `tick` may still be sent (and retried): its startingDeadline, or
    /// else until the next tick is due.
    pub(crate) fn deadline(&self, tick: Timestamp) -> Timestamp {
        match self.starting_deadline {
            Some(deadline) => add(tick, deadline),
            None => self
                .next_after(tick)
                .unwrap_or_else(|| add(tick, LATE_AFTER)),
        }
    }
}

/// `time` plus `duration`, saturating at the largest timestamp.
pub(crate) fn add(time: Timestamp, duration: Duration) -> Timestamp {
    SignedDuration::try_from(duration)
        .ok()
        .and_then(|d| time.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// A tick to send once the plan's record is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Firing {
    /// The tick's scheduled time.
    pub(crate) tick: Timestamp,
    /// Retries stop after this; the first attempt is always made.
    pub(crate) deadline: Timestamp,
    /// Whether an earlier sender claimed it and stopped before recording it done.
    pub(crate) redelivery: bool,
}

/// What a trigger needs now.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Plan {
    /// The trigger's record to write before anything else; None when unchanged.
    pub(crate) record: Option<ScheduleStatus>,
    /// The tick to send after `record` is written.
    pub(crate) send: Option<Firing>,
    /// Ticks found past their deadline, recorded as missed.
    pub(crate) missed: u32,
    /// Ticks skipped (suspended, or Forbid while the previous call runs).
    pub(crate) skipped: u32,
    /// When to plan again at the latest.
    pub(crate) wake: Option<Timestamp>,
}

/// Decides what `trigger` needs at `now`, given its `current` record. `me` identifies
/// the sender in the record; `hold` is how long after a tick's deadline its sender may
/// still be busy with it (the last attempt's timeout plus a margin): only after that may
/// another replica send it again.
///
/// In order: a claimed tick whose claim expired is sent again (same tick, so the same
/// `ce-id`); a trigger seen for the first time is recorded with its next tick and fires
/// nothing; then due ticks are walked in order: past their deadline they are missed,
/// while suspended (or, with Forbid, while a call runs) they are skipped, and the first
/// one left is claimed and sent. One tick is sent per plan: plan again at once after it.
pub(crate) fn plan(
    trigger: &Trigger,
    current: Option<&ScheduleStatus>,
    now: Timestamp,
    me: &str,
    hold: Duration,
) -> Plan {
    let mut record = current.cloned().unwrap_or_else(|| ScheduleStatus {
        name: trigger.name.clone(),
        ..Default::default()
    });
    let claim = |tick: Timestamp| add(trigger.deadline(tick).max(now), hold);

    let expired = record
        .active
        .iter()
        .enumerate()
        .filter(|(_, active)| active.claim_expires.0 <= now)
        .min_by_key(|(_, active)| active.schedule_time.0)
        .map(|(index, _)| index);
    if let Some(index) = expired {
        let active = &mut record.active[index];
        let tick = active.schedule_time.0;
        active.started_by = me.to_owned();
        active.started_time = Time(now);
        active.claim_expires = Time(claim(tick));
        active.deliveries += 1;
        return Plan {
            record: Some(record),
            send: Some(Firing {
                tick,
                deadline: trigger.deadline(tick).max(now),
                redelivery: true,
            }),
            wake: Some(now),
            ..Plan::default()
        };
    }

    let pending = match (&record.last_schedule_time, &record.next_schedule_time) {
        (Some(last), _) => trigger.next_after(last.0),
        (None, Some(next)) => trigger.next(next.0, true),
        (None, None) => {
            record.next_schedule_time = trigger.next_after(now).map(Time);
            return Plan {
                wake: record.next_schedule_time.as_ref().map(|t| t.0),
                record: (current != Some(&record)).then_some(record),
                ..Plan::default()
            };
        }
    };

    let mut plan = Plan::default();
    let mut pending = pending;
    let mut walked = 0;
    while let Some(tick) = pending.filter(|tick| *tick <= now) {
        walked += 1;
        if walked > MAX_TICKS_PER_PLAN {
            plan.wake = Some(now);
            break;
        }
        record.last_schedule_time = Some(Time(tick));
        pending = trigger.next_after(tick);
        let running = record.active.iter().any(|a| a.claim_expires.0 > now);
        if trigger.suspend || (trigger.policy == ConcurrencyPolicy::Forbid && running) {
            plan.skipped += 1;
            continue;
        }
        if now > trigger.deadline(tick) {
            plan.missed += 1;
            continue;
        }
        record.active.push(ActiveTick {
            schedule_time: Time(tick),
            started_by: me.to_owned(),
            started_time: Time(now),
            claim_expires: Time(claim(tick)),
            deliveries: 1,
        });
        plan.send = Some(Firing {
            tick,
            deadline: trigger.deadline(tick),
            redelivery: false,
        });
        plan.wake = Some(now);
        break;
    }
    record.missed_ticks += i64::from(plan.missed);
    record.skipped_ticks += i64::from(plan.skipped);
    record.next_schedule_time = pending.map(Time);
    let earliest_claim = record.active.iter().map(|a| a.claim_expires.0).min();
    plan.wake = [plan.wake, pending, earliest_claim]
        .into_iter()
        .flatten()
        .min();
    if current != Some(&record) {
        plan.record = Some(record);
    }
    plan
}

/// How one tick's call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// The tick's scheduled time.
    pub(crate) tick: Timestamp,
    /// When the first attempt started.
    pub(crate) first_attempt: Timestamp,
    /// When the last attempt ended.
    pub(crate) finished: Timestamp,
    /// Attempts made.
    pub(crate) attempts: u32,
    /// The last attempt's answer.
    pub(crate) last: Attempt,
}

/// One attempt's answer: an HTTP status, or why there was none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Status(u16),
    Failed(String),
}

impl Attempt {
    /// Whether the Function took the tick: any answer but a 5xx or a 429.
    pub fn succeeded(&self) -> bool {
        matches!(self, Attempt::Status(code) if *code < 500 && *code != 429)
    }
}

/// Delay before retry number `retry` (1-based): 200 ms doubling up to 10 s.
pub(crate) fn backoff(retry: u32) -> Duration {
    let millis = 200u64.saturating_mul(1 << retry.saturating_sub(1).min(16));
    Duration::from_millis(millis.min(10_000))
}

impl Delivery {
    /// How late the first attempt was.
    pub(crate) fn lateness(&self) -> Duration {
        self.first_attempt
            .duration_since(self.tick)
            .try_into()
            .unwrap_or_default()
    }
}

/// The record once `delivery` is done: its tick is no longer active and it is the last
/// result.
pub(crate) fn finish(current: &ScheduleStatus, delivery: &Delivery) -> ScheduleStatus {
    let mut record = current.clone();
    record
        .active
        .retain(|active| active.schedule_time.0 != delivery.tick);
    let succeeded = delivery.last.succeeded();
    let (status_code, error) = match &delivery.last {
        Attempt::Status(code) => (Some(i32::from(*code)), None),
        Attempt::Failed(error) => (None, Some(error.clone())),
    };
    let lateness = delivery.lateness();
    record.last_fired_time = Some(Time(delivery.first_attempt));
    record.consecutive_failures = if succeeded {
        0
    } else {
        record.consecutive_failures.saturating_add(1)
    };
    record.last_result = Some(TickResult {
        schedule_time: Time(delivery.tick),
        status_code,
        error,
        succeeded,
        attempts: i32::try_from(delivery.attempts).unwrap_or(i32::MAX),
        duration_millis: millis(delivery.finished.duration_since(delivery.first_attempt)),
        lateness_millis: i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX),
        late: lateness > LATE_AFTER,
    });
    record
}

fn millis(duration: SignedDuration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The CloudEvents `ce-id` of a tick: the same for every delivery of it, different for
/// every other tick, so a Function can drop repeats.
pub(crate) fn event_id(uid: &str, trigger: &str, tick: Timestamp) -> String {
    format!("{uid}:{trigger}:{}", tick.as_second())
}
