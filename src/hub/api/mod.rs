//! The Cloud Assistant OpenAPI (ECS 2014-05-26, RPC style) served by the hub.
//!
//! Owns: request parsing (query string or form body), authentication
//! (signatures), authorization (`guard`, one hook after authentication),
//! the audit record of each call (`audit`), action dispatch, Alibaba-style
//! responses and errors, and pagination. Each action family lives in its own file.

pub(crate) mod audit;
pub(crate) mod auth;
mod commands;
pub(crate) mod error;
pub(crate) mod files;
mod fleet;
pub(crate) mod guard;
mod instances;
mod invocations;
mod keys;
pub(crate) mod params;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use error::ApiError;
pub use instances::{activation_expired, ip_in_range, rotate_held};
use params::Params;

use super::Hub;
use super::store::Page;

/// Request body bound: a 16 KiB script base64-encoded plus parameters fits
/// comfortably; anything larger is refused before parsing.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

pub struct Request<'a> {
    pub hub: &'a Arc<Hub>,
    pub params: Params,
    /// Who is calling (its policy was checked before the handler runs).
    pub principal: crate::hub::authz::Principal,
    /// The call's audit facts, for a handler that commits its success
    /// event with its own write ([`Request::success_event`]).
    facts: &'a audit::CallFacts,
    /// Set once that event is committed.
    audited: std::sync::atomic::AtomicBool,
}

impl Request<'_> {
    /// The custom parameter value rule for this caller: strict for a key
    /// limited to saved commands unless its policy says otherwise.
    pub fn value_policy(&self) -> crate::exec::params::ValuePolicy {
        self.principal.value_policy(self.hub.config.parameter_values)
    }

    /// The audit event of this call succeeding with `invoke_id`, to commit
    /// in the same transaction as the invocation (then
    /// [`Request::success_audited`]): the trail has the call exactly when
    /// the call took effect, for one commit instead of two.
    pub fn success_event(&self, invoke_id: &str) -> Option<crate::hub::store::AuditEvent> {
        self.facts.success(invoke_id)
    }

    /// The event from [`Request::success_event`] is committed.
    pub fn success_audited(&self) {
        self.audited.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What an action answers: a JSON object, to which the response adds the
/// call's `RequestId`.
#[derive(Debug)]
pub enum Answer {
    /// Built as a tree (most actions).
    Tree(Value),
    /// Already serialized from typed structs (issue #21: the poll path
    /// builds no tree): the bytes of one JSON object.
    Body(Vec<u8>),
}

impl Answer {
    /// The tree, when the answer is one (what the audit trail reads).
    pub fn tree(&self) -> Option<&Value> {
        match self {
            Answer::Tree(v) => Some(v),
            Answer::Body(_) => None,
        }
    }

    /// The answer as a tree with its `RequestId` (the console's path;
    /// a body that does not parse, which our own serializer cannot
    /// produce, becomes an empty object).
    pub fn into_value(self, request_id: &str) -> Value {
        let v = match self {
            Answer::Tree(v) => v,
            Answer::Body(b) => serde_json::from_slice(&b).unwrap_or_else(|_| json!({})),
        };
        with_request_id(v, request_id)
    }

    fn into_response(self, request_id: &str) -> Response {
        match self {
            Answer::Tree(v) => axum::Json(with_request_id(v, request_id)).into_response(),
            Answer::Body(mut b) => {
                // `{…}` becomes `{…,"RequestId":"…"}`.
                if b.last() == Some(&b'}') {
                    b.pop();
                    if b.len() > 1 {
                        b.push(b',');
                    }
                    b.extend_from_slice(b"\"RequestId\":");
                    // A string serializes infallibly into a Vec.
                    let _ = serde_json::to_writer(&mut b, request_id);
                    b.push(b'}');
                }
                ([(axum::http::header::CONTENT_TYPE, "application/json")], b).into_response()
            }
        }
    }
}

/// Adds `RequestId` to an object answer.
fn with_request_id(mut v: Value, request_id: &str) -> Value {
    if let Value::Object(m) = &mut v {
        m.insert("RequestId".into(), Value::String(request_id.to_string()));
    }
    v
}

pub async fn handle(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(crate::hub::server::Peer(peer, _)): ConnectInfo<crate::hub::server::Peer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string().to_uppercase();
    let mut facts = audit::CallFacts::new(peer, &request_id);
    let started = std::time::Instant::now();
    let result = dispatch(&hub, &method, &uri, &headers, &body, &mut facts).await;
    crate::hub::metrics::get().api_call(facts.action.as_deref(), result.as_ref().err().map(|e| e.code.as_str()), started.elapsed());
    audit::record(&hub, facts, &result).await;
    match result {
        Ok(answer) => answer.into_response(&request_id),
        Err(e) => {
            tracing::info!(code = %e.code, status = e.status.as_u16(), "API request refused");
            let body = json!({
                "RequestId": request_id,
                "HostId": "deckhand",
                "Code": e.code,
                "Message": e.message,
                "Recommend": "See docs/api.md in the deckhand repository.",
            });
            (e.status, axum::Json(body)).into_response()
        }
    }
}

async fn dispatch(
    hub: &Arc<Hub>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    facts: &mut audit::CallFacts,
) -> Result<Answer, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "InvalidParameter.Body",
            format!("request body is {} bytes, the limit is {MAX_BODY_BYTES}", body.len()),
        ));
    }
    let is_form =
        headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let params = Params::parse(uri.query().unwrap_or(""), if is_form { body } else { b"" })?;
    let (verified, principal) = match auth::authenticate(hub, method, uri, headers, body, &params).await {
        Ok(v) => v,
        Err(e) => {
            // A disabled key's refusal is audited (its signature verified);
            // unverified calls name no key and are only logged.
            if e.code == "InvalidAccessKeyId.Inactive" {
                facts.key_id = auth::claimed_key_id(headers, &params);
                facts.action =
                    params.get("Action").or_else(|| headers.get("x-acs-action").and_then(|v| v.to_str().ok())).map(str::to_string);
            }
            return Err(e);
        }
    };
    // Only what the signature covers names the action (issue #14).
    let Some(action) = verified.action(params.get("Action")) else { return Err(ApiError::missing("Action")) };
    execute(hub, principal, &action, params, facts).await
}

/// Runs one action for an authenticated principal: the authorization hook
/// (`guard`), then the handler. The signed API and the console
/// (`hub::console`) both come through here, so a call is authorized the same
/// way whichever door it came in by; the caller records `facts` in the audit
/// trail.
pub async fn execute(
    hub: &Arc<Hub>,
    principal: crate::hub::authz::Principal,
    action: &str,
    params: Params,
    facts: &mut audit::CallFacts,
) -> Result<Answer, ApiError> {
    let action = action.to_string();
    facts.key_id = Some(principal.key_id().to_string());
    facts.action = Some(action.clone());
    facts.targets = guard::named_instances(&params).unwrap_or_default();
    for name in ["CommandId", "UserAccessKeyId", "InvokeId", "ActivationId"] {
        if facts.targets.is_empty()
            && let Some(v) = params.get(name)
        {
            facts.targets.push(v.to_string());
        }
    }
    guard::authorize(hub, &principal, &action, &params).await?;
    let req = Request { hub, params, principal, facts: &*facts, audited: Default::default() };
    tracing::debug!(action, "API call");
    let tree = match action.as_str() {
        "RunCommand" => invocations::run_command(&req).await,
        "InvokeCommand" => invocations::invoke_command(&req).await,
        "DescribeInvocations" => invocations::describe_invocations(&req).await,
        // Serialized straight to the body: the poll path (issue #21).
        "DescribeInvocationResults" => return invocations::describe_invocation_results(&req).await.map(Answer::Body),
        "StopInvocation" => invocations::stop_invocation(&req).await,
        "ModifyInvocationAttribute" => invocations::modify_invocation_attribute(&req).await,
        "SendFile" => files::send_file(&req).await,
        "DescribeSendFileResults" => files::describe_send_file_results(&req).await,
        // deckhand extension (docs/files.md): content larger than `Content` allows.
        "PutFileContent" => files::put_file_content(&req).await,
        "CreateCommand" => commands::create(&req).await,
        "DescribeCommands" => commands::describe(&req).await,
        "ModifyCommand" => commands::modify(&req).await,
        "DeleteCommand" => commands::delete(&req).await,
        "CreateActivation" => instances::create_activation(&req).await,
        "DescribeActivations" => instances::describe_activations(&req).await,
        "DisableActivation" => instances::disable_activation(&req).await,
        "DeleteActivation" => instances::delete_activation(&req).await,
        "DescribeManagedInstances" => instances::describe_managed_instances(&req).await,
        "DeregisterManagedInstance" => instances::deregister(&req).await,
        "DescribeCloudAssistantStatus" => instances::cloud_assistant_status(&req).await,
        "RotateInstanceCredential" => instances::rotate_credential(&req).await,
        "TagResources" => instances::tag_resources(&req).await,
        "UntagResources" => instances::untag_resources(&req).await,
        "ListTagResources" => instances::list_tag_resources(&req).await,
        // deckhand extensions (issue #18, docs/permissions.md).
        "CreateAccessKey" => keys::create(&req).await,
        "DescribeAccessKeys" => keys::describe(&req).await,
        "DisableAccessKey" => keys::disable(&req).await,
        "EnableAccessKey" => keys::enable(&req).await,
        "DeleteAccessKey" => keys::delete(&req).await,
        "SetAccessKeyPolicy" => keys::set_policy(&req).await,
        "DescribeAuditEvents" => audit::describe(&req).await,
        other => Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "InvalidAction.NotFound",
            format!("Specified api \"{other}\" is not found, please check your url and method."),
        )),
    };
    let written = req.audited.into_inner();
    facts.written = written;
    tree.map(Answer::Tree)
}

/// Every action `dispatch` serves, for bounded metric labels: the name as
/// a static string, or `None` for a name this hub does not serve.
pub fn served_action(name: &str) -> Option<&'static str> {
    SERVED_ACTIONS.iter().copied().find(|a| *a == name)
}

/// Keep in step with `dispatch` (a test below checks every name is routed).
const SERVED_ACTIONS: &[&str] = &[
    "RunCommand",
    "InvokeCommand",
    "DescribeInvocations",
    "DescribeInvocationResults",
    "StopInvocation",
    "ModifyInvocationAttribute",
    "SendFile",
    "DescribeSendFileResults",
    "PutFileContent",
    "CreateCommand",
    "DescribeCommands",
    "ModifyCommand",
    "DeleteCommand",
    "CreateActivation",
    "DescribeActivations",
    "DisableActivation",
    "DeleteActivation",
    "DescribeManagedInstances",
    "DeregisterManagedInstance",
    "DescribeCloudAssistantStatus",
    "RotateInstanceCredential",
    "TagResources",
    "UntagResources",
    "ListTagResources",
    "CreateAccessKey",
    "DescribeAccessKeys",
    "DisableAccessKey",
    "EnableAccessKey",
    "DeleteAccessKey",
    "SetAccessKeyPolicy",
    "DescribeAuditEvents",
];

/// Both pagination styles: `PageNumber`/`PageSize` and `NextToken`/`MaxResults`.
/// Largest offset a `NextToken` may carry: far beyond any row count a hub
/// holds, and far below `i64::MAX`, so `offset + limit` cannot overflow.
pub const MAX_OFFSET: i64 = 1 << 40;

pub struct Paging {
    pub page: Page,
    pub page_number: i64,
    pub page_size: i64,
}

impl Paging {
    pub fn from(p: &Params, default_size: i64, max_size: i64) -> Result<Self, ApiError> {
        let token_mode = p.get("NextToken").is_some() || p.get("MaxResults").is_some();
        if token_mode {
            let size = p.int("MaxResults", 1, max_size)?.unwrap_or(default_size);
            let offset = match p.get("NextToken") {
                None => 0,
                Some(t) => decode_token(t).ok_or_else(|| ApiError::invalid("NextToken", "not a token this hub issued"))?,
            };
            // A forged offset must not overflow `offset + limit` later.
            if offset > MAX_OFFSET {
                return Err(ApiError::invalid(
                    "NextToken",
                    format!("offset {offset} is beyond the largest this hub issues ({MAX_OFFSET})"),
                ));
            }
            return Ok(Self { page: Page { offset, limit: size }, page_number: offset / size + 1, page_size: size });
        }
        let number = p.int("PageNumber", 1, 1_000_000)?.unwrap_or(1);
        let size = p.int("PageSize", 1, max_size)?.unwrap_or(default_size);
        Ok(Self { page: Page { offset: (number - 1) * size, limit: size }, page_number: number, page_size: size })
    }

    /// `TotalCount`, `PageNumber`, `PageSize`, `NextToken` of a page.
    pub fn fields(&self, total: i64) -> PageFields {
        let next = self.page.offset + self.page.limit;
        PageFields {
            total_count: total,
            page_number: self.page_number,
            page_size: self.page_size,
            next_token: if next < total { encode_token(next) } else { String::new() },
        }
    }

    /// Adds `TotalCount`, `PageNumber`, `PageSize`, `NextToken` to `obj`.
    pub fn annotate(&self, obj: &mut serde_json::Map<String, Value>, total: i64) {
        let f = self.fields(total);
        obj.insert("TotalCount".into(), json!(f.total_count));
        obj.insert("PageNumber".into(), json!(f.page_number));
        obj.insert("PageSize".into(), json!(f.page_size));
        obj.insert("NextToken".into(), json!(f.next_token));
    }
}

/// The paging fields of a listing answer, for answers serialized from
/// typed structs (`#[serde(flatten)]` them beside the list).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PageFields {
    pub total_count: i64,
    pub page_number: i64,
    pub page_size: i64,
    pub next_token: String,
}

fn encode_token(offset: i64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("o:{offset}"))
}

fn decode_token(t: &str) -> Option<i64> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).ok()?;
    std::str::from_utf8(&raw).ok()?.strip_prefix("o:")?.parse().ok().filter(|n: &i64| *n >= 0)
}

/// Background upkeep: abort targets that were never delivered in time.
pub async fn sweeper(hub: Arc<Hub>) {
    let every = Duration::from_secs(5).min(hub.config.delivery_timeout);
    loop {
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let cutoff = crate::hub::store::ago_str(hub.config.delivery_timeout);
        match hub.store.expire_undelivered(&cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "aborted targets not delivered in time"),
            Err(e) => tracing::warn!(error = %e, "delivery sweeper"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pre-serialized answer gets its `RequestId` like a tree does,
    /// including the empty object.
    #[tokio::test]
    async fn body_answers_carry_the_request_id() {
        for (body, want) in
            [(&b"{\"A\":{\"B\":[1]}}"[..], json!({"A": {"B": [1]}, "RequestId": "R-1"})), (&b"{}"[..], json!({"RequestId": "R-1"}))]
        {
            let resp = Answer::Body(body.to_vec()).into_response("R-1");
            assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
            assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), want);
            assert_eq!(Answer::Body(body.to_vec()).into_value("R-1"), want);
        }
    }

    #[test]
    fn every_served_action_is_dispatched() {
        // The dispatch table's arms, read from this file: a name there that
        // is missing from SERVED_ACTIONS would be counted as `Other`.
        let src = include_str!("mod.rs");
        let arms: Vec<&str> = src.lines().filter_map(|l| l.trim().strip_prefix('"')?.split_once("\" => ").map(|(name, _)| name)).collect();
        assert_eq!(arms.len(), SERVED_ACTIONS.len(), "{arms:?}");
        for a in arms {
            assert_eq!(served_action(a), Some(a));
        }
        assert_eq!(served_action("NoSuchAction"), None);
    }

    #[test]
    fn next_token_round_trips_and_rejects_garbage() {
        assert_eq!(decode_token(&encode_token(40)), Some(40));
        assert_eq!(decode_token("not-a-token"), None);
    }

    #[test]
    fn forged_huge_next_token_is_refused_naming_the_field() {
        let forged = encode_token(i64::MAX - 1);
        let p = Params::parse(&format!("NextToken={forged}"), b"").unwrap();
        let e = Paging::from(&p, 10, 50).err().expect("refused");
        assert_eq!(e.code, "InvalidParameter.NextToken");
        let ok = Params::parse(&format!("NextToken={}", encode_token(40)), b"").unwrap();
        assert_eq!(Paging::from(&ok, 10, 50).map(|p| p.page.offset).ok(), Some(40));
    }
}
