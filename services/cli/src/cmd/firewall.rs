//! `arca firewall`: the firewall controllers' guarded ports and open
//! windows.

use std::process::ExitCode;

use arca_runtime::rpc::{self, RpcError};
use arca_schemas::msg::{FirewallStatus, FirewallStatusReply, ListSystems, ListSystemsReply};
use arca_schemas::subject::{self, FirewallVerb, SchedulerVerb};

use crate::{FirewallCommand, call};

/// `arca firewall VERB`.
pub async fn run(
    client: &async_nats::Client,
    s: &str,
    command: FirewallCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        FirewallCommand::Status { firewalls } => status(client, s, firewalls).await,
    }
}

/// Each controller's state; one that does not answer is named and skipped.
async fn status(
    client: &async_nats::Client,
    s: &str,
    mut firewalls: Vec<String>,
) -> anyhow::Result<ExitCode> {
    if firewalls.is_empty() {
        let r: ListSystemsReply =
            call(client, s, SchedulerVerb::ListSystems, &ListSystems {}).await?;
        let mut ids: Vec<String> = r.systems.into_iter().flat_map(|s| s.firewalls).collect();
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            println!("no registered system names a firewall controller");
        }
        firewalls = ids;
    }
    for fw in firewalls {
        let r: Result<FirewallStatusReply, RpcError> = rpc::request(
            client,
            subject::firewall(&fw, FirewallVerb::Status),
            &FirewallStatus {},
        )
        .await;
        match r {
            Ok(st) => {
                println!(
                    "{} (backend {}), guarded ports {:?}",
                    st.firewall, st.backend, st.ports
                );
                if st.windows.is_empty() {
                    println!("  no window open");
                }
                for w in st.windows {
                    let left = (w.expires - chrono::Utc::now()).num_seconds().max(0);
                    println!(
                        "  open for {} ({}) job {}, lease {}s left",
                        w.system, w.address, w.job, left
                    );
                }
            }
            Err(e) => println!("{fw}: not answering ({e})"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
