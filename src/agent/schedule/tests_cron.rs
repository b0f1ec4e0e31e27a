//! Cron tests: every field form, zones, DST in America/New_York, the
//! minimum interval, and errors that name the bad field. Fixed instants only.

use chrono::{DateTime, Utc};

use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn next(expr: &str, after: &str) -> DateTime<Utc> {
    parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}")).next_after(t(after)).unwrap_or_else(|| panic!("{expr}: no next"))
}

/// The first `n` fires after `after`.
fn fires(expr: &str, after: &str, n: usize) -> Vec<DateTime<Utc>> {
    let s = parse(expr).unwrap();
    let mut out = Vec::new();
    let mut cur = t(after);
    for _ in 0..n {
        cur = s.next_after(cur).unwrap();
        out.push(cur);
    }
    out
}

fn err(expr: &str) -> String {
    parse(expr).unwrap_err().to_string()
}

#[test]
fn shanghai_nine_am_is_one_utc() {
    assert_eq!(next("0 0 9 * * ? Asia/Shanghai", "2026-01-01T00:00:00Z"), t("2026-01-01T01:00:00Z"));
    assert_eq!(next("0 0 9 * * ? Asia/Shanghai", "2026-01-01T01:00:00Z"), t("2026-01-02T01:00:00Z"));
    assert_eq!(next("0 0 12 * * ? Asia/Shanghai", "2026-01-01T00:00:00Z"), t("2026-01-01T04:00:00Z"));
}

#[test]
fn no_zone_means_utc_until_the_agent_supplies_its_own() {
    let s = parse("0 0 12 * * ?").unwrap();
    assert_eq!(s.next_after(t("2026-01-01T00:00:00Z")), Some(t("2026-01-01T12:00:00Z")));
    let local = s.with_default_zone(Zone::parse("Asia/Shanghai").unwrap());
    assert_eq!(local.next_after(t("2026-01-01T00:00:00Z")), Some(t("2026-01-01T04:00:00Z")));
    // A written zone wins over the default.
    let written = parse("0 0 12 * * ? UTC").unwrap().with_default_zone(Zone::parse("Asia/Shanghai").unwrap());
    assert_eq!(written.next_after(t("2026-01-01T00:00:00Z")), Some(t("2026-01-01T12:00:00Z")));
}

#[test]
fn gmt_offset_zone() {
    assert_eq!(next("0 0/30 10-11 * * ? 2027 GMT+8:00", "2026-06-01T00:00:00Z"), t("2027-01-01T02:00:00Z"));
    assert_eq!(
        fires("0 0/30 10-11 * * ? 2027 GMT+8:00", "2026-06-01T00:00:00Z", 5),
        ["2027-01-01T02:00:00Z", "2027-01-01T02:30:00Z", "2027-01-01T03:00:00Z", "2027-01-01T03:30:00Z", "2027-01-02T02:00:00Z"].map(t)
    );
}

#[test]
fn dst_spring_forward_fixed_time_runs_at_three() {
    // 2026-03-08: New York clocks jump 02:00 EST -> 03:00 EDT (07:00Z);
    // 02:30 does not exist that day, so the 02:30 job runs at 03:00 EDT.
    let f = fires("0 30 2 * * ? America/New_York", "2026-03-07T00:00:00Z", 3);
    assert_eq!(f, ["2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"].map(t));
}

#[test]
fn dst_spring_forward_interval_job_skips_missing_times() {
    // Every 30 min: 01:30 EST (06:30Z) is followed by 03:00 EDT (07:00Z), 30 real minutes later.
    let f = fires("0 0/30 * * * ? America/New_York", "2026-03-08T06:15:00Z", 3);
    assert_eq!(f, ["2026-03-08T06:30:00Z", "2026-03-08T07:00:00Z", "2026-03-08T07:30:00Z"].map(t));
}

#[test]
fn dst_fall_back_fixed_time_fires_once() {
    // 2026-11-01: 01:00-02:00 happens twice (EDT 05:00Z-06:00Z, then EST 06:00Z-07:00Z).
    let f = fires("0 30 1 * * ? America/New_York", "2026-10-31T12:00:00Z", 3);
    assert_eq!(f, ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z", "2026-11-03T06:30:00Z"].map(t));
    // Asked from inside the repeated hour (01:15 EST), it does not fire again that day.
    assert_eq!(next("0 30 1 * * ? America/New_York", "2026-11-01T06:15:00Z"), t("2026-11-02T06:30:00Z"));
}

#[test]
fn dst_fall_back_interval_job_follows_real_time() {
    // Every 30 min keeps a 30-minute real interval through the repeated hour,
    // and never goes backwards when asked from inside the second pass.
    let f = fires("0 0/30 * * * ? America/New_York", "2026-11-01T04:45:00Z", 5);
    assert_eq!(
        f,
        ["2026-11-01T05:00:00Z", "2026-11-01T05:30:00Z", "2026-11-01T06:00:00Z", "2026-11-01T06:30:00Z", "2026-11-01T07:00:00Z"].map(t)
    );
    assert_eq!(next("0 0/30 * * * ? America/New_York", "2026-11-01T06:00:00Z"), t("2026-11-01T06:30:00Z"));
}

#[test]
fn question_mark_and_sunday_spellings() {
    // 2026-01-01 is a Thursday; Sunday is 2026-01-04.
    for dow in ["0", "7", "SUN", "sun", "Sunday"] {
        assert_eq!(next(&format!("0 0 10 ? * {dow}"), "2026-01-01T00:00:00Z"), t("2026-01-04T10:00:00Z"), "{dow}");
    }
    // Cloud Assistant: 1 = Monday.
    assert_eq!(next("0 0 12 ? * 1", "2026-01-01T00:00:00Z"), t("2026-01-05T12:00:00Z"));
    assert_eq!(next("0 0 12 ? * MON", "2026-01-01T00:00:00Z"), t("2026-01-05T12:00:00Z"));
    assert_eq!(next("0 0 12 ? * MON-FRI", "2026-01-02T12:00:00Z"), t("2026-01-05T12:00:00Z"));
    assert_eq!(
        fires("0 0 12 ? * FRI-SUN", "2026-01-01T00:00:00Z", 4),
        ["2026-01-02T12:00:00Z", "2026-01-03T12:00:00Z", "2026-01-04T12:00:00Z", "2026-01-09T12:00:00Z"].map(t)
    );
    assert_eq!(next("0 15 10 * * ?", "2026-01-01T11:00:00Z"), t("2026-01-02T10:15:00Z"));
    // An open weekday step stops at Saturday: MON/2 is Mon, Wed, Fri (never Sunday).
    assert_eq!(
        fires("0 0 12 ? * MON/2", "2026-01-01T00:00:00Z", 4),
        ["2026-01-02T12:00:00Z", "2026-01-05T12:00:00Z", "2026-01-07T12:00:00Z", "2026-01-09T12:00:00Z"].map(t)
    );
}

#[test]
fn months_lists_ranges_steps() {
    assert_eq!(next("0 0 0 1 JAN,JUL ?", "2026-02-01T00:00:00Z"), t("2026-07-01T00:00:00Z"));
    assert_eq!(next("0 0 0 1 jul-sep ?", "2026-07-01T00:00:00Z"), t("2026-08-01T00:00:00Z"));
    assert_eq!(
        fires("0 0 10,14,16 * * ?", "2026-01-01T00:00:00Z", 4),
        ["2026-01-01T10:00:00Z", "2026-01-01T14:00:00Z", "2026-01-01T16:00:00Z", "2026-01-02T10:00:00Z"].map(t)
    );
    assert_eq!(fires("0 0/5 14,18 * * ?", "2026-01-01T14:52:00Z", 2), ["2026-01-01T14:55:00Z", "2026-01-01T18:00:00Z"].map(t));
    assert_eq!(
        fires("15/20 * * * * ?", "2026-01-01T00:00:00Z", 3),
        ["2026-01-01T00:00:15Z", "2026-01-01T00:00:35Z", "2026-01-01T00:00:55Z"].map(t)
    );
    // One leading zero is allowed.
    assert_eq!(next("0 15 08 ? * *", "2026-01-01T00:00:00Z"), t("2026-01-01T08:15:00Z"));
}

#[test]
fn last_weekday_and_nth() {
    assert_eq!(next("0 15 10 L * ?", "2026-02-01T00:00:00Z"), t("2026-02-28T10:15:00Z"));
    assert_eq!(next("0 15 10 ? * 5#3", "2026-01-01T00:00:00Z"), t("2026-01-16T10:15:00Z"));
    assert_eq!(next("0 15 10 ? * FRI#3", "2026-01-01T00:00:00Z"), t("2026-01-16T10:15:00Z"));
    assert_eq!(next("0 15 10 ? * 5L", "2026-01-01T00:00:00Z"), t("2026-01-30T10:15:00Z"));
    // 2026-02-15 is a Sunday: the nearest weekday is Monday the 16th.
    assert_eq!(next("0 0 9 15W * ?", "2026-02-01T00:00:00Z"), t("2026-02-16T09:00:00Z"));
}

#[test]
fn year_field_and_zone_together() {
    assert_eq!(next("0 15 10 ? * * 2027", "2026-06-01T00:00:00Z"), t("2027-01-01T10:15:00Z"));
    assert_eq!(next("0 15 10 ? * * 2027 Asia/Shanghai", "2026-06-01T00:00:00Z"), t("2027-01-01T02:15:00Z"));
    assert_eq!(next("0 0/5 14 * 10 ? 2026/2 UTC", "2026-11-01T00:00:00Z"), t("2028-10-01T14:00:00Z"));
    assert_eq!(next("0 0 0 1 1 ? *", "2026-06-01T00:00:00Z"), t("2027-01-01T00:00:00Z"));
    // The last allowed year ends the schedule.
    assert_eq!(parse("0 0 0 1 1 ? 2099").unwrap().next_after(t("2099-01-01T00:00:00Z")), None);
}

#[test]
fn expired_and_impossible_crons_are_rejected_at_creation() {
    let now = t("2026-06-01T00:00:00Z");
    let e = validate_at_creation(&parse("0 0 0 1 1 ? 2020").unwrap(), now).unwrap_err();
    assert!(matches!(e, ScheduleError::NoFutureFire { .. }), "{e}");
    let e = validate_at_creation(&parse("0 0 0 31 2 ?").unwrap(), now).unwrap_err();
    assert!(matches!(e, ScheduleError::NoFutureFire { .. }), "{e}");
    assert!(validate_at_creation(&parse("0 0 9 * * ? Asia/Shanghai").unwrap(), now).is_ok());
}

#[test]
fn minimum_interval_ten_seconds() {
    let e = err("*/5 * * * * ?");
    assert!(e.starts_with("cron second field \"*/5\""), "{e}");
    assert!(e.contains("the minimum interval is 10 seconds"), "{e}");
    assert!(err("0,5 * * * * ?").contains("5 s apart"));
    assert!(parse("*/10 * * * * ?").is_ok());
    // :55 then :00 of the next minute is 5 s: caught by the creation check.
    let s = parse("0,55 * * * * ?").unwrap();
    let e = validate_at_creation(&s, t("2026-01-01T00:00:00Z")).unwrap_err();
    assert!(matches!(e, ScheduleError::IntervalTooShort { gap_secs: 5, min_secs: 10, .. }), "{e}");
    // ... but not when the minutes are far apart.
    assert!(validate_at_creation(&parse("0,55 0 * * * ?").unwrap(), t("2026-01-01T00:00:00Z")).is_ok());
}

#[test]
fn errors_point_at_the_bad_field() {
    let cases = [
        ("0 0 25 * * ?", "cron hour field \"25\": 25 is outside 0..23"),
        ("0 61 * * * ?", "cron minute field \"61\": 61 is outside 0..59"),
        ("60 * * * * ?", "cron second field \"60\": 60 is outside 0..59"),
        ("0 0 0 32 * ?", "cron day-of-month field \"32\": 32 is outside 1..31"),
        ("0 0 0 * 13 ?", "cron month field \"13\": 13 is outside 1..12"),
        ("0 0 0 ? * 8", "cron day-of-week field \"8\": 8 is outside 0..7"),
        ("0 0 0 ? * FUNDAY", "cron day-of-week field \"FUNDAY\": \"FUNDAY\" is not a number from 0 to 7 or a name SUN..SAT"),
        ("0 0 0 1 JANUARI ?", "cron month field \"JANUARI\""),
        ("0 0 0 * * ? 1969", "cron year field \"1969\": 1969 is outside 1970..2099"),
        ("0 0 0 * * ? 2100", "cron year field \"2100\""),
        ("0 ? 0 * * ?", "cron minute field \"?\": '?' is only allowed in the day-of-month and day-of-week fields"),
        ("0 0 001 * * ?", "cron hour field \"001\": \"001\" has too many digits"),
        ("0 0 5-2 * * ?", "cron hour field \"5-2\": range 5-2 runs backwards"),
        ("0 0 */0 * * ?", "cron hour field \"*/0\": step '/0' must be a whole number from 1 to 23"),
        ("0 0 1,,2 * * ?", "cron hour field \"1,,2\": empty list entry"),
        ("0 0 0 LW * ?", "cron day-of-month field \"LW\": 'LW'"),
        ("0 0 0 ? * 5#6", "cron day-of-week field \"5#6\": '#6': the week of the month must be 1 to 5"),
        ("0 0 0 * *", "cron expression has 5 fields"),
        ("0 0 0 * * ? 2027 UTC extra", "cron expression has 9 fields"),
        ("every five minutes", "cron expression has 3 fields"),
        ("0 0 0 * * ? Asia/Nowhere", "time zone \"Asia/Nowhere\""),
        ("0 0 0 * * ? 2027 GMT+08:00", "no leading zero"),
        ("0 0 0 * * ? PST", "time zone \"PST\""),
    ];
    for (expr, want) in cases {
        let got = err(expr);
        assert!(got.starts_with(want) || got.contains(want), "{expr}: got {got:?}, want {want:?}");
    }
}

#[test]
fn dom_and_dow_both_set_match_either() {
    // Vixie/cronexpr semantics: the 13th OR any Friday. 2026-02-06 is a Friday.
    assert_eq!(
        fires("0 0 0 13 * FRI", "2026-02-01T00:00:00Z", 3),
        ["2026-02-06T00:00:00Z", "2026-02-13T00:00:00Z", "2026-02-20T00:00:00Z"].map(t)
    );
}

#[test]
fn next_after_is_strict_and_ignores_subseconds() {
    let s = parse("0 0 12 * * ?").unwrap();
    assert_eq!(s.next_after(t("2026-01-01T12:00:00Z")), Some(t("2026-01-02T12:00:00Z")));
    assert_eq!(s.next_after(t("2026-01-01T11:59:59.900Z")), Some(t("2026-01-01T12:00:00Z")));
}
