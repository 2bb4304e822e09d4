use std::path::PathBuf;

use clap::Parser;

/// The Arca disk agent: backs up and restores the files of one system.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, env = "ARCA_AGENT_CONFIG")]
    config: PathBuf,
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Print the agent's public key (creating its identity file on first
    /// use) and exit: the key `arca system add` enrolls.
    #[arg(long)]
    public_key: bool,
}

fn main() -> anyhow::Result<()> {
    arca_runtime::service_runtime()?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let args = Args::parse();
    arca_runtime::telemetry::init("arca-agent");
    let config: arca_agent::Config = arca_runtime::config::load(&args.config)?;
    if args.public_key {
        println!("{}", config.identity()?.public_key());
        return Ok(());
    }
    // Behind a closed firewall window the server is unreachable: keep
    // trying, so that the agent is present soon after the window opens.
    // A server that refuses the key is not a closed window: say what to do.
    let credentials = config.credentials()?;
    let key = config.identity()?.public_key();
    let (client, refusals) = arca_runtime::nats::connect_patiently(
        &args.nats_url,
        &format!("arca-agent-{}", config.system),
        &credentials,
        &arca_agent::door::not_enrolled_hint(&config.system, &key),
    )
    .await?;
    arca_agent::run_watched(config, client, refusals, arca_runtime::shutdown::signal()).await
}
