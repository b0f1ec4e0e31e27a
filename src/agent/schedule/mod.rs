//! Timed invocations: the pure, clock-injected scheduling core shared by the
//! hub (validating `Frequency` at the API) and the agent (deciding when to
//! fire). Nothing here reads the clock; every function takes the instant.
//!
//! Owns: parsing `Frequency` ([`parse`] → [`Schedule`]), creation-time
//! checks ([`validate_at_creation`], [`Schedule::validate_timeout`]), the
//! next fire ([`Schedule::next_after`]), the missed-fire policy
//! ([`Schedule::next_due`], skip beyond [`MISSED_FIRE_GRACE`]) and the
//! boot-triggered modes ([`reboot_due`]). Grammar, bounds and their sources
//! are in docs/schedule.md.

mod cron;
mod forms;
mod reboot;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cron;
mod zone;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

pub use cron::{CronSchedule, MIN_CRON_INTERVAL};
pub use reboot::reboot_due;
pub use zone::Zone;

/// Longest `Frequency` accepted (the hub's parameter limit too).
pub const MAX_FREQUENCY_LEN: usize = 256;
/// Year bounds of cron year fields and `at()` times (Cloud Assistant docs:
/// year "[current year, 2099]"; the Go agent's cronexpr: 1970..2099).
pub const MIN_YEAR: i32 = 1970;
pub const MAX_YEAR: i32 = 2099;
/// A fire this late is still honoured (scheduler wake-up jitter, a short
/// agent restart); anything older is skipped, never caught up.
pub const MISSED_FIRE_GRACE: Duration = Duration::from_secs(60);
/// Fires examined when counting skipped ones or the shortest interval.
const SCAN_LIMIT: u32 = 1000;
const INTERVAL_SAMPLE: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("Frequency is empty; expected rate(<n><s|m|h|d>), at(<time> [zone]) or a cron expression")]
    Empty,
    #[error("Frequency is {len} characters, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("{expr}: {reason}")]
    Rate { expr: String, reason: String },
    #[error("{expr}: {reason}")]
    At { expr: String, reason: String },
    #[error("time zone {value:?}: {reason}")]
    Zone { value: String, reason: String },
    #[error(
        "cron expression has {found} fields; expected seconds minutes hours day-of-month month day-of-week \
         [year] [time zone] (6 to 8 fields), or rate(...) / at(...)"
    )]
    CronArity { found: usize },
    #[error("cron {field} field {value:?}: {reason}")]
    CronField { field: &'static str, value: String, reason: String },
    #[error("cron expression {expr:?}: {reason}")]
    Cron { expr: String, reason: String },
    #[error("{expr}: {at} is not in the future (now is {now})")]
    Expired { expr: String, at: DateTime<Utc>, now: DateTime<Utc> },
    #[error("{expr}: no fire time remains after {now} (the latest allowed year is {MAX_YEAR})")]
    NoFutureFire { expr: String, now: DateTime<Utc> },
    #[error("{expr}: fires at {first} and {second} are {gap_secs} s apart; the minimum interval is {min_secs} seconds")]
    IntervalTooShort { expr: String, first: DateTime<Utc>, second: DateTime<Utc>, gap_secs: i64, min_secs: u64 },
    #[error("{expr}: the interval ({interval_secs} s) is shorter than the Timeout ({timeout_secs} s); runs would overlap")]
    ShorterThanTimeout { expr: String, interval_secs: u64, timeout_secs: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Every period, anchored at the invocation's creation: the first fire is
    /// one period after creation, then every period (Cloud Assistant: "A
    /// task is not immediately executed after the task is created").
    Rate(Duration),
    /// Once, at this instant.
    At(DateTime<Utc>),
    Cron(CronSchedule),
}

/// Parses a `Frequency` value: `rate(...)`, `at(...)` or a cron expression.
pub fn parse(freq: &str) -> Result<Schedule, ScheduleError> {
    let f = freq.trim();
    if f.is_empty() {
        return Err(ScheduleError::Empty);
    }
    if f.len() > MAX_FREQUENCY_LEN {
        return Err(ScheduleError::TooLong { len: f.len(), max: MAX_FREQUENCY_LEN });
    }
    if let Some(inner) = wrapped(f, "rate") {
        return forms::parse_rate(f, inner).map(Schedule::Rate);
    }
    if let Some(inner) = wrapped(f, "at") {
        return forms::parse_at(f, inner).map(Schedule::At);
    }
    cron::parse_cron(f).map(Schedule::Cron)
}

/// `name( ... )`, name case-insensitive, blanks allowed before `(`.
fn wrapped<'a>(f: &'a str, name: &str) -> Option<&'a str> {
    let (head, rest) = f.split_at_checked(name.len())?;
    if !head.eq_ignore_ascii_case(name) {
        return None;
    }
    let rest = rest.trim_start();
    rest.strip_prefix('(')?.strip_suffix(')')
}

/// Checks that need the current time, done once when the invocation is
/// created (at the hub API): an `at()` in the past, a cron with no fire
/// left, and cron fires closer than [`MIN_CRON_INTERVAL`].
pub fn validate_at_creation(schedule: &Schedule, now: DateTime<Utc>) -> Result<(), ScheduleError> {
    match schedule {
        Schedule::Rate(_) => Ok(()),
        Schedule::At(at) if *at <= now => Err(ScheduleError::Expired { expr: schedule.source(), at: *at, now }),
        Schedule::At(_) => Ok(()),
        Schedule::Cron(c) => {
            let Some(first) = c.next_after(now) else {
                return Err(ScheduleError::NoFutureFire { expr: schedule.source(), now });
            };
            if let Some((a, b)) = closest_pair(c, first) {
                let gap = (b - a).num_seconds();
                if gap < MIN_CRON_INTERVAL.as_secs() as i64 {
                    return Err(ScheduleError::IntervalTooShort {
                        expr: schedule.source(),
                        first: a,
                        second: b,
                        gap_secs: gap,
                        min_secs: MIN_CRON_INTERVAL.as_secs(),
                    });
                }
            }
            Ok(())
        }
    }
}

/// Everything the hub checks for `RepeatMode=Period` in one call: parse,
/// [`validate_at_creation`], then [`Schedule::validate_timeout`].
pub fn validate_frequency(freq: &str, timeout: Duration, now: DateTime<Utc>) -> Result<Schedule, ScheduleError> {
    let schedule = parse(freq)?;
    validate_at_creation(&schedule, now)?;
    schedule.validate_timeout(timeout, now)?;
    Ok(schedule)
}

/// The two consecutive fires closest together among the next
/// [`INTERVAL_SAMPLE`] fires starting at `first`.
fn closest_pair(c: &CronSchedule, first: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let mut best: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    let mut prev = first;
    for _ in 0..INTERVAL_SAMPLE {
        let Some(next) = c.next_after(prev) else { break };
        if best.is_none_or(|(a, b)| next - prev < b - a) {
            best = Some((prev, next));
        }
        prev = next;
    }
    best
}

/// What the agent should do for a `Period` schedule right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Fire now. `scheduled` is the nominal instant being honoured (at most
    /// [`MISSED_FIRE_GRACE`] ago); store it as the new `last_fire`.
    Now { scheduled: DateTime<Utc>, missed: u32 },
    /// Nothing to do before `until`.
    Wait { until: DateTime<Utc>, missed: u32 },
    /// No fire will ever come again (an `at()` that ran or was missed, a
    /// cron past its last year); the invocation can finish.
    Done { missed: u32 },
}

impl Schedule {
    /// The expression as written (rebuilt for rate/at).
    pub fn source(&self) -> String {
        match self {
            Schedule::Rate(d) => format!("rate({}s)", d.as_secs()),
            Schedule::At(t) => format!("at({})", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            Schedule::Cron(c) => c.source().to_string(),
        }
    }

    /// For a cron without a written zone, use `zone` (the agent passes
    /// [`Zone::system`]); other schedules are unchanged.
    pub fn with_default_zone(self, zone: Zone) -> Schedule {
        match self {
            Schedule::Cron(c) => Schedule::Cron(c.with_default_zone(zone)),
            other => other,
        }
    }

    /// The next fire strictly after `after`. For `Rate`, `after` is the
    /// anchor (creation or the previous nominal fire): the answer is
    /// `after + period`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Rate(d) => after.checked_add_signed(TimeDelta::from_std(*d).ok()?),
            Schedule::At(t) => (*t > after).then_some(*t),
            Schedule::Cron(c) => c.next_after(after),
        }
    }

    /// Shortest interval between fires: the period, or for cron the
    /// closest pair among the next fires after `now`. `None` for `at()`.
    pub fn min_interval(&self, now: DateTime<Utc>) -> Option<Duration> {
        match self {
            Schedule::Rate(d) => Some(*d),
            Schedule::At(_) => None,
            Schedule::Cron(c) => {
                let (a, b) = closest_pair(c, c.next_after(now)?)?;
                (b - a).to_std().ok()
            }
        }
    }

    /// Cloud Assistant requires the interval to be no shorter than the
    /// command's Timeout, so one run ends before the next is due.
    pub fn validate_timeout(&self, timeout: Duration, now: DateTime<Utc>) -> Result<(), ScheduleError> {
        match self.min_interval(now) {
            Some(iv) if iv < timeout => {
                Err(ScheduleError::ShorterThanTimeout { expr: self.source(), interval_secs: iv.as_secs(), timeout_secs: timeout.as_secs() })
            }
            _ => Ok(()),
        }
    }

    /// The missed-fire policy (SKIP): given when the invocation was created,
    /// the nominal instant of its last fire (`Due::Now::scheduled`, not the
    /// wall time the run started) and now, decide what to do. A nominal fire
    /// older than `now - MISSED_FIRE_GRACE` is skipped and counted in
    /// `missed` (counted up to 1000); at most one fire is ever due at once,
    /// so an agent that was down for a week does not replay the week.
    pub fn next_due(&self, created: DateTime<Utc>, last_fire: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Due {
        let floor = now - TimeDelta::from_std(MISSED_FIRE_GRACE).unwrap_or(TimeDelta::zero());
        let decide = |at: DateTime<Utc>, missed: u32| {
            if at <= now { Due::Now { scheduled: at, missed } } else { Due::Wait { until: at, missed } }
        };
        match self {
            Schedule::At(t) => match last_fire {
                Some(_) => Due::Done { missed: 0 },
                None if *t < floor => Due::Done { missed: 1 },
                None => decide(*t, 0),
            },
            Schedule::Rate(d) => {
                let base = last_fire.unwrap_or(created);
                let p = TimeDelta::from_std(*d).unwrap_or(TimeDelta::MAX).max(TimeDelta::seconds(1));
                let first = base + p;
                if first >= floor {
                    return decide(first, 0);
                }
                // Smallest k with base + k·p >= floor; the k-1 before it are skipped.
                let behind = (floor - base).num_milliseconds();
                let step = p.num_milliseconds().max(1);
                let k = (behind + step - 1) / step;
                let missed = u32::try_from(k - 1).unwrap_or(u32::MAX).min(SCAN_LIMIT);
                decide(base + TimeDelta::milliseconds(k * step), missed)
            }
            Schedule::Cron(c) => {
                let base = last_fire.unwrap_or(created);
                let Some(mut next) = c.next_after(base) else { return Due::Done { missed: 0 } };
                let mut missed = 0u32;
                while next < floor {
                    missed += 1;
                    if missed >= SCAN_LIMIT {
                        // Stop counting; jump straight to the first fire in the window.
                        match c.next_after(floor - TimeDelta::seconds(1)) {
                            Some(n) => next = n,
                            None => return Due::Done { missed },
                        }
                        break;
                    }
                    match c.next_after(next) {
                        Some(n) => next = n,
                        None => return Due::Done { missed },
                    }
                }
                decide(next, missed)
            }
        }
    }
}
