//! `deckhand bench signature`: the hub's cost of canonicalising one signed
//! `RunCommand` (issue #21: `percent_encode` allocated a String per escaped
//! byte, 16 % of a signed call's hub CPU). Times the hub's `canonical`
//! beside the form it replaced, in one run on one build.

use std::time::{Duration, Instant};

use base64::Engine;

use super::CliError;
use crate::hub::signature::{canonical, pairs};

/// The form `canonical` replaced, kept only as this benchmark's reference.
fn reference_canonical(pairs: &[(String, String)]) -> String {
    fn encode(s: &str) -> String {
        let mut out = String::with_capacity(s.len() * 3);
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    let mut enc: Vec<(String, String)> = pairs.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    enc.sort();
    enc.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

fn per_call(calls: usize, f: impl Fn() -> usize) -> (Duration, usize) {
    let t = Instant::now();
    let mut sink = 0usize;
    for _ in 0..calls {
        sink = sink.wrapping_add(f());
    }
    (t.elapsed() / calls.max(1) as u32, sink)
}

pub fn run(calls: usize) -> Result<(), CliError> {
    // A RunCommand as the SDKs send it: a 2 KiB script (base64: `+`, `/`,
    // `=` need escaping), 10 instances, the common parameters.
    let script: Vec<u8> = (0..2048u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut raw: Vec<(String, String)> = vec![
        ("Action".into(), "RunCommand".into()),
        ("Version".into(), "2014-05-26".into()),
        ("Format".into(), "JSON".into()),
        ("RegionId".into(), "cn-hangzhou".into()),
        ("AccessKeyId".into(), "LTAI5tExampleKey0001".into()),
        ("SignatureMethod".into(), "HMAC-SHA1".into()),
        ("SignatureVersion".into(), "1.0".into()),
        ("SignatureNonce".into(), "3f1b9c1e-5a8e-4a53-9a0c-6f4d2b7e8c11".into()),
        ("Timestamp".into(), "2026-11-24T10:00:00Z".into()),
        ("Type".into(), "RunShellScript".into()),
        ("ContentEncoding".into(), "Base64".into()),
        ("CommandContent".into(), base64::engine::general_purpose::STANDARD.encode(&script)),
        ("Timeout".into(), "60".into()),
    ];
    raw.extend((1..=10).map(|i| (format!("InstanceId.{i}"), format!("mi-{i:020}"))));
    let form = form_urlencoded::Serializer::new(String::new()).extend_pairs(raw.iter()).finish();
    let params = pairs(form.as_bytes());
    if canonical(&params) != reference_canonical(&params) {
        return Err(CliError::Usage("bench: canonical forms differ".into()));
    }
    let (new, _) = per_call(calls, || canonical(&params).len());
    let (old, _) = per_call(calls, || reference_canonical(&params).len());
    println!("signature canonicalisation: one signed RunCommand ({} bytes of parameters), {calls} calls each", form.len());
    println!("  before (a String per escaped byte): {:.2} µs per call", old.as_secs_f64() * 1e6);
    println!("  now (one buffer, spans sorted):     {:.2} µs per call", new.as_secs_f64() * 1e6);
    println!("  ratio before / now:                 {:.1}x", old.as_secs_f64() / new.as_secs_f64().max(1e-12));
    Ok(())
}
