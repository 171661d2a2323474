//! The schedule table: expressions, each with a time zone, a start and its next three runs in
//! UTC (fewer when the schedule ends), or the field an invalid one is refused on.
//!
//! Expected runs were worked out by hand from the calendar (Python's `calendar` for
//! weekdays) and converted to UTC with Python's `zoneinfo`, which also said which local times
//! fall in a gap or happen twice; never by running this crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};
use kiln_schedule::Schedule;

enum Expect {
    Runs(&'static [&'static str]),
    Refused(&'static str),
}
use Expect::{Refused, Runs};

struct Case {
    expression: &'static str,
    timezone: Option<&'static str>,
    /// rate() only: the pipeline's creation time.
    anchor: Option<&'static str>,
    start: &'static str,
    expect: Expect,
}

const fn case(
    expression: &'static str,
    timezone: Option<&'static str>,
    start: &'static str,
    expect: Expect,
) -> Case {
    Case {
        expression,
        timezone,
        anchor: None,
        start,
        expect,
    }
}

const fn rate(
    expression: &'static str,
    anchor: Option<&'static str>,
    start: &'static str,
    runs: &'static [&'static str],
) -> Case {
    Case {
        expression,
        timezone: None,
        anchor,
        start,
        expect: Runs(runs),
    }
}

const fn bad(
    expression: &'static str,
    timezone: Option<&'static str>,
    field: &'static str,
) -> Case {
    Case {
        expression,
        timezone,
        anchor: None,
        start: "2026-01-01T00:00:00Z",
        expect: Refused(field),
    }
}

/// 2026-01-01 is a Thursday.
const JAN1: &str = "2026-01-01T00:00:00Z";
const NY: Option<&str> = Some("America/New_York");
const BERLIN: Option<&str> = Some("Europe/Berlin");
const SYDNEY: Option<&str> = Some("Australia/Sydney");

#[rustfmt::skip]
const CASES: &[Case] = &[
    // --- Plain values, `*`, `?`, `,`, `-`, `/` (UTC) ---
    case("cron(0 10 * * ? *)", None, JAN1, Runs(&["2026-01-01T10:00:00Z", "2026-01-02T10:00:00Z", "2026-01-03T10:00:00Z"])),
    case("cron(15 12 * * ? *)", Some("Etc/UTC"), JAN1, Runs(&["2026-01-01T12:15:00Z", "2026-01-02T12:15:00Z", "2026-01-03T12:15:00Z"])),
    // MON-FRI from a Thursday: Thu 1, Fri 2, Mon 5.
    case("cron(0 18 ? * MON-FRI *)", None, JAN1, Runs(&["2026-01-01T18:00:00Z", "2026-01-02T18:00:00Z", "2026-01-05T18:00:00Z"])),
    case("cron(0 8 1 * ? *)", None, JAN1, Runs(&["2026-01-01T08:00:00Z", "2026-02-01T08:00:00Z", "2026-03-01T08:00:00Z"])),
    // The start itself (00:00) is not "after" it.
    case("cron(0/15 * * * ? *)", None, JAN1, Runs(&["2026-01-01T00:15:00Z", "2026-01-01T00:30:00Z", "2026-01-01T00:45:00Z"])),
    // `?` in day-of-month, `*` in day-of-week.
    case("cron(*/10 * ? * * *)", None, "2026-01-01T00:05:00Z", Runs(&["2026-01-01T00:10:00Z", "2026-01-01T00:20:00Z", "2026-01-01T00:30:00Z"])),
    case("cron(5-50/15 3 * * ? *)", None, JAN1, Runs(&["2026-01-01T03:05:00Z", "2026-01-01T03:20:00Z", "2026-01-01T03:35:00Z"])),
    // A range over midnight: 22, 23, 0, 1, 2.
    case("cron(0 22-2 * * ? *)", None, JAN1, Runs(&["2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z", "2026-01-01T22:00:00Z"])),
    case("cron(0 3 1-3,15 * ? *)", None, JAN1, Runs(&["2026-01-01T03:00:00Z", "2026-01-02T03:00:00Z", "2026-01-03T03:00:00Z"])),
    // Days 28-2 run over the month's end; 00:00 on the 1st is the start, so not after it.
    case("cron(0 0 28-2 * ? *)", None, JAN1, Runs(&["2026-01-02T00:00:00Z", "2026-01-28T00:00:00Z", "2026-01-29T00:00:00Z"])),
    case("cron(0 12 1 */3 ? *)", None, "2026-01-01T12:00:00Z", Runs(&["2026-04-01T12:00:00Z", "2026-07-01T12:00:00Z", "2026-10-01T12:00:00Z"])),
    // Names in any case.
    case("cron(0 0 1 jan,Jul ? *)", None, JAN1, Runs(&["2026-07-01T00:00:00Z", "2027-01-01T00:00:00Z", "2027-07-01T00:00:00Z"])),
    // Days by number, 1 = SUN, 7 = SAT: Sat 3, Sun 4, Sat 10.
    case("cron(0 8 ? * 1,7 *)", None, JAN1, Runs(&["2026-01-03T08:00:00Z", "2026-01-04T08:00:00Z", "2026-01-10T08:00:00Z"])),
    // FRI-MON runs over the week's end: Fri 2, Sat 3, Sun 4.
    case("cron(0 7 ? * FRI-MON *)", None, JAN1, Runs(&["2026-01-02T07:00:00Z", "2026-01-03T07:00:00Z", "2026-01-04T07:00:00Z"])),

    // --- `#`, `L`, `nL`, `W`, `LW` ---
    // AWS's example: second Tuesday at 22:30 (Jan 13, Feb 10, Mar 10).
    case("cron(30 22 ? * tue#2 *)", None, JAN1, Runs(&["2026-01-13T22:30:00Z", "2026-02-10T22:30:00Z", "2026-03-10T22:30:00Z"])),
    // First Monday, by number (2 = MON).
    case("cron(0 9 ? * 2#1 *)", None, JAN1, Runs(&["2026-01-05T09:00:00Z", "2026-02-02T09:00:00Z", "2026-03-02T09:00:00Z"])),
    // Image Builder's guide: SAT#2,4 is the second and fourth Saturday (Jan 10, 24; Feb 14).
    case("cron(0 6 ? * SAT#2,4 *)", None, JAN1, Runs(&["2026-01-10T06:00:00Z", "2026-01-24T06:00:00Z", "2026-02-14T06:00:00Z"])),
    // Last Friday (6L), within a year range.
    case("cron(15 10 ? * 6L 2026-2027)", None, JAN1, Runs(&["2026-01-30T10:15:00Z", "2026-02-27T10:15:00Z", "2026-03-27T10:15:00Z"])),
    case("cron(0 12 ? * THUL *)", None, JAN1, Runs(&["2026-01-29T12:00:00Z", "2026-02-26T12:00:00Z", "2026-03-26T12:00:00Z"])),
    // Bare L in day-of-week: the last day of the week, Saturday.
    case("cron(0 9 ? * L *)", None, JAN1, Runs(&["2026-01-03T09:00:00Z", "2026-01-10T09:00:00Z", "2026-01-17T09:00:00Z"])),
    case("cron(0 0 L * ? *)", None, JAN1, Runs(&["2026-01-31T00:00:00Z", "2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z"])),
    // L in February: 29 in 2024 (leap), 28 in 2025 and 2026.
    case("cron(0 0 L 2 ? *)", None, "2024-01-01T00:00:00Z", Runs(&["2024-02-29T00:00:00Z", "2025-02-28T00:00:00Z", "2026-02-28T00:00:00Z"])),
    // Feb 29 only in leap years.
    case("cron(0 0 29 2 ? *)", None, "2024-03-01T00:00:00Z", Runs(&["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z", "2036-02-29T00:00:00Z"])),
    // Last weekday: Jan 31 and Feb 28 are Saturdays, so Fridays 30 and 27; Mar 31 is a Tuesday.
    case("cron(0 9 LW * ? *)", None, JAN1, Runs(&["2026-01-30T09:00:00Z", "2026-02-27T09:00:00Z", "2026-03-31T09:00:00Z"])),
    // Weekday nearest the 15th: Thu Jan 15; Feb 15 and Mar 15 are Sundays, so Mondays 16.
    case("cron(0 9 15W * ? *)", None, JAN1, Runs(&["2026-01-15T09:00:00Z", "2026-02-16T09:00:00Z", "2026-03-16T09:00:00Z"])),
    // 1W: Aug 1 is a Saturday, and W stays in the month: Monday the 3rd. Sep 1 Tue, Oct 1 Thu.
    case("cron(0 9 1W * ? *)", None, "2026-07-15T00:00:00Z", Runs(&["2026-08-03T09:00:00Z", "2026-09-01T09:00:00Z", "2026-10-01T09:00:00Z"])),

    // --- Years ---
    case("cron(0 0 1 1 ? 2030/5)", None, JAN1, Runs(&["2030-01-01T00:00:00Z", "2035-01-01T00:00:00Z", "2040-01-01T00:00:00Z"])),
    // The range ends after two runs.
    case("cron(0 0 1 1 ? 2026-2027)", None, "2025-06-01T00:00:00Z", Runs(&["2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"])),
    // Years over: never again.
    case("cron(0 0 * * ? 2020)", None, JAN1, Runs(&[])),

    // --- The 5-field form (no year) ---
    case("cron(0 10 * * ?)", None, JAN1, Runs(&["2026-01-01T10:00:00Z", "2026-01-02T10:00:00Z", "2026-01-03T10:00:00Z"])),
    // `*` gives way to the other day field: Sundays.
    case("cron(0 0 * * SUN)", None, JAN1, Runs(&["2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z", "2026-01-18T00:00:00Z"])),
    case("cron(0 3 * * *)", None, JAN1, Runs(&["2026-01-01T03:00:00Z", "2026-01-02T03:00:00Z", "2026-01-03T03:00:00Z"])),
    // Image Builder's older example.
    case("cron(0 10 * * TUE#2)", None, JAN1, Runs(&["2026-01-13T10:00:00Z", "2026-02-10T10:00:00Z", "2026-03-10T10:00:00Z"])),

    // --- rate(), in every unit; exact elapsed time ---
    rate("rate(1 minute)", None, "2026-01-01T00:00:30Z", &["2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z", "2026-01-01T00:03:00Z"]),
    rate("rate(5 minutes)", None, "2026-01-01T00:02:00Z", &["2026-01-01T00:05:00Z", "2026-01-01T00:10:00Z", "2026-01-01T00:15:00Z"]),
    // The first run is one hour after the anchor.
    rate("rate(1 hour)", Some("2026-01-01T00:20:00Z"), JAN1, &["2026-01-01T01:20:00Z", "2026-01-01T02:20:00Z", "2026-01-01T03:20:00Z"]),
    // From the epoch: a start on a run excludes it.
    rate("rate(12 hours)", None, JAN1, &["2026-01-01T12:00:00Z", "2026-01-02T00:00:00Z", "2026-01-02T12:00:00Z"]),
    // Across New York's spring change: still 24 hours apart (no time zone applies to rate).
    rate("rate(1 day)", Some("2026-03-07T12:00:00Z"), "2026-03-07T12:00:00Z", &["2026-03-08T12:00:00Z", "2026-03-09T12:00:00Z", "2026-03-10T12:00:00Z"]),
    rate("rate(3 days)", Some("2026-01-01T00:00:00Z"), "2025-12-01T00:00:00Z", &["2026-01-04T00:00:00Z", "2026-01-07T00:00:00Z", "2026-01-10T00:00:00Z"]),

    // --- Time zones and daylight saving ---
    // New York, spring (2026-03-08): 02:30 does not exist and runs at 03:00 EDT (07:00Z).
    case("cron(30 2 * * ? *)", NY, "2026-03-07T00:00:00Z", Runs(&["2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"])),
    // Four nonexistent times in one gap collapse into one run at 07:00Z.
    case("cron(0,15,30,45 2 * * ? *)", NY, "2026-03-08T06:00:00Z", Runs(&["2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z", "2026-03-09T06:15:00Z"])),
    // Every 30 minutes through the gap: 02:00 and 02:30 collapse into 03:00 EDT, itself a run.
    case("cron(*/30 * * * ? *)", NY, "2026-03-08T06:45:00Z", Runs(&["2026-03-08T07:00:00Z", "2026-03-08T07:30:00Z", "2026-03-08T08:00:00Z"])),
    // New York, autumn (2026-11-01): 01:30 happens twice; it runs at the first (EDT, 05:30Z).
    case("cron(30 1 * * ? *)", NY, "2026-10-31T00:00:00Z", Runs(&["2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"])),
    // Every 30 minutes: the second 01:00 and 01:30 (EST) are not run again.
    case("cron(0/30 * * * ? *)", NY, "2026-11-01T05:15:00Z", Runs(&["2026-11-01T05:30:00Z", "2026-11-01T07:00:00Z", "2026-11-01T07:30:00Z"])),
    // Berlin, spring (2026-03-29): 02:30 runs at 03:00 CEST (01:00Z).
    case("cron(30 2 * * ? *)", BERLIN, "2026-03-28T00:00:00Z", Runs(&["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"])),
    // Berlin, autumn (2026-10-25): 02:30 runs at its first occurrence (CEST, 00:30Z).
    case("cron(30 2 * * ? *)", BERLIN, "2026-10-24T00:00:00Z", Runs(&["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"])),
    // Looking from inside the second pass (02:15 CET): that day's 02:30 has already run.
    case("cron(30 2 * * ? *)", BERLIN, "2026-10-25T01:15:00Z", Runs(&["2026-10-26T01:30:00Z", "2026-10-27T01:30:00Z", "2026-10-28T01:30:00Z"])),
    // Sydney, autumn (2026-04-05, clocks back at 03:00): 02:30 first as AEDT.
    case("cron(30 2 * * ? *)", SYDNEY, "2026-04-03T00:00:00Z", Runs(&["2026-04-03T15:30:00Z", "2026-04-04T15:30:00Z", "2026-04-05T16:30:00Z"])),
    // Sydney, spring (2026-10-04): 02:30 does not exist and runs at 03:00 AEDT.
    case("cron(30 2 * * ? *)", SYDNEY, "2026-10-02T00:00:00Z", Runs(&["2026-10-02T16:30:00Z", "2026-10-03T16:00:00Z", "2026-10-04T15:30:00Z"])),
    // Paris, Sundays at 03:00 across the spring change (03:00 exists that day).
    case("cron(0 3 ? * SUN *)", Some("Europe/Paris"), "2026-03-20T00:00:00Z", Runs(&["2026-03-22T02:00:00Z", "2026-03-29T01:00:00Z", "2026-04-05T01:00:00Z"])),
    // A half-hour offset: New Year in Kolkata is 18:30Z the day before.
    case("cron(0 0 1 1 ? *)", Some("Asia/Kolkata"), JAN1, Runs(&["2026-12-31T18:30:00Z", "2027-12-31T18:30:00Z", "2028-12-31T18:30:00Z"])),

    // --- Refused ---
    bad("cron(60 * * * ? *)", None, "minutes"),
    bad("cron(0/0 * * * ? *)", None, "minutes"),
    bad("cron(L 0 * * ? *)", None, "minutes"),
    bad("cron(0 24 * * ? *)", None, "hours"),
    bad("cron(0 0 32 * ? *)", None, "day-of-month"),
    bad("cron(0 0 L-3 * ? *)", None, "day-of-month"),
    bad("cron(0 0 ? 13 MON *)", None, "month"),
    bad("cron(0 0 ? * 8 *)", None, "day-of-week"),
    // 0 is not Sunday in AWS's numbering (1-7).
    bad("cron(0 0 ? * 0 *)", None, "day-of-week"),
    bad("cron(0 0 ? * FRI#6 *)", None, "day-of-week"),
    bad("cron(0 0 ? * SAT#2,SAT#4 *)", None, "day-of-week"),
    bad("cron(0 0 ? * 3#1,6#3 *)", None, "day-of-week"),
    bad("cron(0 0 ? * MON/2 *)", None, "day-of-week"),
    bad("cron(0 0 * * ? 1969)", None, "year"),
    bad("cron(0 0 * * ? 2200)", None, "year"),
    bad("cron(0 0 * * ? 2030-2025)", None, "year"),
    // Both `?`, neither `?`, both `*` in six fields; both restricted in five.
    bad("cron(0 0 ? * ? *)", None, "day-of-week"),
    bad("cron(0 0 1 * MON *)", None, "day-of-week"),
    bad("cron(0 0 * * * *)", None, "day-of-week"),
    bad("cron(0 0 1 * MON)", None, "day-of-week"),
    bad("cron(0 0 ? * ?)", None, "day-of-week"),
    bad("rate(5 hour)", None, "rate unit"),
    bad("rate(1 minutes)", None, "rate unit"),
    bad("rate(2 weeks)", None, "rate unit"),
    bad("rate(0 minutes)", None, "rate value"),
    bad("rate(-5 minutes)", None, "rate value"),
    bad("rate(5)", None, "expression"),
    bad("cron(0 0 * * ? * *)", None, "expression"),
    bad("cron(0 0 *)", None, "expression"),
    bad("", None, "expression"),
    bad("every day", None, "expression"),
    bad("cron(0 0 * * ? *)", Some("Mars/Olympus_Mons"), "timezone"),
    bad("rate(1 day)", Some("CEST"), "timezone"),
];

fn instant(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad instant {s} in the table: {e}"))
        .with_timezone(&Utc)
}

#[test]
fn table() {
    let mut failures = Vec::new();
    for c in CASES {
        let label = format!("{} in {:?}", c.expression, c.timezone);
        let parsed = Schedule::parse(c.expression, c.timezone);
        match (&c.expect, parsed) {
            (Runs(expected), Ok(schedule)) => {
                let schedule = match c.anchor {
                    Some(a) => schedule.anchored(instant(a)),
                    None => schedule,
                };
                let got: Vec<String> = schedule
                    .upcoming(instant(c.start), 3)
                    .iter()
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .collect();
                if got != *expected {
                    failures.push(format!(
                        "{label} from {}: got {got:?}, expected {expected:?}",
                        c.start
                    ));
                }
            }
            (Runs(_), Err(e)) => failures.push(format!("{label}: refused: {e}")),
            (Refused(field), Ok(_)) => {
                failures.push(format!("{label}: accepted, expected a `{field}` error"))
            }
            (Refused(field), Err(e)) => {
                if e.field() != *field {
                    failures.push(format!(
                        "{label}: error on `{}` ({e}), expected `{field}`",
                        e.field()
                    ));
                }
            }
        }
    }
    let valid = CASES.iter().filter(|c| matches!(c.expect, Runs(_))).count();
    assert!(
        valid >= 45 && CASES.len() - valid >= 12,
        "the table is too small"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}
