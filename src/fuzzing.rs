//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and for the
//! corpus replay test (`tests/fuzz_corpus.rs`): each takes arbitrary bytes
//! and feeds them to one parser that faces untrusted input. None may panic;
//! that is the whole assertion. docs/fuzzing.md says how to run them longer.

use serde_json::{Map, Value};

/// The targets by name, as the fuzz crate and the corpus directories name them.
/// A fuzz target: arbitrary bytes in, nothing out but the absence of a panic.
pub type Target = fn(&[u8]);

pub const TARGETS: &[(&str, Target)] = &[
    ("params", params),
    ("frequency", frequency),
    ("frame", frame),
    ("api_params", api_params),
    ("signature", signature),
    ("journal", journal),
    ("kubelet", kubelet),
];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Parameter splicing: first line the parameter name, second its value, the
/// rest the script.
pub fn params(data: &[u8]) {
    use crate::exec::params::{Builtins, ValuePolicy, custom_names, param_env, render_script};
    let t = text(data);
    let mut parts = t.splitn(3, '\n');
    let (name, value, script) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut m = Map::new();
    m.insert(name.to_string(), Value::String(value.to_string()));
    let _ = custom_names(script);
    for policy in [ValuePolicy::Any, ValuePolicy::Strict] {
        let _ = render_script(script, true, &m, &Builtins::default(), policy);
    }
    let _ = param_env(&m);
}

/// `Frequency` (rate/at/cron with zones) as the API and the agent parse it.
pub fn frequency(data: &[u8]) {
    let t = text(data);
    let now = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default();
    let _ = crate::agent::schedule::validate_frequency(&t, std::time::Duration::from_secs(60), now);
    let _ = crate::agent::schedule::parse(&t);
}

/// One WebSocket text frame, as either side decodes it; reports go through
/// the hub's bounds too.
pub fn frame(data: &[u8]) {
    use crate::protocol::{AgentMsg, HubMsg, decode};
    let t = text(data);
    if let Ok(AgentMsg::Report { report, .. }) = decode::<AgentMsg>(&t) {
        let _ = report.bounded();
    }
    let _ = decode::<HubMsg>(&t);
}

/// An API request's query string and form body (split at the first NUL).
pub fn api_params(data: &[u8]) {
    let (q, body) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let q = text(q);
    if let Ok(p) = crate::hub::api::params::Params::parse(&q, body) {
        let _ = p.list("InstanceId");
        let _ = p.int("PageSize", 1, 100);
        let _ = p.string("Name", 128);
    }
}

/// Signature verification and canonicalisation over arbitrary query,
/// headers and body: lines are `name: value` headers until an empty line,
/// then the query, then the body.
pub fn signature(data: &[u8]) {
    use crate::hub::signature::{NonceCache, RequestParts, verify};
    let t = text(data);
    let mut headers = Vec::new();
    let mut lines = t.split('\n');
    for l in lines.by_ref() {
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let query = lines.next().unwrap_or("");
    let body: Vec<u8> = lines.collect::<Vec<_>>().join("\n").into_bytes();
    let now = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default();
    for form_body in [false, true] {
        let parts = RequestParts { method: "POST", path: "/", raw_query: query, headers: &headers, body: &body, form_body };
        let _ = verify(&parts, |id| (id == "AKID").then(|| "SECRET".to_string()), &NonceCache::default(), now);
    }
    let _ = crate::hub::signature::percent_encode(&t);
}

/// The agent's journal file as found on disk, opened and replayed the way a
/// restarting agent does, every recovered invocation rendered.
pub fn journal(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    if std::fs::write(dir.path().join(crate::agent::journal::JOURNAL_FILE), data).is_err() {
        return;
    }
    if let Ok((_state, rec)) = crate::agent::state::AgentState::open(dir.path()) {
        for inv in rec.to_run.iter().chain(rec.interrupted.iter().map(|(i, _)| i)) {
            let _ = crate::exec::spec_for(inv, "i-fuzz");
        }
    }
}

/// Kubelet quantities, reservation lists, kubelet arguments and config files.
pub fn kubelet(data: &[u8]) {
    use crate::kubelet::explicit::{ExplicitSpec, parse_eviction_list, parse_resource_list};
    let t = text(data);
    let _ = crate::kubelet::quantity::Quantity::parse(&t);
    let _ = parse_resource_list("kubeReserved", &t);
    let _ = parse_eviction_list(&t);
    let _ = ExplicitSpec::from_kubelet_args(&t);
    if let Ok(v) = serde_json::from_str::<Value>(&t) {
        let _ = ExplicitSpec::from_json(&v);
    }
    let f = crate::kubelet::config::KubeletConfigFile::from_text(std::path::Path::new("/fuzz/config.yaml"), t.to_string());
    let _ = f.state();
}
