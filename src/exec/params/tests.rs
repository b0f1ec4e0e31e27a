//! Unit tests of parameter rendering and the safety rule.

use super::*;
use serde_json::json;

fn map(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn b() -> Builtins {
    Builtins {
        instance_id: "i-abc123".into(),
        instance_name: "web-01".into(),
        invoke_id: "t-xyz".into(),
        command_id: "c-1".into(),
        region_id: "cn-hangzhou".into(),
    }
}

#[test]
fn disabled_leaves_content_alone() {
    let out = render_script("echo {{name}} {{ACS::InstanceId}}", false, &Map::new(), &b(), ValuePolicy::Strict).unwrap();
    assert_eq!(out, "echo {{name}} {{ACS::InstanceId}}");
}

#[test]
fn custom_and_builtins_with_whitespace_and_case() {
    let p = map(json!({"name": "Jack", "n-1": 42, "flag": true, "empty": null}));
    let s = "echo {{ name }} {{\n N-1 \n}} {{flag}}[{{empty}}] {{ACS::InstanceId}} {{acs::regionid}} {{ACS::InvokeId}} {{ACS::CommandId}} {{ACS::InstanceName}}";
    let out = render_script(s, true, &p, &b(), ValuePolicy::Strict).unwrap();
    assert_eq!(out, "echo Jack 42 true[] i-abc123 cn-hangzhou t-xyz c-1 web-01");
}

#[test]
fn go_templates_and_unclosed_braces_stay_literal() {
    let s = "docker inspect -f '{{.State.Running}}' x; echo {{ a b }} {{name}} {{";
    let out = render_script(s, true, &map(json!({"name": "v"})), &b(), ValuePolicy::Strict).unwrap();
    assert_eq!(out, "docker inspect -f '{{.State.Running}}' x; echo {{ a b }} v {{");
}

#[test]
fn missing_parameter_names_it() {
    let e = render_script("echo {{who}}", true, &Map::new(), &b(), ValuePolicy::Strict).unwrap_err();
    assert_eq!(e, ParamError::Missing("who".into()));
    assert_eq!(e.error_code(), "MissingParameter");
    assert!(e.to_string().contains("`who`"));
    let e = render_script("echo {{ACS::Zone}}", true, &Map::new(), &b(), ValuePolicy::Strict).unwrap_err();
    assert!(matches!(e, ParamError::UnknownBuiltin(ref n) if n == "ACS::Zone"));
}

#[test]
fn name_rules() {
    let too_many: Map<String, Value> = (0..=MAX_PARAMS).map(|i| (format!("p{i}"), json!("x"))).collect();
    assert_eq!(render_script("", true, &too_many, &b(), ValuePolicy::Strict).unwrap_err(), ParamError::TooMany { count: 21 });
    for bad in ["", "a b", "a.b", "a$b", "ü"] {
        let e = render_script("", true, &map(json!({ bad: "x" })), &b(), ValuePolicy::Strict).unwrap_err();
        assert_eq!(e, ParamError::BadName(bad.into()), "{bad:?}");
    }
    let long = "a".repeat(MAX_NAME_BYTES + 1);
    assert!(matches!(render_script("", true, &map(json!({ long.clone(): "x" })), &b(), ValuePolicy::Strict), Err(ParamError::BadName(_))));
    assert!(matches!(render_script(&format!("{{{{{long}}}}}"), true, &Map::new(), &b(), ValuePolicy::Strict), Err(ParamError::BadName(_))));
    let e = render_script("", true, &map(json!({"acs::InstanceId": "x"})), &b(), ValuePolicy::Strict).unwrap_err();
    assert!(matches!(e, ParamError::ReservedName(_)));
    let e = render_script("", true, &map(json!({"Dir": "a", "dir": "b"})), &b(), ValuePolicy::Strict).unwrap_err();
    assert!(matches!(e, ParamError::DuplicateName(..)));
    let e = render_script("", true, &map(json!({"x": [1]})), &b(), ValuePolicy::Strict).unwrap_err();
    assert_eq!(e, ParamError::BadValueType { name: "x".into(), kind: "array" });
}

#[test]
fn injection_attempts_are_refused_before_running() {
    for evil in ["; rm -rf /", "$(id)", "`id`", "a b", "x|y", "x&y", "x\ny", "'", "\"", "*", "~", "%PATH%", "a>b", "{a}", "\\", "a;b", "ａ"]
    {
        let e = render_script("echo {{v}}", true, &map(json!({ "v": evil })), &b(), ValuePolicy::Strict).unwrap_err();
        match e {
            ParamError::UnsafeValue { ref name, ref env, .. } => {
                assert_eq!(name, "v");
                assert_eq!(env, "DECKHAND_PARAM_V");
            }
            other => panic!("{evil:?} gave {other:?}"),
        }
    }
    // An unused unsafe value does not block the run: it only travels in the environment.
    assert_eq!(render_script("echo ok", true, &map(json!({"v": "$(id)"})), &b(), ValuePolicy::Strict).unwrap(), "echo ok");
    // Built-ins obey the same rule.
    let mut bad = b();
    bad.instance_name = "web 01;reboot".into();
    assert!(matches!(
        render_script("echo {{ACS::InstanceName}}", true, &Map::new(), &bad, ValuePolicy::Strict),
        Err(ParamError::UnsafeValue { .. })
    ));
}

#[test]
fn safe_values_pass() {
    let v = "user@host:/var/lib/x-1_2.tar.gz,a=b+c";
    assert_eq!(render_script("cp {{v}}", true, &map(json!({ "v": v })), &b(), ValuePolicy::Strict).unwrap(), format!("cp {v}"));
}

#[test]
fn size_bounds() {
    let v = "a".repeat(MAX_VALUE_BYTES + 1);
    assert!(matches!(render_script("", true, &map(json!({ "v": v })), &b(), ValuePolicy::Strict), Err(ParamError::ValueTooLong { .. })));
    let v = "a".repeat(10_000);
    let e = render_script("{{v}}{{v}}", true, &map(json!({ "v": v })), &b(), ValuePolicy::Strict).unwrap_err();
    assert!(matches!(e, ParamError::TooLarge { .. }));
    assert_eq!(e.error_code(), crate::exec::codes::INVALID_COMMAND_CONTENT);
}

#[test]
fn env_carries_any_text_verbatim() {
    let env = param_env(&map(json!({"my-msg": "; rm -rf / $(id)", "n": 3}))).unwrap();
    assert!(env.contains(&("DECKHAND_PARAM_MY_MSG".into(), "; rm -rf / $(id)".into())));
    assert!(env.contains(&("DECKHAND_PARAM_N".into(), "3".into())));
    assert_eq!(param_env(&map(json!({"v": "a\u{0}b"}))).unwrap_err(), ParamError::NulInValue { name: "v".into() });
}

proptest::proptest! {
    /// Whatever the value, rendering either refuses it or yields the template
    /// with only safe characters added.
    #[test]
    fn rendered_text_never_gains_metacharacters(v in "\\PC{0,40}") {
        let p = map(json!({ "v": v.clone() }));
        if let Ok(out) = render_script("echo {{v}}", true, &p, &b(), ValuePolicy::Strict) {
            let added = out.strip_prefix("echo ").unwrap_or_default();
            proptest::prop_assert!(is_safe_value(added).is_ok());
            proptest::prop_assert_eq!(added, v.as_str());
        }
    }
}

#[test]
fn custom_names_follow_the_rendering_rules() {
    let names = super::custom_names("echo {{who}} {{ACS::InstanceId}} {{ .Name }} {{WHO}} {{ where }} {{unterminated");
    assert_eq!(names, vec!["who".to_string(), "where".to_string()]);
}

#[test]
fn any_policy_splices_values_as_cloud_assistant_does() {
    // Cloud Assistant splices values verbatim; an unchanged script with a
    // value like "hello world" must work under the default policy.
    let p = map(json!({"greeting": "hello world", "evil": "a b;c"}));
    let out = render_script("echo {{greeting}} {{evil}}", true, &p, &b(), ValuePolicy::default()).unwrap();
    assert_eq!(out, "echo hello world a b;c");
    // No re-expansion: a value holding `{{…}}` stays literal.
    let p = map(json!({"v": "{{ACS::InstanceId}}"}));
    assert_eq!(render_script("{{v}}", true, &p, &b(), ValuePolicy::Any).unwrap(), "{{ACS::InstanceId}}");
    // NUL is refused whatever the policy.
    let p = map(json!({"v": "a\u{0}b"}));
    assert!(matches!(render_script("{{v}}", true, &p, &b(), ValuePolicy::Any), Err(ParamError::NulInValue { .. })));
}

/// Regression (issue #14): names and `{{…}}` holding multi-byte characters
/// were sliced at a byte index and aborted the hub and the agent.
#[test]
fn multibyte_names_and_placeholders_never_panic() {
    for inner in ["abcdé", "é", "acsé", "ACS:é", "ACS::é", "ACS::Instanceé", "ab\u{10FFFF}", "日本語", "a\u{301}"] {
        let script = format!("echo {{{{{inner}}}}} {{{{ {inner} }}}}");
        let _ = custom_names(&script);
        for policy in [ValuePolicy::Any, ValuePolicy::Strict] {
            let out = render_script(&script, true, &map(json!({"x": "1"})), &b(), policy);
            assert_eq!(out.unwrap(), script, "{inner:?} is not a parameter name: stays literal");
        }
    }
    for name in ["abcdé", "é", "acsé", "ACS:é", "ACS::é", "日本語日本語"] {
        let e = render_script("echo", true, &map(json!({ name: "1" })), &b(), ValuePolicy::Any).unwrap_err();
        assert!(matches!(e, ParamError::BadName(_) | ParamError::ReservedName(_)), "{name:?}: {e:?}");
        assert!(param_env(&map(json!({ name: "1" }))).is_err());
    }
}

proptest::proptest! {
    /// Any text as script, parameter name or value: rendering and name
    /// scanning return, never panic.
    #[test]
    fn arbitrary_text_never_panics(script in "\\PC{0,60}", name in "\\PC{0,12}", v in "\\PC{0,12}") {
        let p = map(json!({ name: v }));
        let _ = custom_names(&script);
        let _ = render_script(&script, true, &p, &b(), ValuePolicy::Any);
        let _ = render_script(&script, true, &p, &b(), ValuePolicy::Strict);
        let _ = param_env(&p);
    }
}
