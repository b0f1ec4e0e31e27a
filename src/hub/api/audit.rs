//! The audit trail (issue #18): what is recorded for each API call, the
//! `DescribeAuditEvents` extension that reads it, and the pruner that
//! bounds it (`audit_retention_days`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::{Paging, Request};
use crate::hub::Hub;
use crate::hub::store::{AuditEvent, AuditFilter, now_str};

/// Targets kept per event: ids beyond this are counted, not listed.
const MAX_TARGETS_LISTED: usize = 100;
/// Refusal messages are kept up to this many bytes.
const MAX_DETAIL_BYTES: usize = 512;
/// How often the pruner runs.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What the dispatcher learned about a call, for its audit record.
#[derive(Debug)]
pub struct CallFacts {
    pub key_id: Option<String>,
    pub action: Option<String>,
    pub targets: Vec<String>,
    /// The caller's address.
    pub source: std::net::IpAddr,
    pub request_id: String,
    /// The handler wrote the call's success event in its own transaction
    /// ([`CallFacts::success`]; issue #21: one commit per call, not two),
    /// so [`record`] has nothing left to write.
    pub written: bool,
}

impl CallFacts {
    /// Facts of a call from `source`, answered under `request_id`.
    pub fn new(source: std::net::SocketAddr, request_id: &str) -> Self {
        Self { key_id: None, action: None, targets: Vec::new(), source: source.ip(), request_id: request_id.to_string(), written: false }
    }

    /// The success event of this call when it created `invoke_id`: what
    /// [`record`] would write afterwards, for a store write that commits it
    /// with the invocation. `None` when the call names no key or action.
    pub fn success(&self, invoke_id: &str) -> Option<AuditEvent> {
        self.event(&self.targets, "Success".into(), String::new(), invoke_id.into())
    }

    /// The one place an event is shaped (targets listed up to a bound);
    /// `None` for a call that names no key or action.
    fn event(&self, named: &[String], outcome: String, detail: String, invoke_id: String) -> Option<AuditEvent> {
        let mut targets = named.iter().take(MAX_TARGETS_LISTED).cloned().collect::<Vec<_>>().join(",");
        if named.len() > MAX_TARGETS_LISTED {
            targets.push_str(&format!(",…(+{})", named.len() - MAX_TARGETS_LISTED));
        }
        Some(AuditEvent {
            event_id: event_id(),
            at: now_str(),
            key_id: self.key_id.clone()?,
            source: self.source.to_string(),
            action: self.action.clone()?,
            targets: bounded(&targets, 8192),
            outcome,
            request_id: self.request_id.clone(),
            invoke_id,
            detail,
        })
    }
}

/// Whether a call is recorded: every call that may change something,
/// whatever its outcome, and every refused one (403).
pub fn wanted(action: &str, result: &Result<super::Answer, ApiError>) -> bool {
    !crate::hub::authz::is_read_only(action) || matches!(result, Err(e) if e.status == axum::http::StatusCode::FORBIDDEN)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn bounded(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("").to_string()
}

/// An event id that sorts by time: nanoseconds since the epoch (fixed
/// width), then random bits against collisions between replicas. The
/// trail is listed by `at` then id, so events within one second keep
/// their order.
fn event_id() -> String {
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default().max(0);
    format!("{nanos:019}-{:016x}", rand::random::<u64>())
}

/// Records one call, unless its handler already did in the same
/// transaction as its effect. A failed write is logged, not answered: the
/// call has already taken effect (docs/permissions.md says so).
pub async fn record(hub: &Hub, facts: CallFacts, result: &Result<super::Answer, ApiError>) {
    let Some(action) = facts.action.as_deref() else { return };
    if facts.written || !wanted(action, result) {
        return;
    }
    let mut named = facts.targets.clone();
    // CreateAccessKey names its new key only in the answer (the secret
    // beside it is never read here).
    if let Ok(v) = result
        && action == "CreateAccessKey"
        && let Some(id) = v.tree().and_then(|v| v.get("AccessKeyId")).and_then(Value::as_str)
    {
        named.push(id.to_string());
    }
    let (outcome, detail, invoke_id) = match result {
        Ok(v) => (
            "Success".to_string(),
            String::new(),
            v.tree().and_then(|v| v.get("InvokeId")).and_then(Value::as_str).unwrap_or("").to_string(),
        ),
        Err(e) => (e.code.clone(), bounded(&e.message, MAX_DETAIL_BYTES), String::new()),
    };
    let Some(event) = facts.event(&named, outcome, detail, invoke_id) else { return };
    if let Err(e) = hub.store.record_audit(&event).await {
        tracing::error!(error = %e, action = %event.action, request_id = %facts.request_id, "audit event not recorded");
    }
}

/// deckhand extension `DescribeAuditEvents`: newest first, filtered by
/// `StartTime`/`EndTime` (RFC 3339, inclusive), `UserAccessKeyId`, `AuditAction`.
pub async fn describe(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    let paging = Paging::from(p, 50, 500)?;
    let time = |field: &str| -> Result<Option<String>, ApiError> {
        p.get(field)
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| crate::hub::store::stamp(t.with_timezone(&chrono::Utc)))
                    .map_err(|e| ApiError::invalid(field, format!("not an RFC 3339 time: {e}")))
            })
            .transpose()
    };
    let filter = AuditFilter {
        since: time("StartTime")?,
        until: time("EndTime")?,
        key_id: p.string("UserAccessKeyId", 128)?,
        action: p.string("AuditAction", 128)?,
    };
    let (rows, total) = req.hub.store.list_audit(&filter, paging.page).await?;
    let list: Vec<Value> = rows
        .into_iter()
        .map(|e| {
            json!({
                "EventId": e.event_id,
                "Time": e.at,
                "AccessKeyId": e.key_id,
                "SourceIp": e.source,
                "Action": e.action,
                "Targets": e.targets,
                "Outcome": e.outcome,
                "RequestId": e.request_id,
                "InvokeId": e.invoke_id,
                "Detail": e.detail,
            })
        })
        .collect();
    let mut out = Map::new();
    out.insert("AuditEvents".into(), json!({ "AuditEvent": list }));
    paging.annotate(&mut out, total);
    Ok(Value::Object(out))
}

/// Background task: deletes events older than the retention, and the
/// oldest beyond `audit_max_events`, hourly.
pub async fn pruner(hub: Arc<Hub>) {
    loop {
        let cutoff = crate::hub::store::ago_str(hub.config.audit_retention);
        match hub.store.prune_audit(&cutoff, hub.config.audit_max_events).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "audit events past retention deleted"),
            Err(e) => tracing::warn!(error = %e, "audit pruner"),
        }
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
