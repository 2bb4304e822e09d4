use std::path::PathBuf;

use clap::Parser;

/// The Arca scheduler: registry of systems, job state machine and catalog.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML); defaults apply without one.
    #[arg(long, env = "ARCA_SCHEDULER_CONFIG")]
    config: Option<PathBuf>,
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    arca_runtime::telemetry::init("arca-scheduler");
    let config: arca_scheduler::Config = match &args.config {
        Some(path) => arca_runtime::config::load(path)?,
        None => Default::default(),
    };
    let client = arca_runtime::nats::connect_as(
        &args.nats_url,
        &format!("arca-scheduler-{}", config.id),
        &config.credentials()?,
    )
    .await?;
    arca_scheduler::run(config, client, arca_runtime::shutdown::signal()).await
}
