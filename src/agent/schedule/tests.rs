//! Tests for rate/at parsing, zones, the missed-fire policy and reboot
//! modes. Every instant is fixed; nothing sleeps or reads the clock.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::lifecycle::RepeatMode;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn err(freq: &str) -> String {
    parse(freq).unwrap_err().to_string()
}

#[test]
fn rate_units_and_bounds() {
    assert_eq!(parse("rate(5m)").unwrap(), Schedule::Rate(Duration::from_secs(300)));
    assert_eq!(parse("rate(60s)").unwrap(), Schedule::Rate(Duration::from_secs(60)));
    assert_eq!(parse("rate(1h)").unwrap(), Schedule::Rate(Duration::from_secs(3600)));
    assert_eq!(parse("rate(7d)").unwrap(), Schedule::Rate(Duration::from_secs(7 * 86400)));
    assert_eq!(parse("RATE( 2 H )").unwrap(), Schedule::Rate(Duration::from_secs(7200)));
    assert_eq!(err("rate(2s)"), "rate(2s): the minimum interval is 60 seconds");
    assert_eq!(err("rate(59s)"), "rate(59s): the minimum interval is 60 seconds");
    assert!(err("rate(8d)").contains("the maximum interval is 7 days"), "{}", err("rate(8d)"));
    assert!(err("rate(169h)").contains("maximum interval"));
    assert!(err("rate(99999999999999999999d)").contains("maximum interval"));
    assert!(err("rate(5w)").contains("unit 'w' is not one of s, m, h, d"));
    assert!(err("rate(m)").contains("is not a whole number"));
    assert!(err("rate(-5m)").contains("is not a whole number"));
    assert!(err("rate()").contains("empty"));
}

#[test]
fn at_iso_forms() {
    let want = t("2026-12-01T10:00:00Z");
    assert_eq!(parse("at(2026-12-01T10:00:00Z)").unwrap(), Schedule::At(want));
    assert_eq!(parse("at(2026-12-01T18:00:00+08:00)").unwrap(), Schedule::At(want));
    assert_eq!(parse("at(2026-12-01T05:00:00-05:00)").unwrap(), Schedule::At(want));
    // The older agent's zone-less form is UTC.
    assert_eq!(parse("at(2026-12-01T10:00:00)").unwrap(), Schedule::At(want));
}

#[test]
fn at_cloud_assistant_forms_with_zone() {
    assert_eq!(parse("at(2022-09-29 18:00:00 Asia/Shanghai)").unwrap(), Schedule::At(t("2022-09-29T10:00:00Z")));
    assert_eq!(parse("at(2022-06-06 13:15:30 GMT-7:00)").unwrap(), Schedule::At(t("2022-06-06T20:15:30Z")));
    assert_eq!(parse("at(2022-06-06 13:15:30 GMT+5:45)").unwrap(), Schedule::At(t("2022-06-06T07:30:30Z")));
    assert_eq!(parse("at(2022-06-06 13:15:30 UTC)").unwrap(), Schedule::At(t("2022-06-06T13:15:30Z")));
    assert_eq!(parse("at(2022-06-06 13:15:30)").unwrap(), Schedule::At(t("2022-06-06T13:15:30Z")));
    // Summer time in New York is UTC-4.
    assert_eq!(parse("at(2026-07-01 08:00:00 America/New_York)").unwrap(), Schedule::At(t("2026-07-01T12:00:00Z")));
}

#[test]
fn at_errors_name_the_problem() {
    assert!(err("at(2026-13-01 10:00:00)").contains("is not a valid date-time"));
    assert!(err("at(tomorrow)").contains("expected yyyy-MM-dd HH:mm:ss"));
    assert!(err("at(2026-12-01 10:00:00 Mars/Olympus)").contains("IANA"));
    assert!(err("at(2026-12-01 10:00:00 asia/shanghai)").contains("case-sensitive"));
    assert!(err("at(2026-12-01 10:00:00 GMT+08:00)").contains("no leading zero"));
    assert!(err("at(2026-12-01 10:00:00 GMT+15:00)").contains("GMT+14:00"));
    assert!(err("at(2150-01-01 00:00:00)").contains("latest allowed year is 2099"));
    // 02:30 on 2026-03-08 does not exist in New York.
    let e = err("at(2026-03-08 02:30:00 America/New_York)");
    assert!(e.contains("does not exist in America/New_York"), "{e}");
}

#[test]
fn at_ambiguous_wall_time_takes_the_first() {
    // 01:30 on 2026-11-01 happens twice in New York: EDT (05:30Z) then EST.
    assert_eq!(parse("at(2026-11-01 01:30:00 America/New_York)").unwrap(), Schedule::At(t("2026-11-01T05:30:00Z")));
}

#[test]
fn at_in_the_past_is_rejected_at_creation() {
    let s = parse("at(2026-12-01T10:00:00Z)").unwrap();
    assert!(validate_at_creation(&s, t("2026-12-01T09:59:59Z")).is_ok());
    let e = validate_at_creation(&s, t("2026-12-01T10:00:00Z")).unwrap_err();
    assert!(matches!(e, ScheduleError::Expired { .. }));
    assert!(e.to_string().contains("not in the future"), "{e}");
}

#[test]
fn frequency_length_and_emptiness_are_bounded() {
    assert_eq!(parse("   "), Err(ScheduleError::Empty));
    let long = format!("rate({}m)", "1".repeat(300));
    assert!(matches!(parse(&long), Err(ScheduleError::TooLong { max: 256, .. })));
}

#[test]
fn rate_next_after_is_anchored() {
    let s = parse("rate(5m)").unwrap();
    assert_eq!(s.next_after(t("2026-01-01T00:00:00Z")), Some(t("2026-01-01T00:05:00Z")));
}

#[test]
fn at_next_after_once() {
    let s = parse("at(2026-12-01T10:00:00Z)").unwrap();
    assert_eq!(s.next_after(t("2026-12-01T09:00:00Z")), Some(t("2026-12-01T10:00:00Z")));
    assert_eq!(s.next_after(t("2026-12-01T10:00:00Z")), None);
}

#[test]
fn due_rate_first_fire_is_one_period_after_creation() {
    let s = parse("rate(5m)").unwrap();
    let created = t("2026-01-01T00:00:00Z");
    assert_eq!(s.next_due(created, None, t("2026-01-01T00:01:00Z")), Due::Wait { until: t("2026-01-01T00:05:00Z"), missed: 0 });
    assert_eq!(s.next_due(created, None, t("2026-01-01T00:05:00Z")), Due::Now { scheduled: t("2026-01-01T00:05:00Z"), missed: 0 });
    // 30 s late is within the grace: still fires, with its nominal instant.
    assert_eq!(s.next_due(created, None, t("2026-01-01T00:05:30Z")), Due::Now { scheduled: t("2026-01-01T00:05:00Z"), missed: 0 });
    // After the fire at 00:05 the next is 00:10, however late the run started.
    let last = Some(t("2026-01-01T00:05:00Z"));
    assert_eq!(s.next_due(created, last, t("2026-01-01T00:07:00Z")), Due::Wait { until: t("2026-01-01T00:10:00Z"), missed: 0 });
}

#[test]
fn due_rate_skips_fires_missed_while_down() {
    let s = parse("rate(5m)").unwrap();
    let created = t("2026-01-01T00:00:00Z");
    // Agent down from 00:06 to 01:02:30: fires 00:10 .. 01:00 (11) are older than
    // the grace and skipped; 01:05 is the next. No catch-up storm.
    let due = s.next_due(created, Some(t("2026-01-01T00:05:00Z")), t("2026-01-01T01:02:30Z"));
    assert_eq!(due, Due::Wait { until: t("2026-01-01T01:05:00Z"), missed: 11 });
    // Back at 01:00:40: the 01:00 fire is 40 s late, inside the grace, so it runs.
    let due = s.next_due(created, Some(t("2026-01-01T00:05:00Z")), t("2026-01-01T01:00:40Z"));
    assert_eq!(due, Due::Now { scheduled: t("2026-01-01T01:00:00Z"), missed: 10 });
}

#[test]
fn due_at_runs_once_and_skips_when_missed() {
    let s = parse("at(2026-12-01T10:00:00Z)").unwrap();
    let created = t("2026-11-01T00:00:00Z");
    assert_eq!(s.next_due(created, None, t("2026-12-01T09:00:00Z")), Due::Wait { until: t("2026-12-01T10:00:00Z"), missed: 0 });
    assert_eq!(s.next_due(created, None, t("2026-12-01T10:00:59Z")), Due::Now { scheduled: t("2026-12-01T10:00:00Z"), missed: 0 });
    assert_eq!(s.next_due(created, None, t("2026-12-01T10:05:00Z")), Due::Done { missed: 1 });
    assert_eq!(s.next_due(created, Some(t("2026-12-01T10:00:00Z")), t("2026-12-01T10:00:10Z")), Due::Done { missed: 0 });
}

#[test]
fn due_cron_skips_missed_and_counts_them() {
    let s = parse("0 0 * * * ?").unwrap(); // hourly
    let created = t("2026-01-01T00:30:00Z");
    assert_eq!(s.next_due(created, None, t("2026-01-01T00:45:00Z")), Due::Wait { until: t("2026-01-01T01:00:00Z"), missed: 0 });
    // Down from 01:10 until 05:30: 02:00, 03:00, 04:00, 05:00 skipped.
    let due = s.next_due(created, Some(t("2026-01-01T01:00:00Z")), t("2026-01-01T05:30:00Z"));
    assert_eq!(due, Due::Wait { until: t("2026-01-01T06:00:00Z"), missed: 4 });
}

#[test]
fn due_cron_scan_is_bounded() {
    // Every 10 s, down for 30 days: ~259k missed fires; the count stops at
    // the scan limit and the next fire is still found.
    let s = parse("*/10 * * * * ?").unwrap();
    let created = t("2026-01-01T00:00:00Z");
    let now = t("2026-01-31T00:00:05Z");
    match s.next_due(created, Some(created), now) {
        Due::Now { scheduled, missed } | Due::Wait { until: scheduled, missed } => {
            assert_eq!(missed, 1000);
            assert!(scheduled >= now - chrono::TimeDelta::seconds(60) && scheduled <= t("2026-01-31T00:00:10Z"), "{scheduled}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn due_cron_done_after_last_year() {
    let s = parse("0 0 12 1 1 ? 2027").unwrap();
    let created = t("2026-06-01T00:00:00Z");
    assert_eq!(s.next_due(created, Some(t("2027-01-01T12:00:00Z")), t("2027-01-01T12:00:05Z")), Due::Done { missed: 0 });
}

#[test]
fn timeout_must_not_exceed_interval() {
    let now = t("2026-01-01T00:00:00Z");
    let s = parse("rate(5m)").unwrap();
    assert!(s.validate_timeout(Duration::from_secs(300), now).is_ok());
    let e = s.validate_timeout(Duration::from_secs(301), now).unwrap_err();
    assert!(e.to_string().contains("shorter than the Timeout (301 s)"), "{e}");
    let c = parse("0 */2 * * * ?").unwrap();
    assert_eq!(c.min_interval(now), Some(Duration::from_secs(120)));
    assert!(c.validate_timeout(Duration::from_secs(121), now).is_err());
    assert!(parse("at(2026-12-01T10:00:00Z)").unwrap().validate_timeout(Duration::from_secs(86400), now).is_ok());
}

#[test]
fn repeat_mode_names() {
    for m in RepeatMode::ALL {
        assert_eq!(RepeatMode::parse(m.as_str()).unwrap(), *m);
    }
    let e = RepeatMode::parse("everyreboot").unwrap_err().to_string();
    assert!(e.contains("not one of Once, Period, NextRebootOnly, EveryReboot"), "{e}");
    assert!(RepeatMode::EveryReboot.is_repeating() && !RepeatMode::NextRebootOnly.is_repeating());
}

#[test]
fn reboot_due_by_boot_id_change() {
    let (a, b) = ("0f1e-boot-a", "77aa-boot-b");
    for mode in [RepeatMode::NextRebootOnly, RepeatMode::EveryReboot] {
        assert!(!reboot_due(mode, Some(a), a), "{mode}: same boot");
        assert!(reboot_due(mode, Some(a), b), "{mode}: rebooted");
        assert!(!reboot_due(mode, None, b), "{mode}: nothing stored yet arms, never fires");
        assert!(!reboot_due(mode, Some(""), b), "{mode}: unknown stored id");
        assert!(!reboot_due(mode, Some(a), ""), "{mode}: unreadable current id");
    }
    assert!(!reboot_due(RepeatMode::Period, Some(a), b));
    assert!(!reboot_due(RepeatMode::Once, Some(a), b));
}

#[test]
fn zone_display_round_trips() {
    for z in ["UTC", "Asia/Shanghai", "GMT+8:00", "GMT-7:00", "GMT+5:45"] {
        assert_eq!(Zone::parse(z).unwrap().to_string(), z);
    }
    assert_eq!(Zone::parse("GMT").unwrap(), Zone::Utc);
    assert_eq!(Zone::parse("GMT-7").unwrap().to_string(), "GMT-7:00");
    let _ = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0);
}

mod never_panics {
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    use super::super::*;

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9*?/,#LW-]{1,6}",
            Just("*".to_string()),
            Just("?".to_string()),
            "[0-9]{1,2}",
            "[0-9]{1,2}/[0-9]{1,2}",
            "[0-9]{1,2}-[0-9]{1,2}",
            "[0-9]{1,2}(,[0-9]{1,2}){0,3}",
            Just("MON-FRI".to_string()),
            Just("JAN,DEC".to_string()),
            Just("Asia/Shanghai".to_string()),
            Just("America/New_York".to_string()),
            Just("GMT+8:00".to_string()),
            Just("2027".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// Arbitrary text yields a schedule or an error, never a panic.
        #[test]
        fn parse_any_text(s in "\\PC{0,80}") {
            let _ = parse(&s);
            let _ = parse(&format!("rate({s})"));
            let _ = parse(&format!("at({s})"));
        }

        /// Cron-shaped input: if it parses, evaluation terminates and moves forward.
        #[test]
        fn cron_shaped(tokens in proptest::collection::vec(token(), 6..=8), secs in 1_700_000_000i64..4_000_000_000i64) {
            let expr = tokens.join(" ");
            if let Ok(s) = parse(&expr) {
                let now = DateTime::<Utc>::from_timestamp(secs, 0).unwrap();
                if let Some(n) = s.next_after(now) {
                    prop_assert!(n > now, "{expr}: {n} <= {now}");
                }
                let _ = validate_at_creation(&s, now);
                let _ = s.next_due(now, None, now);
            }
        }
    }
}

#[test]
fn validate_frequency_runs_every_check() {
    let now = t("2026-06-01T00:00:00Z");
    let sixty = Duration::from_secs(60);
    assert!(validate_frequency("rate(5m)", sixty, now).is_ok());
    assert!(matches!(validate_frequency("rate(2s)", sixty, now), Err(ScheduleError::Rate { .. })));
    assert!(matches!(validate_frequency("at(2026-05-01T00:00:00Z)", sixty, now), Err(ScheduleError::Expired { .. })));
    assert!(matches!(validate_frequency("0,55 * * * * ?", Duration::from_secs(1), now), Err(ScheduleError::IntervalTooShort { .. })));
    assert!(matches!(validate_frequency("0 */1 * * * ?", Duration::from_secs(120), now), Err(ScheduleError::ShorterThanTimeout { .. })));
}
