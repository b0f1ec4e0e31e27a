//! API authentication: every call must be signed with a known AccessKey
//! pair (RPC v1 or ACS3-HMAC-SHA256, see `hub::signature`): one from
//! hub.toml (full access) or one from the store (its policy applies, see
//! `hub::authz`). This file adapts an HTTP request to the pure verifier,
//! and signs the CLI's own requests the way the classic SDK does.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode, Uri};

use super::error::ApiError;
use crate::hub::Hub;
use crate::hub::authz::Principal;
use crate::hub::signature::{self, RequestParts};

pub use signature::NonceCache;

/// A stored key is read from the store on every call (no cache), so a
/// key disabled or deleted through any replica is refused at once by all.
pub async fn authenticate(
    hub: &Arc<Hub>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    params: &super::params::Params,
) -> Result<(signature::Verified, Principal), ApiError> {
    let hdrs: Vec<(String, String)> =
        headers.iter().filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string()))).collect();
    let form_body =
        headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let parts =
        RequestParts { method: method.as_str(), path: uri.path(), raw_query: uri.query().unwrap_or(""), headers: &hdrs, body, form_body };
    // The key id the request claims (the signature is checked below):
    // a configured key wins over a stored one of the same id.
    let claimed = claimed_key_id(headers, params);
    let stored = match claimed.as_deref() {
        Some(id) if id.len() <= MAX_KEY_ID_CHARS && !hub.config.access_keys.iter().any(|(k, _)| k == id) => {
            hub.store.get_access_key(id).await?
        }
        _ => None,
    };
    let lookup = |id: &str| {
        hub.config
            .access_keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, s)| s.clone())
            .or_else(|| stored.as_ref().filter(|k| k.key_id == id).and_then(|k| open_secret(hub, k)))
    };
    let v = match signature::verify(&parts, lookup, &hub.nonces, chrono::Utc::now()) {
        Ok(v) => v,
        Err(e) => {
            return Err(ApiError::new(StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST), e.code(), e.to_string()));
        }
    };
    tracing::debug!(access_key_id = %v.access_key_id, "request authenticated");
    let principal = match stored.filter(|k| k.key_id == v.access_key_id) {
        None => Principal::Configured { key_id: v.access_key_id.clone() },
        Some(k) => stored_principal(hub, k)?,
    };
    Ok((v, principal))
}

/// The principal of a stored key whose secret was proven: refused when
/// the key is disabled, with no access when its policy no longer parses.
/// Shared with the console, which proves the secret at sign-in and
/// re-reads the key on every request.
pub fn stored_principal(hub: &Hub, k: crate::hub::store::AccessKeyRow) -> Result<Principal, ApiError> {
    // Refused only after the secret was proven: only the key's holder
    // learns that it is disabled.
    if !k.enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "InvalidAccessKeyId.Inactive",
            format!("Specified access key is disabled: {}", k.key_id),
        ));
    }
    // Stored documents were validated when set; one that no longer
    // parses (written by a newer release) gives no access.
    let policy = if k.policy.is_empty() {
        None
    } else {
        match hub.policies.get_or_parse(&k.key_id, &k.policy) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(access_key_id = %k.key_id, error = %e, "stored policy unreadable; the key has no access");
                None
            }
        }
    };
    Ok(Principal::Stored { key_id: k.key_id, policy })
}

/// Longest AccessKey id looked up in the store (ids deckhand issues are
/// far shorter); a longer claim is simply unknown.
pub const MAX_KEY_ID_CHARS: usize = 64;

/// The AccessKey id a request names: ACS3's `Credential=` or RPC's
/// `AccessKeyId` parameter.
pub(super) fn claimed_key_id(headers: &HeaderMap, params: &super::params::Params) -> Option<String> {
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok())
        && let Some(rest) = auth.strip_prefix("ACS3-")
    {
        return rest.split([' ', ',']).find_map(|f| f.trim().strip_prefix("Credential=")).map(str::to_string);
    }
    params.get("AccessKeyId").map(str::to_string)
}

/// Adds AccessKeyId, nonce, timestamp and the RPC v1 signature to an
/// outgoing POST form request (the CLI's side of the contract).
pub fn sign_request(params: &mut Vec<(String, String)>, key_id: &str, secret: &str) {
    let nonce = uuid::Uuid::new_v4().to_string();
    let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    signature::sign_rpc_v1("POST", params, key_id, secret, &nonce, &ts);
}

/// A stored key's secret, unsealed. One that cannot be opened (another
/// hub's key file, a damaged row) verifies nothing: the call fails like an
/// unknown key's, and operators get the reason (never the value) in the log.
pub(crate) fn open_secret(hub: &crate::hub::Hub, k: &crate::hub::store::AccessKeyRow) -> Option<String> {
    match crate::hub::sealed::open(hub.config.secrets.as_deref(), &k.secret) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(access_key_id = %k.key_id, error = %e, "stored access key secret cannot be used");
            None
        }
    }
}
