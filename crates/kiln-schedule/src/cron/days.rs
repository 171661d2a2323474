//! The two day fields: day-of-month (`L`, `LW`, `15W`, lists) and day-of-week (`FRI#3`,
//! `5L`, `L`, lists), and which days of a given month they pick.

use chrono::{Datelike, NaiveDate, Weekday};

use super::field::{Set, DAY_OF_MONTH, DAY_OF_WEEK};
use crate::error::ScheduleError;

/// A day field as written, before the two are combined.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum DayField<T> {
    /// `?`: the other field decides.
    Question,
    /// `*`: every day.
    Star,
    /// Anything else.
    Pick(T),
}

/// What day-of-month picks.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum MonthDays {
    /// Days by number (a day past the month's end, like 31 in April, is not run).
    Set(Set),
    /// `L`: the month's last day.
    Last,
    /// `LW`: the month's last weekday (Monday to Friday).
    LastWeekday,
    /// `15W`: the weekday nearest day 15, within the same month.
    NearestWeekday(u32),
}

/// What day-of-week picks. Days are 1 = Sunday to 7 = Saturday.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum WeekDays {
    /// Days of the week (`MON-FRI`, `1,7`, and bare `L`, which is Saturday).
    Set(Set),
    /// `5L` / `THUL`: the month's last such day.
    Last(u32),
    /// `FRI#3`, `SAT#2,4`: the given occurrences (1-5) of one weekday in the month.
    Nth(u32, Set),
}

/// The days a schedule runs on, once both fields are combined.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Days {
    Every,
    Month(MonthDays),
    Week(WeekDays),
}

pub(crate) fn parse_month_days(text: &str) -> Result<DayField<MonthDays>, ScheduleError> {
    let upper = text.to_ascii_uppercase();
    let spec = &DAY_OF_MONTH;
    Ok(match upper.as_str() {
        "?" => DayField::Question,
        "*" => DayField::Star,
        "L" => DayField::Pick(MonthDays::Last),
        "LW" => DayField::Pick(MonthDays::LastWeekday),
        _ if upper.starts_with("L-") => {
            return Err(spec.error(
                text,
                "AWS documents no offset from the last day (L-3 is Quartz syntax): use L, or list the days",
            ))
        }
        _ if upper.contains(['L', 'W']) && upper.contains([',', '-', '/', '*']) => {
            return Err(spec.error(
                text,
                "L, LW and nW stand alone in day-of-month; they cannot be combined with other days",
            ))
        }
        _ if upper.ends_with('W') => {
            let day = spec.value(&upper[..upper.len() - 1]).map_err(|_| {
                spec.error(text, "W follows one day of the month, 1-31 (e.g. 15W), or L (LW)")
            })?;
            DayField::Pick(MonthDays::NearestWeekday(day))
        }
        _ => DayField::Pick(MonthDays::Set(spec.parse_list(text)?)),
    })
}

pub(crate) fn parse_week_days(text: &str) -> Result<DayField<WeekDays>, ScheduleError> {
    let upper = text.to_ascii_uppercase();
    let spec = &DAY_OF_WEEK;
    if let Some((day, nths)) = upper.split_once('#') {
        // EventBridge: "if you use a '#' character, you can define only one expression in the
        // day-of-week field", so 3#1,6#3 is refused. Image Builder's guide documents SAT#2,4
        // for the second and fourth Saturday: one weekday, several occurrences.
        if day.contains([',', '-', '/']) || nths.contains('#') {
            return Err(spec.error(
                text,
                "`#` allows one weekday per field: write SAT#2,4 for the 2nd and 4th Saturday (AWS refuses lists such as SAT#2,SAT#4 or 3#1,6#3)",
            ));
        }
        let day = spec.value(day)?;
        let mut set = Set::default();
        for n in nths.split(',') {
            let n = match n {
                "1" => 1,
                "2" => 2,
                "3" => 3,
                "4" => 4,
                "5" => 5,
                _ => return Err(spec.error(
                    text,
                    "`#` is followed by the occurrence in the month, 1-5 (e.g. FRI#3 or SAT#2,4)",
                )),
            };
            set.insert(n);
        }
        return Ok(DayField::Pick(WeekDays::Nth(day, set)));
    }
    if upper.contains('/') {
        return Err(spec.error(
            text,
            "day-of-week takes no `/` increments in AWS's syntax: list the days instead (e.g. MON,WED,FRI)",
        ));
    }
    Ok(match upper.as_str() {
        "?" => DayField::Question,
        "*" => DayField::Star,
        // The last day of the week: Saturday, as day 7.
        "L" => {
            let mut set = Set::default();
            set.insert(7);
            DayField::Pick(WeekDays::Set(set))
        }
        _ if upper.ends_with('L') => {
            let day = &upper[..upper.len() - 1];
            if day.contains([',', '-', 'L']) {
                return Err(spec.error(
                    text,
                    "L follows one weekday (e.g. 5L or THUL, the last Thursday); it cannot be combined with other days",
                ));
            }
            DayField::Pick(WeekDays::Last(spec.value(day)?))
        }
        _ if upper.contains('L') => {
            return Err(spec.error(
                text,
                "L stands alone (Saturday) or follows one weekday (5L, THUL); it cannot be combined with other days",
            ))
        }
        _ => DayField::Pick(WeekDays::Set(spec.parse_list(text)?)),
    })
}

/// The number of days in a month (28-31).
pub(crate) fn month_length(year: i32, month: u32) -> u32 {
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    next.and_then(|d| d.pred_opt()).map_or(28, |d| d.day())
}

/// 1 = Sunday ... 7 = Saturday, as cron numbers them.
fn cron_weekday(w: Weekday) -> u32 {
    w.num_days_from_sunday() + 1
}

fn is_weekend(year: i32, month: u32, day: u32) -> bool {
    NaiveDate::from_ymd_opt(year, month, day)
        .is_some_and(|d| matches!(d.weekday(), Weekday::Sat | Weekday::Sun))
}

impl Days {
    /// The days of `year`-`month` this picks, as a set of day numbers.
    pub(crate) fn in_month(&self, year: i32, month: u32) -> Set {
        let length = month_length(year, month);
        let mut days = Set::default();
        let Some(first) = NaiveDate::from_ymd_opt(year, month, 1) else {
            return days;
        };
        let first_weekday = cron_weekday(first.weekday());
        let weekday_of = |day: u32| (first_weekday - 1 + day - 1) % 7 + 1;
        let mut pick = |f: &dyn Fn(u32) -> bool| {
            for day in (1..=length).filter(|d| f(*d)) {
                days.insert(day);
            }
        };
        match self {
            Days::Every => pick(&|_| true),
            Days::Month(MonthDays::Set(set)) => pick(&|d| set.contains(d)),
            Days::Month(MonthDays::Last) => pick(&|d| d == length),
            Days::Month(MonthDays::LastWeekday) => {
                let last = (1..=length).rev().find(|d| !is_weekend(year, month, *d));
                pick(&|d| Some(d) == last);
            }
            Days::Month(MonthDays::NearestWeekday(n)) => {
                let target = nearest_weekday(year, month, *n, length);
                pick(&|d| Some(d) == target);
            }
            Days::Week(WeekDays::Set(set)) => pick(&|d| set.contains(weekday_of(d))),
            Days::Week(WeekDays::Last(w)) => pick(&|d| weekday_of(d) == *w && d + 7 > length),
            Days::Week(WeekDays::Nth(w, nths)) => {
                pick(&|d| weekday_of(d) == *w && nths.contains((d - 1) / 7 + 1))
            }
        }
        days
    }
}

/// `nW`: day n if it is a weekday, else the nearest weekday in the same month (a Saturday
/// moves to Friday, a Sunday to Monday, except at the month's ends, where they move inwards:
/// 1W on a Saturday is Monday the 3rd). A day the month lacks (31W in April) is not run.
fn nearest_weekday(year: i32, month: u32, n: u32, length: u32) -> Option<u32> {
    if n > length {
        return None;
    }
    let weekday = NaiveDate::from_ymd_opt(year, month, n)?.weekday();
    Some(match weekday {
        Weekday::Sat if n == 1 => 3,
        Weekday::Sat => n - 1,
        Weekday::Sun if n == length => n - 2,
        Weekday::Sun => n + 1,
        _ => n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(d: Days, y: i32, m: u32) -> Vec<u32> {
        d.in_month(y, m).iter().collect()
    }

    #[test]
    fn special_days() {
        // February 2024 has 29 days; 2023's has 28.
        assert_eq!(days(Days::Month(MonthDays::Last), 2024, 2), vec![29]);
        assert_eq!(days(Days::Month(MonthDays::Last), 2023, 2), vec![28]);
        // 2026-05-31 is a Sunday: the last weekday is Friday the 29th.
        assert_eq!(days(Days::Month(MonthDays::LastWeekday), 2026, 5), vec![29]);
        // 2026-08-01 is a Saturday: 1W is Monday the 3rd.
        assert_eq!(
            days(Days::Month(MonthDays::NearestWeekday(1)), 2026, 8),
            vec![3]
        );
        // 2026-03-15 is a Sunday: 15W is Monday the 16th.
        assert_eq!(
            days(Days::Month(MonthDays::NearestWeekday(15)), 2026, 3),
            vec![16]
        );
        assert!(days(Days::Month(MonthDays::NearestWeekday(31)), 2026, 4).is_empty());
        // Fridays of March 2026: 6, 13, 20, 27.
        assert_eq!(days(Days::Week(WeekDays::Last(6)), 2026, 3), vec![27]);
        let mut nths = Set::default();
        nths.insert(2);
        nths.insert(4);
        assert_eq!(
            days(Days::Week(WeekDays::Nth(6, nths)), 2026, 3),
            vec![13, 27]
        );
    }

    #[test]
    fn refused_day_forms() {
        assert!(parse_week_days("SAT#2,SAT#4").is_err());
        assert!(parse_week_days("3#1,6#3").is_err());
        assert!(parse_week_days("FRI#6").is_err());
        assert!(parse_week_days("MON/2").is_err());
        assert!(parse_month_days("L-3").is_err());
        assert!(parse_month_days("1,L").is_err());
        assert!(parse_month_days("32W").is_err());
        assert_eq!(
            parse_week_days("sat#2,4").ok(),
            Some(DayField::Pick(WeekDays::Nth(7, {
                let mut s = Set::default();
                s.insert(2);
                s.insert(4);
                s
            })))
        );
    }
}
