//! The hub's operational figures, served at `/metrics` in the OpenMetrics
//! text format that Prometheus scrapes (docs/operations.md lists them).
//!
//! Owns the one registry of the process: other rooms call [`get`] and bump
//! a counter; nothing else registers or renders a metric. Every label
//! takes its value from a closed set (API actions this hub serves, error
//! code classes, directions, lifecycle statuses), so no input can grow the
//! number of series. Figures that are a state rather than an event (agents
//! connected, invocations and targets by state) are read when scraped.
//!
//! Who may scrape (decided here, documented in docs/operations.md): with
//! `metrics_token` set in hub.toml, only a request carrying
//! `Authorization: Bearer <token>`; without it, only loopback peers.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Hub;
use crate::lifecycle::{InvocationOverall, InvocationStatus};

/// Error code classes longer than this are counted as `Other` (codes are
/// the hub's own, but a bound costs nothing).
const MAX_CODE_LABEL: usize = 48;

/// Direction of a WebSocket frame, from the hub's side.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    action: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, 100 µs to ~3.3 s: an API call or a group commit.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The one registry and every figure in it.
pub struct Metrics {
    registry: Registry,
    agents_connected: Gauge,
    api_waiting: Gauge,
    invocations: Family<StateLabel, Gauge>,
    targets: Family<StateLabel, Gauge>,
    results_stored: Counter,
    batch_ops: Histogram,
    batch_seconds: Histogram,
    ws_frames: Family<DirectionLabel, Counter>,
    ws_bytes: Family<DirectionLabel, Counter>,
    live_dropped: Counter,
    api_calls: Family<ApiLabels, Counter>,
    api_seconds: HistogramFamily<ActionLabel>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's figures (one hub per process; an in-process test or bench
/// that starts several hubs sees their sum).
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut m = Self {
            agents_connected: Gauge::default(),
            api_waiting: Gauge::default(),
            invocations: Family::default(),
            targets: Family::default(),
            results_stored: Counter::default(),
            batch_ops: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            batch_seconds: latency_histogram(),
            ws_frames: Family::default(),
            ws_bytes: Family::default(),
            live_dropped: Counter::default(),
            api_calls: Family::default(),
            api_seconds: Family::new_with_constructor(latency_histogram),
            registry: Registry::with_prefix("deckhand_hub"),
        };
        let registry = &mut m.registry;
        registry.register("agents_connected", "Agents holding a session on this hub", m.agents_connected.clone());
        registry.register(
            "api_waiting_calls",
            "DescribeInvocationResults calls holding their answer for a change (WaitSeconds)",
            m.api_waiting.clone(),
        );
        registry.register("invocations", "Invocations in the store by InvocationStatus (read when scraped)", m.invocations.clone());
        registry.register("targets", "Targets in the store by per-instance InvocationStatus (read when scraped)", m.targets.clone());
        registry.register("results_stored", "Final results of runs committed to the store", m.results_stored.clone());
        registry.register("store_batch_operations", "Operations per group-commit transaction", m.batch_ops.clone());
        registry.register("store_batch_seconds", "Time to apply and commit one group-commit transaction", m.batch_seconds.clone());
        registry.register("websocket_frames", "Agent WebSocket data frames", m.ws_frames.clone());
        registry.register("websocket_bytes", "Payload bytes of agent WebSocket data frames", m.ws_bytes.clone());
        registry.register("live_output_dropped", "Live output chunks dropped by a memory bound", m.live_dropped.clone());
        registry.register("api_calls", "OpenAPI calls by action and result code class", m.api_calls.clone());
        registry.register("api_call_seconds", "OpenAPI call latency by action", m.api_seconds.clone());
        m
    }

    /// A run's final result was committed (not a duplicate or refusal).
    pub fn result_stored(&self) {
        self.results_stored.inc();
    }

    /// One group-commit transaction of `ops` operations took `took`.
    pub fn batch(&self, ops: usize, took: Duration) {
        self.batch_ops.observe(ops as f64);
        self.batch_seconds.observe(took.as_secs_f64());
    }

    /// One agent WebSocket data frame of `bytes` payload bytes.
    pub fn frame(&self, direction: Direction, bytes: usize) {
        let l = DirectionLabel {
            direction: match direction {
                Direction::In => "in",
                Direction::Out => "out",
            },
        };
        self.ws_frames.get_or_create(&l).inc();
        self.ws_bytes.get_or_create(&l).inc_by(bytes as u64);
    }

    pub fn live_output_dropped(&self) {
        self.live_dropped.inc();
    }

    /// One API call: `action` as the caller named it (counted as `Other`
    /// unless this hub serves it), its error code (`None`: success).
    pub fn api_call(&self, action: Option<&str>, code: Option<&str>, took: Duration) {
        let action = action.and_then(super::api::served_action).unwrap_or("Other");
        let code = match code {
            None => "OK".to_string(),
            Some(c) => code_class(c),
        };
        self.api_calls.get_or_create(&ApiLabels { action, code }).inc();
        self.api_seconds.get_or_create(&ActionLabel { action }).observe(took.as_secs_f64());
    }

    /// The figures read when scraped, then the whole registry as text.
    async fn render(&self, hub: &Hub) -> Result<String, super::store::StoreError> {
        self.agents_connected.set(hub.agents.count() as i64);
        self.api_waiting.set(hub.changes.waiting() as i64);
        let s = hub.store.state_counts().await?;
        for st in InvocationOverall::ALL {
            let n = s.invocations.iter().find(|(x, _)| x == st).map_or(0, |(_, n)| *n);
            self.invocations.get_or_create(&StateLabel { state: st.as_str() }).set(n);
        }
        for st in InvocationStatus::ALL {
            self.targets.get_or_create(&StateLabel { state: st.as_str() }).set(s.targets.get(*st));
        }
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        Ok(out)
    }
}

/// `InvalidParameter.InstanceId` → `InvalidParameter`: the class bounds the
/// series; the full code is in the audit trail and the logs.
fn code_class(code: &str) -> String {
    let class = code.split('.').next().unwrap_or_default();
    if class.is_empty() || class.len() > MAX_CODE_LABEL || !class.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return "Other".to_string();
    }
    class.to_string()
}

/// May this request read the figures? (See the module comment.)
fn allowed(hub: &Hub, peer: std::net::SocketAddr, headers: &HeaderMap) -> bool {
    match &hub.config.metrics_token {
        Some(token) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| super::agents::constant_time_eq(t, token)),
        None => peer.ip().is_loopback(),
    }
}

/// `GET /metrics`.
pub async fn scrape(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(super::server::Peer(peer, _)): ConnectInfo<super::server::Peer>,
    headers: HeaderMap,
) -> Response {
    if !allowed(&hub, peer, &headers) {
        return (StatusCode::FORBIDDEN, "metrics are served to loopback peers, or with the bearer token set as metrics_token\n")
            .into_response();
    }
    match get().render(&hub).await {
        Ok(body) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read the store");
            (StatusCode::SERVICE_UNAVAILABLE, "the hub cannot read its store right now\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_classes_are_bounded() {
        assert_eq!(code_class("InvalidParameter.InstanceId"), "InvalidParameter");
        assert_eq!(code_class("ServiceUnavailable"), "ServiceUnavailable");
        assert_eq!(code_class("bad label\"{}"), "Other");
        assert_eq!(code_class(&"A".repeat(MAX_CODE_LABEL + 1)), "Other");
        assert_eq!(code_class(""), "Other");
    }

    #[test]
    fn unknown_actions_share_one_series() {
        let m = get();
        m.api_call(Some("NoSuchAction-x"), Some("InvalidAction.NotFound"), Duration::from_millis(1));
        m.api_call(Some("RunCommand"), None, Duration::from_millis(1));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        assert!(!out.contains("NoSuchAction"), "{out}");
        assert!(out.contains(r#"deckhand_hub_api_calls_total{action="Other",code="InvalidAction"}"#), "{out}");
        assert!(out.contains(r#"deckhand_hub_api_calls_total{action="RunCommand",code="OK"}"#), "{out}");
    }
}
