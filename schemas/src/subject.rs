//! Every NATS subject Arca uses. Shape: `arca.<service>.<id>.<verb>`.
//!
//! Ids that end up in a subject (system, firewall, media and scheduler
//! names) are checked by [`valid_token`] where they enter the system, so a
//! name can never add or hide subject tokens.

use crate::JobId;

/// True when `s` may be used as one subject token: letters, digits, `-`, `_`.
pub fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Requests to a scheduler: `arca.scheduler.<id>.<verb>`.
pub fn scheduler(id: &str, verb: SchedulerVerb) -> String {
    format!("arca.scheduler.{id}.{}", verb.as_str())
}

/// Wildcard a scheduler subscribes to.
pub fn scheduler_all(id: &str) -> String {
    format!("arca.scheduler.{id}.*")
}

/// Requests to the agent of one system: `arca.agent.<system>.<verb>`.
pub fn agent(system: &str, verb: AgentVerb) -> String {
    format!("arca.agent.{system}.{}", verb.as_str())
}

/// Wildcard an agent subscribes to.
pub fn agent_all(system: &str) -> String {
    format!("arca.agent.{system}.*")
}

/// Requests to a firewall controller: `arca.fw.<firewall>.<verb>`.
pub fn firewall(id: &str, verb: FirewallVerb) -> String {
    format!("arca.fw.{id}.{}", verb.as_str())
}

/// Wildcard a firewall controller subscribes to.
pub fn firewall_all(id: &str) -> String {
    format!("arca.fw.{id}.*")
}

/// Control requests to a media service: `arca.media.<media>.<verb>`.
pub fn media(id: &str, verb: MediaVerb) -> String {
    format!("arca.media.{id}.{}", verb.as_str())
}

/// Data requests of one system to a media service:
/// `arca.media.<media>.data.<system>.<verb>`. The system is in the subject
/// so that the server's permissions can confine an agent to its own data.
pub fn media_data(id: &str, system: &str, verb: MediaDataVerb) -> String {
    format!("arca.media.{id}.data.{system}.{}", verb.as_str())
}

/// Wildcard a media service subscribes to for control requests.
pub fn media_all(id: &str) -> String {
    format!("arca.media.{id}.*")
}

/// Wildcard a media service subscribes to for data requests.
pub fn media_data_all(id: &str) -> String {
    format!("arca.media.{id}.data.*.*")
}

/// A job event: `arca.events.<job>.<kind>`.
pub fn event(job: &JobId, kind: &str) -> String {
    format!("arca.events.{job}.{kind}")
}

/// Every event of one job.
pub fn events_of(job: &JobId) -> String {
    format!("arca.events.{job}.>")
}

/// Every job event.
pub const EVENTS_ALL: &str = "arca.events.>";

/// An audit record: `arca.audit.<service>.<id>.<kind>`, where `service` is
/// `scheduler`, `media` or `agent` and `id` its id (an agent's: its system).
pub fn audit(service: &str, id: &str, kind: &str) -> String {
    format!("arca.audit.{service}.{id}.{kind}")
}

/// An audit record of a high-trust service about one system:
/// `arca.audit.<service>.<id>.<kind>.<system>`. With the system in the
/// subject, the audit stream's per-subject limit gives each system a budget
/// of its own, so records caused by one system never push out another's.
pub fn audit_about(service: &str, id: &str, kind: &str, system: &str) -> String {
    format!("arca.audit.{service}.{id}.{kind}.{system}")
}

/// Who wrote an audit record and about which system, as its subject says
/// (the server lets each user publish only under its own service and id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSubject {
    /// `scheduler`, `media`, `agent` (or another service's name).
    pub service: String,
    /// The service's id; an agent's is its system.
    pub id: String,
    /// The kind token.
    pub kind: String,
    /// The system concerned: an agent's own system, or the fifth token.
    pub system: Option<String>,
}

impl AuditSubject {
    /// Reads `arca.audit.<service>.<id>.<kind>[.<system>]`.
    pub fn parse(subject: &str) -> Option<Self> {
        let mut t = subject.split('.');
        if (t.next(), t.next()) != (Some("arca"), Some("audit")) {
            return None;
        }
        let service = t.next()?.to_owned();
        let id = t.next()?.to_owned();
        let kind = t.next()?.to_owned();
        let fifth = t.next().map(str::to_owned);
        if t.next().is_some() {
            return None;
        }
        let system = if service == "agent" {
            // An agent's records are about itself, whatever else they say.
            if fifth.is_some() {
                return None;
            }
            Some(id.clone())
        } else {
            fifth
        };
        Some(AuditSubject {
            service,
            id,
            kind,
            system,
        })
    }

    /// `<service>/<id>`, as records name their author.
    pub fn by(&self) -> String {
        format!("{}/{}", self.service, self.id)
    }
}

/// Every audit record.
pub const AUDIT_ALL: &str = "arca.audit.>";

/// Inbox prefix of the agent of `system`: its replies arrive under it, and
/// the server lets no other agent subscribe there.
pub fn agent_inbox_prefix(system: &str) -> String {
    format!("_INBOX_{system}")
}

/// Subjects one NATS user may publish and subscribe to, as the server's
/// permissions list them. Replies to requests it received are allowed on
/// top (`allow_responses`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish on.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
}

/// The agent of `system`: requests to it, its own data subjects on every
/// media service, its own audit records (of the kinds an agent records,
/// [`crate::trust::AuditKind::BY_AGENT`], one subject each), the server's
/// "who am I" ([`SERVER_USER_INFO`]) and its own inbox; nothing else, no
/// JetStream.
pub fn agent_permissions(system: &str) -> Permissions {
    let mut publish = vec![format!("arca.media.*.data.{system}.>")];
    publish.extend(
        crate::trust::AuditKind::BY_AGENT
            .iter()
            .map(|k| audit("agent", system, k.as_str())),
    );
    publish.push(SERVER_USER_INFO.into());
    Permissions {
        publish,
        subscribe: vec![
            format!("arca.agent.{system}.>"),
            format!("{}.>", agent_inbox_prefix(system)),
        ],
    }
}

/// The server's own reports of a client it refused at authentication
/// (a `client_disconnect` advisory with its reason), published in the
/// server's system account: `$SYS.SERVER.<server>.CLIENT.AUTH.ERR`.
pub const SERVER_AUTH_ERRORS: &str = "$SYS.SERVER.*.CLIENT.AUTH.ERR";

/// The server's reports of a client that connected (a `client_connect`
/// advisory with its key, name and address), one subject per account:
/// `$SYS.ACCOUNT.<account>.CONNECT`.
pub const SERVER_CONNECTS: &str = "$SYS.ACCOUNT.*.CONNECT";

/// The server's answer to "who am I": any client may ask it about itself
/// (its user and permissions). An agent asks once its subscriptions are
/// made, as a round trip: by the time the answer arrives the server has
/// refused them or not.
pub const SERVER_USER_INFO: &str = "$SYS.REQ.USER.INFO";

/// The scheduler's door watcher, a user of the server's system account:
/// it may only listen to the server's reports of refused and connected
/// clients, and publish nothing.
pub fn door_permissions() -> Permissions {
    Permissions {
        publish: Vec::new(),
        subscribe: vec![SERVER_AUTH_ERRORS.into(), SERVER_CONNECTS.into()],
    }
}

/// A scheduler: its requests, requests to every service, events, audit
/// records and its JetStream state.
pub fn scheduler_permissions(id: &str) -> Permissions {
    Permissions {
        publish: vec![
            "arca.>".into(),
            "$JS.>".into(),
            "$KV.>".into(),
            "_INBOX.>".into(),
        ],
        subscribe: vec![format!("arca.scheduler.{id}.>"), "_INBOX.>".into()],
    }
}

/// A media service: requests to it (control and data), its audit records.
pub fn media_permissions(id: &str) -> Permissions {
    Permissions {
        publish: vec![format!("arca.audit.media.{id}.>")],
        subscribe: vec![format!("arca.media.{id}.>"), "_INBOX.>".into()],
    }
}

/// A dashboard: reads the job events (the stream `ARCA_EVENTS` and live
/// events), nothing else.
pub fn dashboard_permissions() -> Permissions {
    let stream = crate::names::EVENTS_STREAM;
    Permissions {
        publish: vec![
            "$JS.API.INFO".into(),
            "$JS.API.STREAM.NAMES".into(),
            format!("$JS.API.STREAM.INFO.{stream}"),
            format!("$JS.API.STREAM.MSG.GET.{stream}"),
            format!("$JS.API.DIRECT.GET.{stream}.>"),
            format!("$JS.API.CONSUMER.CREATE.{stream}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
            format!("$JS.API.CONSUMER.INFO.{stream}.>"),
            format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
            format!("$JS.ACK.{stream}.>"),
            "$JS.FC.>".into(),
        ],
        subscribe: vec![EVENTS_ALL.into(), "_INBOX.>".into()],
    }
}

/// A firewall controller: requests to it, and reading the job records.
pub fn firewall_permissions(id: &str) -> Permissions {
    Permissions {
        publish: vec!["$JS.>".into(), "$KV.>".into(), "_INBOX.>".into()],
        subscribe: vec![format!("arca.fw.{id}.>"), "_INBOX.>".into()],
    }
}

macro_rules! verbs {
    ($(#[$m:meta])* $name:ident { $($v:ident = $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($v),* }
        impl $name {
            /// Every verb, for dispatch tables and tests.
            pub const ALL: &'static [$name] = &[$($name::$v),*];
            /// The subject token.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),* }
            }
            /// Parses the last token of a subject.
            pub fn parse(token: &str) -> Option<Self> {
                match token { $($s => Some($name::$v),)* _ => None }
            }
        }
    };
}

verbs!(
    /// Verbs of the scheduler.
    SchedulerVerb {
        LoadSystems = "load-systems",
        ListSystems = "list-systems",
        Backup = "backup",
        Restore = "restore",
        ListJobs = "list-jobs",
        GetJob = "get-job",
        ListSnapshots = "list-snapshots",
        Forget = "forget",
        GetSystem = "get-system",
        RemoveSystem = "remove-system",
        Cancel = "cancel",
        RebuildCatalog = "rebuild-catalog",
    }
);

verbs!(
    /// Verbs of an agent.
    AgentVerb {
        Ping = "ping",
        Prepare = "prepare",
        Finish = "finish",
        Backup = "backup",
        Restore = "restore",
        Status = "status",
        Cancel = "cancel",
    }
);

verbs!(
    /// Verbs of a firewall controller.
    FirewallVerb {
        Open = "open",
        Renew = "renew",
        Close = "close",
        Status = "status",
    }
);

verbs!(
    /// Control verbs of a media service (spoken by the scheduler).
    MediaVerb {
        Session = "session",
        Snapshots = "snapshots",
        Snapshot = "snapshot",
        RestoreSession = "restore-session",
        CloseSession = "close-session",
        CloseRestore = "close-restore",
        ChunkKey = "chunk-key",
        Verify = "verify",
        RepairIndex = "repair-index",
        Forget = "forget",
        Prune = "prune",
        Tree = "tree",
    }
);

verbs!(
    /// Data verbs of a media service (spoken by an agent for its system).
    MediaDataVerb {
        Has = "has",
        Put = "put",
        PutMany = "put-many",
        Commit = "commit",
        Get = "get",
        GetMany = "get-many",
        Snapshot = "snapshot",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_have_the_documented_shape() {
        assert_eq!(
            agent("web01", AgentVerb::Prepare),
            "arca.agent.web01.prepare"
        );
        assert_eq!(firewall("edge", FirewallVerb::Open), "arca.fw.edge.open");
        assert_eq!(media("main", MediaVerb::Session), "arca.media.main.session");
        assert_eq!(
            media_data("main", "web01", MediaDataVerb::Put),
            "arca.media.main.data.web01.put"
        );
        let job = JobId::parse("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap();
        assert_eq!(
            event(&job, "selected"),
            "arca.events.0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b.selected"
        );
    }

    #[test]
    fn audit_subjects_name_their_author_and_system() {
        let a = AuditSubject::parse(&audit("agent", "evil", "refused")).unwrap();
        assert_eq!(
            (a.by(), a.system.as_deref(), a.kind.as_str()),
            ("agent/evil".to_owned(), Some("evil"), "refused")
        );
        let s = AuditSubject::parse(&audit_about("scheduler", "main", "enrolled", "web01"));
        assert_eq!(s.unwrap().system.as_deref(), Some("web01"));
        let s = AuditSubject::parse(&audit("media", "main", "refused")).unwrap();
        assert_eq!((s.by(), s.system), ("media/main".to_owned(), None));
        for bad in [
            "arca.audit.agent.evil.refused.other",
            "arca.audit.agent.evil",
            "arca.events.x.y.z",
            "arca.audit.media.main.refused.a.b",
        ] {
            assert_eq!(AuditSubject::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn verbs_round_trip() {
        for v in AgentVerb::ALL {
            assert_eq!(AgentVerb::parse(v.as_str()), Some(*v));
        }
        for v in SchedulerVerb::ALL {
            assert_eq!(SchedulerVerb::parse(v.as_str()), Some(*v));
        }
    }

    #[test]
    fn tokens_refuse_subject_syntax() {
        assert!(valid_token("web-01_a"));
        for bad in ["", "a.b", "a*", ">", "a b", "é"] {
            assert!(!valid_token(bad), "{bad:?} accepted");
        }
    }
}
