//! `deckhand bench policy`: the cost of one authorization decision
//! (issue #18 asks < 50 µs per call at 100 policies). Pure evaluation of a
//! parsed policy with N statements, the worst case: every statement is
//! consulted (no early Deny) and the call names several tagged instances.

use std::sync::Arc;
use std::time::Instant;

use crate::hub::authz::{Access, Policy, Principal, Target, check};
use crate::lifecycle::CommandType;

use super::CliError;

pub fn run(statements: usize, calls: usize) -> Result<(), CliError> {
    // Statements that all need their conditions examined: wildcard
    // actions that match, instance scopes by tag that mostly miss.
    let mut list: Vec<String> = (0..statements.saturating_sub(1))
        .map(|i| format!(r#"{{"Effect":"Allow","Action":["Describe*","Run*"],"Instance":["i-team{i}-*","tag:team=t{i}"],"CommandType":"RunShellScript","Username":["deploy","svc-*","default"]}}"#))
        .collect();
    list.push(r#"{"Effect":"Allow","Action":"RunCommand","Instance":"tag:env=staging"}"#.to_string());
    let doc = format!(r#"{{"Version":"1","Statement":[{}]}}"#, list.join(","));
    let parse_start = Instant::now();
    let policy = Policy::parse(&doc).map_err(|e| CliError::Usage(e.to_string()))?;
    let parse = parse_start.elapsed();
    let principal = Principal::Stored { key_id: "bench".into(), policy: Some(Arc::new(policy)) };
    let tags: Vec<Vec<(String, String)>> =
        (0..10).map(|i| vec![("env".to_string(), "staging".to_string()), ("rack".to_string(), format!("r{i}"))]).collect();
    let ids: Vec<String> = (0..10).map(|i| format!("mi-{i:020}")).collect();
    println!(
        "policy evaluation: one policy of {statements} statements, {calls} calls each (build: {})",
        if cfg!(debug_assertions) { "debug, unoptimised: expect several times the release figure" } else { "release" }
    );
    println!("  parse once:                {:.1} µs", parse.as_secs_f64() * 1e6);
    for n in [1usize, 10] {
        let start = Instant::now();
        let mut allowed = 0usize;
        for _ in 0..calls {
            let targets = ids.iter().zip(&tags).take(n).map(|(id, t)| Target { id, tags: t }).collect();
            let a = Access {
                action: "RunCommand",
                targets,
                command_type: Some(CommandType::RunShellScript),
                command_id: None,
                username: Some(""),
            };
            allowed += check(&principal, std::hint::black_box(&a)).is_ok() as usize;
        }
        let per_call = start.elapsed().as_secs_f64() * 1e6 / calls.max(1) as f64;
        if allowed != calls {
            return Err(CliError::Usage(format!("benchmark policy refused {} of {calls} calls", calls - allowed)));
        }
        println!("  per call, {n:>2} instance(s):  {per_call:.2} µs (issue #18 bound: 50 µs)");
    }
    Ok(())
}
