//! `deckhand run` on a fleet (issue #16, docs/fleet.md): follows one
//! invocation's per-state counts (DescribeInvocations' `StatusCounts`,
//! kept by the hub, so a poll costs the same for ten targets or ten
//! thousand) and shows them live: a bar with counts per state and an ETA
//! on a terminal, one plain line per change otherwise, and each failure's
//! first line as it happens. `--json` prints one summary object at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::show::{items, s};
use super::{CliError, Client};
use crate::lifecycle::{InvocationStatus, Outcome};

/// Poll interval: the counts are one row read on the hub.
const POLL: Duration = Duration::from_millis(500);
/// Failures printed one by one; beyond this only their count is shown.
const MAX_FAILURES_SHOWN: usize = 50;
/// Longest first line shown for a failure (characters).
const FIRST_LINE_CHARS: usize = 120;

/// What the follower knows after a poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: i64,
    pub counts: BTreeMap<InvocationStatus, i64>,
}

impl Progress {
    /// From a DescribeInvocations item (unknown status names are skipped:
    /// a newer hub may add some).
    pub fn from_invocation(inv: &Value) -> Progress {
        let mut counts = BTreeMap::new();
        if let Some(m) = inv.get("StatusCounts").and_then(Value::as_object) {
            for (k, v) in m {
                if let (Ok(st), Some(n)) = (InvocationStatus::parse(k), v.as_i64())
                    && n > 0
                {
                    counts.insert(st, n);
                }
            }
        }
        Progress { total: inv.get("TargetCount").and_then(Value::as_i64).unwrap_or(0), counts }
    }

    pub fn settled(&self) -> i64 {
        self.counts.iter().filter(|(s, _)| s.is_final()).map(|(_, n)| n).sum()
    }

    pub fn done(&self) -> bool {
        self.total > 0 && self.settled() >= self.total
    }

    fn get(&self, s: InvocationStatus) -> i64 {
        self.counts.get(&s).copied().unwrap_or(0)
    }

    /// `Success 40 · Running 10 · Pending 48 · Failed 2`, non-zero only,
    /// in the lifecycle's order.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self.counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
        if parts.is_empty() { "waiting".to_string() } else { parts.join(" · ") }
    }

    /// Remaining time at the rate so far; `None` before anything settled.
    pub fn eta(&self, elapsed: Duration) -> Option<Duration> {
        let settled = self.settled();
        if settled <= 0 || self.total <= settled {
            return None;
        }
        let per = elapsed.as_secs_f64() / settled as f64;
        Some(Duration::from_secs_f64(per * (self.total - settled) as f64))
    }
}

/// The statuses whose instances are reported as failures, one line each.
fn failure_statuses() -> Vec<InvocationStatus> {
    InvocationStatus::ALL.iter().copied().filter(|s| s.outcome() == Some(Outcome::Failed)).collect()
}

/// The first line of a result's output, or its ErrorInfo when it printed nothing.
fn first_line(r: &Value) -> String {
    let out = s(r, "Output");
    let line = out.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let line = if line.is_empty() { s(r, "ErrorInfo") } else { line.to_string() };
    line.chars().take(FIRST_LINE_CHARS).collect()
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Where progress goes: a bar on a terminal, plain lines elsewhere,
/// nothing under `--json`.
enum Display {
    Bar(indicatif::ProgressBar),
    Plain { last: String },
    Quiet,
}

impl Display {
    fn new(json: bool) -> Display {
        if json {
            return Display::Quiet;
        }
        if !std::io::stdout().is_terminal() {
            return Display::Plain { last: String::new() };
        }
        let bar = indicatif::ProgressBar::new(0);
        let style =
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} settled  {msg}  ETA {eta}")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Display::Bar(bar)
    }

    fn update(&mut self, p: &Progress, elapsed: Duration) {
        match self {
            Display::Bar(bar) => {
                bar.set_length(p.total.max(0) as u64);
                bar.set_position(p.settled().max(0) as u64);
                bar.set_message(p.summary());
            }
            Display::Plain { last } => {
                let line = format!("{}/{} settled: {}", p.settled(), p.total, p.summary());
                if *last != line {
                    let eta = p.eta(elapsed).map(|d| format!(" (ETA {})", fmt_secs(d))).unwrap_or_default();
                    println!("[{}] {line}{eta}", fmt_secs(elapsed));
                    *last = line;
                }
            }
            Display::Quiet => {}
        }
    }

    fn line(&self, text: &str) {
        match self {
            Display::Bar(bar) => bar.println(text),
            Display::Plain { .. } => println!("{text}"),
            Display::Quiet => {}
        }
    }

    fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish();
        }
    }
}

/// How a followed rollout ended.
pub struct Followed {
    /// 0 when every target succeeded, else 1.
    pub code: i32,
    /// `InvokeId`, `TargetCount`, `StatusCounts`, `Failures`,
    /// `ElapsedSeconds`: what `--json` prints (the caller prints it, and
    /// may add to it).
    pub summary: Value,
}

/// What is followed: a command's invocation, or a file delivery (whose
/// counts come from DescribeSendFileResults, and whose failures are its
/// listed `InvokeInstances`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowKind {
    Command,
    File,
}

/// Follows `invoke_id` until every target settled (or `give_up`).
pub fn follow(client: &Client, json_out: bool, invoke_id: &str, give_up: Instant) -> Result<Followed, CliError> {
    follow_kind(client, json_out, invoke_id, give_up, FollowKind::Command)
}

/// Failures of status `st` of a followed invocation, as result objects.
fn failures_of(client: &Client, invoke_id: &str, inv: &Value, st: InvocationStatus, kind: FollowKind) -> Result<Vec<Value>, CliError> {
    if kind == FollowKind::File {
        let list = items(inv, "InvokeInstances", "InvokeInstance");
        return Ok(list.into_iter().filter(|r| s(r, "InvocationStatus") == st.as_str()).cloned().collect());
    }
    let r = client.call(
        "DescribeInvocationResults",
        &[
            ("InvokeId", invoke_id.to_string()),
            ("InvocationStatus", st.as_str().to_string()),
            ("ContentEncoding", "PlainText".into()),
            ("PageSize", "50".into()),
        ],
    )?;
    let inner = r.get("Invocation").cloned().unwrap_or(Value::Null);
    Ok(items(&inner, "InvocationResults", "InvocationResult").into_iter().cloned().collect())
}

pub fn follow_kind(client: &Client, json_out: bool, invoke_id: &str, give_up: Instant, kind: FollowKind) -> Result<Followed, CliError> {
    let started = Instant::now();
    let mut display = Display::new(json_out);
    let mut seen: BTreeMap<InvocationStatus, i64> = BTreeMap::new();
    let mut shown: BTreeSet<String> = BTreeSet::new();
    let mut failures: Vec<Value> = Vec::new();
    let progress = loop {
        let action = if kind == FollowKind::File { "DescribeSendFileResults" } else { "DescribeInvocations" };
        let v = client.call(action, &[("InvokeId", invoke_id.to_string())])?;
        let inv = items(&v, "Invocations", "Invocation").first().cloned().cloned().unwrap_or(Value::Null);
        let p = Progress::from_invocation(&inv);
        display.update(&p, started.elapsed());
        // New failures since the last poll: fetch only the statuses whose count grew.
        for st in failure_statuses() {
            if p.get(st) <= seen.get(&st).copied().unwrap_or(0) || failures.len() >= MAX_FAILURES_SHOWN {
                continue;
            }
            for res in &failures_of(client, invoke_id, &inv, st, kind)? {
                let id = s(res, "InstanceId");
                if failures.len() >= MAX_FAILURES_SHOWN || !shown.insert(id.clone()) {
                    continue;
                }
                let line = first_line(res);
                display.line(&format!("✗ {id} {st}: {line}"));
                failures.push(
                    json!({ "InstanceId": id, "InvocationStatus": st.as_str(), "ErrorCode": s(res, "ErrorCode"), "FirstLine": line }),
                );
            }
            seen.insert(st, p.get(st));
        }
        if p.done() {
            break p;
        }
        if Instant::now() > give_up {
            display.finish();
            return Err(CliError::Usage(format!("gave up waiting for {invoke_id}; see `deckhand results {invoke_id}`")));
        }
        std::thread::sleep(POLL);
    };
    display.finish();
    let ok = progress.get(InvocationStatus::Success) == progress.total;
    let failed_total: i64 = failure_statuses().iter().map(|s| progress.get(*s)).sum();
    let counts: serde_json::Map<String, Value> = progress.counts.iter().map(|(s, n)| (s.as_str().to_string(), Value::from(*n))).collect();
    let summary = json!({
        "InvokeId": invoke_id,
        "TargetCount": progress.total,
        "StatusCounts": counts,
        "Failures": failures,
        "ElapsedSeconds": started.elapsed().as_secs_f64(),
    });
    if !json_out {
        if failed_total as usize > failures.len() {
            println!("… {} more failures: deckhand results {invoke_id}", failed_total as usize - failures.len());
        }
        println!(
            "{invoke_id}: {} of {} targets in {}: {}",
            progress.settled(),
            progress.total,
            fmt_secs(started.elapsed()),
            progress.summary()
        );
    }
    Ok(Followed { code: if ok { 0 } else { 1 }, summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_eta_and_first_lines() {
        let inv = json!({"TargetCount": 10, "StatusCounts": {"Success": 4, "Failed": 1, "Running": 2, "Pending": 3, "Stopping": 0, "NewState": 7}});
        let p = Progress::from_invocation(&inv);
        assert_eq!((p.total, p.settled(), p.done()), (10, 5, false));
        assert_eq!(p.summary(), "Pending 3 · Running 2 · Success 4 · Failed 1");
        assert_eq!(p.eta(Duration::from_secs(10)), Some(Duration::from_secs(10)));
        assert_eq!(Progress::default().eta(Duration::from_secs(3)), None);
        assert!(Progress::from_invocation(&json!({"TargetCount": 1, "StatusCounts": {"Cancelled": 1}})).done());
        assert_eq!(first_line(&json!({"Output": "\n  boom: disk full\nmore", "ErrorInfo": "x"})), "boom: disk full");
        assert_eq!(
            first_line(&json!({"Output": "", "ErrorInfo": "the command execution has been timeout"})),
            "the command execution has been timeout"
        );
        assert_eq!(first_line(&json!({"Output": "é".repeat(500)})).chars().count(), FIRST_LINE_CHARS);
        assert_eq!(fmt_secs(Duration::from_secs(3725)), "1h02m");
    }
}
