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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    arca_runtime::telemetry::init("arca-scheduler");
    let config: arca_scheduler::Config = match &args.config {
        Some(path) => arca_runtime::config::load(path)?,
        None => Default::default(),
    };
    arca_runtime::service_runtime()?.block_on(serve(args, config))
}

/// Connects (the door watcher too, when it has an identity) and runs the
/// scheduler until a signal.
async fn serve(args: Args, config: arca_scheduler::Config) -> anyhow::Result<()> {
    let client = arca_runtime::nats::connect_as(
        &args.nats_url,
        &format!("arca-scheduler-{}", config.id),
        &config.credentials()?,
    )
    .await?;
    // The door watcher is a user of its own: a refusal to admit it leaves
    // the scheduler at work, with refusals at the door not audited.
    let door = match config.door_credentials()? {
        None => {
            tracing::warn!(
                "no door-identity-file: refusals of the NATS server are not audited \
                 (see `arca nats-config --door-key`)"
            );
            None
        }
        Some(credentials) => {
            let name = format!("arca-scheduler-{}-door", config.id);
            match arca_runtime::nats::connect_as(&args.nats_url, &name, &credentials).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "the door watcher cannot connect: refusals of the NATS server are not \
                         audited (is its key in the server's users, `arca nats-config --door-key`?)"
                    );
                    None
                }
            }
        }
    };
    arca_scheduler::run_with_door(config, client, door, arca_runtime::shutdown::signal()).await
}
