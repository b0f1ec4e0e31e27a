//! API authentication: every call must be signed with a configured
//! AccessKey pair (RPC v1 or ACS3-HMAC-SHA256, see `hub::signature`).
//! This file adapts an HTTP request to the pure verifier, and signs the
//! CLI's own requests the way the classic SDK does.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode, Uri};

use super::error::ApiError;
use crate::hub::Hub;
use crate::hub::signature::{self, RequestParts};

pub use signature::NonceCache;

pub fn authenticate(hub: &Arc<Hub>, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<signature::Verified, ApiError> {
    let hdrs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string())))
        .collect();
    let form_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let parts = RequestParts { method: method.as_str(), path: uri.path(), raw_query: uri.query().unwrap_or(""), headers: &hdrs, body, form_body };
    let lookup = |id: &str| hub.config.access_keys.iter().find(|(k, _)| k == id).map(|(_, s)| s.clone());
    match signature::verify(&parts, lookup, &hub.nonces, chrono::Utc::now()) {
        Ok(v) => {
            tracing::debug!(access_key_id = %v.access_key_id, "request authenticated");
            Ok(v)
        }
        Err(e) => Err(ApiError::new(StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST), e.code(), e.to_string())),
    }
}

/// Adds AccessKeyId, nonce, timestamp and the RPC v1 signature to an
/// outgoing POST form request (the CLI's side of the contract).
pub fn sign_request(params: &mut Vec<(String, String)>, key_id: &str, secret: &str) {
    let nonce = uuid::Uuid::new_v4().to_string();
    let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    signature::sign_rpc_v1("POST", params, key_id, secret, &nonce, &ts);
}
