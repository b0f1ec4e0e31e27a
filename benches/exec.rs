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

#[cfg(unix)]
fn main() {
    let n: usize = std::env::var("DECKHAND_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(200).clamp(10, 100_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    // The default script root, and one on tmpfs to show what the file system costs.
    let shm = std::path::Path::new("/dev/shm").is_dir().then(|| format!("/dev/shm/deckhand-bench-{}", std::process::id()));
    let engine_spec = |root: Option<&String>| RunSpec {
        script_root: root.map(Into::into),
        ..RunSpec::new("bench", deckhand::lifecycle::CommandType::RunShellScript, "true")
    };

    // Warm up both paths (page cache, first-spawn costs).
    for _ in 0..5 {
        Command::new("sh").args(["-c", "true"]).stdout(Stdio::null()).status().expect("sh");
        rt.block_on(run(engine_spec(None), CancellationToken::new(), None));
    }

    let mut bare = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let s = Command::new("sh").args(["-c", "true"]).stdout(Stdio::null()).status().expect("sh");
        bare.push(t.elapsed());
        assert!(s.success());
    }
    // Decomposition: the same spawn through tokio, then with a pre_exec hook
    // (which makes std fork() instead of using posix_spawn/vfork).
    let mut tokio_plain = Vec::with_capacity(n);
    let mut tokio_hook = Vec::with_capacity(n);
    for hook in [false, true] {
        for _ in 0..n {
            let mut c = tokio::process::Command::new("sh");
            c.args(["-c", "true"]).stdout(Stdio::null());
            if hook {
                // SAFETY: setsid is async-signal-safe.
                unsafe {
                    c.pre_exec(|| {
                        nix::libc::setsid();
                        Ok(())
                    });
                }
            }
            let t = Instant::now();
            let s = rt.block_on(async { c.spawn().expect("sh").wait().await.expect("wait") });
            if hook {
                tokio_hook.push(t.elapsed())
            } else {
                tokio_plain.push(t.elapsed())
            }
            assert!(s.success());
        }
    }
    let engine_run = |root: Option<&String>| {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let o = rt.block_on(run(engine_spec(root), CancellationToken::new(), None));
            v.push(t.elapsed());
            assert_eq!((o.termination, o.exit_code), (Termination::Exited, Some(0)), "{o:?}");
        }
        v
    };
    let engine = engine_run(None);
    let engine_shm = shm.as_ref().map(|r| engine_run(Some(r)));
    if let Some(r) = &shm {
        let _ = std::fs::remove_dir_all(r);
    }

    let (bm, bp) = stats(bare);
    let (em, ep) = stats(engine);
    let (tm, tp) = stats(tokio_plain);
    let (hm, hp) = stats(tokio_hook);
    println!("exec bench, {n} runs each");
    println!("  bare `sh -c true`     mean {:>9.3?}  p50 {:>9.3?}", bm, bp);
    println!("  tokio spawn+wait      mean {:>9.3?}  p50 {:>9.3?}", tm, tp);
    println!("  + pre_exec(setsid)    mean {:>9.3?}  p50 {:>9.3?}", hm, hp);
    println!("  exec::run, default    mean {:>9.3?}  p50 {:>9.3?}", em, ep);
    if let Some(v) = engine_shm {
        let (sm, sp) = stats(v);
        println!("  same, root on tmpfs   mean {:>9.3?}  p50 {:>9.3?}", sm, sp);
    }
    println!("  overhead per run      mean {:>9.3?}  p50 {:>9.3?}", em.saturating_sub(bm), ep.saturating_sub(bp));
    println!(
        "  ratio engine/bare     mean {:.2}x      p50 {:.2}x",
        em.as_secs_f64() / bm.as_secs_f64(),
        ep.as_secs_f64() / bp.as_secs_f64()
    );
}

#[cfg(not(unix))]
fn main() {
    println!("the exec bench compares against `sh -c true` and needs a Unix host");
}
