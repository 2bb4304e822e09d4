//! `arca system`: the scheduler's registry of systems, read from and
//! written as systems files.

use std::process::ExitCode;

use anyhow::{Context, bail};
use arca_schemas::msg::{
    GetSystem, ListSystems, ListSystemsReply, LoadMode, LoadSystems, LoadSystemsReply,
    RemoveSystem, SystemRemoved,
};
use arca_schemas::subject::SchedulerVerb;
use arca_schemas::system::SystemsFile;

use crate::{SystemsCommand, call};

/// `arca system VERB`.
pub async fn run(
    client: &async_nats::Client,
    s: &str,
    command: SystemsCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        SystemsCommand::Add { file } => {
            load_systems(client, s, &file, LoadMode::Add, "registered").await
        }
        SystemsCommand::Edit { file } => {
            load_systems(client, s, &file, LoadMode::Replace, "replaced").await
        }
        SystemsCommand::Load { file } => {
            load_systems(client, s, &file, LoadMode::Upsert, "registered").await
        }
        SystemsCommand::List => list(client, s).await,
        SystemsCommand::Show { name, json } => show(client, s, name, json).await,
        SystemsCommand::Remove { name } => remove(client, s, name).await,
    }
}

async fn list(client: &async_nats::Client, s: &str) -> anyhow::Result<ExitCode> {
    let r: ListSystemsReply = call(client, s, SchedulerVerb::ListSystems, &ListSystems {}).await?;
    println!(
        "{:<20} {:<16} {:>4} {:<12} {:<16} {:<28} PATHS",
        "NAME", "ADDRESS", "PRIO", "MEDIA", "FIREWALLS", "SCHEDULES"
    );
    for sys in r.systems {
        let schedules: Vec<String> = sys
            .schedules
            .each()
            .map(|(t, spec)| format!("{}: {} {}", t.as_str(), spec.cron, spec.time_zone))
            .collect();
        println!(
            "{:<20} {:<16} {:>4} {:<12} {:<16} {:<28} {}",
            sys.name,
            sys.address,
            sys.priority,
            sys.media,
            sys.firewalls.join(","),
            if schedules.is_empty() {
                "-".to_owned()
            } else {
                schedules.join("; ")
            },
            sys.paths.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(
    client: &async_nats::Client,
    s: &str,
    name: String,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let sys: arca_schemas::SystemConfig =
        call(client, s, SchedulerVerb::GetSystem, &GetSystem { name }).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&sys)?);
    } else {
        let file = SystemsFile { systems: vec![sys] };
        print!("{}", toml::to_string(&file)?);
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(client: &async_nats::Client, s: &str, name: String) -> anyhow::Result<ExitCode> {
    let r: SystemRemoved = call(
        client,
        s,
        SchedulerVerb::RemoveSystem,
        &RemoveSystem { name },
    )
    .await?;
    println!("removed {}", r.name);
    Ok(ExitCode::SUCCESS)
}

async fn load_systems(
    client: &async_nats::Client,
    scheduler: &str,
    file: &std::path::Path,
    mode: LoadMode,
    done: &str,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let parsed: SystemsFile =
        toml::from_str(&text).with_context(|| format!("{} is invalid", file.display()))?;
    if parsed.systems.is_empty() {
        bail!("{} defines no [[system]]", file.display());
    }
    let r: LoadSystemsReply = call(
        client,
        scheduler,
        SchedulerVerb::LoadSystems,
        &LoadSystems {
            systems: parsed.systems,
            mode,
        },
    )
    .await?;
    for name in r.stored {
        println!("{done} {name}");
    }
    Ok(ExitCode::SUCCESS)
}
