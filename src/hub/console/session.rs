//! Console sessions, held in this replica's memory: the cookie token (only
//! its SHA-256 is kept), the CSRF token, expiry (absolute and idle), the
//! bound on sessions per hub and per user, the bound on event streams per
//! session, and sign-in rate limiting per address and per user.
//!
//! In memory on purpose: a session is a few hundred bytes, dies with the
//! replica (users sign in again), and needs no schema. With several
//! replicas behind one name, the load balancer must keep a browser on one
//! replica (docs/console.md).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;

/// Most sessions a hub holds; sign-in beyond it is refused until some expire.
pub const MAX_SESSIONS: usize = 10_000;
/// Most sessions of one user (or AccessKey): a new one ends the oldest.
pub const MAX_SESSIONS_PER_USER: usize = 16;
/// Most open event streams of one session (a few tabs).
pub const MAX_STREAMS_PER_SESSION: usize = 4;
/// Failed sign-ins counted over this window…
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);
/// …at most this many from one address (an IPv6 /64 counts as one)…
pub const MAX_FAILURES_PER_ADDR: usize = 10;
/// …and this many for one user name, whatever the address.
pub const MAX_FAILURES_PER_USER: usize = 5;
/// Addresses and names tracked by the limiter; beyond it (after dropping
/// expired entries) sign-in fails closed until the window passes.
pub const MAX_TRACKED: usize = 10_000;

/// Who a session acts as.
#[derive(Debug, Clone, PartialEq)]
pub enum Who {
    /// A hub.toml console user; `access_key_id` None = full access.
    User { name: String, access_key_id: Option<String> },
    /// Signed in with an AccessKey pair.
    Key { access_key_id: String },
}

impl Who {
    /// The name the session is counted and shown under.
    pub fn label(&self) -> String {
        match self {
            Who::User { name, .. } => name.clone(),
            Who::Key { access_key_id } => access_key_id.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub who: Who,
    pub csrf: String,
    created: Instant,
    last_used: Instant,
    streams: Arc<AtomicUsize>,
}

/// Holds one event stream slot of a session until dropped.
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SessionError {
    #[error("the hub holds {MAX_SESSIONS} console sessions, its limit; try again later")]
    Full,
    #[error("this session has {MAX_STREAMS_PER_SESSION} open event streams, its limit")]
    TooManyStreams,
}

#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
}

fn digest(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session; returns (cookie token, CSRF token).
    pub fn create(&self, who: Who, ttl: Duration, idle: Duration) -> Result<(String, String), SessionError> {
        let now = Instant::now();
        let mut m = self.lock();
        m.retain(|_, s| live(s, now, ttl, idle));
        let label = who.label();
        let mut mine: Vec<(String, Instant)> =
            m.iter().filter(|(_, s)| s.who.label() == label).map(|(k, s)| (k.clone(), s.created)).collect();
        mine.sort_by_key(|(_, c)| *c);
        while mine.len() >= MAX_SESSIONS_PER_USER {
            let (oldest, _) = mine.remove(0);
            m.remove(&oldest);
        }
        if m.len() >= MAX_SESSIONS {
            return Err(SessionError::Full);
        }
        let (token, csrf) = (random_token(), random_token());
        m.insert(digest(&token), Session { who, csrf: csrf.clone(), created: now, last_used: now, streams: Arc::default() });
        Ok((token, csrf))
    }

    /// The live session of a cookie token (touching it), or None.
    pub fn get(&self, token: &str, ttl: Duration, idle: Duration) -> Option<Session> {
        let now = Instant::now();
        let mut m = self.lock();
        let key = digest(token);
        let s = m.get_mut(&key)?;
        if !live(s, now, ttl, idle) {
            m.remove(&key);
            return None;
        }
        s.last_used = now;
        Some(s.clone())
    }

    /// Whether a session is still live, without counting as activity (an
    /// open event stream must not keep an idle session alive).
    pub fn alive(&self, token: &str, ttl: Duration, idle: Duration) -> bool {
        self.lock().get(&digest(token)).is_some_and(|s| live(s, Instant::now(), ttl, idle))
    }

    pub fn remove(&self, token: &str) {
        self.lock().remove(&digest(token));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes one of the session's event stream slots.
    pub fn stream_slot(session: &Session) -> Result<StreamSlot, SessionError> {
        let prev = session.streams.fetch_add(1, Ordering::AcqRel);
        let slot = StreamSlot(session.streams.clone());
        if prev >= MAX_STREAMS_PER_SESSION {
            return Err(SessionError::TooManyStreams);
        }
        Ok(slot)
    }
}

fn live(s: &Session, now: Instant, ttl: Duration, idle: Duration) -> bool {
    now.duration_since(s.created) < ttl && now.duration_since(s.last_used) < idle
}

/// Whether a CSRF token sent with a request is the session's (constant time).
pub fn csrf_ok(session: &Session, sent: Option<&str>) -> bool {
    sent.is_some_and(|t| super::users::same_secret(&session.csrf, t))
}

/// Recent failure times by key (an address or a name).
type Failures = HashMap<String, VecDeque<Instant>>;

/// Failed sign-ins per address and per user name over [`FAILURE_WINDOW`].
#[derive(Default)]
pub struct SignInLimiter {
    inner: Mutex<(Failures, Failures)>,
}

/// The limiter's key for an address: IPv6 by /64 (one host often holds a
/// whole /64), IPv4 as is.
fn addr_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

fn recent(q: &mut VecDeque<Instant>, now: Instant) -> usize {
    while q.front().is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW) {
        q.pop_front();
    }
    q.len()
}

impl SignInLimiter {
    /// Err(seconds to wait) when this address or name may not try now.
    pub fn check(&self, ip: IpAddr, name: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (addrs, names) = &mut *g;
        let wait = |q: &VecDeque<Instant>| q.front().map_or(1, |t| FAILURE_WINDOW.saturating_sub(now.duration_since(*t)).as_secs().max(1));
        if let Some(q) = addrs.get_mut(&addr_key(ip))
            && recent(q, now) >= MAX_FAILURES_PER_ADDR
        {
            return Err(wait(q));
        }
        if let Some(q) = names.get_mut(name)
            && recent(q, now) >= MAX_FAILURES_PER_USER
        {
            return Err(wait(q));
        }
        Ok(())
    }

    /// Counts a failed sign-in. Err when the limiter is full (fail closed).
    pub fn failed(&self, ip: IpAddr, name: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (addrs, names) = &mut *g;
        for (map, key) in [(&mut *addrs, addr_key(ip)), (&mut *names, name.to_string())] {
            if !map.contains_key(&key) && map.len() >= MAX_TRACKED {
                map.retain(|_, q| recent(q, now) > 0);
                if map.len() >= MAX_TRACKED {
                    return Err(FAILURE_WINDOW.as_secs());
                }
            }
            let q = map.entry(key).or_default();
            q.push_back(now);
            // Only the last few failures matter to the decision.
            while q.len() > MAX_FAILURES_PER_ADDR.max(MAX_FAILURES_PER_USER) {
                q.pop_front();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(3600);

    #[test]
    fn sessions_are_bounded_per_user_and_found_by_token_only() {
        let s = Sessions::default();
        let who = Who::User { name: "a".into(), access_key_id: None };
        let (first, _) = s.create(who.clone(), T, T).unwrap();
        for _ in 0..MAX_SESSIONS_PER_USER {
            s.create(who.clone(), T, T).unwrap();
        }
        assert_eq!(s.len(), MAX_SESSIONS_PER_USER);
        assert!(s.get(&first, T, T).is_none(), "the oldest session was ended");
        let (tok, csrf) = s.create(Who::Key { access_key_id: "k".into() }, T, T).unwrap();
        let sess = s.get(&tok, T, T).unwrap();
        assert!(csrf_ok(&sess, Some(&csrf)) && !csrf_ok(&sess, Some("x")) && !csrf_ok(&sess, None));
        assert!(s.get(&tok, T, Duration::ZERO).is_none(), "idle sessions expire");
        assert!(s.get(&tok, T, T).is_none(), "and are gone");
    }

    #[test]
    fn stream_slots_are_bounded_and_given_back() {
        let s = Sessions::default();
        let (tok, _) = s.create(Who::Key { access_key_id: "k".into() }, T, T).unwrap();
        let sess = s.get(&tok, T, T).unwrap();
        let slots: Vec<_> = (0..MAX_STREAMS_PER_SESSION).map(|_| Sessions::stream_slot(&sess).unwrap()).collect();
        assert_eq!(Sessions::stream_slot(&sess).err(), Some(SessionError::TooManyStreams));
        drop(slots);
        assert!(Sessions::stream_slot(&sess).is_ok());
    }

    #[test]
    fn limiter_counts_per_address_and_per_name() {
        let l = SignInLimiter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..MAX_FAILURES_PER_USER {
            assert!(l.check(a, "alice").is_ok(), "attempt {i}");
            l.failed(a, "alice").unwrap();
        }
        assert!(l.check(a, "alice").is_err(), "the name is limited");
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.check(b, "alice").is_err(), "from any address");
        for n in 0..MAX_FAILURES_PER_ADDR {
            l.failed(b, &format!("u{n}")).unwrap();
        }
        assert!(l.check(b, "someone-else").is_err(), "the address is limited");
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(addr_key(v6a), addr_key(v6b));
    }
}
