//! The two non-cron `Frequency` forms: `rate(<n><s|m|h|d>)` and
//! `at(<date-time> [zone])`. Owns their grammar and bounds; see
//! docs/schedule.md for where each bound comes from.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDateTime, Utc};

use super::{MAX_YEAR, ScheduleError, Zone};

/// RunCommand docs: "The interval can be anywhere from 60 seconds to 7 days".
pub const MIN_RATE: Duration = Duration::from_secs(60);
pub const MAX_RATE: Duration = Duration::from_secs(7 * 24 * 3600);

/// `rate(5m)`, `rate(60s)`, `rate(1h)`, `rate(7d)`; unit case-insensitive,
/// blanks allowed around the number and unit (the Go agent's regexp allows
/// them too).
pub(super) fn parse_rate(expr: &str, inner: &str) -> Result<Duration, ScheduleError> {
    let err = |reason: String| ScheduleError::Rate { expr: expr.to_string(), reason };
    let body: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    let mut chars = body.chars();
    let Some(unit) = chars.next_back() else {
        return Err(err("empty; expected a number and a unit, e.g. rate(5m)".into()));
    };
    let number = chars.as_str();
    let secs_per = match unit.to_ascii_lowercase() {
        's' => 1u64,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(err(format!("unit {unit:?} is not one of s, m, h, d"))),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!("{number:?} is not a whole number of {}", unit_name(secs_per))));
    }
    // Anything over 9 digits is far beyond 7 days in any unit; avoid overflow.
    let n: u64 = if number.len() > 9 { u64::MAX / 2 } else { number.parse().unwrap_or(u64::MAX / 2) };
    let secs = n.saturating_mul(secs_per);
    if secs < MIN_RATE.as_secs() {
        return Err(err(format!("the minimum interval is {} seconds", MIN_RATE.as_secs())));
    }
    if secs > MAX_RATE.as_secs() {
        return Err(err(format!("the maximum interval is 7 days ({} seconds)", MAX_RATE.as_secs())));
    }
    Ok(Duration::from_secs(secs))
}

fn unit_name(secs_per: u64) -> &'static str {
    match secs_per {
        1 => "seconds",
        60 => "minutes",
        3600 => "hours",
        _ => "days",
    }
}

const AT_FORMS: &str = "expected yyyy-MM-dd HH:mm:ss [zone] (e.g. 2026-12-01 10:00:00 Asia/Shanghai) \
     or RFC 3339 (e.g. 2026-12-01T10:00:00Z, 2026-12-01T18:00:00+08:00)";

/// Accepts Cloud Assistant's `yyyy-MM-dd HH:mm:ss [zone]` (zone: IANA name,
/// `GMT+8:00`, `UTC`; none means UTC), the older agent's
/// `yyyy-MM-ddTHH:mm:ss` (UTC), and RFC 3339 with `Z` or a numeric offset.
pub(super) fn parse_at(expr: &str, inner: &str) -> Result<DateTime<Utc>, ScheduleError> {
    let err = |reason: String| ScheduleError::At { expr: expr.to_string(), reason };
    let inner = inner.trim();
    let instant = if let Ok(dt) = DateTime::parse_from_rfc3339(inner) {
        dt.with_timezone(&Utc)
    } else {
        let tokens: Vec<&str> = inner.split_whitespace().collect();
        let (wall, zone) = match tokens.as_slice() {
            [one] => (one.to_string(), None),
            [d, t] if !d.contains('T') => (format!("{d} {t}"), None),
            [d, z] => (d.to_string(), Some(*z)),
            [d, t, z] => (format!("{d} {t}"), Some(*z)),
            _ => return Err(err(AT_FORMS.into())),
        };
        let wall = wall.replacen('T', " ", 1);
        let naive = NaiveDateTime::parse_from_str(&wall, "%Y-%m-%d %H:%M:%S")
            .map_err(|e| err(format!("{wall:?} is not a valid date-time ({e}); {AT_FORMS}")))?;
        let zone = match zone {
            None => Zone::Utc,
            Some(z) => Zone::parse(z)?,
        };
        zone.resolve(naive).ok_or_else(|| err(format!("{wall} does not exist in {zone} (skipped by a daylight-saving change)")))?
    };
    if instant.year() > MAX_YEAR {
        return Err(err(format!("the latest allowed year is {MAX_YEAR}")));
    }
    Ok(instant)
}
