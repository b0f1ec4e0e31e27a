//! Both signature schemes: round trips and every refusal (tamper, key, replay, skew).

use super::*;

fn keys(id: &str) -> Option<String> {
    (id == "AKID").then(|| "SECRET".to_string())
}

fn now() -> DateTime<Utc> {
    "2026-11-22T10:00:00Z".parse().unwrap()
}

fn rpc_query(ts: &str, nonce: &str) -> String {
    let mut p = vec![
        ("Action".to_string(), "DescribeInvocations".to_string()),
        ("RegionId".into(), "cn-hangzhou".into()),
        ("InstanceId.1".into(), "i-a b*~".into()),
    ];
    sign_rpc_v1("GET", &mut p, "AKID", "SECRET", nonce, ts);
    form_urlencoded::Serializer::new(String::new()).extend_pairs(p).finish()
}

fn parts<'a>(method: &'a str, q: &'a str, headers: &'a [(String, String)], body: &'a [u8]) -> RequestParts<'a> {
    RequestParts { method, path: "/", raw_query: q, headers, body, form_body: false }
}

#[test]
fn percent_encoding_follows_rfc3986() {
    assert_eq!(percent_encode("a b*~/+=中"), "a%20b%2A~%2F%2B%3D%E4%B8%AD");
}

#[test]
fn rpc_v1_round_trip_and_each_refusal() {
    let q = rpc_query("2026-11-22T10:00:00Z", "n1");
    let cache = NonceCache::default();
    assert_eq!(verify(&parts("GET", &q, &[], b""), keys, &cache, now()).unwrap().access_key_id, "AKID");
    // Replay.
    let e = verify(&parts("GET", &q, &[], b""), keys, &cache, now()).unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("SignatureNonceUsed", 400));
    // Tampered parameter.
    let tampered = q.replace("DescribeInvocations", "StopInvocation");
    let e = verify(&parts("GET", &tampered, &[], b""), keys, &NonceCache::default(), now()).unwrap_err();
    assert_eq!(e.code(), "SignatureDoesNotMatch");
    // Wrong method in the string to sign.
    let e = verify(&parts("POST", &q, &[], b""), keys, &NonceCache::default(), now()).unwrap_err();
    assert_eq!(e.code(), "SignatureDoesNotMatch");
    // Unknown key.
    let e = verify(&parts("GET", &q.replace("AKID", "OTHER"), &[], b""), keys, &NonceCache::default(), now()).unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("InvalidAccessKeyId.NotFound", 404));
    // Stale.
    let old = rpc_query("2026-11-22T09:40:00Z", "n2");
    let e = verify(&parts("GET", &old, &[], b""), keys, &NonceCache::default(), now()).unwrap_err();
    assert_eq!(e.code(), "InvalidTimeStamp.Expired");
    // Missing pieces.
    let e = verify(&parts("GET", "Action=X", &[], b""), keys, &NonceCache::default(), now()).unwrap_err();
    assert_eq!(e.code(), "IncompleteSignature");
}

#[test]
fn rpc_v1_form_body_fields_are_signed() {
    let q = rpc_query("2026-11-22T10:00:00Z", "n3");
    let p = RequestParts { method: "POST", path: "/", raw_query: "", headers: &[], body: q.as_bytes(), form_body: true };
    // Signed as GET above: the method is part of the signature.
    assert_eq!(verify(&p, keys, &NonceCache::default(), now()).unwrap_err().code(), "SignatureDoesNotMatch");
    let mut params = vec![("Action".to_string(), "RunCommand".to_string())];
    sign_rpc_v1("POST", &mut params, "AKID", "SECRET", "n4", "2026-11-22T10:00:00Z");
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let p = RequestParts { method: "POST", path: "/", raw_query: "", headers: &[], body: body.as_bytes(), form_body: true };
    assert!(verify(&p, keys, &NonceCache::default(), now()).is_ok());
}

#[test]
fn acs3_round_trip_and_refusals() {
    let body = b"";
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), "127.0.0.1:7070".into()),
        ("x-acs-action".into(), "RunCommand".into()),
        ("x-acs-version".into(), "2014-05-26".into()),
        ("x-acs-date".into(), "2026-11-22T10:00:01Z".into()),
        ("x-acs-signature-nonce".into(), "abc".into()),
        ("x-acs-content-sha256".into(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into()),
    ];
    let q = "InstanceId.1=i-1&CommandContent=ZWNobyBoaQ%3D%3D&Type=RunShellScript";
    let signed = ["host", "x-acs-action", "x-acs-content-sha256", "x-acs-date", "x-acs-signature-nonce", "x-acs-version"];
    let auth = acs3::sign(&parts("POST", q, &headers, body), &signed, "AKID", "SECRET");
    headers.push(("authorization".into(), auth));
    let cache = NonceCache::default();
    assert!(verify(&parts("POST", q, &headers, body), keys, &cache, now()).is_ok());
    assert_eq!(verify(&parts("POST", q, &headers, body), keys, &cache, now()).unwrap_err().code(), "SignatureNonceUsed");
    let e = verify(&parts("POST", &q.replace("i-1", "i-2"), &headers, body), keys, &NonceCache::default(), now()).unwrap_err();
    assert_eq!(e.code(), "SignatureDoesNotMatch");
    // A body that does not match its declared hash.
    let e = verify(&parts("POST", q, &headers, b"x"), keys, &NonceCache::default(), now()).unwrap_err();
    assert_eq!(e.code(), "SignatureDoesNotMatch");
}

#[test]
fn nonce_cache_is_bounded_and_expires() {
    let c = NonceCache::default();
    c.check_and_insert("k:1", now()).unwrap();
    assert!(c.check_and_insert("k:1", now()).is_err());
    // 31 minutes later the entry is gone (its timestamp could no longer pass).
    c.check_and_insert("k:2", now() + chrono::TimeDelta::minutes(31)).unwrap();
    assert!(c.check_and_insert("k:1", now() + chrono::TimeDelta::minutes(31)).is_ok());
}

/// Regression (issue #14): a request signed without an `Action` parameter
/// took its action from the unsigned `x-acs-action` header.
#[test]
fn action_comes_only_from_what_the_signature_covers() {
    // RPC v1 signed without Action; an attacker adds the header.
    let mut p = vec![("RegionId".to_string(), "cn-hangzhou".to_string())];
    sign_rpc_v1("GET", &mut p, "AKID", "SECRET", "n-act", "2026-11-22T10:00:00Z");
    let q = form_urlencoded::Serializer::new(String::new()).extend_pairs(p).finish();
    let headers = vec![("x-acs-action".to_string(), "DeregisterManagedInstance".to_string())];
    let v = verify(&parts("GET", &q, &headers, b""), keys, &NonceCache::default(), now()).unwrap();
    assert_eq!(v.action(None), None, "an unsigned header must not name the action");
    assert_eq!(v.action(Some("DescribeInvocations")).as_deref(), Some("DescribeInvocations"));

    // ACS3 with x-acs-action signed: the header counts.
    let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let base: Vec<(String, String)> = vec![
        ("host".into(), "h".into()),
        ("x-acs-action".into(), "DescribeInvocations".into()),
        ("x-acs-date".into(), "2026-11-22T10:00:01Z".into()),
        ("x-acs-signature-nonce".into(), "n-a3".into()),
        ("x-acs-content-sha256".into(), sha.into()),
    ];
    let mut h = base.clone();
    let signed = ["host", "x-acs-action", "x-acs-content-sha256", "x-acs-date", "x-acs-signature-nonce"];
    h.push(("authorization".into(), acs3::sign(&parts("POST", "", &base, b""), &signed, "AKID", "SECRET")));
    let v = verify(&parts("POST", "", &h, b""), keys, &NonceCache::default(), now()).unwrap();
    assert_eq!(v.action(None).as_deref(), Some("DescribeInvocations"));

    // ACS3 with the header present but not signed: ignored.
    let mut h = base.clone();
    h[3].1 = "n-a4".into();
    let signed = ["host", "x-acs-content-sha256", "x-acs-date", "x-acs-signature-nonce"];
    let auth = acs3::sign(&parts("POST", "", &h, b""), &signed, "AKID", "SECRET");
    h.push(("authorization".into(), auth));
    let v = verify(&parts("POST", "", &h, b""), keys, &NonceCache::default(), now()).unwrap();
    assert_eq!(v.action(None), None);
}
