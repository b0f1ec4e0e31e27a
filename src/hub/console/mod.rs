//! The web console under `/console/` (issue #17): sign-in, sessions and
//! CSRF, the embedded page and its assets, the Overview figures, and the
//! door through which the page calls Cloud Assistant actions.
//!
//! The console re-implements no action: `POST /console/api/{Action}` runs
//! the API's own handler through `api::execute` with the session's
//! principal, so authorization (`api::guard`), validation and the audit
//! trail are exactly the API's. Read-only actions can also be watched as
//! server-sent events (`events`). docs/console.md is the operator's view.

mod events;
mod schedules;
mod session;
pub mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

pub use session::{Sessions, SignInLimiter, Who};
pub use users::{ConsoleConfig, ConsoleFile, UserFile, hash_password};

use super::Hub;
use super::api::{self, ApiError, audit, params::Params};
use super::authz::Principal;
use super::server::Peer;

/// Password checks (argon2) running at once on this hub.
pub const MAX_PASSWORD_CHECKS: usize = 4;
static PASSWORD_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_PASSWORD_CHECKS);

/// The session cookie's name.
pub const COOKIE: &str = "deckhand_console";
/// The header carrying the CSRF token on every state-changing request.
pub const CSRF_HEADER: &str = "x-csrf-token";

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// Every console response: no framing, no sniffing, no referrer, and a
/// policy that runs only the embedded script (no inline code, no CDN).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<Arc<Hub>> {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/console/assets/app.js", get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/console/assets/app.css", get(|| async { page(APP_CSS, "text/css; charset=utf-8") }))
        .route("/console/assets/icon.svg", get(|| async { page(ICON_SVG, "image/svg+xml") }))
        .route("/console/session", get(whoami))
        .route("/console/sign-in", post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/overview", get(overview))
        .route("/console/api/{action}", post(call))
        .route("/console/watch", get(events::watch))
        .layer(DefaultBodyLimit::max(api::MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(secure_headers))
}

async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    r
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A console refusal: the API's error shape, so the page shows one kind.
fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "Code": code, "Message": message.into() }))).into_response()
}

fn api_error(e: ApiError) -> Response {
    refuse(e.status, &e.code, e.message)
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE).and_then(|r| r.strip_prefix('=')).map(str::to_string))
        // Tokens this hub issues are 64 hex digits.
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The session of a request, or the 401 the page answers by showing sign-in.
fn session_of(hub: &Hub, headers: &HeaderMap) -> Result<(String, session::Session), ApiError> {
    let c = &hub.config.console;
    let token = cookie_token(headers).ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "Console.SignInRequired", "sign in first"))?;
    let s = hub
        .console_sessions
        .get(&token, c.session_ttl, c.idle_timeout)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "Console.SessionExpired", "the session has ended; sign in again"))?;
    Ok((token, s))
}

/// The session of a state-changing request: its CSRF header must match.
fn session_with_csrf(hub: &Hub, headers: &HeaderMap) -> Result<(String, session::Session), ApiError> {
    let (token, s) = session_of(hub, headers)?;
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if !session::csrf_ok(&s, sent) {
        tracing::info!(user = %s.who.label(), "console request without a valid CSRF token refused");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Console.CsrfTokenInvalid",
            format!("the {CSRF_HEADER} header is missing or wrong"),
        ));
    }
    Ok((token, s))
}

/// The principal a session acts as, read again on every request: a key
/// disabled or re-scoped since sign-in applies at once, as on the API.
async fn principal_of(hub: &Hub, who: &Who) -> Result<Principal, ApiError> {
    let key = match who {
        // A user without a key has full access; the audit trail names it.
        Who::User { name, access_key_id: None } => return Ok(Principal::Configured { key_id: format!("console:{name}") }),
        Who::User { access_key_id: Some(k), .. } | Who::Key { access_key_id: k } => k,
    };
    if hub.config.access_keys.iter().any(|(id, _)| id == key) {
        return Ok(Principal::Configured { key_id: key.clone() });
    }
    match hub.store.get_access_key(key).await? {
        Some(k) => api::auth::stored_principal(hub, k),
        None => {
            Err(ApiError::new(StatusCode::FORBIDDEN, "InvalidAccessKeyId.NotFound", format!("Specified access key is not found: {key}")))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    access_key_id: String,
    #[serde(default)]
    access_key_secret: String,
}

/// A sign-in must come from the console's own page: a cross-site form
/// cannot send JSON with this header without a CORS preflight, which the
/// hub never grants, and a browser's `Origin` must name this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(o) => host.is_some_and(|h| o.strip_prefix("https://").or_else(|| o.strip_prefix("http://")) == Some(h)),
    };
    json && origin_ok
}

fn set_cookie(token: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("{COOKIE}={token}; Path=/console; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"))
        .unwrap_or(HeaderValue::from_static("deckhand_console=; Path=/console; Max-Age=0"))
}

async fn sign_in(State(hub): State<Arc<Hub>>, ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>, headers: HeaderMap, body: Bytes) -> Response {
    if !same_origin(&headers) {
        return refuse(StatusCode::FORBIDDEN, "Console.CrossSiteRefused", "sign in from the console page (JSON, same origin)");
    }
    let Ok(form) = serde_json::from_slice::<SignIn>(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "InvalidParameter.Body",
            "expected {\"user\",\"password\"} or {\"access_key_id\",\"access_key_secret\"}",
        );
    };
    let c = &hub.config.console;
    let by_key = !form.access_key_id.is_empty();
    let name = if by_key { form.access_key_id.clone() } else { form.user.clone() };
    let secret = if by_key { &form.access_key_secret } else { &form.password };
    if name.is_empty() || name.len() > 128 {
        return refuse(StatusCode::BAD_REQUEST, "InvalidParameter.User", "a user name (or AccessKey id) of 1..=128 bytes is required");
    }
    if secret.len() > users::MAX_PASSWORD_BYTES {
        return refuse(StatusCode::BAD_REQUEST, "InvalidParameter.Password", format!("longer than {} bytes", users::MAX_PASSWORD_BYTES));
    }
    if let Err(wait) = hub.console_limiter.check(peer.ip(), &name) {
        tracing::info!(%peer, "console sign-in rate limited");
        let mut r = refuse(StatusCode::TOO_MANY_REQUESTS, "Throttling.SignIn", format!("too many failed sign-ins; try again in {wait} s"));
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return r;
    }
    let who = if by_key {
        if !c.access_key_sign_in {
            return refuse(StatusCode::FORBIDDEN, "Console.AccessKeySignInDisabled", "AccessKey sign-in is turned off on this hub");
        }
        key_matches(&hub, &form.access_key_id, secret).await.map(|()| Who::Key { access_key_id: form.access_key_id.clone() })
    } else {
        let (users, n, p) = (c.users.clone(), name.clone(), secret.clone());
        // argon2 is deliberately slow and takes ~19 MiB per check: off the
        // async workers, and only a few at once whatever the number of
        // addresses trying (the others wait their turn).
        let Ok(_permit) = PASSWORD_CHECKS.acquire().await else {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "the hub is shutting down");
        };
        match tokio::task::spawn_blocking(move || users::verify(&users, &n, &p)).await {
            Ok(Some(u)) => Some(Who::User { name: u.name, access_key_id: u.access_key_id }),
            _ => None,
        }
    };
    let Some(who) = who else {
        if let Err(wait) = hub.console_limiter.failed(peer.ip(), &name) {
            tracing::warn!("console sign-in limiter full; refusing sign-ins until entries expire");
            return refuse(StatusCode::TOO_MANY_REQUESTS, "Throttling.SignIn", format!("try again in {wait} s"));
        }
        tracing::info!(%peer, "console sign-in refused");
        return refuse(StatusCode::UNAUTHORIZED, "Console.SignInFailed", "wrong user name or password");
    };
    // A key that is disabled (or whose user's key is) cannot sign in.
    if let Err(e) = principal_of(&hub, &who).await {
        return api_error(e);
    }
    match hub.console_sessions.create(who.clone(), c.session_ttl, c.idle_timeout) {
        Ok((token, csrf)) => {
            tracing::info!(%peer, user = %who.label(), "console sign-in");
            let mut r = axum::Json(json!({ "User": who.label(), "CsrfToken": csrf })).into_response();
            r.headers_mut().insert(header::SET_COOKIE, set_cookie(&token, c.session_ttl.as_secs()));
            r
        }
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, "Throttling.Sessions", e.to_string()),
    }
}

/// Whether `secret` is the AccessKey `id`'s (hub.toml or store).
async fn key_matches(hub: &Hub, id: &str, secret: &str) -> Option<()> {
    if let Some((_, s)) = hub.config.access_keys.iter().find(|(k, _)| k == id) {
        return users::same_secret(s, secret).then_some(());
    }
    if id.len() > api::auth::MAX_KEY_ID_CHARS {
        return None;
    }
    let stored = hub.store.get_access_key(id).await.ok()??;
    // Stored secrets are sealed at rest: opened by the API's one helper.
    let plain = api::auth::open_secret(hub, &stored)?;
    users::same_secret(&plain, secret).then_some(())
}

async fn sign_out(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let (token, s) = match session_with_csrf(&hub, &headers) {
        Ok(x) => x,
        Err(e) => return api_error(e),
    };
    hub.console_sessions.remove(&token);
    tracing::info!(user = %s.who.label(), "console sign-out");
    let mut r = axum::Json(json!({})).into_response();
    r.headers_mut().insert(header::SET_COOKIE, set_cookie("", 0));
    r
}

async fn whoami(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    match session_of(&hub, &headers) {
        Ok((_, s)) => {
            let full = matches!(principal_of(&hub, &s.who).await, Ok(Principal::Configured { .. }));
            axum::Json(json!({ "User": s.who.label(), "CsrfToken": s.csrf, "FullAccess": full, "Region": hub.config.region_id }))
                .into_response()
        }
        Err(e) => api_error(e),
    }
}

/// `POST /console/api/{Action}`, parameters as a form body: the API's
/// handler, authorization and audit, with the session's principal.
async fn call(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = match session_with_csrf(&hub, &headers) {
        Ok((_, s)) => s,
        Err(e) => return api_error(e),
    };
    match run(&hub, peer, &s.who, &action, &body).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => api_error(e),
    }
}

/// One action for a session, audited like an API call.
pub(super) async fn run(hub: &Arc<Hub>, peer: SocketAddr, who: &Who, action: &str, form: &[u8]) -> Result<Value, ApiError> {
    let request_id = uuid::Uuid::new_v4().to_string().to_uppercase();
    let mut facts = audit::CallFacts::new(peer, &request_id);
    let result = async {
        if action.is_empty() || action.len() > 64 || !action.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ApiError::invalid("Action", "not an action name"));
        }
        let params = Params::parse("", form)?;
        let principal = principal_of(hub, who).await?;
        api::execute(hub, principal, action, params, &mut facts).await
    }
    .await;
    audit::record(hub, facts, &result).await;
    result.map(|answer| answer.into_value(&request_id))
}

/// `GET /console/overview`: instances online/offline and the last 24 h
/// of invocations by hour and status. Allowed to whoever may call both
/// `DescribeManagedInstances` and `DescribeInvocations`.
async fn overview(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let s = match session_of(&hub, &headers) {
        Ok((_, s)) => s,
        Err(e) => return api_error(e),
    };
    let result = async {
        let principal = principal_of(&hub, &s.who).await?;
        for action in ["DescribeManagedInstances", "DescribeInvocations"] {
            let access = super::authz::Access { action, ..Default::default() };
            super::authz::check(&principal, &access).map_err(|d| api::guard::forbidden(&d))?;
        }
        let since = chrono::Utc::now() - chrono::Duration::hours(23);
        let since = format!("{}:00:00Z", since.format("%Y-%m-%dT%H"));
        Ok::<_, ApiError>(hub.store.overview(&since).await?)
    }
    .await;
    match result {
        Ok(o) => {
            let hours: Vec<Value> =
                o.invocations.iter().map(|(hour, status, n)| json!({ "Hour": hour, "Status": status.as_str(), "Count": n })).collect();
            let now = chrono::Utc::now().format("%Y-%m-%dT%H").to_string();
            axum::Json(json!({ "Online": o.online, "Offline": o.offline, "Invocations": hours, "Now": now })).into_response()
        }
        Err(e) => api_error(e),
    }
}
