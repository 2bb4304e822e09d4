//! The door: what the NATS server refused, recorded in the audit stream.
//!
//! The server refuses a client whose key it does not know at
//! authentication and reports it in its system account, on
//! `$SYS.SERVER.<server>.CLIENT.AUTH.ERR` (a `client_disconnect` advisory
//! with the identity tried, the client's address and the reason). A
//! subscription or publication its permissions refuse produces no report
//! at all: only the server's log names it. What the server does report of
//! such a client is its connection (`$SYS.ACCOUNT.<account>.CONNECT`, with
//! its key and the name it gave): an agent key enrolled for one system
//! connecting under the name of another system's agent (`arca-agent-<system>`)
//! is one whose subscriptions the server refuses, and is recorded too.
//!
//! The scheduler's door watcher, a user of the system account that may only
//! listen to these two kinds of reports, hands them to the scheduler, which
//! records each as a `door-refused` record: at most one per (identity,
//! address) per [`DOOR_RECORD_INTERVAL_SECS`], with the refusals in between
//! counted into the next one (or into a record of their own once the
//! interval is over), and at most [`DOOR_RECORDS_PER_MINUTE`] records a
//! minute over all identities. A flood of refused connections therefore
//! costs the audit stream a bounded number of records, and the stream's
//! per-subject limit keeps even those from pushing out other records.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arca_schemas::subject;
use arca_schemas::text::bounded;
use arca_schemas::trust::{
    AuditKind, AuditRecord, DOOR_RECORD_INTERVAL_SECS, DOOR_RECORDS_PER_MINUTE,
};
use async_nats::Client;
use futures::StreamExt;
use serde::Deserialize;

use crate::Scheduler;

/// Longest identity, address or name kept from a report (a user name and
/// a connection name are the client's words).
const FIELD_MAX: usize = 200;

/// Pairs of (identity, address) remembered at most; refusals of further
/// pairs are counted together.
const PAIRS_MAX: usize = 4096;

/// How often counted refusals are looked at, to be recorded once due.
const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// How long the enrolled keys are reused before they are read again.
const KEYS_FRESH: Duration = Duration::from_secs(5);

/// How long the enrolled keys are reused for an agent's connection.
const KEYS_AGENT_FRESH: Duration = Duration::from_secs(1);

/// The name an agent gives its connection: `arca-agent-<system>`.
const AGENT_NAME_PREFIX: &str = "arca-agent-";

/// What the server reports of a client (a `client_connect` or
/// `client_disconnect` advisory), the fields used here.
#[derive(Debug, Default, Deserialize)]
struct Advisory {
    #[serde(default)]
    client: ClientInfo,
    #[serde(default)]
    reason: String,
}

#[derive(Debug, Default, Deserialize)]
struct ClientInfo {
    #[serde(default)]
    host: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    nkey: String,
    #[serde(default)]
    name: String,
}

impl ClientInfo {
    /// The identity tried: the nkey, else the user name.
    fn identity(&self) -> &str {
        if self.nkey.is_empty() {
            &self.user
        } else {
            &self.nkey
        }
    }
}

/// One refusal to record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    identity: String,
    address: String,
    /// The connection name the client gave.
    name: String,
    /// The server's reason, or what the connection showed.
    reason: String,
    /// The system whose agent name the client gave, when it is not the
    /// key's own (masquerade).
    named_system: Option<String>,
}

/// Decides which refusals are recorded and counts the others.
#[derive(Debug)]
struct Limiter {
    interval: Duration,
    per_minute: u32,
    pairs: HashMap<(String, String), Pair>,
    minute_start: Instant,
    in_minute: u32,
    /// Refusals of pairs beyond [`PAIRS_MAX`], not recorded yet.
    overflow: u64,
}

#[derive(Debug)]
struct Pair {
    /// When a record was last written for the pair.
    recorded: Option<Instant>,
    /// Refusals since, not recorded yet.
    pending: u64,
    /// The latest of them.
    last: Refusal,
}

/// What the limiter lets through: a refusal and the number of refusals
/// its record stands for.
type Due = (Refusal, u64);

impl Limiter {
    fn new(now: Instant) -> Self {
        Limiter {
            interval: Duration::from_secs(DOOR_RECORD_INTERVAL_SECS),
            per_minute: DOOR_RECORDS_PER_MINUTE,
            pairs: HashMap::new(),
            minute_start: now,
            in_minute: 0,
            overflow: 0,
        }
    }

    /// Takes one record from this minute's budget, if any is left.
    fn take_budget(&mut self, now: Instant) -> bool {
        if now.duration_since(self.minute_start) >= Duration::from_secs(60) {
            self.minute_start = now;
            self.in_minute = 0;
        }
        if self.in_minute < self.per_minute {
            self.in_minute += 1;
            true
        } else {
            false
        }
    }

    /// Counts `r`; returns it with its count when a record is due now.
    fn admit(&mut self, r: Refusal, now: Instant) -> Option<Due> {
        let key = (r.identity.clone(), r.address.clone());
        if !self.pairs.contains_key(&key) && self.pairs.len() >= PAIRS_MAX {
            self.forget_quiet(now);
            if self.pairs.len() >= PAIRS_MAX {
                self.overflow += 1;
                return None;
            }
        }
        let interval = self.interval;
        let pair = self.pairs.entry(key.clone()).or_insert_with(|| Pair {
            recorded: None,
            pending: 0,
            last: r.clone(),
        });
        pair.pending += 1;
        pair.last = r;
        let due = pair
            .recorded
            .is_none_or(|t| now.duration_since(t) >= interval);
        if !due || !self.take_budget(now) {
            return None;
        }
        Some(self.pairs.get_mut(&key).expect("just counted").record(now))
    }

    /// The records due for refusals counted but not recorded, once their
    /// pair's interval is over and as this minute's budget allows, and the
    /// number of refusals of pairs beyond [`PAIRS_MAX`] to record together.
    fn flush(&mut self, now: Instant) -> (Vec<Due>, u64) {
        let interval = self.interval;
        let mut keys: Vec<_> = self
            .pairs
            .iter()
            .filter(|(_, p)| {
                p.pending > 0 && p.recorded.is_none_or(|t| now.duration_since(t) >= interval)
            })
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        let mut due = Vec::new();
        for k in keys {
            if !self.take_budget(now) {
                break;
            }
            due.push(self.pairs.get_mut(&k).expect("listed").record(now));
        }
        let overflow = if self.overflow > 0 && self.take_budget(now) {
            std::mem::take(&mut self.overflow)
        } else {
            0
        };
        self.forget_quiet(now);
        (due, overflow)
    }

    /// Forgets pairs with nothing pending whose next refusal would be
    /// recorded anyway.
    fn forget_quiet(&mut self, now: Instant) {
        let interval = self.interval;
        self.pairs.retain(|_, p| {
            p.pending > 0 || p.recorded.is_some_and(|t| now.duration_since(t) < interval)
        });
    }
}

impl Pair {
    /// A record of the refusals counted; the count starts again.
    fn record(&mut self, now: Instant) -> Due {
        let n = std::mem::take(&mut self.pending);
        self.recorded = Some(now);
        (self.last.clone(), n)
    }
}

/// The systems by their enrolled agent key, read again when older than
/// [`KEYS_FRESH`].
#[derive(Default)]
struct Keys {
    read: Option<Instant>,
    systems: HashMap<String, String>,
}

impl Keys {
    /// The keys, read again when older than [`KEYS_FRESH`].
    async fn fresh(&mut self, sched: &Scheduler) -> &HashMap<String, String> {
        self.within(sched, KEYS_FRESH).await
    }

    /// The keys, read again when older than `age`.
    async fn within(&mut self, sched: &Scheduler, age: Duration) -> &HashMap<String, String> {
        if self.read.is_none_or(|t| t.elapsed() >= age) {
            match sched.all_systems().await {
                Ok(all) => {
                    self.systems = all
                        .into_iter()
                        .filter_map(|s| s.agent.clone().map(|k| (k, s.name)))
                        .collect();
                    self.read = Some(Instant::now());
                }
                Err(e) => tracing::warn!(error = %e.message, "cannot read the enrolled keys"),
            }
        }
        &self.systems
    }
}

/// Reads one report of the server: a refusal to count, or nothing.
fn refusal(subject: &str, body: &[u8], keys: &HashMap<String, String>) -> Option<Refusal> {
    let a: Advisory = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(%subject, error = %e, "unreadable report of the NATS server");
            return None;
        }
    };
    let field = |s: &str| bounded(s, FIELD_MAX).into_owned();
    let c = &a.client;
    let mut r = Refusal {
        identity: field(c.identity()),
        address: field(&c.host),
        name: field(&c.name),
        reason: field(&a.reason),
        named_system: None,
    };
    if subject.ends_with(".CLIENT.AUTH.ERR") {
        return Some(r);
    }
    // A connection: refused later only when an agent key speaks for
    // another system.
    let own = keys.get(c.identity())?;
    let named = c.name.strip_prefix(AGENT_NAME_PREFIX)?;
    if named == own {
        return None;
    }
    r.named_system = Some(field(named));
    r.reason = String::new();
    Some(r)
}

/// What a record says about `r`, the key's own system being `owner`.
fn reason(r: &Refusal, owner: Option<&str>) -> String {
    let named = if r.name.is_empty() {
        String::new()
    } else {
        format!(", connecting as {:?}", r.name)
    };
    match (&r.named_system, owner) {
        (Some(named_system), Some(owner)) => format!(
            "the agent key enrolled for system {owner} connected as the agent of system \
             {named_system:?}: the server refuses its subscriptions to that system's subjects \
             (its log names each refusal); the agent's configuration names the wrong system or \
             holds the wrong identity file"
        ),
        (_, Some(owner)) => format!(
            "the NATS server refused the connection ({}){named}: the key is enrolled for system \
             {owner} but the server does not admit it; write its users again with \
             `arca nats-config` and reload it",
            r.reason
        ),
        (_, None) => format!(
            "the NATS server refused the connection ({}){named}: the key is not enrolled for any \
             system",
            r.reason
        ),
    }
}

impl Scheduler {
    /// Records one door refusal (standing for `count` of them).
    async fn record_door(&self, (r, count): Due, keys: &HashMap<String, String>) {
        let owner = keys.get(&r.identity).cloned();
        let mut a = AuditRecord::new(AuditKind::DoorRefused, self.audit_by());
        a.reason = Some(reason(&r, owner.as_deref()));
        a.system = owner;
        a.key = (!r.identity.is_empty()).then_some(r.identity);
        a.address = (!r.address.is_empty()).then_some(r.address);
        a.count = Some(count);
        self.audit(a).await;
    }

    /// Records refusals of pairs beyond the ones remembered, together.
    async fn record_overflow(&self, count: u64) {
        let mut a = AuditRecord::new(AuditKind::DoorRefused, self.audit_by());
        a.reason = Some(format!(
            "{count} refusals at the door from more identities and addresses than are told \
             apart ({PAIRS_MAX}) were not recorded one by one"
        ));
        a.count = Some(count);
        self.audit(a).await;
    }
}

/// Listens to the server's reports on `door` (a user of the system
/// account) and records the refusals, until the connection ends.
pub(crate) async fn watch(sched: Arc<Scheduler>, door: Client) {
    let subscribed = futures::future::try_join(
        door.subscribe(subject::SERVER_AUTH_ERRORS),
        door.subscribe(subject::SERVER_CONNECTS),
    )
    .await;
    let (errors, connects) = match subscribed {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the door: refusals of the NATS server are not audited");
            return;
        }
    };
    tracing::info!("watching the door: refusals of the NATS server are audited");
    let mut reports = futures::stream::select(errors, connects);
    let mut limiter = Limiter::new(Instant::now());
    let mut keys = Keys::default();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            report = reports.next() => {
                let Some(msg) = report else { break };
                // An agent that connects may have been enrolled a moment
                // ago: read the keys again, at most once a second.
                let agent = !msg.subject.ends_with(".CLIENT.AUTH.ERR")
                    && msg.payload.windows(AGENT_NAME_PREFIX.len()).any(|w| w == AGENT_NAME_PREFIX.as_bytes());
                let known = if agent {
                    keys.within(&sched, KEYS_AGENT_FRESH).await
                } else {
                    keys.fresh(&sched).await
                };
                let Some(r) = refusal(&msg.subject, &msg.payload, known) else { continue };
                if let Some(due) = limiter.admit(r, Instant::now()) {
                    let known = known.clone();
                    sched.record_door(due, &known).await;
                }
            }
            _ = tick.tick() => {
                let (due, overflow) = limiter.flush(Instant::now());
                if due.is_empty() && overflow == 0 {
                    continue;
                }
                let known = keys.fresh(&sched).await.clone();
                for d in due {
                    sched.record_door(d, &known).await;
                }
                if overflow > 0 {
                    sched.record_overflow(overflow).await;
                }
            }
        }
    }
    tracing::warn!("the door watcher's connection ended: refusals are no longer audited");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(identity: &str, address: &str) -> Refusal {
        Refusal {
            identity: identity.into(),
            address: address.into(),
            name: String::new(),
            reason: "Authentication Failure".into(),
            named_system: None,
        }
    }

    #[test]
    fn one_record_per_identity_and_address_per_interval_with_the_rest_counted() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        let (first, n) = l.admit(refused("UA", "10.0.0.1"), t0).unwrap();
        assert_eq!((first.identity.as_str(), n), ("UA", 1));
        for i in 1..100 {
            assert!(
                l.admit(refused("UA", "10.0.0.1"), t0 + Duration::from_millis(i))
                    .is_none()
            );
        }
        // Another address of the same key is told apart.
        assert!(l.admit(refused("UA", "10.0.0.2"), t0).is_some());
        // Not due yet; once the interval is over the 99 are recorded in one.
        assert!(l.flush(t0 + Duration::from_secs(30)).0.is_empty());
        let (due, overflow) = l.flush(t0 + Duration::from_secs(61));
        assert_eq!(overflow, 0);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1, 99);
        assert!(l.flush(t0 + Duration::from_secs(200)).0.is_empty());
        // A later refusal is recorded at once again.
        let later = t0 + Duration::from_secs(300);
        assert_eq!(l.admit(refused("UA", "10.0.0.1"), later).unwrap().1, 1);
    }

    #[test]
    fn a_flood_of_new_identities_is_bounded_per_minute() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        let mut recorded = 0;
        for i in 0..10_000 {
            if l.admit(refused(&format!("U{i}"), "10.0.0.1"), t0).is_some() {
                recorded += 1;
            }
        }
        assert_eq!(recorded, DOOR_RECORDS_PER_MINUTE);
        assert!(l.pairs.len() <= PAIRS_MAX);
        // The rest are counted, and recorded as the budget of later
        // minutes allows, never more than the budget a minute.
        let mut counted = recorded as u64;
        for m in 1..400u64 {
            let (due, overflow) = l.flush(t0 + Duration::from_secs(60 * m + 1));
            assert!(due.len() as u32 + u32::from(overflow > 0) <= DOOR_RECORDS_PER_MINUTE);
            counted += due.iter().map(|d| d.1).sum::<u64>() + overflow;
        }
        assert_eq!(counted, 10_000);
    }

    #[test]
    fn reports_are_read_as_refusals() {
        let keys: HashMap<String, String> = [("UKEYA".to_owned(), "a".to_owned())].into();
        let auth = br#"{"type":"io.nats.server.advisory.v1.client_disconnect","client":{"host":"10.1.2.3","user":"UNKNOWN","name":"arca-agent-x","acc":"$G"},"reason":"Authentication Failure"}"#;
        let r = refusal("$SYS.SERVER.N1.CLIENT.AUTH.ERR", auth, &keys).unwrap();
        assert_eq!(
            (r.identity.as_str(), r.address.as_str()),
            ("UNKNOWN", "10.1.2.3")
        );
        let text = reason(&r, None);
        assert!(
            text.contains("Authentication Failure") && text.contains("not enrolled"),
            "{text}"
        );

        let connect = |name: &str| {
            format!(r#"{{"client":{{"host":"10.1.2.4","nkey":"UKEYA","name":"{name}"}}}}"#)
        };
        let own = connect("arca-agent-a");
        assert_eq!(
            refusal("$SYS.ACCOUNT.$G.CONNECT", own.as_bytes(), &keys),
            None
        );
        let other = connect("arca-agent-b");
        let r = refusal("$SYS.ACCOUNT.$G.CONNECT", other.as_bytes(), &keys).unwrap();
        assert_eq!(r.named_system.as_deref(), Some("b"));
        let text = reason(&r, Some("a"));
        assert!(
            text.contains("enrolled for system a") && text.contains("\"b\""),
            "{text}"
        );
        // Services and operators connecting are not refusals.
        let service = connect("arca-scheduler-main");
        assert_eq!(
            refusal("$SYS.ACCOUNT.$G.CONNECT", service.as_bytes(), &keys),
            None
        );
        assert_eq!(refusal("$SYS.ACCOUNT.$G.CONNECT", b"not json", &keys), None);
    }
}
