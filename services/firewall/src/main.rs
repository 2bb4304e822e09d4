use std::path::PathBuf;

use clap::Parser;

/// The Arca firewall controller: opens guarded ports per job, under a lease.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, env = "ARCA_FIREWALL_CONFIG")]
    config: PathBuf,
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    arca_runtime::telemetry::init("arca-firewall");
    arca_runtime::service_runtime()?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let config: arca_firewall::Config = arca_runtime::config::load(&args.config)?;
    let client = arca_runtime::nats::connect_as(
        &args.nats_url,
        &format!("arca-firewall-{}", config.id),
        &config.credentials()?,
    )
    .await?;
    arca_firewall::run(config, client, arca_runtime::shutdown::signal()).await
}
