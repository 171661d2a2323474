//! Time zones, and local wall-clock times turned into instants by kiln's daylight-saving rules.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use crate::error::{Field, ScheduleError};

/// The zone used when a pipeline names none, spelled as Image Builder reports it.
pub(crate) const DEFAULT: &str = "Etc/UTC";

/// An IANA zone by its exact name (`Europe/Berlin`; names are case-sensitive, as in tzdata).
pub(crate) fn parse(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>().map_err(|_| {
        ScheduleError::new(
            Field::Timezone,
            name,
            "not an IANA time zone name; use a name such as Etc/UTC, Europe/Berlin or America/New_York (case matters)",
        )
    })
}

/// The instant a local wall-clock time runs at:
///
/// - a time that exists once is that instant;
/// - a time that exists twice (clocks going back) is its first occurrence, so a schedule runs
///   once, not twice;
/// - a time that does not exist (clocks going forward) runs at the first instant after the gap,
///   so a schedule is late rather than skipped; every such time in one gap gives that same
///   instant, which callers collapse into one run.
///
/// The result never decreases as `local` increases, which is what lets callers search in local
/// time and compare in UTC.
pub(crate) fn resolve(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => gap_end(tz, local),
    }
}

/// The first instant after the gap `local` falls in.
fn gap_end(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    // Gaps are an hour in practice; the longest on record (Samoa, 2011) is a day.
    let mut probe = local;
    let first_after = loop {
        probe = probe.checked_add_signed(Duration::minutes(1))?;
        if probe > local + Duration::days(2) {
            return None;
        }
        match tz.from_local_datetime(&probe) {
            LocalResult::Single(t) => break t.with_timezone(&Utc),
            LocalResult::Ambiguous(a, b) => break a.min(b).with_timezone(&Utc),
            LocalResult::None => {}
        }
    };
    // The gap may end between two whole minutes (old offsets such as Monrovia's -0:44:30):
    // find the transition to the second, within the minute before the first valid minute.
    let after_offset = offset_seconds(tz, first_after);
    let (mut lo, mut hi) = (first_after - Duration::minutes(1), first_after);
    while hi - lo > Duration::seconds(1) {
        let mid = lo + (hi - lo) / 2;
        if offset_seconds(tz, mid) == after_offset {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

fn offset_seconds(tz: Tz, t: DateTime<Utc>) -> i32 {
    tz.offset_from_utc_datetime(&t.naive_utc())
        .fix()
        .local_minus_utc()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn local(y: i32, m: u32, d: u32, h: u32, mi: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|d| d.and_hms_opt(h, mi, 0))
            .unwrap_or_default()
    }

    fn utc(s: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    #[test]
    fn gap_runs_at_its_end_and_repeat_at_first_occurrence() {
        let ny = chrono_tz::America::New_York;
        // 2026-03-08 02:30 does not exist in New York: 03:00 EDT is 07:00Z.
        assert_eq!(
            resolve(ny, local(2026, 3, 8, 2, 30)),
            utc("2026-03-08T07:00:00Z")
        );
        // 2026-11-01 01:30 happens twice: first as EDT (05:30Z).
        assert_eq!(
            resolve(ny, local(2026, 11, 1, 1, 30)),
            utc("2026-11-01T05:30:00Z")
        );
    }

    #[test]
    fn unknown_zone_names_the_timezone_field() {
        let err = parse("Mars/Olympus_Mons").err();
        assert_eq!(err.map(|e| e.field()), Some("timezone"));
        assert!(parse("europe/berlin").is_err());
        assert!(parse("Europe/Berlin").is_ok());
    }
}
