//! A cron schedule in words: "at 03:00 on Sunday (Europe/Paris)".

use super::days::{Days, MonthDays, WeekDays};
use super::field::{Set, YEAR, YEAR_BASE};
use super::Cron;

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const ORDINALS: [&str; 5] = ["first", "second", "third", "fourth", "fifth"];

pub(super) fn describe(c: &Cron) -> String {
    let time = time(c);
    // "every 15 minutes", not "every 15 minutes every day".
    let mut out = match (
        &c.days,
        time.starts_with("every") || time.contains("every hour"),
    ) {
        (Days::Every, true) => time,
        _ => format!("{time} {}", days(&c.days, &c.text[2])),
    };
    if c.months.len() < 12 {
        let names = c.months.iter().filter_map(|m| name(&MONTHS, m));
        out.push_str(&format!(" in {}", join(names.collect())));
    }
    if c.years.len() < YEAR.max - YEAR.min + 1 {
        match single(&c.years) {
            Some(y) => out.push_str(&format!(" in {}", y + YEAR_BASE)),
            None => out.push_str(&format!(" in years {}", c.text[5])),
        }
    }
    format!("{out} ({})", c.tz.name())
}

fn time(c: &Cron) -> String {
    let minutes: Vec<u32> = c.minutes.iter().collect();
    let hours: Vec<u32> = c.hours.iter().collect();
    let every_hour = hours.len() == 24;
    let during = if every_hour {
        String::new()
    } else {
        format!(" during hours {}", c.text[1])
    };
    if minutes.len() == 60 {
        return format!("every minute{during}");
    }
    if let Some((first, step)) = progression(&minutes, 60) {
        let from = if first == 0 {
            String::new()
        } else {
            format!(" from minute {first}")
        };
        return format!("every {step} minutes{from}{during}");
    }
    if let ([minute], true) = (minutes.as_slice(), every_hour) {
        return format!("at minute {minute} of every hour");
    }
    if minutes.len() * hours.len() <= 6 {
        let times = hours
            .iter()
            .flat_map(|h| minutes.iter().map(move |m| format!("{h:02}:{m:02}")));
        return format!("at {}", join(times.collect()));
    }
    format!("at minutes {} of hours {}", c.text[0], c.text[1])
}

fn days(days: &Days, month_text: &str) -> String {
    match days {
        Days::Every => "every day".into(),
        Days::Month(MonthDays::Set(set)) => match single(set) {
            Some(d) => format!("on day {d} of the month"),
            None => format!("on days {month_text} of the month"),
        },
        Days::Month(MonthDays::Last) => "on the last day of the month".into(),
        Days::Month(MonthDays::LastWeekday) => "on the last weekday of the month".into(),
        Days::Month(MonthDays::NearestWeekday(n)) => {
            format!("on the weekday nearest day {n} of the month")
        }
        Days::Week(WeekDays::Set(set)) if set.len() == 7 => "every day".into(),
        Days::Week(WeekDays::Set(set)) => {
            let names = set.iter().filter_map(|d| name(&WEEKDAYS, d));
            format!("on {}", join(names.collect()))
        }
        Days::Week(WeekDays::Last(d)) => {
            format!(
                "on the last {} of the month",
                name(&WEEKDAYS, *d).unwrap_or("?")
            )
        }
        Days::Week(WeekDays::Nth(d, nths)) => {
            let nths = nths.iter().filter_map(|n| name(&ORDINALS, n));
            format!(
                "on the {} {} of the month",
                join(nths.collect()),
                name(&WEEKDAYS, *d).unwrap_or("?")
            )
        }
    }
}

/// `(first, step)` when the set is first, first+step, ... to the field's end (`*/15`, `5/10`).
fn progression(values: &[u32], span: u32) -> Option<(u32, u32)> {
    let (first, second, last) = (*values.first()?, *values.get(1)?, *values.last()?);
    let step = second - first;
    let regular = values.windows(2).all(|w| w[1] - w[0] == step);
    (regular && first < step && last + step >= span).then_some((first, step))
}

fn single(set: &Set) -> Option<u32> {
    let mut it = set.iter();
    match (it.next(), it.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

/// The name for a 1-based number.
fn name(names: &[&'static str], n: u32) -> Option<&'static str> {
    names.get((n as usize).checked_sub(1)?).copied()
}

/// "a", "a and b", "a, b and c".
fn join<S: AsRef<str>>(items: Vec<S>) -> String {
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => last.as_ref().to_string(),
        Some((last, rest)) => {
            let rest: Vec<&str> = rest.iter().map(AsRef::as_ref).collect();
            format!("{} and {}", rest.join(", "), last.as_ref())
        }
    }
}
