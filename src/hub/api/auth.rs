//! API authentication: every call must be signed with a configured
//! AccessKey pair. The signature schemes themselves live in
//! `hub::signature` (pure functions); this file adapts an HTTP request.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, Uri};

use super::error::ApiError;
use super::params::Params;
use crate::hub::Hub;

/// Placeholder until the signature module lands: remembers nothing.
#[derive(Default)]
pub struct NonceCache;

pub fn authenticate(
    _hub: &Arc<Hub>,
    _method: &Method,
    _uri: &Uri,
    _headers: &HeaderMap,
    _body: &[u8],
    _params: &Params,
) -> Result<(), ApiError> {
    Ok(())
}

/// Adds the signature parameters to an outgoing request (CLI side).
/// Placeholder until the signature module lands: sends the key id only.
pub fn sign_request(params: &mut Vec<(String, String)>, key_id: &str, _secret: &str) {
    params.push(("AccessKeyId".into(), key_id.into()));
}
