//! Tests of the pure schedule core: next ticks across zones and DST changes, missed and
//! skipped ticks, Forbid, redelivery, and how a finished call is recorded.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use zeroscale_api::{ConcurrencyPolicy, Schedule, ScheduleStatus};

use super::*;
use crate::plan::{Delivery, Plan, Trigger, backoff, event_id, finish, plan};

const ME: &str = "operator-0";
const HOLD: Duration = Duration::from_secs(60);

fn at(text: &str) -> Timestamp {
    text.parse().expect("valid timestamp")
}

fn trigger(cron: &str, zone: Option<&str>) -> Trigger {
    let mut schedule = Schedule::new("tick", cron);
    schedule.time_zone = zone.map(str::to_owned);
    Trigger::parse(&schedule).expect("valid schedule")
}

fn with(cron: &str, edit: impl FnOnce(&mut Schedule)) -> Trigger {
    let mut schedule = Schedule::new("tick", cron);
    edit(&mut schedule);
    Trigger::parse(&schedule).expect("valid schedule")
}

/// A record whose last handled tick is `last`.
fn handled(last: &str) -> ScheduleStatus {
    ScheduleStatus {
        name: "tick".into(),
        last_schedule_time: Some(Time(at(last))),
        ..Default::default()
    }
}

#[test]
fn ticks_are_read_in_the_trigger_time_zone() {
    let daily = "0 6 * * *";
    let after = at("2026-01-10T12:00:00Z");
    assert_eq!(
        trigger(daily, None).next_after(after),
        Some(at("2026-01-11T06:00:00Z"))
    );
    assert_eq!(
        trigger(daily, Some("Europe/Berlin")).next_after(after),
        Some(at("2026-01-11T05:00:00Z"))
    );
    assert_eq!(
        trigger(daily, Some("America/New_York")).next_after(after),
        Some(at("2026-01-11T11:00:00Z"))
    );
    assert_eq!(
        trigger("@hourly", None).next_after(at("2026-01-10T12:00:00Z")),
        Some(at("2026-01-10T13:00:00Z"))
    );
}

#[test]
fn a_daily_tick_keeps_its_wall_clock_time_across_dst_changes() {
    let berlin = trigger("0 6 * * *", Some("Europe/Berlin"));
    // CET (UTC+1) before the spring change on 2026-03-29, CEST (UTC+2) after it.
    assert_eq!(
        berlin.next_after(at("2026-03-28T12:00:00Z")),
        Some(at("2026-03-29T04:00:00Z"))
    );
    assert_eq!(
        berlin.next_after(at("2026-03-27T12:00:00Z")),
        Some(at("2026-03-28T05:00:00Z"))
    );
    // And back to CET on 2026-10-25.
    assert_eq!(
        berlin.next_after(at("2026-10-24T12:00:00Z")),
        Some(at("2026-10-25T05:00:00Z"))
    );
}

#[test]
fn a_tick_in_the_spring_gap_runs_once_after_it_and_one_in_the_autumn_overlap_runs_once() {
    // 02:30 does not exist in Berlin on 2026-03-29 (02:00 -> 03:00 CEST).
    let half_past_two = trigger("30 2 * * *", Some("Europe/Berlin"));
    let spring = half_past_two
        .next_after(at("2026-03-28T12:00:00Z"))
        .expect("a tick");
    assert_eq!(
        spring,
        at("2026-03-29T01:00:00Z"),
        "03:00 CEST, right after the gap"
    );
    assert_eq!(
        half_past_two.next_after(spring),
        Some(at("2026-03-30T00:30:00Z"))
    );
    // 02:30 happens twice on 2026-10-25 (CEST, then CET): it fires on the first only.
    let autumn = half_past_two
        .next_after(at("2026-10-24T12:00:00Z"))
        .expect("a tick");
    assert_eq!(autumn, at("2026-10-25T00:30:00Z"));
    assert_eq!(
        half_past_two.next_after(autumn),
        Some(at("2026-10-26T01:30:00Z"))
    );
}

#[test]
fn a_new_trigger_records_its_next_tick_and_fires_nothing() {
    let plan = plan(
        &trigger("*/5 * * * *", None),
        None,
        at("2026-01-10T12:01:00Z"),
        ME,
        HOLD,
    );
    assert_eq!(plan.send, None);
    let record = plan.record.expect("a record");
    assert_eq!(
        record.next_schedule_time,
        Some(Time(at("2026-01-10T12:05:00Z")))
    );
    assert_eq!(record.last_schedule_time, None);
    assert_eq!(plan.wake, Some(at("2026-01-10T12:05:00Z")));

    // Once it is due, that tick fires.
    let plan = plan_at(
        &trigger("*/5 * * * *", None),
        &record,
        "2026-01-10T12:05:01Z",
    );
    assert_eq!(plan.send.map(|s| s.tick), Some(at("2026-01-10T12:05:00Z")));
}

fn plan_at(trigger: &Trigger, record: &ScheduleStatus, now: &str) -> Plan {
    plan(trigger, Some(record), at(now), ME, HOLD)
}

#[test]
fn a_due_tick_is_claimed_before_it_is_sent() {
    let every_minute = trigger("* * * * *", None);
    let plan = plan_at(
        &every_minute,
        &handled("2026-01-10T12:00:00Z"),
        "2026-01-10T12:01:00.200Z",
    );
    let send = plan.send.expect("the tick is sent");
    assert_eq!(send.tick, at("2026-01-10T12:01:00Z"));
    assert!(!send.redelivery);
    assert_eq!(
        send.deadline,
        at("2026-01-10T12:02:00Z"),
        "until the next tick"
    );
    let record = plan.record.expect("the claim is written first");
    assert_eq!(
        record.last_schedule_time,
        Some(Time(at("2026-01-10T12:01:00Z")))
    );
    assert_eq!(
        record.next_schedule_time,
        Some(Time(at("2026-01-10T12:02:00Z")))
    );
    assert_eq!(record.active.len(), 1);
    let active = &record.active[0];
    assert_eq!(active.started_by, ME);
    assert_eq!(active.deliveries, 1);
    assert_eq!(
        active.claim_expires,
        Time(at("2026-01-10T12:03:00Z")),
        "deadline + hold"
    );
}

#[test]
fn nothing_is_written_before_the_next_tick() {
    let every_minute = trigger("* * * * *", None);
    let mut record = handled("2026-01-10T12:00:00Z");
    record.next_schedule_time = Some(Time(at("2026-01-10T12:01:00Z")));
    let plan = plan_at(&every_minute, &record, "2026-01-10T12:00:30Z");
    assert_eq!(plan.record, None);
    assert_eq!(plan.send, None);
    assert_eq!(plan.wake, Some(at("2026-01-10T12:01:00Z")));
}

#[test]
fn ticks_past_their_deadline_are_missed_and_the_latest_is_sent_late() {
    // Without startingDeadline a tick may be sent until the next one is due.
    let every_minute = trigger("* * * * *", None);
    let plan = plan_at(
        &every_minute,
        &handled("2026-01-10T12:00:00Z"),
        "2026-01-10T12:10:30Z",
    );
    assert_eq!(plan.missed, 9);
    assert_eq!(plan.send.map(|s| s.tick), Some(at("2026-01-10T12:10:00Z")));
    assert_eq!(plan.record.expect("record").missed_ticks, 9);

    // With startingDeadline 5m, each tick still within 5 minutes is sent, oldest first.
    let five_minutes = with("* * * * *", |s| s.starting_deadline = Some("5m".into()));
    let plan = plan_at(
        &five_minutes,
        &handled("2026-01-10T12:00:00Z"),
        "2026-01-10T12:10:30Z",
    );
    assert_eq!(plan.missed, 5);
    let send = plan.send.expect("a tick within its deadline");
    assert_eq!(send.tick, at("2026-01-10T12:06:00Z"));
    assert_eq!(send.deadline, at("2026-01-10T12:11:00Z"));
    let record = plan.record.expect("record");
    let plan = plan_at(&five_minutes, &record, "2026-01-10T12:10:30Z");
    assert_eq!(plan.missed, 0);
    assert_eq!(plan.send.map(|s| s.tick), Some(at("2026-01-10T12:07:00Z")));
}

#[test]
fn forbid_skips_a_tick_while_the_previous_call_runs_and_allow_does_not() {
    let forbid = with("* * * * *", |s| {
        s.concurrency_policy = ConcurrencyPolicy::Forbid
    });
    let allow = trigger("* * * * *", None);
    let started = plan_at(
        &forbid,
        &handled("2026-01-10T12:00:00Z"),
        "2026-01-10T12:01:00Z",
    )
    .record
    .expect("claimed");

    let plan = plan_at(&forbid, &started, "2026-01-10T12:02:00Z");
    assert_eq!(plan.send, None);
    assert_eq!(plan.skipped, 1);
    let record = plan.record.expect("record");
    assert_eq!(record.skipped_ticks, 1);
    assert_eq!(
        record.last_schedule_time,
        Some(Time(at("2026-01-10T12:02:00Z")))
    );

    let plan = plan_at(&allow, &started, "2026-01-10T12:02:00Z");
    assert_eq!(plan.send.map(|s| s.tick), Some(at("2026-01-10T12:02:00Z")));
    assert_eq!(plan.record.expect("record").active.len(), 2);

    // Once the previous call is recorded done, Forbid sends again.
    let delivery = Delivery {
        tick: at("2026-01-10T12:01:00Z"),
        first_attempt: at("2026-01-10T12:01:00Z"),
        finished: at("2026-01-10T12:01:01Z"),
        attempts: 1,
        last: Attempt::Status(200),
    };
    let done = finish(&started, &delivery);
    let plan = plan_at(&forbid, &done, "2026-01-10T12:02:00Z");
    assert_eq!(plan.send.map(|s| s.tick), Some(at("2026-01-10T12:02:00Z")));
}

#[test]
fn suspended_triggers_skip_their_ticks() {
    let suspended = with("* * * * *", |s| s.suspend = true);
    let plan = plan_at(
        &suspended,
        &handled("2026-01-10T12:00:00Z"),
        "2026-01-10T12:03:10Z",
    );
    assert_eq!(plan.send, None);
    assert_eq!(plan.skipped, 3);
    assert_eq!(plan.missed, 0);
}

#[test]
fn a_started_tick_is_sent_again_only_after_its_claim_expires() {
    let every_minute = trigger("* * * * *", None);
    let started = plan(
        &every_minute,
        Some(&handled("2026-01-10T12:00:00Z")),
        at("2026-01-10T12:01:00Z"),
        "operator-old",
        HOLD,
    )
    .record
    .expect("claimed");
    // Claim runs until 12:03 (deadline 12:02 + hold 1m): no resend before.
    let plan = plan_at(&every_minute, &started, "2026-01-10T12:01:40Z");
    assert_eq!(plan.send, None);
    assert_eq!(plan.record, None);

    let plan = plan_at(&every_minute, &started, "2026-01-10T12:03:00Z");
    let send = plan.send.expect("sent again");
    assert_eq!(
        send.tick,
        at("2026-01-10T12:01:00Z"),
        "the same tick, so the same ce-id"
    );
    assert!(send.redelivery);
    let record = plan.record.expect("claimed again");
    assert_eq!(record.active.len(), 1);
    assert_eq!(record.active[0].started_by, ME);
    assert_eq!(record.active[0].deliveries, 2);
}

#[test]
fn a_finished_call_is_recorded_with_its_result_and_lateness() {
    let every_minute = trigger("* * * * *", None);
    let started = plan_at(
        &every_minute,
        &handled("2026-01-10T12:00:00Z"),
        "2026-01-10T12:01:30Z",
    )
    .record
    .expect("claimed");
    let failed = finish(
        &started,
        &Delivery {
            tick: at("2026-01-10T12:01:00Z"),
            first_attempt: at("2026-01-10T12:01:30Z"),
            finished: at("2026-01-10T12:01:32Z"),
            attempts: 3,
            last: Attempt::Status(503),
        },
    );
    assert!(failed.active.is_empty());
    assert_eq!(failed.consecutive_failures, 1);
    assert_eq!(
        failed.last_fired_time,
        Some(Time(at("2026-01-10T12:01:30Z")))
    );
    let result = failed.last_result.clone().expect("a result");
    assert_eq!(result.status_code, Some(503));
    assert!(!result.succeeded);
    assert_eq!(result.attempts, 3);
    assert_eq!(result.duration_millis, 2000);
    assert_eq!(result.lateness_millis, 30_000);
    assert!(result.late);

    let ok = finish(
        &failed,
        &Delivery {
            tick: at("2026-01-10T12:02:00Z"),
            first_attempt: at("2026-01-10T12:02:00.050Z"),
            finished: at("2026-01-10T12:02:00.100Z"),
            attempts: 1,
            last: Attempt::Status(204),
        },
    );
    assert_eq!(ok.consecutive_failures, 0);
    assert!(!ok.last_result.expect("a result").late);
}

#[test]
fn only_server_errors_throttling_and_connection_failures_are_retried() {
    for code in [200, 204, 302, 400, 404] {
        assert!(Attempt::Status(code).succeeded(), "{code}");
    }
    for code in [429, 500, 502, 503, 504] {
        assert!(!Attempt::Status(code).succeeded(), "{code}");
    }
    assert!(!Attempt::Failed("connection refused".into()).succeeded());
    assert_eq!(backoff(1), Duration::from_millis(200));
    assert_eq!(backoff(2), Duration::from_millis(400));
    assert_eq!(backoff(20), Duration::from_secs(10));
}

#[test]
fn event_ids_are_the_same_for_a_tick_and_differ_between_ticks_and_triggers() {
    let tick = at("2026-01-10T12:01:00Z");
    assert_eq!(
        event_id("uid-1", "tick", tick),
        event_id("uid-1", "tick", tick)
    );
    assert_ne!(
        event_id("uid-1", "tick", tick),
        event_id("uid-1", "tick", at("2026-01-10T12:02:00Z"))
    );
    assert_ne!(
        event_id("uid-1", "tick", tick),
        event_id("uid-1", "tock", tick)
    );
    assert_ne!(
        event_id("uid-1", "tick", tick),
        event_id("uid-2", "tick", tick)
    );
}
