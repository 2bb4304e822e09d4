use std::path::PathBuf;

use clap::Parser;

/// The Arca media service: stores and serves backup data.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, env = "ARCA_MEDIA_CONFIG")]
    config: PathBuf,
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
}

fn main() -> anyhow::Result<()> {
    arca_runtime::memory::limit_arenas();
    arca_runtime::service_runtime()?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let args = Args::parse();
    arca_runtime::telemetry::init("arca-media");
    let config: arca_media::Config = arca_runtime::config::load(&args.config)?;
    let client = arca_runtime::nats::connect_as(
        &args.nats_url,
        &format!("arca-media-{}", config.id),
        &config.credentials()?,
    )
    .await?;
    arca_media::run(config, client, arca_runtime::shutdown::signal()).await
}
