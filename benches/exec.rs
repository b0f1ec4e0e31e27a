//! Engine overhead per run versus a bare `sh -c true` spawn.
//!
//! `cargo bench --bench exec` (N runs each; override with DECKHAND_BENCH_N).
//! The engine does more on purpose: a private script directory and file,
//! account lookup, a fresh session, oom_score_adj, a merged output pipe and
//! its cleanup. Prints mean and p50 of both and their ratios.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deckhand::exec::{RunSpec, Termination, run};
use tokio_util::sync::CancellationToken;

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    (mean, v[v.len() / 2])
}

fn main() {
    let n: usize =
        std::env::var("DECKHAND_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(200).clamp(10, 100_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let root = std::env::temp_dir().join(format!("deckhand-bench-{}", std::process::id()));

    // Warm up both paths (page cache, first-spawn costs).
    for _ in 0..5 {
        Command::new("sh").args(["-c", "true"]).stdout(Stdio::null()).status().expect("sh");
        rt.block_on(run(
            RunSpec { script_root: Some(root.clone()), ..RunSpec::new("bench", "RunShellScript", "true") },
            CancellationToken::new(),
            None,
        ));
    }

    let mut bare = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let s = Command::new("sh").args(["-c", "true"]).stdout(Stdio::null()).status().expect("sh");
        bare.push(t.elapsed());
        assert!(s.success());
    }
    let mut engine = Vec::with_capacity(n);
    for _ in 0..n {
        let spec = RunSpec { script_root: Some(root.clone()), ..RunSpec::new("bench", "RunShellScript", "true") };
        let t = Instant::now();
        let o = rt.block_on(run(spec, CancellationToken::new(), None));
        engine.push(t.elapsed());
        assert_eq!((o.termination, o.exit_code), (Termination::Exited, Some(0)));
    }
    let _ = std::fs::remove_dir_all(&root);

    let (bm, bp) = stats(bare);
    let (em, ep) = stats(engine);
    println!("exec bench, {n} runs each");
    println!("  bare `sh -c true`     mean {:>9.3?}  p50 {:>9.3?}", bm, bp);
    println!("  exec::run(\"true\")     mean {:>9.3?}  p50 {:>9.3?}", em, ep);
    println!("  overhead per run      mean {:>9.3?}  p50 {:>9.3?}", em.saturating_sub(bm), ep.saturating_sub(bp));
    println!(
        "  ratio engine/bare     mean {:.2}x      p50 {:.2}x",
        em.as_secs_f64() / bm.as_secs_f64(),
        ep.as_secs_f64() / bp.as_secs_f64()
    );
}
