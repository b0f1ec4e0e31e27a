//! The Schedules page's "next fire": worked out on the hub from the
//! invocation's `Frequency` and creation time with the agent's own
//! schedule parser (`agent::schedule`), so the page and the agents agree.
//! A cron without a written zone fires in each agent's zone, which the hub
//! does not know: its next fire is given in UTC and marked as such.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use crate::agent::schedule::{self, Schedule};

/// The next fire after `now`, and whether its zone is certain.
pub fn next_fire(frequency: &str, created: DateTime<Utc>, now: DateTime<Utc>) -> Option<(DateTime<Utc>, bool)> {
    match schedule::parse(frequency).ok()? {
        // Anchored at creation: created + k·period, the first after now.
        Schedule::Rate(d) => {
            let p = TimeDelta::from_std(d).ok()?.max(TimeDelta::seconds(1));
            let behind = (now - created).num_milliseconds().max(0);
            let k = behind / p.num_milliseconds().max(1) + 1;
            Some((created.checked_add_signed(p.checked_mul(i32::try_from(k).ok()?)?)?, true))
        }
        Schedule::At(t) => (t > now).then_some((t, true)),
        Schedule::Cron(c) => {
            let zoned = c.zone().is_some();
            Some((Schedule::Cron(c).next_after(now)?, zoned))
        }
    }
}

/// Adds `ConsoleNextFire` (RFC 3339, or "" when none will come) and
/// `ConsoleNextFireZoneKnown` to each `Period` invocation of a
/// `DescribeInvocations` answer. Console-only fields: the API's answer is
/// not changed.
pub fn annotate(answer: &mut Value, now: DateTime<Utc>) {
    let Some(list) = answer.pointer_mut("/Invocations/Invocation").and_then(Value::as_array_mut) else { return };
    for inv in list {
        if inv.get("RepeatMode").and_then(Value::as_str) != Some("Period") {
            continue;
        }
        let freq = inv.get("Frequency").and_then(Value::as_str).unwrap_or("");
        let created = inv.get("CreationTime").and_then(Value::as_str).and_then(|t| DateTime::parse_from_rfc3339(t).ok());
        let next = created.and_then(|c| next_fire(freq, c.with_timezone(&Utc), now));
        if let Value::Object(m) = inv {
            let at = next.map(|(t, _)| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default();
            m.insert("ConsoleNextFire".into(), Value::String(at));
            m.insert("ConsoleNextFireZoneKnown".into(), Value::Bool(next.is_some_and(|(_, z)| z)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn rate_is_anchored_at_creation_at_is_once_cron_marks_its_zone() {
        let created = t("2026-11-24T10:00:00Z");
        assert_eq!(next_fire("rate(1h)", created, t("2026-11-24T10:30:00Z")), Some((t("2026-11-24T11:00:00Z"), true)));
        assert_eq!(next_fire("rate(1h)", created, t("2026-11-24T12:00:00Z")), Some((t("2026-11-24T13:00:00Z"), true)));
        assert_eq!(next_fire("at(2026-11-25T00:00:00Z)", created, t("2026-11-24T12:00:00Z")), Some((t("2026-11-25T00:00:00Z"), true)));
        assert_eq!(next_fire("at(2026-11-25T00:00:00Z)", created, t("2026-11-26T00:00:00Z")), None);
        assert_eq!(next_fire("0 0 3 * * ?", created, t("2026-11-24T12:00:00Z")), Some((t("2026-11-25T03:00:00Z"), false)));
        assert_eq!(next_fire("not a schedule", created, created), None);
    }
}
