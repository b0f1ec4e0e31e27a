//! ACS3-HMAC-SHA256 (the tea SDKs):
//! `Authorization: ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=h1;h2,Signature=hex`
//! over `METHOD\nURI\ncanonical query\ncanonical headers\nsigned headers\nhex(sha256(body))`,
//! `StringToSign = "ACS3-HMAC-SHA256\n" + hex(sha256(canonical request))`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::encode::{canonical, pairs};
use super::{RequestParts, SignatureError, Verified, same};

const ALGORITHM: &str = "ACS3-HMAC-SHA256";

fn field<'a>(auth: &'a str, name: &str) -> Option<&'a str> {
    auth.split(',').map(str::trim).find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

pub(super) fn canonical_request(parts: &RequestParts<'_>, signed_headers: &[&str], payload_hash: &str) -> String {
    let query = canonical(&pairs(parts.raw_query.as_bytes()));
    let headers: String = signed_headers.iter().map(|h| format!("{h}:{}\n", parts.header(h).unwrap_or("").trim())).collect();
    let path = if parts.path.is_empty() { "/" } else { parts.path };
    format!("{}\n{path}\n{query}\n{headers}\n{}\n{payload_hash}", parts.method.to_uppercase(), signed_headers.join(";"))
}

pub(super) fn verify(
    parts: &RequestParts<'_>,
    auth: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(Verified, String, String), SignatureError> {
    let rest =
        auth.strip_prefix(ALGORITHM).ok_or_else(|| SignatureError::UnsupportedMethod(auth.split(' ').next().unwrap_or("").to_string()))?;
    let incomplete = |what: &str| SignatureError::Incomplete(format!("Authorization lacks {what}"));
    let key_id = field(rest.trim(), "Credential").ok_or_else(|| incomplete("Credential"))?.to_string();
    let signed = field(rest.trim(), "SignedHeaders").ok_or_else(|| incomplete("SignedHeaders"))?;
    let signature = field(rest.trim(), "Signature").ok_or_else(|| incomplete("Signature"))?;
    let mut signed_headers: Vec<&str> = signed.split(';').filter(|h| !h.is_empty()).collect();
    signed_headers.sort_unstable();
    for required in ["x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256"] {
        if !signed_headers.contains(&required) {
            return Err(SignatureError::Incomplete(format!("{required} is not a signed header")));
        }
    }
    let header = |h: &str| parts.header(h).map(str::to_string).ok_or_else(|| SignatureError::Incomplete(format!("missing header {h}")));
    let (date, nonce, payload_hash) = (header("x-acs-date")?, header("x-acs-signature-nonce")?, header("x-acs-content-sha256")?);
    let body_hash = hex::encode(Sha256::digest(parts.body));
    if !same(&body_hash, &payload_hash.to_lowercase()) {
        return Err(SignatureError::Mismatch("x-acs-content-sha256 does not match the body".into()));
    }
    let secret = lookup(&key_id).ok_or_else(|| SignatureError::UnknownKey(key_id.clone()))?;
    let creq = canonical_request(parts, &signed_headers, &payload_hash);
    let sts = format!("{ALGORITHM}\n{}", hex::encode(Sha256::digest(creq.as_bytes())));
    // HMAC takes a key of any length: the error is not reached.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch(sts.clone()))?;
    mac.update(sts.as_bytes());
    if !same(&hex::encode(mac.finalize().into_bytes()), &signature.to_lowercase()) {
        return Err(SignatureError::Mismatch(sts));
    }
    // The action header counts only when the signature covers it.
    let signed_action = if signed_headers.contains(&"x-acs-action") { parts.header("x-acs-action").map(str::to_string) } else { None };
    Ok((Verified { access_key_id: key_id, signed_action_header: signed_action }, nonce, date))
}

/// Signs like the tea SDK does (used by tests to build vectors).
#[cfg(test)]
pub fn sign(parts: &RequestParts<'_>, signed_headers: &[&str], key_id: &str, secret: &str) -> String {
    let payload_hash = hex::encode(Sha256::digest(parts.body));
    let creq = canonical_request(parts, signed_headers, &payload_hash);
    let sts = format!("{ALGORITHM}\n{}", hex::encode(Sha256::digest(creq.as_bytes())));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(sts.as_bytes());
    format!(
        "{ALGORITHM} Credential={key_id},SignedHeaders={},Signature={}",
        signed_headers.join(";"),
        hex::encode(mac.finalize().into_bytes())
    )
}
