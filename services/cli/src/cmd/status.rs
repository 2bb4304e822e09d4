//! `arca status`: whether the NATS server answers, and its JetStream.

use std::process::ExitCode;

use anyhow::Context;

/// Prints the server's version and the JetStream account's streams.
pub async fn run(client: &async_nats::Client, nats_url: &str) -> anyhow::Result<ExitCode> {
    let info = client.server_info();
    let js = async_nats::jetstream::new(client.clone());
    let account = js
        .query_account()
        .await
        .context("JetStream does not answer; start nats-server with JetStream enabled (-js)")?;
    println!(
        "nats-server {} at {} (max_payload {} bytes), JetStream: {} streams",
        info.version, nats_url, info.max_payload, account.streams
    );
    Ok(ExitCode::SUCCESS)
}
