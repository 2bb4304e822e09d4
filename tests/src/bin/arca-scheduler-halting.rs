//! The scheduler with its crash hook, for the end-to-end crash tests only:
//! `arca-scheduler-halting --config FILE --halt-after STEP` runs the
//! scheduler as `arca-scheduler` does, except that jobs stop being acted
//! on once STEP (`opening-window`, `transferring`, ...) is persisted, so
//! that a test can kill it there. The release binary has no such hook.

use arca_schemas::JobStep;

fn main() -> anyhow::Result<()> {
    let mut config = None;
    let mut halt_after = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => config = args.next(),
            "--halt-after" => halt_after = args.next(),
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let config = config.ok_or_else(|| anyhow::anyhow!("--config FILE is required"))?;
    let step = halt_after.ok_or_else(|| anyhow::anyhow!("--halt-after STEP is required"))?;
    let step: JobStep = serde_json::from_value(serde_json::Value::String(step.clone()))
        .map_err(|_| anyhow::anyhow!("--halt-after {step:?} names no job step"))?;
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    arca_runtime::telemetry::init("arca-scheduler");
    let config: arca_scheduler::Config = arca_runtime::config::load(config.as_ref())?;
    arca_runtime::service_runtime()?.block_on(async {
        let client = arca_runtime::nats::connect_as(
            &url,
            &format!("arca-scheduler-{}", config.id),
            &config.credentials()?,
        )
        .await?;
        let options = arca_scheduler::RunOptions::halt_after(step);
        arca_scheduler::run_with_options(
            config,
            client,
            None,
            options,
            arca_runtime::shutdown::signal(),
        )
        .await
    })
}
