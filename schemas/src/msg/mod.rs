//! Request and reply bodies, grouped by the service that answers them.
//! Commands are imperative, replies end in `Reply`. Every reply travels as
//! [`crate::error::Reply`] so that a failure is typed.
//!
//! Requests that act on a job carry its [`crate::JobId`]; a responder that
//! sees the same job and step again answers with the result it gave the
//! first time instead of acting twice.
//!
//! Every command names the body its answer carries ([`Request::Reply`]), so
//! that a caller cannot decode an answer as the wrong type. The modules are
//! re-exported here: `arca_schemas::msg::Ping` is the path to use.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A command sent as a request, and the body of its answer.
pub trait Request: Serialize + Send + Sync {
    /// What a successful answer carries.
    type Reply: DeserializeOwned + Send;
}

/// `request!(Command => Reply, ...)`: each command answers with its reply.
macro_rules! request {
    ($($req:ty => $reply:ty),* $(,)?) => {
        $(impl $crate::msg::Request for $req {
            type Reply = $reply;
        })*
    };
}

mod agent;
mod firewall;
mod maintenance;
mod media;
mod scheduler;

pub use agent::*;
pub use firewall::*;
pub use maintenance::*;
pub use media::*;
pub use scheduler::*;
