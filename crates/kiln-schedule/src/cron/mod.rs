//! `cron(minutes hours day-of-month month day-of-week year)`, evaluated in local wall-clock
//! time in the schedule's time zone.

mod days;
mod describe;
mod field;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Timelike, Utc};
use chrono_tz::Tz;

use crate::error::{Field, ScheduleError};
use crate::tz;
use days::{DayField, Days};
use field::{Set, HOURS, MINUTES, MONTH, YEAR, YEAR_BASE};

/// A parsed cron expression and the zone its fields are read in.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Cron {
    minutes: Set,
    hours: Set,
    days: Days,
    months: Set,
    years: Set,
    /// The fields as written, for descriptions.
    text: [String; 6],
    tz: Tz,
}

const FORM: &str = "cron() takes 6 fields: minutes hours day-of-month month day-of-week year (e.g. cron(0 3 ? * SUN *)), or 5 without the year";

impl Cron {
    /// Parses what is inside `cron(` and `)`.
    pub(crate) fn parse(inner: &str, tz: Tz) -> Result<Cron, ScheduleError> {
        let fields: Vec<&str> = inner.split_whitespace().collect();
        let whole = || format!("cron({inner})");
        let (short, year) = match fields.len() {
            6 => (false, fields[5]),
            // Image Builder's older guide shows five fields and no year: every year.
            5 => (true, "*"),
            n => {
                return Err(ScheduleError::new(
                    Field::Expression,
                    whole(),
                    format!("{FORM}; found {n}"),
                ))
            }
        };
        let minutes = MINUTES.parse_list(fields[0])?;
        let hours = HOURS.parse_list(fields[1])?;
        let month_days = days::parse_month_days(fields[2])?;
        let months = MONTH.parse_list(fields[3])?;
        let week_days = days::parse_week_days(fields[4])?;
        let years = YEAR.parse_list(year)?;
        let days = combine(month_days, week_days, fields[2], fields[4], short)?;
        Ok(Cron {
            minutes,
            hours,
            days,
            months,
            years,
            text: [fields[0], fields[1], fields[2], fields[3], fields[4], year].map(String::from),
            tz,
        })
    }

    /// The first run strictly after `after`.
    pub(crate) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz).naive_local();
        let minute = local.with_second(0)?.with_nanosecond(0)?;
        // Every local time up to `minute` runs at or before `after` (resolve never goes
        // backwards), so the search starts a minute later. Matches that still resolve to
        // `after` or earlier — the second pass through a repeated hour, or a gap already
        // run — are stepped over.
        let mut from = minute.checked_add_signed(Duration::minutes(1))?;
        loop {
            let local = self.next_local(from)?;
            let at = tz::resolve(self.tz, local)?;
            if at > after {
                return Some(at);
            }
            from = local.checked_add_signed(Duration::minutes(1))?;
        }
    }

    /// The earliest matching local minute at or after `from`, jumping over whole years,
    /// months, days and hours that cannot match.
    fn next_local(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        let epoch = NaiveDate::from_ymd_opt(YEAR_BASE as i32, 1, 1)?.and_hms_opt(0, 0, 0)?;
        let from = from.max(epoch);
        let first_year = u32::try_from(from.year()).ok()?;
        for year in first_year..=YEAR.max {
            if !self.years.contains(year - YEAR_BASE) {
                continue;
            }
            let y = year as i32;
            let same_year = y == from.year();
            let first_month = if same_year { from.month() } else { 1 };
            for month in (first_month..=12).filter(|m| self.months.contains(*m)) {
                let same_month = same_year && month == from.month();
                let first_day = if same_month { from.day() } else { 1 };
                let days = self.days.in_month(y, month);
                for day in days.iter().filter(|d| *d >= first_day) {
                    let same_day = same_month && day == from.day();
                    let first_hour = if same_day { from.hour() } else { 0 };
                    for hour in self.hours.iter().filter(|h| *h >= first_hour) {
                        let same_hour = same_day && hour == from.hour();
                        let first_minute = if same_hour { from.minute() } else { 0 };
                        if let Some(minute) = self.minutes.first_from(first_minute) {
                            return NaiveDate::from_ymd_opt(y, month, day)?
                                .and_hms_opt(hour, minute, 0);
                        }
                    }
                }
            }
        }
        None
    }

    pub(crate) fn describe(&self) -> String {
        describe::describe(self)
    }
}

/// Combines the two day fields by AWS's rule: in six fields exactly one is `?`. The five-field
/// form (no year) comes from examples such as `0 10 * * ?` and `0 10 * * TUE#2`, where `*`
/// stands in for `?`; there a `*` or `?` gives way to the other field, and two restricted day
/// fields are refused rather than guessed at (both, or either?).
fn combine(
    month: DayField<days::MonthDays>,
    week: DayField<days::WeekDays>,
    month_text: &str,
    week_text: &str,
    short: bool,
) -> Result<Days, ScheduleError> {
    use DayField::{Pick, Question, Star};
    let refuse = |reason: String| Err(ScheduleError::new(Field::DayOfWeek, week_text, reason));
    const RULE: &str = "exactly one of day-of-month and day-of-week must be `?`";
    match (month, week) {
        (Question, Question) => refuse(format!(
            "day-of-month is `?` too: {RULE} (e.g. cron(0 3 * * ? *) or cron(0 3 ? * MON *))"
        )),
        (Question, Star) | (Star, Question) => Ok(Days::Every),
        (Question, Pick(w)) => Ok(Days::Week(w)),
        (Pick(m), Question) => Ok(Days::Month(m)),
        (Star, Star) if short => Ok(Days::Every),
        (Star, Pick(w)) if short => Ok(Days::Week(w)),
        (Pick(m), Star) if short => Ok(Days::Month(m)),
        (Pick(_), Pick(_)) if short => refuse(format!(
            "day-of-month is `{month_text}` as well: in the 5-field form one of the two day fields must be `*` or `?` (kiln does not guess whether both or either must match)"
        )),
        _ => refuse(format!(
            "day-of-month is `{month_text}`, not `?`: {RULE} (e.g. cron(0 3 ? * {week_text} *) or cron(0 3 {month_text} * ? *))"
        )),
    }
}
