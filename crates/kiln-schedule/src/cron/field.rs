//! The numeric fields (minutes, hours, month, year, and the plain forms of the two day fields):
//! lists of values, ranges and increments, parsed into sets.

use crate::error::{Field, ScheduleError};

/// A set of small numbers (every field's values fit below 256: years are stored from 1970).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Set {
    words: [u64; 4],
}

impl Set {
    pub(crate) fn insert(&mut self, i: u32) {
        if let Some(w) = self.words.get_mut((i / 64) as usize) {
            *w |= 1 << (i % 64);
        }
    }

    pub(crate) fn contains(&self, i: u32) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub(crate) fn len(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    /// The members in increasing order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..256).filter(|i| self.contains(*i))
    }

    /// The smallest member at or above `from`.
    pub(crate) fn first_from(&self, from: u32) -> Option<u32> {
        (from..256).find(|i| self.contains(*i))
    }
}

/// What a numeric field accepts.
pub(crate) struct Spec {
    pub(crate) field: Field,
    pub(crate) min: u32,
    pub(crate) max: u32,
    /// Names for min, min+1, ... (JAN-DEC, SUN-SAT), matched case-insensitively.
    pub(crate) names: &'static [&'static str],
    /// Whether `a-b` with a > b runs over the end (`22-2` in hours, `FRI-MON` in days).
    pub(crate) wraps: bool,
    /// The rule a bad value breaks, as messages say it.
    pub(crate) values: &'static str,
}

pub(crate) const MONTH_NAMES: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
pub(crate) const DAY_NAMES: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

pub(crate) const MINUTES: Spec = Spec {
    field: Field::Minutes,
    min: 0,
    max: 59,
    names: &[],
    wraps: true,
    values: "values are 0-59",
};
pub(crate) const HOURS: Spec = Spec {
    field: Field::Hours,
    min: 0,
    max: 23,
    names: &[],
    wraps: true,
    values: "values are 0-23",
};
pub(crate) const DAY_OF_MONTH: Spec = Spec {
    field: Field::DayOfMonth,
    min: 1,
    max: 31,
    names: &[],
    wraps: true,
    values: "values are 1-31",
};
pub(crate) const MONTH: Spec = Spec {
    field: Field::Month,
    min: 1,
    max: 12,
    names: MONTH_NAMES,
    wraps: true,
    values: "values are 1-12 or JAN-DEC",
};
pub(crate) const DAY_OF_WEEK: Spec = Spec {
    field: Field::DayOfWeek,
    min: 1,
    max: 7,
    names: DAY_NAMES,
    wraps: true,
    values: "values are 1-7 (1 = SUN) or SUN-SAT",
};
/// Years are stored as offsets from 1970 so they fit a [`Set`].
pub(crate) const YEAR_BASE: u32 = 1970;
pub(crate) const YEAR: Spec = Spec {
    field: Field::Year,
    min: 1970,
    max: 2199,
    names: &[],
    // A year range that runs backwards has no sensible meaning.
    wraps: false,
    values: "values are 1970-2199",
};

impl Spec {
    pub(crate) fn error(&self, value: &str, reason: impl Into<String>) -> ScheduleError {
        ScheduleError::new(self.field, value, reason)
    }

    fn span(&self) -> u32 {
        self.max - self.min + 1
    }

    /// Where a value is kept in a [`Set`] (years from 1970, the others as they are).
    fn slot(&self, v: u32) -> u32 {
        if self.field == Field::Year {
            v - YEAR_BASE
        } else {
            v
        }
    }

    /// Parses a whole field: `*`, or a comma-separated list of `v`, `a-b`, `x/step`.
    pub(crate) fn parse_list(&self, text: &str) -> Result<Set, ScheduleError> {
        let mut set = Set::default();
        for item in text.split(',') {
            if item.is_empty() {
                return Err(self.error(
                    text,
                    "empty item: list values are separated by single commas, e.g. 1,15",
                ));
            }
            self.parse_item(item, &mut set)?;
        }
        Ok(set)
    }

    fn parse_item(&self, item: &str, set: &mut Set) -> Result<(), ScheduleError> {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(self.parse_step(step, item)?)),
            None => (item, None),
        };
        let (first, last) = if range == "*" {
            (self.min, self.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (self.value(a)?, self.value(b)?);
            if a > b && !self.wraps {
                return Err(self.error(
                    item,
                    format!("a range runs from the smaller to the larger value, e.g. {b}-{a}"),
                ));
            }
            (a, b)
        } else {
            let a = self.value(range)?;
            // `5/15` runs from 5 to the field's end; a lone value is itself.
            (a, if step.is_some() { self.max } else { a })
        };
        // Walk from `first` to `last`, over the field's end when the range wraps.
        let count = (last + self.span() - first) % self.span() + 1;
        let step = step.unwrap_or(1);
        for i in (0..count).step_by(step as usize) {
            let v = self.min + (first - self.min + i) % self.span();
            set.insert(self.slot(v));
        }
        Ok(())
    }

    fn parse_step(&self, step: &str, item: &str) -> Result<u32, ScheduleError> {
        let n = step
            .parse::<u32>()
            .ok()
            .filter(|_| step.bytes().all(|b| b.is_ascii_digit()));
        match n {
            Some(n) if (1..=self.span()).contains(&n) => Ok(n),
            _ => Err(self.error(
                item,
                format!(
                    "the increment after `/` is a number from 1 to {}, e.g. 0/15",
                    self.span()
                ),
            )),
        }
    }

    /// One value: a number or a name.
    pub(crate) fn value(&self, text: &str) -> Result<u32, ScheduleError> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u32>() {
                Ok(v) if (self.min..=self.max).contains(&v) => Ok(v),
                _ => Err(self.error(text, self.values)),
            };
        }
        if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
            return Ok(self.min + i as u32);
        }
        Err(self.error(text, self.misplaced(text).unwrap_or(self.values)))
    }

    /// A clearer message when a special character is used where this field does not take it.
    fn misplaced(&self, text: &str) -> Option<&'static str> {
        let upper = text.to_ascii_uppercase();
        if upper.contains('?') {
            Some("`?` stands alone, and only in day-of-month or day-of-week")
        } else if upper.contains('#') {
            Some("`#` is only for day-of-week (e.g. FRI#3)")
        } else if upper.contains('W') && self.names.is_empty() {
            Some("`W` is only for day-of-month (e.g. 15W, LW)")
        } else if upper.contains('L') && self.names.is_empty() {
            Some("`L` is only for day-of-month and day-of-week")
        } else if upper.contains('*') {
            Some("`*` stands alone or before `/` (e.g. */10)")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &Spec, text: &str) -> Vec<u32> {
        spec.parse_list(text)
            .map(|s| s.iter().collect())
            .unwrap_or_default()
    }

    #[test]
    fn lists_ranges_and_increments() {
        assert_eq!(members(&MINUTES, "0/15"), vec![0, 15, 30, 45]);
        assert_eq!(members(&MINUTES, "*/20"), vec![0, 20, 40]);
        assert_eq!(members(&MINUTES, "5-50/15"), vec![5, 20, 35, 50]);
        assert_eq!(members(&HOURS, "22-2"), vec![0, 1, 2, 22, 23]);
        assert_eq!(members(&HOURS, "22-2/2"), vec![0, 2, 22]);
        assert_eq!(members(&MONTH, "jan,Mar-apr"), vec![1, 3, 4]);
        assert_eq!(members(&DAY_OF_WEEK, "FRI-MON"), vec![1, 2, 6, 7]);
        assert_eq!(members(&YEAR, "2026-2027"), vec![56, 57]);
    }

    #[test]
    fn refusals_name_the_rule() {
        let err = |spec: &Spec, t: &str| spec.parse_list(t).err().map(|e| e.to_string());
        assert_eq!(
            err(&DAY_OF_WEEK, "8").as_deref(),
            Some("day-of-week `8`: values are 1-7 (1 = SUN) or SUN-SAT")
        );
        assert!(err(&MINUTES, "0/0").is_some());
        assert!(err(&MINUTES, "1,,2").is_some());
        assert!(err(&YEAR, "2030-2025").is_some());
        assert!(err(&HOURS, "L").is_some_and(|e| e.contains("only for day-of-month")));
    }
}
