//! What the scheduler asks a firewall controller: windows opened, renewed
//! and closed as leases, and the controller's status.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::JobId;

/// Open the guarded port for one address, as a lease.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct OpenWindow {
    /// Job the window is for; opening twice for one job renews it.
    pub job: JobId,
    /// System the window is for.
    pub system: String,
    /// Source address allowed through.
    pub address: String,
    /// Seconds until the window closes by itself unless renewed.
    pub lease_secs: u64,
}

/// Answer to [`OpenWindow`] and [`RenewWindow`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct WindowReply {
    /// Firewall controller that answered.
    pub firewall: String,
    /// Backend doing the work (`none` filters nothing).
    pub backend: String,
    /// When the lease runs out.
    pub expires: DateTime<Utc>,
}

/// Extend a window's lease.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct RenewWindow {
    /// Job whose window to renew.
    pub job: JobId,
    /// New lease from now.
    pub lease_secs: u64,
}

/// Close a job's window. Closing a window that is not open succeeds.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct CloseWindow {
    /// Job whose window to close.
    pub job: JobId,
}

/// Answer to [`CloseWindow`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct CloseWindowReply {
    /// False when no window was open for the job.
    pub was_open: bool,
}

/// Ask a controller what it guards and which windows are open.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct FirewallStatus {}

/// Answer to [`FirewallStatus`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct FirewallStatusReply {
    /// Controller id.
    pub firewall: String,
    /// Backend in use.
    pub backend: String,
    /// Guarded ports.
    pub ports: Vec<u16>,
    /// Windows open now.
    pub windows: Vec<WindowInfo>,
}

/// One open window.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct WindowInfo {
    /// Job it is for.
    pub job: JobId,
    /// System it is for.
    pub system: String,
    /// Source address allowed.
    pub address: String,
    /// When the lease runs out.
    pub expires: DateTime<Utc>,
}

request!(
    OpenWindow => WindowReply,
    RenewWindow => WindowReply,
    CloseWindow => CloseWindowReply,
    FirewallStatus => FirewallStatusReply,
);
