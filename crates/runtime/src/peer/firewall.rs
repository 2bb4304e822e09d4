//! The scheduler's client of one firewall controller: a job's window
//! opened, renewed and closed.

use std::time::Duration;

use arca_schemas::msg::{CloseWindow, CloseWindowReply, OpenWindow, RenewWindow, WindowReply};
use arca_schemas::subject::{self, FirewallVerb};

use super::Link;
use crate::rpc::{DEFAULT_TIMEOUT, RpcError};

/// One firewall controller. Opening and closing may take
/// [`DEFAULT_TIMEOUT`] each and are retried for the link's window.
#[derive(Clone)]
pub struct FirewallPeer {
    link: Link,
    firewall: String,
}

impl FirewallPeer {
    /// Controller `firewall`.
    pub fn new(link: Link, firewall: &str) -> Self {
        FirewallPeer {
            link,
            firewall: firewall.to_owned(),
        }
    }

    /// The controller's id.
    pub fn id(&self) -> &str {
        &self.firewall
    }

    fn subject(&self, verb: FirewallVerb) -> String {
        subject::firewall(&self.firewall, verb)
    }

    /// Opens (or renews, when asked again) a job's window.
    pub async fn open(&self, req: &OpenWindow) -> Result<WindowReply, RpcError> {
        let s = self.subject(FirewallVerb::Open);
        self.link
            .retried(self.link.retry, s, req, DEFAULT_TIMEOUT, None)
            .await
    }

    /// Renews a window's lease once; the answer may take `timeout`.
    pub async fn renew(
        &self,
        req: &RenewWindow,
        timeout: Duration,
    ) -> Result<WindowReply, RpcError> {
        let s = self.subject(FirewallVerb::Renew);
        self.link.once(s, req, timeout, None).await
    }

    /// Closes a job's window.
    pub async fn close(&self, req: &CloseWindow) -> Result<CloseWindowReply, RpcError> {
        let s = self.subject(FirewallVerb::Close);
        self.link
            .retried(self.link.retry, s, req, DEFAULT_TIMEOUT, None)
            .await
    }
}
