//! How the console writes what it reads: job events, hook outcomes,
//! statuses and durations, and text a system may have written, escaped
//! for the terminal.

use arca_schemas::JobStatus;
use arca_schemas::event::{EventDetail, JobEvent};
use arca_schemas::job::Trigger;

/// A job's duration for the history table: `42s`, `3m07s`, `2h05m`.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn status_word(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Queued => "queued",
        JobStatus::Running => "running",
        JobStatus::Succeeded => "succeeded",
        JobStatus::Partial => "partial",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    }
}

/// One event of a job on one line (more when a system's text spans lines).
pub fn print_event(e: &JobEvent) {
    let t = e.time.format("%H:%M:%S");
    let line = match &e.detail {
        EventDetail::Selected {
            backup_type,
            trigger,
            ..
        } => format!(
            "selected {}{} of {}{}",
            backup_type
                .map(|t| format!("{} ", t.as_str()))
                .unwrap_or_default(),
            format!("{:?}", e.job_kind).to_lowercase(),
            e.system,
            if *trigger == Trigger::Schedule {
                " (scheduled)"
            } else {
                ""
            }
        ),
        EventDetail::WindowOpened {
            firewall,
            backend,
            address,
            ..
        } => {
            format!("window opened on {firewall} ({backend}) for {address}")
        }
        EventDetail::WindowRenewed { firewall, expires } => format!(
            "window renewed on {firewall} until {}",
            expires.format("%H:%M:%S")
        ),
        EventDetail::AgentPresent { version } => format!("agent present (version {version})"),
        EventDetail::Prepared {
            phase,
            ran,
            success,
            exit_code,
            output,
        }
        | EventDetail::Finished {
            phase,
            ran,
            success,
            exit_code,
            output,
        } => hook_line(phase, *ran, *success, *exit_code, output),
        EventDetail::Progress {
            stats,
            bytes_per_sec,
            current,
        } => format!(
            "progress: {} files, {:.1} MiB, {:.1} MiB/s{}",
            stats.files,
            stats.bytes as f64 / 1048576.0,
            bytes_per_sec / 1048576.0,
            current
                .as_ref()
                .map(|c| format!(", at {c}"))
                .unwrap_or_default()
        ),
        EventDetail::FileFailed { file } => format!("file failed: {}: {}", file.path, file.error),
        EventDetail::FileWarning { file } => format!("warning: {}: {}", file.path, file.error),
        EventDetail::Transferred {
            stats,
            snapshot,
            seconds,
        } => format!(
            "transferred {} files, {:.1} MiB in {:.1}s ({} new chunks, {:.1} MiB on the wire){}",
            stats.files,
            stats.bytes as f64 / 1048576.0,
            seconds,
            stats.new_chunks,
            stats.wire_bytes as f64 / 1048576.0,
            snapshot
                .as_ref()
                .map(|s| format!(", snapshot {s}"))
                .unwrap_or_default()
        ),
        EventDetail::WindowClosed { firewall } => format!("window closed on {firewall}"),
        EventDetail::PostHookByAgent {
            phase,
            success,
            exit_code,
            ..
        } => format!(
            "{phase} hook was run by the agent at its deadline, the scheduler being away: {}",
            hook_outcome(*success, *exit_code)
        ),
        EventDetail::SnapshotAdopted { snapshot, media } => format!(
            "snapshot {snapshot} found on media {media} and recorded for this job (the job had lost contact before recording it)"
        ),
        EventDetail::Resumed { step } => {
            format!("picked up again by a restarted scheduler at step {step:?}")
        }
        EventDetail::CancelRequested {} => "cancel requested; cleaning up".to_owned(),
        EventDetail::StepFailed { step, error } => format!("step {step} failed: {error}"),
        EventDetail::Ended {
            status,
            snapshot,
            error,
            seconds,
            file_errors,
            file_errors_not_named,
            ..
        } => {
            let mut s = format!("{} after {:.1}s", status_word(*status), seconds);
            if let Some(sn) = snapshot {
                s.push_str(&format!(", snapshot {sn}"));
            }
            if !file_errors.is_empty() {
                s.push_str(&format!(
                    ", {} files not transferred (named above)",
                    file_errors.len()
                ));
            }
            if *file_errors_not_named > 0 {
                s.push_str(&format!(
                    ", {file_errors_not_named} more not transferred (counted, not named)"
                ));
            }
            if let Some(e) = error {
                s.push_str(&format!(": {e}"));
            }
            s
        }
    };
    println!("  {t} {}", shown(&line));
}

/// Text a system may have written (file names, hook output, messages), fit
/// for the terminal: control characters escaped, each line of a
/// multi-line text indented under the event it belongs to.
pub fn shown(text: &str) -> String {
    text.split('\n')
        .map(|l| arca_schemas::text::escape(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n      ")
}

fn hook_line(
    phase: &str,
    ran: bool,
    success: Option<bool>,
    exit_code: Option<i32>,
    output: &str,
) -> String {
    if !ran {
        return format!("{phase}: no hook configured");
    }
    let mut s = format!("{phase} hook {}", hook_outcome(success, exit_code));
    let out = output.trim();
    if !out.is_empty() {
        s.push_str(&format!(": {}", out.lines().last().unwrap_or("")));
    }
    s
}

/// How a hook ended, in words: an application step has no exit status,
/// and a command killed by a signal or its timeout has none either.
fn hook_outcome(success: Option<bool>, exit_code: Option<i32>) -> String {
    match (success, exit_code) {
        (Some(true), Some(c)) => format!("succeeded (exit {c})"),
        (Some(true), None) => "succeeded".to_owned(),
        (Some(false), Some(c)) => format!("failed (exit {c})"),
        (Some(false), None) => "failed (no exit status: killed, or it timed out)".to_owned(),
        // Events written before `success` was recorded.
        (None, Some(c)) => format!("exited {c}"),
        (None, None) => "ended without an exit status".to_owned(),
    }
}
