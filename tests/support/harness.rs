//! Test harness: real `deckhand-hub` and `deckhand-agent` processes on
//! 127.0.0.1 with real TLS (a CA generated per test), a real SQLite file,
//! and the real signed API client.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deckhand::cli::{CliError, Client, ClientConfig};
use serde_json::Value;

pub const AK_ID: &str = "LTAItestkey0001";
pub const AK_SECRET: &str = "test-secret-0001";

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Appends, so a restarted process's log follows the previous one.
fn log_file(dir: &Path, name: &str) -> Stdio {
    Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).expect("log file"))
}

pub struct Hub {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub ca: PathBuf,
    extra: Vec<String>,
    port: u16,
    /// The hub binary: this build's, or an older release's (upgrade tests).
    pub bin: PathBuf,
}

impl Hub {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Another replica: same certificates as `first` (agents pin one CA),
    /// its own process, data dir and port.
    pub fn start_replica(first: &Hub, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in ["ca.pem", "hub.pem", "hub-key.pem"] {
            std::fs::copy(first.dir.path().join(f), dir.path().join(f)).expect("copy pki");
        }
        Self::start_in(dir, extra)
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), extra)
    }

    /// Like [`Hub::start_with`], `prepare` first given the directory whose
    /// `data/` the hub will use (e.g. to mount a small filesystem there).
    pub fn start_prepared(prepare: impl FnOnce(&Path), extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(dir.path());
        Self::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_binary(PathBuf::from(env!("CARGO_BIN_EXE_deckhand-hub")), dir, extra)
    }

    /// Starts `bin` (another release's hub) on `dir` (its `data/` may hold
    /// a store prepared by the caller).
    pub fn start_binary(bin: PathBuf, dir: tempfile::TempDir, extra: &[&str]) -> Self {
        deckhand::tls::install_crypto_provider();
        let pki = deckhand::tls::ensure_dev_pki(dir.path()).expect("pki");
        let mut hub = Self {
            child: None,
            url: String::new(),
            ca: pki.ca_cert,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            port: 0,
            bin,
        };
        hub.spawn();
        hub
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let addr_file = d.join("addr");
        let _ = std::fs::remove_file(&addr_file);
        let listen = format!("127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .args(["--listen", &listen, "--data-dir"])
            .arg(d.join("data"))
            .arg("--tls-cert")
            .arg(d.join("hub.pem"))
            .arg("--tls-key")
            .arg(d.join("hub-key.pem"))
            .arg("--addr-file")
            .arg(&addr_file)
            .args(["--access-key", &format!("{AK_ID}:{AK_SECRET}")])
            .args(&self.extra)
            .env("DECKHAND_LOG", "info,deckhand=debug")
            .stdout(Stdio::null())
            .stderr(log_file(d, "hub.log"))
            .spawn()
            .expect("spawn hub");
        self.child = Some(child);
        let url =
            wait_until("hub address file", Duration::from_secs(20), || std::fs::read_to_string(&addr_file).ok().filter(|s| !s.is_empty()));
        self.port = url.rsplit(':').next().unwrap().parse().unwrap();
        self.url = url;
    }

    pub fn client(&self) -> Client {
        Client::new(ClientConfig {
            endpoint: self.url.clone(),
            access_key_id: AK_ID.into(),
            access_key_secret: AK_SECRET.into(),
            ca_file: Some(self.ca.clone()),
        })
        .expect("client")
    }

    pub fn call(&self, action: &str, params: &[(&str, &str)]) -> Result<Value, CliError> {
        let p: Vec<(&str, String)> = params.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.client().call(action, &p)
    }

    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// The running hub's process id.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("hub running")
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        terminate_child(&mut self.child)
    }

    /// Same data dir, same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default()
    }

    /// An agent of this hub, online, and its instance id.
    pub fn online_agent(&self) -> (Agent, String) {
        let a = self.agent();
        let id = a.instance_id();
        self.wait_online(&id);
        (a, id)
    }

    /// Creates an activation and starts an agent registered with it.
    pub fn agent(&self) -> Agent {
        self.agent_via(&self.url.clone())
    }

    /// Like [`Hub::agent`], the agent given `hub_urls` (comma-separated
    /// replicas) instead of this hub's URL.
    pub fn agent_via(&self, hub_urls: &str) -> Agent {
        self.agent_binary(hub_urls, PathBuf::from(env!("CARGO_BIN_EXE_deckhand-agent")))
    }

    /// `n` agents registered through this hub, spread over `replicas`:
    /// agent i dials `replicas[i % len]` first and knows the others, in
    /// turn after it.
    pub fn agents_across(&self, replicas: &[&Hub], n: usize) -> Vec<Agent> {
        let urls: Vec<&str> = replicas.iter().map(|h| h.url.as_str()).collect();
        let k = urls.len().max(1);
        (0..n).map(|i| self.agent_via(&(0..k).filter_map(|j| urls.get((i + j) % k).copied()).collect::<Vec<_>>().join(","))).collect()
    }

    /// A newly registered agent running `bin` (another release's agent).
    pub fn agent_binary(&self, hub_urls: &str, bin: PathBuf) -> Agent {
        let mut a = self.agent_unstarted(hub_urls, bin);
        a.spawn();
        a.instance_id();
        a
    }

    /// An agent with an activation of its own, not yet started: set
    /// `extra`/`env`, then [`Agent::spawn`].
    pub fn agent_unstarted(&self, hub_urls: &str, bin: PathBuf) -> Agent {
        let v = self.call("CreateActivation", &[("InstanceCount", "1")]).expect("activation");
        let id = v["ActivationId"].as_str().unwrap().to_string();
        let code = v["ActivationCode"].as_str().unwrap().to_string();
        Agent {
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            hub_url: hub_urls.to_string(),
            ca: self.ca.clone(),
            activation: Some((id, code)),
            extra: vec![],
            env: vec![],
            bin,
        }
    }

    pub fn wait_online(&self, instance_id: &str) {
        wait_until(&format!("{instance_id} online"), Duration::from_secs(20), || {
            let v = self.call("DescribeCloudAssistantStatus", &[("InstanceId.1", instance_id)]).ok()?;
            let s = v["InstanceCloudAssistantStatusSet"]["InstanceCloudAssistantStatus"][0]["CloudAssistantStatus"].as_str()?.to_string();
            (s == "true").then_some(())
        })
    }

    /// Waits until the hub has seen the agent's session end.
    pub fn wait_offline(&self, instance_id: &str) {
        wait_until(&format!("{instance_id} offline"), Duration::from_secs(20), || {
            let v = self.call("DescribeCloudAssistantStatus", &[("InstanceId.1", instance_id)]).ok()?;
            let s = v["InstanceCloudAssistantStatusSet"]["InstanceCloudAssistantStatus"][0]["CloudAssistantStatus"].as_str()?.to_string();
            (s == "false").then_some(())
        })
    }

    /// RunCommand with sensible defaults; returns the invoke id.
    pub fn run(&self, script: &str, instances: &[&str], extra: &[(&str, &str)]) -> String {
        let keys: Vec<String> = (1..=instances.len()).map(|i| format!("InstanceId.{i}")).collect();
        let mut p: Vec<(&str, &str)> = vec![("Type", "RunShellScript"), ("CommandContent", script)];
        for (k, v) in keys.iter().zip(instances) {
            p.push((k.as_str(), v));
        }
        p.extend_from_slice(extra);
        let v = self.call("RunCommand", &p).expect("RunCommand");
        v["InvokeId"].as_str().unwrap().to_string()
    }

    /// Waits until every target of the invocation is final; returns results.
    pub fn wait_final(&self, invoke_id: &str, timeout: Duration) -> Vec<Value> {
        wait_until(&format!("{invoke_id} final"), timeout, || {
            let v = self.call("DescribeInvocationResults", &[("InvokeId", invoke_id), ("PageSize", "50")]).ok()?;
            let list = v["Invocation"]["InvocationResults"]["InvocationResult"].as_array()?.clone();
            let done = !list.is_empty()
                && list.iter().all(|r| matches!(r["InvokeRecordStatus"].as_str(), Some("Finished" | "Failed" | "Stopped")));
            done.then_some(list)
        })
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- hub log ----\n{}", self.log());
        }
        self.kill();
    }
}

pub fn output_of(r: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(r["Output"].as_str().unwrap_or("")).unwrap()
}

pub struct Agent {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    hub_url: String,
    ca: PathBuf,
    activation: Option<(String, String)>,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The agent binary: this build's, or an older release's.
    pub bin: PathBuf,
}

impl Agent {
    pub fn spawn(&mut self) {
        let d = self.dir.path();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["run", "--hub", &self.hub_url, "--state-dir"])
            .arg(d.join("state"))
            .arg("--ca-file")
            .arg(&self.ca)
            // Fast reconnects in tests, unless the test sets its own cap.
            .args(if self.extra.iter().any(|a| a == "--backoff-cap-secs") { &[][..] } else { &["--backoff-cap-secs", "1"][..] })
            .args(&self.extra)
            .env("DECKHAND_LOG", "info,deckhand=debug")
            // The machine's own proxy settings must not reach test agents.
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("no_proxy")
            .env_remove("NO_PROXY")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(d.join("agent.log")).unwrap()));
        if let Some((id, code)) = &self.activation {
            cmd.args(["--activation-id", id, "--activation-code", code]);
        }
        self.child = Some(cmd.spawn().expect("spawn agent"));
    }

    /// An agent already registered: its state directory (identity,
    /// journal) is copied from `state`; `bin` is the agent binary to run.
    pub fn with_state(hub: &Hub, state: &Path, bin: PathBuf) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(state, &dir.path().join("state"));
        // A checkout does not keep the credential file's 0600; the agent
        // expects it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir.path().join("state/identity.json"), std::fs::Permissions::from_mode(0o600));
        }
        let mut a =
            Agent { child: None, dir, hub_url: hub.url.clone(), ca: hub.ca.clone(), activation: None, extra: vec![], env: vec![], bin };
        a.spawn();
        a
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn instance_id(&self) -> String {
        let path = self.state_dir().join("identity.json");
        wait_until("agent identity", Duration::from_secs(20), || {
            let v: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
            Some(v["instance_id"].as_str()?.to_string())
        })
    }

    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        terminate_child(&mut self.child)
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Pids of the run supervisors that started a script (from each run
    /// directory's `ran` file); runs outlive the agent process.
    /// Only live supervisors: a finished run's directory may name a pid
    /// that has since been reused by an unrelated process.
    pub fn supervisor_pids(&self) -> Vec<u32> {
        let Ok(rd) = std::fs::read_dir(self.state_dir().join("runs")) else { return vec![] };
        rd.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("ran")).ok()?.trim().parse().ok())
            .filter(|pid: &u32| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"__supervise"))
            })
            .collect()
    }

    /// SIGKILL to every run supervisor: what a reboot does to them.
    pub fn kill_supervisors(&self) {
        for pid in self.supervisor_pids() {
            unsafe_kill(pid, "KILL");
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.log());
        }
        self.kill();
        // A supervisor's SIGTERM is a stop: it ends its script's tree too.
        for pid in self.supervisor_pids() {
            unsafe_kill(pid, "TERM");
        }
    }
}

/// Sends a signal with the system `kill` command (no libc in tests).
pub fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status();
}

/// SIGKILL (if running) and reap.
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// SIGTERM and wait up to 20 s for a graceful exit.
fn terminate_child(child: &mut Option<Child>) -> std::process::ExitStatus {
    let mut c = child.take().expect("running");
    unsafe_kill(c.id(), "TERM");
    wait_exit(&mut c, Duration::from_secs(20))
}

fn wait_exit(c: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    wait_until("process exit", timeout, || c.try_wait().ok().flatten())
}

/// Copies a directory tree (fixtures into a test's own temporary directory).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy fixture file");
        }
    }
}
