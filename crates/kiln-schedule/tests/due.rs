//! `latest_due`, `describe` and a scheduler loop driven by a `ManualClock`. Expected instants
//! are worked out by hand (see table.rs for the time zone conversions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use kiln_schedule::{Clock, ManualClock, Schedule};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn cron(e: &str, tz: Option<&str>) -> Schedule {
    Schedule::parse(e, tz).unwrap()
}

#[test]
fn a_year_of_every_minute_is_not_walked() {
    let s = cron("cron(* * * * ? *)", None);
    let started = Instant::now();
    let due = s.latest_due(t("2025-01-01T00:00:00Z"), t("2026-01-01T00:00:30Z"));
    assert_eq!(due, Some(t("2026-01-01T00:00:00Z")));
    // Forty years back, too.
    let due = s.latest_due(t("1986-01-01T00:00:00Z"), t("2026-06-15T12:34:56Z"));
    assert_eq!(due, Some(t("2026-06-15T12:34:00Z")));
    // Minute by minute this would be 21 million steps; bisection is a few dozen searches.
    assert!(
        started.elapsed().as_secs() < 5,
        "took {:?}",
        started.elapsed()
    );
    let rate = Schedule::parse("rate(1 minute)", None).unwrap();
    assert_eq!(
        rate.latest_due(t("1970-01-01T00:00:00Z"), t("2026-06-15T12:34:56Z")),
        Some(t("2026-06-15T12:34:00Z"))
    );
}

#[test]
fn boundaries_exclude_since_and_include_now() {
    let s = cron("cron(0 3 * * ? *)", None);
    // since == a run: that run is not due again.
    assert_eq!(
        s.latest_due(t("2026-01-01T03:00:00Z"), t("2026-01-02T02:59:59Z")),
        None
    );
    // now == a run: it is due.
    assert_eq!(
        s.latest_due(t("2026-01-01T03:00:00Z"), t("2026-01-02T03:00:00Z")),
        Some(t("2026-01-02T03:00:00Z"))
    );
    assert_eq!(
        s.latest_due(t("2026-01-01T02:59:59Z"), t("2026-01-01T03:00:00Z")),
        Some(t("2026-01-01T03:00:00Z"))
    );
    // Nine missed runs: only the latest is due.
    assert_eq!(
        s.latest_due(t("2026-01-01T00:00:00Z"), t("2026-01-10T12:00:00Z")),
        Some(t("2026-01-10T03:00:00Z"))
    );
    // An empty or backwards window.
    assert_eq!(
        s.latest_due(t("2026-01-10T12:00:00Z"), t("2026-01-10T12:00:00Z")),
        None
    );
    assert_eq!(
        s.latest_due(t("2026-01-10T12:00:00Z"), t("2026-01-01T12:00:00Z")),
        None
    );
}

#[test]
fn rate_counts_from_the_anchor() {
    let s = Schedule::parse("rate(1 hour)", None)
        .unwrap()
        .anchored(t("2026-01-01T00:20:00Z"));
    // The anchor (creation) is not itself a run; the first is an hour later.
    assert_eq!(
        s.latest_due(t("2025-12-31T00:00:00Z"), t("2026-01-01T00:20:00Z")),
        None
    );
    assert_eq!(
        s.latest_due(t("2025-12-31T00:00:00Z"), t("2026-01-01T01:19:59Z")),
        None
    );
    assert_eq!(
        s.latest_due(t("2025-12-31T00:00:00Z"), t("2026-01-01T01:20:00Z")),
        Some(t("2026-01-01T01:20:00Z"))
    );
    assert_eq!(
        s.latest_due(t("2026-01-01T01:20:00Z"), t("2026-01-01T02:19:59Z")),
        None
    );
    assert_eq!(
        s.latest_due(t("2026-01-01T01:20:00Z"), t("2026-01-01T02:20:00Z")),
        Some(t("2026-01-01T02:20:00Z"))
    );
    assert_eq!(
        s.next_after(t("2020-01-01T00:00:00Z")),
        Some(t("2026-01-01T01:20:00Z"))
    );
}

#[test]
fn ended_schedules_and_daylight_saving() {
    let over = cron("cron(0 0 * * ? 2020)", None);
    assert_eq!(
        over.latest_due(t("2019-06-01T00:00:00Z"), t("2026-01-01T00:00:00Z")),
        Some(t("2020-12-31T00:00:00Z"))
    );
    assert_eq!(over.next_after(t("2020-12-31T00:00:00Z")), None);

    let ny = Some("America/New_York");
    // 02:30 on the spring day runs once, at 03:00 EDT (07:00Z), and not again.
    let spring = cron("cron(0,30 2 * * ? *)", ny);
    assert_eq!(
        spring.latest_due(t("2026-03-08T06:59:00Z"), t("2026-03-08T07:00:00Z")),
        Some(t("2026-03-08T07:00:00Z"))
    );
    assert_eq!(
        spring.latest_due(t("2026-03-08T07:00:00Z"), t("2026-03-08T12:00:00Z")),
        None
    );
    // 01:30 on the autumn day runs at its first occurrence (05:30Z), not at the second (06:30Z).
    let autumn = cron("cron(30 1 * * ? *)", ny);
    assert_eq!(
        autumn.latest_due(t("2026-11-01T05:00:00Z"), t("2026-11-01T05:30:00Z")),
        Some(t("2026-11-01T05:30:00Z"))
    );
    assert_eq!(
        autumn.latest_due(t("2026-11-01T05:30:00Z"), t("2026-11-01T06:45:00Z")),
        None
    );
}

#[test]
fn a_scheduler_loop_on_a_manual_clock() {
    let clock = ManualClock::new(t("2026-01-01T00:00:00Z"));
    let held: &dyn Clock = &clock;
    let s = cron("cron(0 3 * * ? *)", Some("Europe/Berlin"));
    let mut last = held.now();
    let mut ran = Vec::new();
    // Wake every 7 hours, 77 hours in all (to Jan 4 05:00Z); 03:00 Berlin is 02:00Z in winter.
    for _ in 0..11 {
        clock.advance(Duration::hours(7));
        let now = held.now();
        if let Some(due) = s.latest_due(last, now) {
            ran.push(due);
        }
        last = now;
    }
    assert_eq!(
        ran,
        vec![
            t("2026-01-01T02:00:00Z"),
            t("2026-01-02T02:00:00Z"),
            t("2026-01-03T02:00:00Z"),
            t("2026-01-04T02:00:00Z"),
        ]
    );
    // Down for a month: one catch-up run, the latest.
    clock.set(t("2026-02-05T12:00:00Z"));
    assert_eq!(
        s.latest_due(last, held.now()),
        Some(t("2026-02-05T02:00:00Z"))
    );
}

#[test]
fn descriptions() {
    let d = |e: &str, tz: Option<&str>| Schedule::parse(e, tz).unwrap().describe();
    assert_eq!(
        d("cron(0 3 ? * SUN *)", Some("Europe/Paris")),
        "at 03:00 on Sunday (Europe/Paris)"
    );
    assert_eq!(d("rate(5 minutes)", None), "every 5 minutes");
    assert_eq!(d("rate(1 hour)", None), "every hour");
    assert_eq!(
        d("cron(0/15 * * * ? *)", None),
        "every 15 minutes (Etc/UTC)"
    );
    assert_eq!(
        d("cron(30 22 ? * tue#2 *)", None),
        "at 22:30 on the second Tuesday of the month (Etc/UTC)"
    );
    assert_eq!(
        d("cron(0 6 ? * SAT#2,4 *)", None),
        "at 06:00 on the second and fourth Saturday of the month (Etc/UTC)"
    );
    assert_eq!(
        d("cron(0 0 L 2 ? 2026-2030)", None),
        "at 00:00 on the last day of the month in February in years 2026-2030 (Etc/UTC)"
    );
    assert_eq!(
        d("cron(0 10,15 * * ? *)", None),
        "at 10:00 and 15:00 every day (Etc/UTC)"
    );
    let s = Schedule::parse("  cron(0 3 * * ? *) ", None).unwrap();
    assert_eq!(
        (s.expression(), s.timezone()),
        ("cron(0 3 * * ? *)", "Etc/UTC")
    );
}
