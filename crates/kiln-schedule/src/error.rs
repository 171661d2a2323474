//! Why an expression or a time zone was refused.

use std::fmt;

/// The part of a schedule an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// The expression as a whole: its `cron(...)`/`rate(...)` shape or its field count.
    Expression,
    /// cron's first field.
    Minutes,
    /// cron's second field.
    Hours,
    /// cron's third field.
    DayOfMonth,
    /// cron's fourth field.
    Month,
    /// cron's fifth field.
    DayOfWeek,
    /// cron's sixth field.
    Year,
    /// The IANA time zone name.
    Timezone,
    /// rate's number.
    RateValue,
    /// rate's unit.
    RateUnit,
}

impl Field {
    /// The name used in messages: `minutes`, `day-of-month`, `rate unit`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Expression => "expression",
            Field::Minutes => "minutes",
            Field::Hours => "hours",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
            Field::Year => "year",
            Field::Timezone => "timezone",
            Field::RateValue => "rate value",
            Field::RateUnit => "rate unit",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A schedule that was refused: the field, the text that broke a rule, and the rule (with a
/// hint where one helps). Displays as ``day-of-week `8`: values are 1-7 (1 = SUN) or SUN-SAT``.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} `{value}`: {reason}")]
pub struct ScheduleError {
    field: Field,
    value: String,
    reason: String,
}

impl ScheduleError {
    pub(crate) fn new(field: Field, value: impl Into<String>, reason: impl Into<String>) -> Self {
        ScheduleError {
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// The field's name as messages spell it (`"day-of-week"`, `"timezone"`, ...).
    pub fn field(&self) -> &'static str {
        self.field.as_str()
    }

    /// The field as a type, for callers that branch on it.
    pub fn kind(&self) -> Field {
        self.field
    }

    /// The text that was refused (a field, one item of a list, or the whole expression).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The rule that was broken, with a hint.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}
