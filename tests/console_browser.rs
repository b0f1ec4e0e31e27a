//! The web console in a real browser (issue #17): Debian's headless
//! Chromium, driven by `playwright-core` (pinned by
//! tests/console/package-lock.json), against a real `deckhand dev` (hub and
//! agent, real TLS): tests/console/console_test.js signs in, sees the dev
//! agent online, runs a script and watches its live output, stops a long
//! run, sees the invocation list update, signs out; a request without the
//! CSRF token is refused; a wrong password is refused and rate limited.
//! Screenshots of every page land in target/console-screenshots/.
//!
//! Needs `chromium` and `npm ci` in tests/console (.ci/run does both).
//! Without them the test says SKIPPED outside CI and fails in CI.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A `deckhand dev` child, killed on drop.
struct Dev(std::process::Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().map(PathBuf::from).find(|p| p.exists())
}

#[test]
fn console_in_headless_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    let browser = chromium();
    let missing = match (&browser, dir.join("node_modules/playwright-core").exists()) {
        (None, _) => Some("chromium is not installed (apt-get install chromium)"),
        (_, false) => Some("playwright-core is not installed (run `npm ci` in tests/console)"),
        _ => None,
    };
    if let Some(why) = missing {
        if std::env::var_os("CI").is_some() {
            panic!("{why}: required in CI");
        }
        eprintln!("SKIPPED: {why}");
        return;
    }
    let data = tempfile::tempdir().expect("tempdir");
    let stderr_path = data.path().join("dev.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_deckhand"))
        .args(["dev", "--listen", "127.0.0.1:0", "--no-cli-config", "--data-dir"])
        .arg(data.path().join("dev"))
        .env("HOME", data.path())
        .env("DECKHAND_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("log file"))
        .spawn()
        .expect("start deckhand dev");
    let stdout = child.stdout.take().expect("stdout");
    let dev = Dev(child);
    // The banner names the console and a sign-in; it is printed once the
    // hub listens.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut url, mut user, mut password) = (String::new(), String::new(), String::new());
    while user.is_empty() {
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            panic!("no console banner from deckhand dev; log:\n{}", std::fs::read_to_string(&stderr_path).unwrap_or_default())
        });
        if let Some(u) = line.trim().strip_prefix("console:") {
            url = u.trim().to_string();
        }
        if let Some(s) = line.trim().strip_prefix("sign in:") {
            let (u, p) = s.trim().split_once(" / ").expect("sign in: USER / PASSWORD");
            (user, password) = (u.to_string(), p.to_string());
        }
    }
    assert!(url.starts_with("https://127.0.0.1:") && url.ends_with("/console/"), "console URL in the banner: {url}");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    let out = Command::new("node")
        .arg("console_test.js")
        .current_dir(&dir)
        .env("DECKHAND_CONSOLE_URL", &url)
        .env("DECKHAND_CONSOLE_USER", &user)
        .env("DECKHAND_CONSOLE_PASSWORD", &password)
        .env("DECKHAND_SCREENSHOTS", &shots)
        .env("DECKHAND_CHROMIUM", browser.expect("checked above"))
        .output()
        .expect("run node");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    drop(dev);
    assert!(out.status.success(), "browser test failed:\n{text}\ndeckhand dev log:\n{log}");
    assert!(text.contains("checks passed"), "the browser test did not run to its end:\n{text}");
    // Dev mode starts its agent only after the hub listens.
    assert!(!log.to_lowercase().contains("connection refused"), "dev mode logged a refused connection:\n{log}");
    for page in ["01-sign-in", "03-overview", "04-instances", "05-run", "07-invocation-finished", "09-invocations", "10-schedules"] {
        assert!(shots.join(format!("{page}.png")).exists(), "screenshot {page}.png");
    }
}
