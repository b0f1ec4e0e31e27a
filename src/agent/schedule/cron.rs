//! Cloud Assistant cron: `sec min hour day-of-month month day-of-week [year] [zone]`.
//!
//! Owns the field grammar (checked here, field by field, so errors name the
//! field and the limit) and evaluation, which is delegated to `croner` on a
//! normalized, numbers-only pattern. Weekdays are POSIX-numbered (0 or 7 =
//! Sunday, 1 = Monday), which agrees with Cloud Assistant's documented
//! 1 = Monday .. 7 = Sunday and with the Go agent's cronexpr tables.

use std::time::Duration;

use chrono::{DateTime, Datelike, Offset, TimeZone, Timelike, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, JobType};

use super::{MAX_YEAR, MIN_YEAR, ScheduleError, Zone};

/// RunCommand docs: "The minimum interval must be 10 seconds or more".
pub const MIN_CRON_INTERVAL: Duration = Duration::from_secs(10);
/// Entries in one comma list; 60 covers every second of a minute.
const MAX_LIST_ENTRIES: usize = 60;

#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// The expression as given (without surrounding blanks).
    source: String,
    // Boxed: a parsed pattern is ~300 bytes and Schedule is passed by value.
    cron: Box<Cron>,
    /// `None`: no zone was written; Cloud Assistant then uses the instance's
    /// zone. Evaluated as UTC until [`CronSchedule::with_default_zone`].
    zone: Option<Zone>,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.zone == other.zone
    }
}

impl CronSchedule {
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The zone written in the expression, if any.
    pub fn zone(&self) -> Option<Zone> {
        self.zone
    }

    /// Fills in the zone used when the expression names none (the agent
    /// passes [`Zone::system`]); an explicit zone is kept.
    pub fn with_default_zone(mut self, zone: Zone) -> Self {
        self.zone.get_or_insert(zone);
        self
    }

    /// First fire strictly after `after`, or `None` when no fire remains
    /// before the end of [`MAX_YEAR`].
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.zone.unwrap_or(Zone::Utc) {
            Zone::Utc => self.next_in(after, &Utc),
            Zone::Named(tz) => self.next_in(after, &tz),
            Zone::Fixed(off) => self.next_in(after, &off),
        }
    }

    fn next_in<T: TimeZone>(&self, after: DateTime<Utc>, tz: &T) -> Option<DateTime<Utc>> {
        let fixed_time = self.cron.determine_job_type() == JobType::FixedTime;
        let mut cursor = after.with_nanosecond(0)?.with_timezone(tz);
        // croner maps an ambiguous (fall-back) wall time to its earlier
        // instant, which can lie before `after` when `after` is in the
        // repeated hour. Interval jobs then take the later twin; fixed-time
        // jobs already had their one fire in the first pass, so move on.
        for _ in 0..8 {
            let found = self.cron.find_next_occurrence(&cursor, false).ok()?;
            let utc = found.with_timezone(&Utc);
            if utc > after {
                let utc = if fixed_time { utc } else { self.second_pass(after, utc, tz).unwrap_or(utc) };
                return (utc.year() <= MAX_YEAR).then_some(utc);
            }
            let later = tz.from_local_datetime(&found.naive_local()).latest()?;
            if !fixed_time && later.with_timezone(&Utc) > after {
                return Some(later.with_timezone(&Utc));
            }
            cursor = later;
        }
        None
    }
}

impl CronSchedule {
    /// croner walks wall time forward, so from the first pass of a repeated
    /// (fall-back) hour it jumps past the second pass. For interval jobs,
    /// look for a fire in the second pass: find the instant the offset
    /// dropped between `after` and `found`, and search from there on the
    /// post-transition fixed offset, where wall times are unambiguous.
    fn second_pass<T: TimeZone>(&self, after: DateTime<Utc>, found: DateTime<Utc>, tz: &T) -> Option<DateTime<Utc>> {
        let offset = |at: DateTime<Utc>| tz.offset_from_utc_datetime(&at.naive_utc()).fix();
        let (before, later) = (offset(after), offset(found));
        if later.local_minus_utc() >= before.local_minus_utc() {
            return None;
        }
        // Binary search, to the second, for the first instant on the new offset.
        let (mut lo, mut hi) = (after.timestamp(), found.timestamp());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if offset(DateTime::from_timestamp(mid, 0)?) == before { lo = mid } else { hi = mid }
        }
        let shift = DateTime::from_timestamp(hi, 0)?;
        let cursor = (shift - chrono::TimeDelta::seconds(1)).max(after).with_timezone(&later);
        let cand = self.cron.find_next_occurrence(&cursor, false).ok()?.with_timezone(&Utc);
        (cand >= shift && cand > after && cand < found).then_some(cand)
    }
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [(&'static str, u32)],
    /// How the names read in an error message.
    hint: &'static str,
}

const MONTHS: &[(&str, u32)] = &[
    ("JAN", 1),
    ("FEB", 2),
    ("MAR", 3),
    ("APR", 4),
    ("MAY", 5),
    ("JUN", 6),
    ("JUL", 7),
    ("AUG", 8),
    ("SEP", 9),
    ("OCT", 10),
    ("NOV", 11),
    ("DEC", 12),
    ("JANUARY", 1),
    ("FEBRUARY", 2),
    ("MARCH", 3),
    ("APRIL", 4),
    ("JUNE", 6),
    ("JULY", 7),
    ("AUGUST", 8),
    ("SEPTEMBER", 9),
    ("OCTOBER", 10),
    ("NOVEMBER", 11),
    ("DECEMBER", 12),
];
const WEEKDAYS: &[(&str, u32)] = &[
    ("SUN", 0),
    ("MON", 1),
    ("TUE", 2),
    ("WED", 3),
    ("THU", 4),
    ("FRI", 5),
    ("SAT", 6),
    ("SUNDAY", 0),
    ("MONDAY", 1),
    ("TUESDAY", 2),
    ("WEDNESDAY", 3),
    ("THURSDAY", 4),
    ("FRIDAY", 5),
    ("SATURDAY", 6),
];

const SECOND: Field = Field { name: "second", min: 0, max: 59, names: &[], hint: "" };
const MINUTE: Field = Field { name: "minute", min: 0, max: 59, names: &[], hint: "" };
const HOUR: Field = Field { name: "hour", min: 0, max: 23, names: &[], hint: "" };
const DAY_OF_MONTH: Field = Field { name: "day-of-month", min: 1, max: 31, names: &[], hint: "" };
const MONTH: Field = Field { name: "month", min: 1, max: 12, names: MONTHS, hint: " or a name JAN..DEC" };
const DAY_OF_WEEK: Field = Field { name: "day-of-week", min: 0, max: 7, names: WEEKDAYS, hint: " or a name SUN..SAT" };
const YEAR: Field = Field { name: "year", min: MIN_YEAR as u32, max: MAX_YEAR as u32, names: &[], hint: "" };

/// True when a 7th token is a year rather than a zone, as the Go agent
/// decides: zones never start with a digit, `*` or `?`.
fn looks_like_year(token: &str) -> bool {
    token.starts_with(|c: char| c.is_ascii_digit() || c == '*' || c == '?')
}

pub(super) fn parse_cron(expr: &str) -> Result<CronSchedule, ScheduleError> {
    let tokens: Vec<&str> = expr.split_whitespace().collect();
    let (fields, year, zone) = match tokens.len() {
        6 => (&tokens[..6], None, None),
        7 if looks_like_year(tokens[6]) => (&tokens[..6], Some(tokens[6]), None),
        7 => (&tokens[..6], None, Some(tokens[6])),
        8 => (&tokens[..6], Some(tokens[6]), Some(tokens[7])),
        n => return Err(ScheduleError::CronArity { found: n }),
    };
    let zone = zone.map(Zone::parse).transpose()?;
    let mut norm = Vec::with_capacity(7);
    let specs = [&SECOND, &MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK];
    for (spec, raw) in specs.iter().zip(fields) {
        norm.push(normalize_field(spec, raw)?);
    }
    norm.push(match year {
        None => "*".to_string(),
        Some(y) => normalize_field(&YEAR, y)?,
    });
    check_second_gaps(&norm[0], fields[0])?;
    let pattern = norm.join(" ");
    let cron = CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Required)
        .build()
        .parse(&pattern)
        .map_err(|e| ScheduleError::Cron { expr: expr.to_string(), reason: e.to_string() })?;
    Ok(CronSchedule { source: expr.to_string(), cron: Box::new(cron), zone })
}

fn field_err(spec: &Field, value: &str, reason: impl Into<String>) -> ScheduleError {
    ScheduleError::CronField { field: spec.name, value: value.to_string(), reason: reason.into() }
}

/// Checks one field and rewrites it with numbers only (`?` becomes `*`).
fn normalize_field(spec: &Field, raw: &str) -> Result<String, ScheduleError> {
    let entries: Vec<&str> = raw.split(',').collect();
    if entries.len() > MAX_LIST_ENTRIES {
        return Err(field_err(spec, raw, format!("{} list entries, the limit is {MAX_LIST_ENTRIES}", entries.len())));
    }
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        out.push(normalize_entry(spec, raw, &entry.to_ascii_uppercase())?);
    }
    Ok(out.join(","))
}

fn normalize_entry(spec: &Field, raw: &str, e: &str) -> Result<String, ScheduleError> {
    let is_day = spec.name == DAY_OF_MONTH.name || spec.name == DAY_OF_WEEK.name;
    if e.is_empty() {
        return Err(field_err(spec, raw, "empty list entry"));
    }
    if e == "?" {
        return if is_day || spec.name == YEAR.name {
            Ok("*".into())
        } else {
            Err(field_err(spec, raw, "'?' is only allowed in the day-of-month and day-of-week fields"))
        };
    }
    if spec.name == DAY_OF_MONTH.name {
        if e == "L" {
            return Ok("L".into());
        }
        if e == "LW" {
            return Err(field_err(spec, raw, "'LW' (last weekday of the month) is not supported; use L or nW"));
        }
        if let Some(day) = e.strip_suffix('W') {
            let d = value(spec, raw, day)?;
            return Ok(format!("{d}W"));
        }
    }
    if spec.name == DAY_OF_WEEK.name {
        if let Some(day) = e.strip_suffix('L') {
            let d = value(spec, raw, day)?;
            return Ok(format!("{}L", d % 7));
        }
        if let Some((day, nth)) = e.split_once('#') {
            let d = value(spec, raw, day)?;
            let n: u32 = nth
                .parse()
                .ok()
                .filter(|n| (1..=5).contains(n))
                .ok_or_else(|| field_err(spec, raw, format!("'#{nth}': the week of the month must be 1 to 5")))?;
            return Ok(format!("{}#{n}", d % 7));
        }
    }
    let (base, step) = match e.split_once('/') {
        Some((b, s)) => (b, Some(s)),
        None => (e, None),
    };
    let base = if base == "*" {
        "*".to_string()
    } else if let Some((a, b)) = base.split_once('-') {
        let (lo, mut hi) = (value(spec, raw, a)?, value(spec, raw, b)?);
        // SUN at the end of a range means 7, so FRI-SUN is 5-7.
        if spec.name == DAY_OF_WEEK.name && hi == 0 {
            hi = 7;
        }
        if lo > hi {
            return Err(field_err(spec, raw, format!("range {a}-{b} runs backwards ({lo} > {hi})")));
        }
        format!("{lo}-{hi}")
    } else {
        value(spec, raw, base)?.to_string()
    };
    // An open-ended weekday step ends at Saturday (6), as in cronexpr: `1/2` is
    // MON,WED,FRI, not also 7 (= Sunday).
    let base = match (spec.name == DAY_OF_WEEK.name, step.is_some(), base.as_str()) {
        (true, true, "*") => "0-6".to_string(),
        (true, true, b) if !b.contains('-') => format!("{}-6", value(spec, raw, b)? % 7),
        _ => base,
    };
    match step {
        None => Ok(base),
        Some(s) => {
            let span = spec.max - spec.min;
            let n: u32 = s
                .parse()
                .ok()
                .filter(|n| (1..=span.max(1)).contains(n))
                .ok_or_else(|| field_err(spec, raw, format!("step '/{s}' must be a whole number from 1 to {}", span.max(1))))?;
            Ok(format!("{base}/{n}"))
        }
    }
}

/// A number within the field's range (at most one leading zero, as Cloud
/// Assistant documents) or a month / weekday name.
fn value(spec: &Field, raw: &str, token: &str) -> Result<u32, ScheduleError> {
    if let Some((_, v)) = spec.names.iter().find(|(n, _)| *n == token) {
        return Ok(*v);
    }
    let width = if spec.name == YEAR.name { 4 } else { 2 };
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(field_err(spec, raw, format!("{token:?} is not a number from {} to {}{}", spec.min, spec.max, spec.hint)));
    }
    if token.len() > width {
        return Err(field_err(spec, raw, format!("{token:?} has too many digits (at most one leading zero)")));
    }
    let v: u32 = token.parse().unwrap_or(u32::MAX);
    if v < spec.min || v > spec.max {
        return Err(field_err(spec, raw, format!("{v} is outside {}..{}", spec.min, spec.max)));
    }
    Ok(v)
}

/// Two fires within one minute are closer than the minimum interval when
/// two listed seconds are less than 10 apart (e.g. `*/5` or `0-3`).
fn check_second_gaps(norm: &str, raw: &str) -> Result<(), ScheduleError> {
    let mut set = [false; 60];
    for entry in norm.split(',') {
        let (base, step) = match entry.split_once('/') {
            Some((b, s)) => (b, s.parse::<usize>().unwrap_or(60)),
            None => (entry, 1),
        };
        let (lo, hi) = if base == "*" {
            (0, 59)
        } else if let Some((a, b)) = base.split_once('-') {
            (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
        } else {
            let v: usize = base.parse().unwrap_or(0);
            (v, if entry.contains('/') { 59 } else { v })
        };
        for s in (lo..=hi.min(59)).step_by(step.max(1)) {
            set[s] = true;
        }
    }
    let secs: Vec<usize> = (0..60).filter(|s| set[*s]).collect();
    for pair in secs.windows(2) {
        let gap = pair[1] - pair[0];
        if (gap as u64) < MIN_CRON_INTERVAL.as_secs() {
            return Err(field_err(
                &SECOND,
                raw,
                format!(
                    "fires at :{:02} and :{:02}, {gap} s apart; the minimum interval is {} seconds",
                    pair[0],
                    pair[1],
                    MIN_CRON_INTERVAL.as_secs()
                ),
            ));
        }
    }
    Ok(())
}
