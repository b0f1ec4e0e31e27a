//! The console's HTTP contract against a real hub (TLS, SQLite), without a
//! browser (tests/console_browser.rs drives the pages): a console session
//! acts with exactly its principal's API permissions and is audited like
//! an API call; a hub.toml console user acts with its bound key; CSRF,
//! cross-site and form sign-in, disabled keys, per-user sign-in limits,
//! hostile bodies and cookies, watch limits and `[console] enabled = false`.

#[path = "support/harness.rs"]
mod harness;

use std::sync::Arc;

use harness::Hub;
use serde_json::Value;

struct Browser {
    http: ureq::Agent,
    base: String,
    cookie: String,
    csrf: String,
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    json: Value,
}

impl Browser {
    fn new(hub: &Hub) -> Self {
        deckhand::tls::install_crypto_provider();
        let pem = std::fs::read(&hub.ca).unwrap();
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
            .build();
        let http: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().into();
        Self { http, base: hub.url.clone(), cookie: String::new(), csrf: String::new() }
    }

    fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let mut r = r.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        Answer { status, headers, json: serde_json::from_str(&text).unwrap_or(Value::Null) }
    }

    fn sign_in(&mut self, body: Value, origin: Option<&str>) -> Answer {
        let mut req = self.http.post(format!("{}/console/sign-in", self.base)).header("content-type", "application/json");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let a = Self::answer(req.send(body.to_string().as_bytes()));
        if a.status == 200 {
            let set = a.headers.iter().find(|(k, _)| k == "set-cookie").map(|(_, v)| v.clone()).expect("set-cookie");
            for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
                assert!(set.contains(flag), "cookie lacks {flag}: {set}");
            }
            self.cookie = set.split(';').next().unwrap().to_string();
            self.csrf = a.json["CsrfToken"].as_str().unwrap().to_string();
        }
        a
    }

    fn call(&self, action: &str, params: &[(&str, &str)], csrf: Option<&str>) -> Answer {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        let mut req = self
            .http
            .post(format!("{}/console/api/{action}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", &self.cookie);
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        Self::answer(req.send(body.as_bytes()))
    }

    fn get(&self, path: &str) -> Answer {
        Self::answer(self.http.get(format!("{}{path}", self.base)).header("cookie", &self.cookie).call())
    }
}

#[test]
fn a_console_session_has_its_keys_permissions_and_is_audited() {
    let hub = Hub::start();
    let policy = r#"{"Statement":[{"Effect":"Allow","Action":"Describe*"}]}"#;
    let created = hub.call("CreateAccessKey", &[("PolicyDocument", policy)]).expect("create key");
    let (id, secret) = (created["AccessKeyId"].as_str().unwrap().to_string(), created["AccessKeySecret"].as_str().unwrap().to_string());
    let mut b = Browser::new(&hub);

    // Sign-in must come from the console's own origin, as JSON.
    let evil = b.sign_in(serde_json::json!({ "access_key_id": id, "access_key_secret": secret }), Some("https://evil.example"));
    assert_eq!((evil.status, evil.json["Code"].as_str()), (403, Some("Console.CrossSiteRefused")));
    let wrong = b.sign_in(serde_json::json!({ "access_key_id": id, "access_key_secret": "nope" }), None);
    assert_eq!((wrong.status, wrong.json["Code"].as_str()), (401, Some("Console.SignInFailed")));
    let ok = b.sign_in(serde_json::json!({ "access_key_id": id, "access_key_secret": secret }), Some(&hub.url));
    assert_eq!(ok.status, 200, "{}", ok.json);
    assert_eq!(b.get("/console/session").json["FullAccess"], false);

    // Reads the policy allows pass; a run it does not allow is refused
    // exactly as the API refuses it, and the refusal is in the audit trail.
    let r = b.call("DescribeInvocations", &[], Some(&b.csrf));
    assert_eq!(r.status, 200, "{}", r.json);
    assert!(r.json["RequestId"].is_string());
    let params = [("Type", "RunShellScript"), ("CommandContent", "id"), ("InstanceId.1", "mi-x")];
    let r = b.call("RunCommand", &params, Some(&b.csrf));
    assert_eq!((r.status, r.json["Code"].as_str()), (403, Some("Forbidden.RAM")), "{}", r.json);
    assert!(r.json["Message"].as_str().unwrap().contains(&id), "{}", r.json);
    let trail = hub.call("DescribeAuditEvents", &[("UserAccessKeyId", &id)]).expect("audit");
    let events = trail["AuditEvents"]["AuditEvent"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["Action"] == "RunCommand" && e["Outcome"] == "Forbidden.RAM" && e["SourceIp"] == "127.0.0.1"),
        "{trail}"
    );
    // Invalid parameters are the API's errors, naming the field.
    let r = b.call("DescribeInvocations", &[("PageSize", "5000")], Some(&b.csrf));
    assert_eq!((r.status, r.json["Code"].as_str()), (400, Some("InvalidParameter.PageSize")), "{}", r.json);

    // No CSRF token, or a wrong one: refused before anything runs.
    for token in [None, Some("0".repeat(64))] {
        let r = b.call("DescribeInvocations", &[], token.as_deref());
        assert_eq!((r.status, r.json["Code"].as_str()), (403, Some("Console.CsrfTokenInvalid")));
    }
    // Only reads can be watched.
    let w = b.get("/console/watch?Action=RunCommand&Type=RunShellScript");
    assert_eq!((w.status, w.json["Code"].as_str()), (400, Some("InvalidParameter.Action")));

    // Disabling the key ends what the session may do at once.
    hub.call("DisableAccessKey", &[("UserAccessKeyId", &id)]).expect("disable");
    let r = b.call("DescribeInvocations", &[], Some(&b.csrf));
    assert_eq!((r.status, r.json["Code"].as_str()), (403, Some("InvalidAccessKeyId.Inactive")), "{}", r.json);

    // Sign-out ends the session.
    let out = Browser::answer(
        b.http.post(format!("{}/console/sign-out", hub.url)).header("cookie", &b.cookie).header("x-csrf-token", &b.csrf).send(&b""[..]),
    );
    assert_eq!(out.status, 200, "{}", out.json);
    assert_eq!(b.get("/console/session").status, 401);
    // Security headers on the page itself.
    let page = Browser::answer(b.http.get(format!("{}/console/", hub.url)).call());
    let csp = page.headers.iter().find(|(k, _)| k == "content-security-policy").map(|(_, v)| v.as_str()).unwrap_or("");
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
}

#[test]
fn console_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hub.toml");
    std::fs::write(&cfg, "[console]\nenabled = false\n").unwrap();
    let hub = Hub::start_with(&["--config", cfg.to_str().unwrap()]);
    let b = Browser::new(&hub);
    assert_eq!(b.get("/console/").status, 404);
    assert!(hub.call("DescribeInvocations", &[]).is_ok(), "the API is unaffected");
}

#[test]
fn a_console_user_is_bound_to_its_key_and_hostile_requests_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hub.toml");
    let hash = deckhand::hub::console::hash_password("s3cret-pass").unwrap();
    // The key is created after start: a user's key is resolved per request.
    std::fs::write(
        &cfg,
        format!(
            "[console]\naccess_key_sign_in = false\n[[console.users]]\nname = \"ops\"\npassword_hash = \"{hash}\"\naccess_key_id = \"LTAIconsoleops01\"\n"
        ),
    )
    .unwrap();
    let hub = Hub::start_with(&["--config", cfg.to_str().unwrap()]);
    let mut b = Browser::new(&hub);
    // The user's key does not exist yet: the right password still gives no session.
    let r = b.sign_in(serde_json::json!({ "user": "ops", "password": "s3cret-pass" }), None);
    assert_eq!((r.status, r.json["Code"].as_str()), (403, Some("InvalidAccessKeyId.NotFound")), "{}", r.json);
    // AccessKey sign-in is off on this hub.
    let r = b.sign_in(serde_json::json!({ "access_key_id": harness::AK_ID, "access_key_secret": harness::AK_SECRET }), None);
    assert_eq!((r.status, r.json["Code"].as_str()), (403, Some("Console.AccessKeySignInDisabled")));

    // Hostile input: refused with the field named, never a panic.
    let raw =
        |body: &[u8], ct: &str| Browser::answer(b.http.post(format!("{}/console/sign-in", hub.url)).header("content-type", ct).send(body));
    let r = raw(b"{not json", "application/json");
    assert_eq!((r.status, r.json["Code"].as_str()), (400, Some("InvalidParameter.Body")));
    let r = raw(b"user=ops&password=x", "application/x-www-form-urlencoded");
    assert_eq!((r.status, r.json["Code"].as_str()), (403, Some("Console.CrossSiteRefused")), "a form post cannot sign in");
    let long = serde_json::json!({ "user": "ops", "password": "x".repeat(5000) }).to_string();
    let r = raw(long.as_bytes(), "application/json");
    assert_eq!((r.status, r.json["Code"].as_str()), (400, Some("InvalidParameter.Password")));
    let r = Browser::answer(
        b.http.get(format!("{}/console/session", hub.url)).header("cookie", format!("deckhand_console={}; x=;;=", "z".repeat(64))).call(),
    );
    assert_eq!(r.status, 401);
    let big = vec![b'a'; 300 * 1024];
    // The hub answers 413 from the length alone and closes without reading
    // the rest, so a loaded machine may show the client a broken pipe
    // before the answer: both are the refusal; a 2xx would not be.
    match b.http.post(format!("{}/console/api/DescribeInvocations", hub.url)).send(&big[..]) {
        Ok(r) => assert_eq!(r.status().as_u16(), 413, "bodies are bounded as on the API"),
        Err(ureq::Error::Io(e)) => {
            assert!(matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset), "{e}")
        }
        Err(e) => panic!("over-size body: {e}"),
    }

    // Wrong passwords for one user are limited, whatever the address says.
    for _ in 0..5 {
        assert_eq!(b.sign_in(serde_json::json!({ "user": "ops", "password": "guess" }), None).status, 401);
    }
    let r = b.sign_in(serde_json::json!({ "user": "ops", "password": "guess" }), None);
    assert_eq!((r.status, r.json["Code"].as_str()), (429, Some("Throttling.SignIn")));
    assert!(r.headers.iter().any(|(k, v)| k == "retry-after" && v.parse::<u64>().is_ok_and(|s| s > 0)), "Retry-After");
    // Even the right password waits out the window.
    let r = b.sign_in(serde_json::json!({ "user": "ops", "password": "s3cret-pass" }), None);
    assert_eq!(r.status, 429);
    // Another user is not affected by ops' failures (fewer than 10 from this address).
    let r = b.sign_in(serde_json::json!({ "user": "nobody", "password": "x" }), None);
    assert_eq!(r.status, 401);

    // Bind ops to a stored key with a read-only policy (hub.toml changed,
    // hub restarted): ops signs in and has exactly that key's rights.
    let created = hub.call("CreateAccessKey", &[("PolicyDocument", r#"{"Statement":[{"Effect":"Allow","Action":"Describe*"}]}"#)]).unwrap();
    let key = created["AccessKeyId"].as_str().unwrap().to_string();
    let text = std::fs::read_to_string(&cfg).unwrap().replace("LTAIconsoleops01", &key);
    std::fs::write(&cfg, text).unwrap();
    let mut hub = hub;
    hub.restart();
    let mut b = Browser::new(&hub);
    let r = b.sign_in(serde_json::json!({ "user": "ops", "password": "s3cret-pass" }), None);
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(b.get("/console/session").json["FullAccess"], false);
    assert_eq!(b.call("DescribeManagedInstances", &[], Some(&b.csrf)).status, 200);
    let r = b.call("RunCommand", &[("Type", "RunShellScript"), ("CommandContent", "id"), ("InstanceId.1", "mi-x")], Some(&b.csrf));
    assert_eq!((r.status, r.json["Code"].as_str()), (403, Some("Forbidden.RAM")), "{}", r.json);
    assert!(r.json["Message"].as_str().unwrap().contains(&key), "refused as the key: {}", r.json);
}
