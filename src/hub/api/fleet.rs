//! Fleet targeting and rate control for `RunCommand` / `InvokeCommand`
//! (issue #16, docs/fleet.md).
//!
//! Owns: parsing the target selector (`ResourceTag.N.Key/Value` as Cloud
//! Assistant defines it, and deckhand's `TargetAll`, `TargetOsType`,
//! `TargetArch`, `TargetHostname` extensions), resolving it against the
//! registered instances once, at creation, and parsing the rollout window
//! (`MaxConcurrency`, `MaxErrors`, `BatchWait`, deckhand extensions with
//! AWS SSM's meaning) into counts. The window itself moves in the store
//! (`store::sql::window`).

use axum::http::StatusCode;

use super::Request;
use super::error::ApiError;
use super::params::Params;
use crate::hub::store::{InstanceRow, Window};
use crate::lifecycle::RepeatMode;

/// Most targets one tag- or fact-targeted invocation may reach: one
/// invocation row, its targets inserted in one transaction. `InstanceId.N`
/// keeps Alibaba's 1–100.
pub const MAX_FLEET_TARGETS: usize = 100_000;
/// Cloud Assistant accepts at most 20 `ResourceTag.N` pairs.
pub const MAX_RESOURCE_TAGS: usize = 20;
/// Longest hostname glob.
const MAX_GLOB_LEN: usize = 255;
/// Longest `BatchWait` (seconds): one hour between targets is already slow.
const MAX_BATCH_WAIT: i64 = 3600;

/// Which instances a tag- or fact-targeted invocation reaches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// (key, value); `None` matches any value of the key.
    pub tags: Vec<(String, Option<String>)>,
    /// deckhand: `TargetAll=true`, every instance whose agent is connected.
    pub all_online: bool,
    /// deckhand: `TargetOsType` (`linux`, `windows`, …; case-insensitive).
    pub os_type: Option<String>,
    /// deckhand: `TargetArch` (`x86_64`, `aarch64`, …; case-insensitive).
    pub arch: Option<String>,
    /// deckhand: `TargetHostname`, a glob (`*` any run, `?` one character).
    pub hostname: Option<String>,
}

impl Selector {
    /// The selector the request names, `None` when it names none (then
    /// `InstanceId.N` is required, as Alibaba's API does).
    pub fn from_params(p: &Params) -> Result<Option<Selector>, ApiError> {
        let mut tags = Vec::new();
        for (k, v) in p.tags("ResourceTag")? {
            if k.is_empty() {
                return Err(ApiError::invalid("ResourceTag.N.Key", "must not be empty"));
            }
            if v.chars().count() > 128 {
                return Err(ApiError::invalid("ResourceTag.N.Value", "longer than 128 characters"));
            }
            tags.push((k, (!v.is_empty()).then_some(v)));
        }
        if tags.len() > MAX_RESOURCE_TAGS {
            return Err(ApiError::invalid("ResourceTag", format!("{} tags, the limit is {MAX_RESOURCE_TAGS}", tags.len())));
        }
        let word = |field: &str| -> Result<Option<String>, ApiError> {
            let v = p.string(field, 64)?;
            Ok(v.filter(|s| !s.is_empty()).map(|s| s.to_ascii_lowercase()))
        };
        let sel = Selector {
            tags,
            all_online: p.bool("TargetAll")?.unwrap_or(false),
            os_type: word("TargetOsType")?,
            arch: word("TargetArch")?,
            hostname: p.string("TargetHostname", MAX_GLOB_LEN)?.filter(|s| !s.is_empty()),
        };
        if sel == Selector::default() {
            return Ok(None);
        }
        if !p.list("InstanceId")?.is_empty() {
            return Err(ApiError::invalid(
                "InstanceId",
                "give either InstanceId.N or a selector (ResourceTag.N, TargetAll, TargetOsType, TargetArch, TargetHostname), not both",
            ));
        }
        Ok(Some(sel))
    }

    /// Whether `inst` is selected (its connection state aside, except for
    /// `TargetAll`, which selects only connected instances).
    pub fn matches(&self, inst: &InstanceRow) -> bool {
        let tags_ok = self.tags.iter().all(|(k, v)| inst.tags.iter().any(|(ik, iv)| ik == k && v.as_ref().is_none_or(|v| v == iv)));
        let eq = |want: &Option<String>, have: &str| want.as_ref().is_none_or(|w| w.eq_ignore_ascii_case(have));
        tags_ok
            && (!self.all_online || inst.online)
            && eq(&self.os_type, &inst.facts.os_type)
            && eq(&self.arch, &inst.facts.arch)
            && self.hostname.as_ref().is_none_or(|g| glob_match(g, &inst.facts.hostname))
    }
}

/// `*` matches any run of characters, `?` exactly one; everything else
/// itself, case-insensitively (hostnames are). Iterative, no recursion:
/// O(pattern × name) in the worst case, both bounded.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|c| *c == '*')
}

/// The targets a selector resolved to at creation: every matching
/// instance (id, name), and those of them whose agent is not connected
/// (they end at once, `Aborted` with `ClientNotRunning`).
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub targets: Vec<(String, String)>,
    pub unreachable: Vec<String>,
    /// Reachable targets whose agent does not ask before a fire
    /// (`HostFacts::fire_grants`): how many, and the first by id.
    pub without_fire_grants: (usize, Option<String>),
}

impl Resolved {
    /// Notes whether a reachable target's agent asks the hub before each fire.
    pub fn note_fire_grants(&mut self, inst: &InstanceRow) {
        if !inst.facts.fire_grants {
            let (n, first) = &mut self.without_fire_grants;
            *n += 1;
            if first.as_ref().is_none_or(|f| inst.instance_id < *f) {
                *first = Some(inst.instance_id.clone());
            }
        }
    }
}

/// Registered instances read per page while resolving a selector: memory
/// is one page of rows plus the matches' ids and names, whatever the fleet.
const RESOLVE_PAGE: i64 = 1000;

/// Resolves `sel` against every registered instance, streamed in keyset
/// pages by instance id (never the whole fleet in memory; matches bounded
/// by [`MAX_FLEET_TARGETS`]). Every matched instance must be one the
/// caller's key may touch with this `action` (its policy is checked again
/// with each page's matches; issue #18): a match the key may not reach
/// refuses the whole call, naming it, never silently dropping it.
pub async fn resolve(req: &Request<'_>, sel: &Selector, action: &str) -> Result<Resolved, ApiError> {
    let mut out = Resolved::default();
    let mut after = String::new();
    loop {
        let page = req.hub.store.instances_after(&after, RESOLVE_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.instance_id.clone();
        let last_page = (page.len() as i64) < RESOLVE_PAGE;
        let matched: Vec<InstanceRow> = page.into_iter().filter(|i| sel.matches(i)).collect();
        if out.targets.len() + matched.len() > MAX_FLEET_TARGETS {
            return Err(ApiError::invalid(
                "ResourceTag",
                format!("the selector matches more than {MAX_FLEET_TARGETS} instances, the limit of one invocation"),
            ));
        }
        if !matched.is_empty() {
            super::guard::authorize_resolved(req, action, &matched).await?;
        }
        for inst in matched {
            if !inst.online {
                out.unreachable.push(inst.instance_id.clone());
            } else {
                out.note_fire_grants(&inst);
            }
            out.targets.push((inst.instance_id, inst.instance_name));
        }
        if last_page {
            break;
        }
    }
    if out.targets.is_empty() {
        // The call itself is decided even when nothing matched.
        super::guard::authorize_resolved(req, action, &[]).await?;
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "InvalidInstance.NotFound",
            "No registered instance matches the given ResourceTag / target selector.",
        ));
    }
    Ok(out)
}

/// A count (`10`) or a percentage of `targets` (`10%`), as SSM accepts.
/// Percentages of concurrency round up (never 0), of errors down.
fn count_or_percent(p: &Params, field: &str, targets: usize, min: i64, round_up: bool) -> Result<Option<i64>, ApiError> {
    let Some(raw) = p.get(field).map(str::trim) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::invalid(
            field,
            format!("{:?} is not a count ({min}..=100000) or a percentage (0%..=100%)", raw.chars().take(16).collect::<String>()),
        )
    };
    if let Some(pct) = raw.strip_suffix('%') {
        let pct: i64 = pct.trim().parse().map_err(|_| bad())?;
        if !(0..=100).contains(&pct) {
            return Err(bad());
        }
        let t = targets as i64;
        let n = if round_up { (t * pct + 99) / 100 } else { t * pct / 100 };
        return Ok(Some(n.max(min)));
    }
    let n: i64 = raw.parse().map_err(|_| bad())?;
    if !(min..=MAX_FLEET_TARGETS as i64).contains(&n) {
        return Err(bad());
    }
    Ok(Some(n))
}

/// The rollout window the request asks for, resolved against the number
/// of targets. `Once`: a window over targets. `Period`: a window over each
/// fire (`store::sql::fires`; `BatchWait` has no meaning there and is
/// refused). Refused for boot-triggered modes: their targets stay armed
/// (`Scheduled`/`Running`) and have no fire the hub could hold
/// (docs/fleet.md says so).
pub fn window(p: &Params, targets: usize, mode: RepeatMode) -> Result<Window, ApiError> {
    let max_concurrency = count_or_percent(p, "MaxConcurrency", targets, 1, true)?;
    let max_errors = count_or_percent(p, "MaxErrors", targets, 0, false)?;
    let batch_wait = p.int("BatchWait", 0, MAX_BATCH_WAIT)?;
    if max_concurrency.is_none() && max_errors.is_none() && batch_wait.is_none() {
        return Ok(Window::default());
    }
    if mode == RepeatMode::Period && batch_wait.is_some() {
        return Err(ApiError::invalid("BatchWait", "BatchWait applies to RepeatMode Once only; a Period window is per fire"));
    }
    if mode != RepeatMode::Once && mode != RepeatMode::Period {
        return Err(ApiError::invalid(
            "MaxConcurrency",
            format!(
                "rate control applies to RepeatMode Once and Period only, not {mode}: a {mode} target stays armed and never frees its slot"
            ),
        ));
    }
    Ok(Window {
        // MaxErrors or BatchWait alone: a window as wide as the fleet
        // (BatchWait alone: one at a time).
        max_concurrency: max_concurrency.unwrap_or(if batch_wait.is_some() && max_errors.is_none() { 1 } else { targets as i64 }),
        max_errors,
        batch_wait_secs: batch_wait.unwrap_or(0),
    })
}

/// A per-fire window needs every reachable target's agent to ask before
/// each fire: one that does not (0.1.0, or built before fire grants) would
/// fire unwindowed, so the call is refused naming it.
pub fn require_fire_grants(w: &Window, mode: RepeatMode, resolved: &Resolved) -> Result<(), ApiError> {
    if mode != RepeatMode::Period || w.max_concurrency <= 0 {
        return Ok(());
    }
    match &resolved.without_fire_grants {
        (0, _) | (_, None) => Ok(()),
        (n, Some(first)) => Err(ApiError::invalid(
            "MaxConcurrency",
            format!(
                "instance {first}{} runs a deckhand-agent that does not ask the hub before each fire, so a Period window \
                 cannot hold it; upgrade the agent, or run without MaxConcurrency/MaxErrors",
                if *n > 1 { format!(" (and {} more)", n - 1) } else { String::new() }
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::HostFacts;

    fn inst(id: &str, tags: &[(&str, &str)], online: bool, os: &str, host: &str) -> InstanceRow {
        InstanceRow {
            instance_id: id.into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            online,
            facts: HostFacts { os_type: os.into(), hostname: host.into(), arch: "x86_64".into(), ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn tags_all_must_match_and_a_bare_key_matches_any_value() {
        let p = Params::parse("ResourceTag.1.Key=env&ResourceTag.1.Value=prod&ResourceTag.2.Key=team", b"").unwrap();
        let sel = Selector::from_params(&p).unwrap().unwrap();
        assert!(sel.matches(&inst("a", &[("env", "prod"), ("team", "x")], true, "linux", "h")));
        assert!(!sel.matches(&inst("b", &[("env", "prod")], true, "linux", "h")));
        assert!(!sel.matches(&inst("c", &[("env", "dev"), ("team", "x")], true, "linux", "h")));
        // Offline instances match (they end ClientNotRunning), except under TargetAll.
        assert!(sel.matches(&inst("d", &[("env", "prod"), ("team", "")], false, "linux", "h")));
        let all = Selector::from_params(&Params::parse("TargetAll=true&TargetOsType=Linux", b"").unwrap()).unwrap().unwrap();
        assert!(all.matches(&inst("e", &[], true, "linux", "h")));
        assert!(!all.matches(&inst("f", &[], false, "linux", "h")));
        assert!(!all.matches(&inst("g", &[], true, "windows", "h")));
    }

    #[test]
    fn selector_and_instance_ids_do_not_mix_and_none_is_none() {
        let p = Params::parse("ResourceTag.1.Key=env&InstanceId.1=i-1", b"").unwrap();
        assert_eq!(Selector::from_params(&p).unwrap_err().code, "InvalidParameter.InstanceId");
        assert_eq!(Selector::from_params(&Params::parse("InstanceId.1=i-1", b"").unwrap()).unwrap(), None);
        let many: String = (1..=21).map(|i| format!("ResourceTag.{i}.Key=k{i}&")).collect();
        assert_eq!(Selector::from_params(&Params::parse(&many, b"").unwrap()).unwrap_err().code, "InvalidParameter.ResourceTag");
    }

    #[test]
    fn hostname_globs() {
        assert!(glob_match("web-*", "web-01"));
        assert!(glob_match("WEB-?1", "web-01"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*-db-*", "eu-db-3"));
        assert!(!glob_match("web-*", "db-01"));
        assert!(!glob_match("web-?", "web-10"));
        assert!(glob_match("ä*", "äbc"));
        // Pathological patterns stay linear-ish, not exponential.
        let name = "a".repeat(200);
        assert!(!glob_match(&format!("{}b", "*a".repeat(50)), &name));
    }

    #[test]
    fn a_period_window_needs_every_agent_to_ask_before_fires() {
        let mut r = Resolved::default();
        let mut new = inst("mi-b", &[], true, "linux", "b");
        new.facts.fire_grants = true;
        r.note_fire_grants(&new);
        let w = Window { max_concurrency: 2, max_errors: None, batch_wait_secs: 0 };
        assert!(require_fire_grants(&w, RepeatMode::Period, &r).is_ok());
        r.note_fire_grants(&inst("mi-z", &[], true, "linux", "z"));
        r.note_fire_grants(&inst("mi-c", &[], true, "linux", "c"));
        let e = require_fire_grants(&w, RepeatMode::Period, &r).unwrap_err();
        assert_eq!(e.code, "InvalidParameter.MaxConcurrency");
        assert!(e.message.contains("mi-c (and 1 more)"), "{}", e.message);
        // No window, or a one-shot run: any agent will do.
        assert!(require_fire_grants(&Window::default(), RepeatMode::Period, &r).is_ok());
        assert!(require_fire_grants(&w, RepeatMode::Once, &r).is_ok());
    }

    #[test]
    fn windows_from_counts_and_percentages() {
        let w = |q: &str, n: usize| window(&Params::parse(q, b"").unwrap(), n, RepeatMode::Once);
        assert_eq!(w("", 10).unwrap(), Window::default());
        assert_eq!(
            w("MaxConcurrency=10%25&MaxErrors=3", 95).unwrap(),
            Window { max_concurrency: 10, max_errors: Some(3), batch_wait_secs: 0 }
        );
        assert_eq!(
            w("MaxConcurrency=1%25&MaxErrors=10%25", 5).unwrap(),
            Window { max_concurrency: 1, max_errors: Some(0), batch_wait_secs: 0 }
        );
        assert_eq!(w("MaxErrors=0", 7).unwrap().max_concurrency, 7);
        assert_eq!(w("MaxConcurrency=0", 7).unwrap_err().code, "InvalidParameter.MaxConcurrency");
        assert_eq!(w("MaxConcurrency=150%25", 7).unwrap_err().code, "InvalidParameter.MaxConcurrency");
        assert_eq!(w("MaxErrors=x", 7).unwrap_err().code, "InvalidParameter.MaxErrors");
        // Period: a window per fire; BatchWait has no meaning there.
        let period = window(&Params::parse("MaxConcurrency=2&MaxErrors=50%25", b"").unwrap(), 7, RepeatMode::Period).unwrap();
        assert_eq!(period, Window { max_concurrency: 2, max_errors: Some(3), batch_wait_secs: 0 });
        let period = window(&Params::parse("MaxConcurrency=2&BatchWait=5", b"").unwrap(), 7, RepeatMode::Period);
        assert_eq!(period.unwrap_err().code, "InvalidParameter.BatchWait");
        let boot = window(&Params::parse("MaxConcurrency=2", b"").unwrap(), 7, RepeatMode::EveryReboot);
        assert_eq!(boot.unwrap_err().code, "InvalidParameter.MaxConcurrency");
    }
}
