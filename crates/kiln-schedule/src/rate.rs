//! `rate(value unit)`: a fixed interval of elapsed time from an anchor.

use chrono::{DateTime, Duration, Utc};

use crate::error::{Field, ScheduleError};

/// rate's unit of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    Minute,
    Hour,
    Day,
}

impl Unit {
    fn seconds(self) -> i64 {
        match self {
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            // A day is 24 hours of elapsed time, whatever daylight saving does to the clock.
            Unit::Day => 86_400,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
        }
    }
}

/// A parsed `rate(...)`: runs at `anchor + k * period` for k = 1, 2, ...
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rate {
    value: i64,
    unit: Unit,
    period: Duration,
    anchor: DateTime<Utc>,
}

/// Larger values would put the first run past the end of chrono's calendar.
const MAX_SECONDS: i64 = 1_000_000 * 86_400;

impl Rate {
    /// Parses what is inside `rate(` and `)`.
    pub(crate) fn parse(inner: &str) -> Result<Rate, ScheduleError> {
        let parts: Vec<&str> = inner.split_whitespace().collect();
        let [value_text, unit_text] = parts.as_slice() else {
            return Err(ScheduleError::new(
                Field::Expression,
                format!("rate({inner})"),
                "rate() takes a value and a unit, e.g. rate(5 minutes) or rate(1 day)",
            ));
        };
        let value = parse_value(value_text)?;
        let (unit, plural) = match *unit_text {
            "minute" => (Unit::Minute, false),
            "minutes" => (Unit::Minute, true),
            "hour" => (Unit::Hour, false),
            "hours" => (Unit::Hour, true),
            "day" => (Unit::Day, false),
            "days" => (Unit::Day, true),
            _ => {
                return Err(ScheduleError::new(
                    Field::RateUnit,
                    *unit_text,
                    "units are minute, minutes, hour, hours, day or days",
                ))
            }
        };
        // EventBridge's rule, which Image Builder shares: singular for 1, plural otherwise.
        if plural != (value != 1) {
            let hint = if value == 1 {
                format!("a value of 1 takes the singular: rate(1 {})", unit.name())
            } else {
                format!(
                    "a value other than 1 takes the plural: rate({value} {}s)",
                    unit.name()
                )
            };
            return Err(ScheduleError::new(Field::RateUnit, *unit_text, hint));
        }
        let seconds = value
            .checked_mul(unit.seconds())
            .filter(|s| *s <= MAX_SECONDS)
            .ok_or_else(|| {
                ScheduleError::new(
                    Field::RateValue,
                    *value_text,
                    "too large: a rate is at most 1000000 days",
                )
            })?;
        Ok(Rate {
            value,
            unit,
            period: Duration::seconds(seconds),
            anchor: DateTime::UNIX_EPOCH,
        })
    }

    pub(crate) fn anchored(self, anchor: DateTime<Utc>) -> Rate {
        Rate { anchor, ..self }
    }

    /// The first run strictly after `after`.
    pub(crate) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let k = match self.periods_until(after) {
            Some(k) if k >= 1 => k.checked_add(1)?,
            _ => 1,
        };
        self.run(k)
    }

    /// The latest run in (since, now].
    pub(crate) fn latest_due(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let k = self.periods_until(now).filter(|k| *k >= 1)?;
        self.run(k).filter(|t| *t > since)
    }

    /// How many whole periods fit between the anchor and `t` (None before the anchor).
    fn periods_until(&self, t: DateTime<Utc>) -> Option<i64> {
        let elapsed = t.signed_duration_since(self.anchor);
        if elapsed < Duration::zero() {
            return None;
        }
        // In nanoseconds as i128: the anchor may carry a fraction of a second.
        let nanos = |d: Duration| {
            i128::from(d.num_seconds()) * 1_000_000_000 + i128::from(d.subsec_nanos())
        };
        i64::try_from(nanos(elapsed) / nanos(self.period)).ok()
    }

    fn run(&self, k: i64) -> Option<DateTime<Utc>> {
        let offset = Duration::try_seconds(k.checked_mul(self.period.num_seconds())?)?;
        self.anchor.checked_add_signed(offset)
    }

    pub(crate) fn describe(&self) -> String {
        if self.value == 1 {
            format!("every {}", self.unit.name())
        } else {
            format!("every {} {}s", self.value, self.unit.name())
        }
    }
}

fn parse_value(text: &str) -> Result<i64, ScheduleError> {
    let err = |reason: &str| ScheduleError::new(Field::RateValue, text, reason);
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("must be a positive whole number, e.g. rate(5 minutes)"));
    }
    let value: i64 = text
        .parse()
        .map_err(|_| err("too large: a rate is at most 1000000 days"))?;
    if value == 0 {
        return Err(err("must be at least 1: a rate of zero never runs"));
    }
    Ok(value)
}
