//! Request authentication for the OpenAPI: the two signature schemes the
//! official Alibaba Cloud SDKs send, plus replay protection.
//!
//! - RPC v1 (`SignatureMethod=HMAC-SHA1`, `SignatureVersion=1.0`): the
//!   classic `aliyun-python-sdk-core` and the `aliyun` CLI; parameters in
//!   the query string or a form body.
//! - ACS3-HMAC-SHA256: the tea SDKs (`alibabacloud-*`); an `Authorization`
//!   header over a canonical request.
//!
//! Pure functions over [`RequestParts`]; no HTTP framework in here.
//! docs/signature.md describes both schemes and the error codes.

mod acs3;
mod encode;
mod nonce;
mod rpc;
#[cfg(test)]
mod tests;

use chrono::{DateTime, Utc};

pub use encode::{canonical, pairs, percent_encode};
pub use nonce::NonceCache;
pub use rpc::sign_rpc_v1;

/// Clock skew accepted between caller and hub (Alibaba uses 15 minutes).
pub const MAX_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// The parts of an HTTP request a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub raw_query: &'a str,
    /// Lower-case names.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    /// The body is `application/x-www-form-urlencoded` (its fields are signed parameters in RPC v1).
    pub form_body: bool,
}

impl RequestParts<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub access_key_id: String,
    /// `x-acs-action` when the signature covers it (ACS3 with the header
    /// in `SignedHeaders`); an unsigned header is never used, so a captured
    /// request cannot be replayed as another action.
    pub signed_action_header: Option<String>,
}

impl Verified {
    /// The action the signature covers: the signed `Action` parameter
    /// (query or form body, both signed in either scheme), else a signed
    /// `x-acs-action` header.
    pub fn action(&self, param: Option<&str>) -> Option<String> {
        param.map(str::to_string).or_else(|| self.signed_action_header.clone())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignatureError {
    #[error("The request signature does not conform to Aliyun standards: {0}")]
    Incomplete(String),
    #[error("Specified signature method is not supported: {0}")]
    UnsupportedMethod(String),
    #[error("Specified access key is not found: {0}")]
    UnknownKey(String),
    #[error("Specified signature is not matched with our calculation. server string to sign is:{0}")]
    Mismatch(String),
    #[error("Specified signature nonce was used already: {0}")]
    NonceUsed(String),
    #[error("Specified time stamp or date value is expired: {0}")]
    Expired(String),
    #[error("Specified time stamp or date value is not well formatted: {0}")]
    BadTimestamp(String),
}

impl SignatureError {
    /// Alibaba's error code for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Incomplete(_) => "IncompleteSignature",
            Self::UnsupportedMethod(_) => "InvalidSignatureMethod",
            Self::UnknownKey(_) => "InvalidAccessKeyId.NotFound",
            Self::Mismatch(_) => "SignatureDoesNotMatch",
            Self::NonceUsed(_) => "SignatureNonceUsed",
            Self::Expired(_) => "InvalidTimeStamp.Expired",
            Self::BadTimestamp(_) => "InvalidTimeStamp.Format",
        }
    }

    /// HTTP status Alibaba answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::UnknownKey(_) => 404,
            _ => 400,
        }
    }
}

/// Verifies a request signed by either scheme. `lookup` maps an AccessKey
/// id to its secret. The nonce is recorded only after the signature
/// verified, so garbage cannot poison the cache.
pub fn verify(
    parts: &RequestParts<'_>,
    lookup: impl Fn(&str) -> Option<String>,
    nonces: &NonceCache,
    now: DateTime<Utc>,
) -> Result<Verified, SignatureError> {
    let (verified, nonce, timestamp) = match parts.header("authorization") {
        Some(auth) if auth.starts_with("ACS3-") => acs3::verify(parts, auth, &lookup)?,
        _ => rpc::verify(parts, &lookup)?,
    };
    check_time(&timestamp, now)?;
    nonces.check_and_insert(&format!("{}:{nonce}", verified.access_key_id), now)?;
    Ok(verified)
}

fn check_time(ts: &str, now: DateTime<Utc>) -> Result<(), SignatureError> {
    let t = DateTime::parse_from_rfc3339(ts).map_err(|_| SignatureError::BadTimestamp(ts.to_string()))?.with_timezone(&Utc);
    if t < now - MAX_SKEW || t > now + MAX_SKEW {
        return Err(SignatureError::Expired(format!(
            "{ts} is more than 15 minutes from the server time {}",
            now.format("%Y-%m-%dT%H:%M:%SZ")
        )));
    }
    Ok(())
}

/// Equal-time comparison of two signatures.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
