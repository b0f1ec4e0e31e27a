//! RPC v1: `Signature = base64(HMAC-SHA1(secret + "&", StringToSign))`,
//! `StringToSign = METHOD & enc("/") & enc(canonical(params − Signature))`.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::encode::{canonical, pairs, percent_encode};
use super::{RequestParts, SignatureError, Verified, same};

pub(super) fn string_to_sign(method: &str, params: &[(String, String)]) -> String {
    let signed: Vec<(String, String)> = params.iter().filter(|(k, _)| k != "Signature").cloned().collect();
    format!("{}&{}&{}", method.to_uppercase(), percent_encode("/"), percent_encode(&canonical(&signed)))
}

/// `None` is not reached (HMAC takes a key of any length); callers treat
/// it as a signature that matches nothing.
fn hmac_sha1_b64(secret: &str, data: &str) -> Option<String> {
    let mut mac = Hmac::<Sha1>::new_from_slice(format!("{secret}&").as_bytes()).ok()?;
    mac.update(data.as_bytes());
    Some(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Returns the verified key, the nonce and the timestamp.
pub(super) fn verify(
    parts: &RequestParts<'_>,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(Verified, String, String), SignatureError> {
    let mut params = pairs(parts.raw_query.as_bytes());
    if parts.form_body {
        params.extend(pairs(parts.body));
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let missing = |k: &str| SignatureError::Incomplete(format!("missing {k}"));
    let key_id = get("AccessKeyId").ok_or_else(|| missing("AccessKeyId"))?;
    let signature = get("Signature").ok_or_else(|| missing("Signature"))?;
    let method = get("SignatureMethod").ok_or_else(|| missing("SignatureMethod"))?;
    let nonce = get("SignatureNonce").ok_or_else(|| missing("SignatureNonce"))?;
    let timestamp = get("Timestamp").ok_or_else(|| missing("Timestamp"))?;
    if method != "HMAC-SHA1" {
        return Err(SignatureError::UnsupportedMethod(method));
    }
    if let Some(v) = get("SignatureVersion")
        && v != "1.0"
    {
        return Err(SignatureError::Incomplete(format!("SignatureVersion {v:?} (expected 1.0)")));
    }
    let secret = lookup(&key_id).ok_or_else(|| SignatureError::UnknownKey(key_id.clone()))?;
    let sts = string_to_sign(parts.method, &params);
    if !hmac_sha1_b64(&secret, &sts).is_some_and(|ours| same(&ours, &signature)) {
        return Err(SignatureError::Mismatch(sts));
    }
    // RPC v1 signs parameters only, never headers.
    Ok((Verified { access_key_id: key_id, signed_action_header: None }, nonce, timestamp))
}

/// Adds the common signature parameters and the signature to `params`,
/// exactly as the classic SDK does (for our own CLI).
pub fn sign_rpc_v1(method: &str, params: &mut Vec<(String, String)>, key_id: &str, secret: &str, nonce: &str, timestamp: &str) {
    params.retain(|(k, _)| {
        !matches!(k.as_str(), "AccessKeyId" | "SignatureMethod" | "SignatureVersion" | "SignatureNonce" | "Timestamp" | "Signature")
    });
    params.push(("AccessKeyId".into(), key_id.into()));
    params.push(("SignatureMethod".into(), "HMAC-SHA1".into()));
    params.push(("SignatureVersion".into(), "1.0".into()));
    params.push(("SignatureNonce".into(), nonce.into()));
    params.push(("Timestamp".into(), timestamp.into()));
    let sig = hmac_sha1_b64(secret, &string_to_sign(method, params)).unwrap_or_default();
    params.push(("Signature".into(), sig));
}
