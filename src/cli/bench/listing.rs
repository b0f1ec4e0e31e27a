//! `deckhand bench listing`: the cost of one DescribeInvocations page as
//! invocations grow targets. The hub keeps each invocation's counts per
//! state on its row, so a page of 50 reads 50 rows plus at most
//! `MAX_INVOKE_INSTANCES` targets each: the time must not grow with the
//! number of targets. Measured on the store calls the API handler makes,
//! on a fresh store (SQLite in a temporary directory, or `--store`).

use std::time::{Duration, Instant};

use super::super::CliError;
use crate::hub::store::{InvocationFilter, InvocationRow, Page, SqlStore, Store};
use crate::lifecycle::{CommandType, InvocationOverall, InvokeStatus, RepeatMode};

/// Pages timed per size; the median is reported.
const ROUNDS: usize = 5;
/// The `InvokeInstances` cap DescribeInvocations applies.
const INSTANCES_PER_INVOCATION: i64 = 100;

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

fn invocation(id: String, n: usize) -> InvocationRow {
    InvocationRow {
        invoke_id: id.clone(),
        command_id: format!("c-{id}"),
        command_name: String::new(),
        command_type: CommandType::RunShellScript,
        content: "true".into(),
        timeout_secs: 60,
        working_dir: String::new(),
        username: String::new(),
        enable_parameter: false,
        parameters: "{}".into(),
        repeat_mode: RepeatMode::Once,
        frequency: String::new(),
        created_at: crate::hub::store::stamp(chrono::Utc::now() - chrono::Duration::seconds(n as i64)),
        client_token: String::new(),
        stop_requested: false,
        counts: Default::default(),
        window: Default::default(),
        revision: 0,
        unreachable: Vec::new(),
        file: None,
    }
}

/// One DescribeInvocations page (InvokeStatus=Pending, PageSize=50) as the
/// handler reads it; returns its time.
async fn one_page(store: &SqlStore) -> Result<Duration, CliError> {
    let t0 = Instant::now();
    let f = InvocationFilter { status: Some((Some(InvokeStatus::Pending), Some(InvocationOverall::Pending))), ..Default::default() };
    let (rows, total) = store.list_invocations(&f, Page { offset: 0, limit: 50 }).await.map_err(err)?;
    for inv in &rows {
        store.some_targets(&inv.invoke_id, INSTANCES_PER_INVOCATION, false).await.map_err(err)?;
    }
    if rows.is_empty() || total == 0 {
        return Err(err("the listing found nothing"));
    }
    Ok(t0.elapsed())
}

async fn measure(store: &SqlStore) -> Result<Duration, CliError> {
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        times.push(one_page(store).await?);
    }
    times.sort();
    Ok(times[ROUNDS / 2])
}

pub async fn run(invocations: usize, targets: usize, store_spec: Option<&str>) -> Result<(), CliError> {
    let dir = tempfile::tempdir().map_err(err)?;
    let spec = store_spec.map(str::to_string).unwrap_or_else(|| dir.path().join("bench.db").display().to_string());
    let store = SqlStore::open(&spec).await.map_err(err)?;
    // The smaller size already fills the InvokeInstances cap, so the two
    // pages read the same number of targets and differ only in how many
    // exist.
    let small = (INSTANCES_PER_INVOCATION as usize).min(targets);
    if invocations < 50 {
        // The second round's invocations are added to the first's: with
        // fewer than a page of 50, its page holds more invocations and the
        // ratio measures that, not the targets.
        println!("  (note: under 50 invocations the second page lists more invocations than the first)");
    }
    println!("listing: {invocations} invocations, one DescribeInvocations page of 50 (median of {ROUNDS})");
    let mut sizes = vec![small];
    if targets > small {
        sizes.push(targets);
    }
    let mut results = Vec::new();
    for (round, n) in sizes.iter().enumerate() {
        let ids: Vec<String> = (0..*n).map(|i| format!("mi-bench-{i:06}")).collect();
        let t0 = Instant::now();
        for k in 0..invocations {
            store.create_invocation(&invocation(format!("t-bench-{round}-{k:03}"), k), &ids, None).await.map_err(err)?;
        }
        let created = t0.elapsed();
        let page = measure(&store).await?;
        println!(
            "  {n:>6} targets each: page {:>8.2} ms   (created {} targets in {:.1} s)",
            page.as_secs_f64() * 1e3,
            n * invocations,
            created.as_secs_f64()
        );
        results.push(page);
    }
    if let [a, b] = results[..] {
        println!(
            "  ratio {:.2}x for {}x the targets (flat = kept aggregates at work)",
            b.as_secs_f64() / a.as_secs_f64().max(1e-9),
            targets / small.max(1)
        );
    }
    Ok(())
}
