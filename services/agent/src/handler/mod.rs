//! The agent's request handling: the token check of every command, and
//! the dispatch of each verb to its handler.

mod hook;
mod transfer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arca_runtime::identity::Identity;
use arca_runtime::rpc::{respond, verb};
use arca_runtime::trust::{Gate, TrustError};
use arca_schemas::error::ErrorReply;
use arca_schemas::msg::{HookPhase, HookReply, Pong, TransferAccepted};
use arca_schemas::subject::AgentVerb;
use arca_schemas::trust::{AuditKind, AuditRecord, TokenClaims};
use arca_schemas::{JobId, PROTOCOL_VERSION};
use async_nats::{Client, Message};
use tokio::sync::OnceCell;

use crate::config::Config;
use crate::progress::Progress;
use crate::{application, backup};

/// The result of each (job, hook phase), shared by repeated requests.
type HookResults = HashMap<(JobId, HookPhase), Arc<OnceCell<HookReply>>>;

pub(crate) struct Agent {
    config: Config,
    identity: Identity,
    /// Checks the scheduler's job tokens.
    gate: Gate,
    params: backup::ChunkParams,
    client: Client,
    hooks: Mutex<HookResults>,
    /// What the built-in hook kinds hold for each job.
    apps: Mutex<HashMap<JobId, Arc<application::JobApps>>>,
    transfers: Mutex<HashMap<JobId, Arc<Mutex<Progress>>>>,
    tasks: Mutex<HashMap<JobId, tokio::task::AbortHandle>>,
    /// Woken whenever a transfer ends, for status questions that wait.
    ended: tokio::sync::Notify,
}

impl Agent {
    /// An agent serving `config.system`, answering on `client`, with no
    /// job known yet.
    pub(crate) fn new(
        config: Config,
        identity: Identity,
        gate: Gate,
        params: backup::ChunkParams,
        client: Client,
    ) -> Agent {
        Agent {
            identity,
            gate,
            params,
            client,
            hooks: Mutex::new(HashMap::new()),
            apps: Mutex::new(HashMap::new()),
            transfers: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            ended: tokio::sync::Notify::new(),
            config,
        }
    }

    /// Checks the job token of a command: signed by the trusted scheduler
    /// for this system, this subject and body, unexpired, unused. A refusal
    /// is answered and audited, and nothing else happens.
    async fn authorize(&self, msg: &Message) -> Result<TokenClaims, ()> {
        let checked = self.gate.check(msg).and_then(|claims| {
            if claims.system == self.config.system {
                Ok(claims)
            } else {
                Err(TrustError::Mismatch(format!(
                    "issued for system {}, this agent serves {}",
                    claims.system, self.config.system
                )))
            }
        });
        match checked {
            Ok(claims) => Ok(claims),
            Err(e) => {
                self.refuse(msg, None, e.to_string()).await;
                respond::<()>(&self.client, msg, Err(e.to_reply())).await;
                Err(())
            }
        }
    }

    /// Records a refused request in the audit stream.
    async fn refuse(&self, msg: &Message, job: Option<JobId>, reason: String) {
        tracing::warn!(subject = %msg.subject, %reason, "request refused");
        let mut a = AuditRecord::new(AuditKind::Refused, format!("agent/{}", self.config.system));
        a.system = Some(self.config.system.clone());
        a.job = job;
        a.subject = Some(msg.subject.to_string());
        a.reason = Some(reason);
        arca_runtime::trust::audit(&self.client, "agent", &self.config.system, a).await;
    }

    pub(crate) async fn handle(self: Arc<Self>, msg: Message) {
        let c = &self.client;
        let verb_ = AgentVerb::parse(verb(&msg.subject));
        // Commands need the scheduler's token; a ping and a status
        // question do not.
        let claims = match verb_ {
            None | Some(AgentVerb::Ping) | Some(AgentVerb::Status) => None,
            Some(_) => match self.authorize(&msg).await {
                Ok(c) => Some(c),
                Err(()) => return,
            },
        };
        match verb_ {
            Some(AgentVerb::Ping) => {
                let pong = Pong {
                    system: self.config.system.clone(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    protocol: PROTOCOL_VERSION,
                };
                respond(c, &msg, Ok(pong)).await
            }
            Some(AgentVerb::Prepare) => {
                let r = self.clone().prepare(&msg.payload).await;
                respond(c, &msg, r).await
            }
            Some(AgentVerb::Finish) => {
                let r = self.finish(&msg.payload).await;
                respond(c, &msg, r).await
            }
            Some(AgentVerb::Backup) => {
                respond(c, &msg, self.clone().start_backup(&msg.payload)).await
            }
            Some(AgentVerb::Restore) => {
                let claims = claims.expect("commands carry claims");
                match self.clone().start_restore(&msg.payload, claims) {
                    Err(e) if e.code == arca_schemas::ErrorCode::Forbidden => {
                        self.refuse(&msg, None, e.message.clone()).await;
                        respond::<TransferAccepted>(c, &msg, Err(e)).await
                    }
                    r => respond(c, &msg, r).await,
                }
            }
            Some(AgentVerb::Status) => respond(c, &msg, self.status(&msg.payload).await).await,
            Some(AgentVerb::Cancel) => respond(c, &msg, self.cancel(&msg.payload)).await,
            None => {
                let r: Result<(), _> = Err(ErrorReply::bad_request(format!(
                    "unknown verb in {}",
                    msg.subject
                )));
                respond(c, &msg, r).await
            }
        }
    }
}
