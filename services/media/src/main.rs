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
    /// Seal the repository's key file by a passphrase and exit: the new
    /// passphrase is ARCA_NEW_KEY_PASSPHRASE, or else the configured one
    /// (key-passphrase-file or ARCA_KEY_PASSPHRASE), which also opens a
    /// key file already sealed.
    #[arg(long, conflicts_with = "unseal_key")]
    seal_key: bool,
    /// Write the repository's key file without a passphrase and exit.
    #[arg(long)]
    unseal_key: bool,
}

fn main() -> anyhow::Result<()> {
    arca_runtime::service_runtime()?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let args = Args::parse();
    arca_runtime::telemetry::init("arca-media");
    let config: arca_media::Config = arca_runtime::config::load(&args.config)?;
    if args.seal_key || args.unseal_key {
        let new = if args.unseal_key {
            None
        } else {
            match std::env::var_os("ARCA_NEW_KEY_PASSPHRASE") {
                Some(p) => Some(p.into_encoded_bytes()),
                None => Some(config.passphrase()?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "no passphrase to seal with: set ARCA_NEW_KEY_PASSPHRASE, \
                         key-passphrase-file or ARCA_KEY_PASSPHRASE"
                    )
                })?),
            }
        };
        let path = config.key_file_path();
        arca_media::reseal_key_file(&config, new.as_deref())?;
        println!(
            "{} {}",
            path.display(),
            if new.is_some() {
                "is sealed by the passphrase"
            } else {
                "holds the key without a passphrase"
            }
        );
        return Ok(());
    }
    // A key file that cannot be opened stops the service before it
    // connects, saying why.
    arca_media::check_key_file(&config)?;
    let client = arca_runtime::nats::connect_as(
        &args.nats_url,
        &format!("arca-media-{}", config.id),
        &config.credentials()?,
    )
    .await?;
    arca_media::run(config, client, arca_runtime::shutdown::signal()).await
}
