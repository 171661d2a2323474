//! Image Builder pipeline schedules, as AWS defines them: `cron(...)` with six fields (or the
//! older five, without the year) read as wall-clock time in an IANA time zone, and
//! `rate(N unit)` as exact elapsed time from an anchor.
//!
//! [`Schedule::next_after`] and [`Schedule::upcoming`] say when a pipeline runs;
//! [`Schedule::latest_due`] is what a scheduler asks each time it wakes: of the runs since it
//! last looked, which one (at most one, however many were missed) is due now. [`Clock`] is the
//! seam that lets a scheduler be driven by a [`ManualClock`] in tests.
//!
//! Daylight saving (cron only): a local time that does not exist on a day (clocks going
//! forward) runs once at the first instant after the gap; a local time that happens twice
//! (clocks going back) runs once, at its first occurrence. docs/schedules.md is the user-facing
//! page: syntax, examples, these rules and the error messages.

#![deny(missing_docs)]

mod clock;
mod cron;
mod error;
mod rate;
mod tz;

use chrono::{DateTime, Duration, Utc};

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Field, ScheduleError};

use cron::Cron;
use rate::Rate;

/// A pipeline's schedule: an expression and the time zone it is read in.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    expression: String,
    timezone: String,
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Cron(Box<Cron>),
    Rate(Rate),
}

impl Schedule {
    /// Parses `expression`: `cron(...)` (6 fields, or the 5-field form without a year that old
    /// AWS examples use) or `rate(N unit)`. `timezone` is an IANA name; None is UTC
    /// (`Etc/UTC`). Every refusal names its field and the rule it broke.
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let timezone = timezone.unwrap_or(tz::DEFAULT);
        let zone = tz::parse(timezone)?;
        let text = expression.trim();
        let kind = if let Some(inner) = wrapped(text, "cron(") {
            Kind::Cron(Box::new(Cron::parse(inner, zone)?))
        } else if let Some(inner) = wrapped(text, "rate(") {
            Kind::Rate(Rate::parse(inner)?)
        } else {
            return Err(ScheduleError::new(
                Field::Expression,
                expression,
                "a schedule is cron(minutes hours day-of-month month day-of-week year) or rate(value unit), e.g. cron(0 3 ? * SUN *) or rate(12 hours)",
            ));
        };
        Ok(Schedule {
            expression: text.to_string(),
            timezone: timezone.to_string(),
            kind,
        })
    }

    /// rate() schedules count from an anchor (the pipeline's creation time): they run at
    /// anchor + N, anchor + 2N, ... The default anchor is the Unix epoch. No effect on cron.
    pub fn anchored(self, anchor: DateTime<Utc>) -> Schedule {
        let kind = match self.kind {
            Kind::Rate(rate) => Kind::Rate(rate.anchored(anchor)),
            cron => cron,
        };
        Schedule { kind, ..self }
    }

    /// The first run instant strictly after `after`; None when there is none (the years a
    /// cron expression names are over, or past the calendar's end).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron(cron) => cron.next_after(after),
            Kind::Rate(rate) => rate.next_after(after),
        }
    }

    /// The next `n` run instants strictly after `after` (fewer when the schedule ends).
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut runs = Vec::with_capacity(n.min(1024));
        let mut t = after;
        while runs.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    runs.push(next);
                    t = next;
                }
                None => break,
            }
        }
        runs
    }

    /// The latest run instant in (since, now], if any: what a scheduler that last looked at
    /// `since` must run now (at most once, however many runs were missed).
    pub fn latest_due(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if now <= since {
            return None;
        }
        match &self.kind {
            Kind::Rate(rate) => rate.latest_due(since, now),
            Kind::Cron(_) => self.latest_by_bisection(since, now),
        }
    }

    /// The latest run in (since, now] by bisection over `next_after`, so a schedule that runs
    /// every minute and a scheduler that slept for a year cost some 30 searches, not half a
    /// million steps. Holds `next_after(lo) <= now` and `next_after(hi) > now`; cron runs fall
    /// on whole seconds, so once the two are a second apart the run after `lo` is the last.
    fn latest_by_bisection(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let first = self.next_after(since).filter(|t| *t <= now)?;
        let (mut lo, mut hi) = (since, now);
        while hi - lo > Duration::seconds(1) {
            let mid = lo + (hi - lo) / 2;
            if self.next_after(mid).is_some_and(|t| t <= now) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.next_after(lo).or(Some(first))
    }

    /// The schedule in words for people: "at 03:00 on Sunday (Europe/Paris)",
    /// "every 5 minutes", "at 22:30 on the second Tuesday of the month (Etc/UTC)".
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Cron(cron) => cron.describe(),
            Kind::Rate(rate) => rate.describe(),
        }
    }

    /// The expression as given (without surrounding whitespace).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The IANA time zone name (`Etc/UTC` when none was given).
    pub fn timezone(&self) -> &str {
        &self.timezone
    }

    /// Whether this is a cron() schedule (else rate()).
    pub fn is_cron(&self) -> bool {
        matches!(self.kind, Kind::Cron(_))
    }
}

/// The text between `prefix` and a final `)`.
fn wrapped<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.strip_prefix(prefix)?.strip_suffix(')')
}
