//! Test fixtures for Arca (dev only).
//!
//! - [`nats::NatsServer`]: a real nats-server (2.10 or later) with JetStream
//!   on a free loopback port and a temporary store; killed on drop, its log
//!   printed when the test fails.
//! - [`process::ServiceProcess`]: a service binary of this workspace running
//!   as a child process; killed on drop, its log printed when the test fails.
//! - [`netns`]: network namespaces joined by veth pairs, for tests with
//!   real nftables in between; they say so when they cannot run.
//! - [`pki`]: a test certificate authority (by `ops/gen-pki`) for TLS.
//! - [`tree`]: build file trees and compare two trees in content and metadata.
//! - [`hostile`]: a compromised system that speaks the protocol with its
//!   real key and sends what an attacker would.

pub mod hostile;
pub mod nats;
pub mod netns;
pub mod pki;
pub mod process;
pub mod tree;

pub use nats::{NatsOptions, NatsServer, Secure};
pub use pki::{ClientAuth, Pki};
pub use process::{ServiceProcess, bin_path};

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("loopback has a free port")
}
