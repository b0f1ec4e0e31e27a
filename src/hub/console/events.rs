//! Live updates for the console: `GET /console/watch?Action=Describe…&…`
//! re-runs one read-only action for the session every
//! [`TICK`] and sends its answer as a server-sent event only when it
//! changed, so a page never polls. Running records' output comes from the
//! hub's live output (`hub::live`) through the action itself.
//!
//! Bounded: [`session::MAX_STREAMS_PER_SESSION`] streams per session,
//! each ending after [`MAX_STREAM_LIFE`] (the browser's EventSource
//! reconnects), when the session ends, or when the hub shuts down.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::session::{self, Sessions};
use super::{Who, refuse, session_of};
use crate::hub::Hub;
use crate::hub::server::Peer;

/// How often a watched action is re-run.
pub const TICK: Duration = Duration::from_secs(1);
/// A stream ends after this long; the browser reconnects on its own.
pub const MAX_STREAM_LIFE: Duration = Duration::from_secs(15 * 60);

struct Watch {
    hub: Arc<Hub>,
    token: String,
    who: Who,
    peer: SocketAddr,
    action: String,
    form: Vec<u8>,
    last: Option<Value>,
    started: Instant,
    first: bool,
    done: bool,
    _slot: session::StreamSlot,
}

pub async fn watch(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (token, s) = match session_of(&hub, &headers) {
        Ok(x) => x,
        Err(e) => return super::api_error(e),
    };
    let query = query.unwrap_or_default();
    if query.len() > crate::hub::api::MAX_BODY_BYTES {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "InvalidParameter.Query", "the query is too long");
    }
    let mut action = String::new();
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "Action" {
            action = v.into_owned();
        } else {
            form.append_pair(&k, &v);
        }
    }
    // Only reads may be watched: a stream must never repeat a change.
    if !crate::hub::authz::is_read_only(&action) {
        return refuse(StatusCode::BAD_REQUEST, "InvalidParameter.Action", "only Describe*/List* actions can be watched");
    }
    let slot = match Sessions::stream_slot(&s) {
        Ok(x) => x,
        Err(e) => return refuse(StatusCode::TOO_MANY_REQUESTS, "Throttling.Streams", e.to_string()),
    };
    let state = Watch {
        hub,
        token,
        who: s.who,
        peer,
        action,
        form: form.finish().into_bytes(),
        last: None,
        started: Instant::now(),
        first: true,
        done: false,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(state, |mut w| async move {
        loop {
            if w.done || w.started.elapsed() >= MAX_STREAM_LIFE {
                return None;
            }
            if !w.first {
                tokio::select! {
                    _ = w.hub.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
            w.first = false;
            let c = &w.hub.config.console;
            // A signed-out or expired session ends its streams.
            if !w.hub.console_sessions.alive(&w.token, c.session_ttl, c.idle_timeout) {
                return None;
            }
            match super::run(&w.hub, w.peer, &w.who, &w.action, &w.form).await {
                Ok(mut v) => {
                    if let Value::Object(m) = &mut v {
                        m.remove("RequestId");
                    }
                    if w.action == "DescribeInvocations" {
                        super::schedules::annotate(&mut v, chrono::Utc::now());
                    }
                    if w.last.as_ref() == Some(&v) {
                        continue;
                    }
                    let ev = Event::default().event("update").data(v.to_string());
                    w.last = Some(v);
                    return Some((Ok::<_, Infallible>(ev), w));
                }
                Err(e) => {
                    // Refused (or the store failed): say so once and end.
                    w.done = true;
                    let ev = Event::default().event("refused").data(json!({ "Code": e.code, "Message": e.message }).to_string());
                    return Some((Ok(ev), w));
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
