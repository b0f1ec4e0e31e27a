//! Time zones as Cloud Assistant's `Frequency` spells them: an IANA name
//! (`Asia/Shanghai`), a GMT offset without a leading zero in the hour
//! (`GMT+8:00`, `GMT-7:00`), or the abbreviations `UTC` / `GMT`.
//!
//! Owns turning a zone token into a [`Zone`] and converting local wall
//! times to instants. Reading the machine's own zone ([`Zone::system`]) is
//! the one impure helper here, kept apart from the pure conversions.

use std::str::FromStr;

use chrono::{DateTime, FixedOffset, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::ScheduleError;

/// Longest zone token we look at; IANA names are far shorter.
const MAX_ZONE_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Utc,
    Named(Tz),
    Fixed(FixedOffset),
}

impl Zone {
    /// Parses a zone token (case-sensitive IANA names, as the Go agent's
    /// `time.LoadLocation` is).
    pub fn parse(s: &str) -> Result<Zone, ScheduleError> {
        let err = |reason: String| ScheduleError::Zone { value: s.chars().take(MAX_ZONE_LEN).collect(), reason };
        if s.is_empty() {
            return Err(err("empty time zone".into()));
        }
        if s.len() > MAX_ZONE_LEN {
            return Err(err(format!("{} characters, the limit is {MAX_ZONE_LEN}", s.len())));
        }
        if s == "UTC" || s == "GMT" {
            return Ok(Zone::Utc);
        }
        if s.contains('/') {
            return Tz::from_str(s)
                .map(Zone::Named)
                .map_err(|_| err("not a time zone name from the IANA database (names are case-sensitive, e.g. Asia/Shanghai)".into()));
        }
        if let Some(rest) = s.strip_prefix("GMT") {
            return parse_gmt_offset(rest).map(Zone::Fixed).map_err(err);
        }
        Err(err("expected an IANA name such as Asia/Shanghai, a GMT offset such as GMT+8:00, or UTC".into()))
    }

    /// The instant a local wall time names in this zone. A wall time that
    /// occurs twice (DST fall-back) resolves to the earlier instant; one that
    /// does not exist (spring-forward gap) gives `None`.
    pub fn resolve(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        fn pick<T: TimeZone>(r: LocalResult<DateTime<T>>) -> Option<DateTime<Utc>> {
            r.earliest().map(|d| d.with_timezone(&Utc))
        }
        match self {
            Zone::Utc => Some(Utc.from_utc_datetime(&local)),
            Zone::Named(tz) => pick(tz.from_local_datetime(&local)),
            Zone::Fixed(off) => pick(off.from_local_datetime(&local)),
        }
    }

    /// Best-effort zone of this machine: `$TZ`, then `/etc/timezone`, then
    /// the `/etc/localtime` symlink target; UTC when none names a zone.
    /// Cloud Assistant evaluates a cron without a zone in the instance's
    /// zone, so the agent passes this to [`super::CronSchedule::with_default_zone`].
    pub fn system() -> Zone {
        let from_env = std::env::var("TZ").ok().map(|v| v.trim_start_matches(':').to_string());
        let from_file = || std::fs::read_to_string("/etc/timezone").ok().map(|s| s.trim().to_string());
        let from_link = || {
            let target = std::fs::read_link("/etc/localtime").ok()?;
            let s = target.to_string_lossy().into_owned();
            s.split_once("zoneinfo/").map(|(_, name)| name.to_string())
        };
        [from_env, from_file(), from_link()].into_iter().flatten().find_map(|name| Zone::parse(&name).ok()).unwrap_or(Zone::Utc)
    }
}

impl std::fmt::Display for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Zone::Utc => f.write_str("UTC"),
            Zone::Named(tz) => f.write_str(tz.name()),
            Zone::Fixed(off) => {
                let secs = off.local_minus_utc();
                let sign = if secs < 0 { '-' } else { '+' };
                let abs = secs.unsigned_abs();
                write!(f, "GMT{sign}{}:{:02}", abs / 3600, abs % 3600 / 60)
            }
        }
    }
}

/// `+8:00`, `-7:00`, `+5:45`; also `+8` / `-7` (the RunCommand docs show
/// `GMT-7` once). Hours carry no leading zero, as Cloud Assistant requires.
fn parse_gmt_offset(rest: &str) -> Result<FixedOffset, String> {
    let (sign, body) = if let Some(body) = rest.strip_prefix('+') {
        (1, body)
    } else if let Some(body) = rest.strip_prefix('-') {
        (-1, body)
    } else {
        return Err("a GMT offset needs a sign, e.g. GMT+8:00 or GMT-7:00".into());
    };
    let (h, m) = body.split_once(':').unwrap_or((body, "00"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) || m.len() != 2 || h.len() > 2 {
        return Err("a GMT offset is GMT+H:MM or GMT-H:MM, e.g. GMT+8:00".into());
    }
    if h.len() == 2 && h.starts_with('0') {
        return Err("the hour of a GMT offset takes no leading zero (GMT+8:00, not GMT+08:00)".into());
    }
    let (h, m): (i32, i32) = (h.parse().unwrap_or(99), m.parse().unwrap_or(99));
    if m > 59 {
        return Err(format!("offset minutes {m} exceed 59"));
    }
    // Real offsets span UTC-12:00 .. UTC+14:00.
    let secs = sign * (h * 3600 + m * 60);
    if !(-12 * 3600..=14 * 3600).contains(&secs) {
        return Err("the offset must lie between GMT-12:00 and GMT+14:00".into());
    }
    FixedOffset::east_opt(secs).ok_or_else(|| "offset out of range".into())
}
