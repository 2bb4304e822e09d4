//! The vocabulary of a job's steps: what a failure names, and the error a
//! step ends with.
//!
//! A step is a [`JobStep`]; when it fails, the failure is named for the
//! event the step would have ended with (`window-opened`, `prepared`,
//! ...), as the job's error and its `step-failed` event say. Two things
//! stop a job from outside its steps: its deadline, and a window lost
//! while it ran.

use arca_schemas::JobStep;

/// Where a job failed: one of its steps, or what stops it from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// A step of the method.
    Step(JobStep),
    /// The job's overall deadline passed.
    Deadline,
    /// A firewall no longer holds the job's window.
    WindowLost,
}

impl Stage {
    /// The name the job's error and its `step-failed` event give it: the
    /// kind of the event the step ends with when it succeeds.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stage::Step(step) => done_kind(step),
            Stage::Deadline => "deadline",
            Stage::WindowLost => "window-renewed",
        }
    }
}

/// The kind of the event a step ends with (see
/// [`arca_schemas::event::EventDetail::kind`]).
pub(crate) fn done_kind(step: JobStep) -> &'static str {
    match step {
        JobStep::Selected => "selected",
        JobStep::OpeningWindow => "window-opened",
        JobStep::WaitingForAgent => "agent-present",
        JobStep::Preparing => "prepared",
        JobStep::Transferring => "transferred",
        JobStep::Finishing => "finished",
        JobStep::ClosingWindow => "window-closed",
        JobStep::Done => "ended",
    }
}

/// A step failed (or was cancelled): which, and why.
#[derive(Debug)]
pub(crate) struct StepError {
    pub(crate) stage: Stage,
    pub(crate) error: String,
    pub(crate) cancelled: bool,
}

impl StepError {
    /// `step` failed with `error`.
    pub(crate) fn new(step: JobStep, error: impl std::fmt::Display) -> Self {
        Self::at(Stage::Step(step), error)
    }

    /// The job stopped at `stage` with `error`.
    pub(crate) fn at(stage: Stage, error: impl std::fmt::Display) -> Self {
        StepError {
            stage,
            error: error.to_string(),
            cancelled: false,
        }
    }

    /// An operator cancelled the job during `step`.
    pub(crate) fn cancelled(step: JobStep) -> Self {
        StepError {
            stage: Stage::Step(step),
            error: "cancelled by an operator".to_owned(),
            cancelled: true,
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.stage.name(), self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_schemas::event::EventDetail;

    #[test]
    fn a_step_is_named_for_the_event_it_ends_with() {
        let opened = EventDetail::WindowOpened {
            firewall: "edge".into(),
            backend: "nft".into(),
            address: "10.0.0.1".into(),
            expires: chrono::Utc::now(),
        };
        assert_eq!(Stage::Step(JobStep::OpeningWindow).name(), opened.kind());
        let closed = EventDetail::WindowClosed {
            firewall: "edge".into(),
        };
        assert_eq!(Stage::Step(JobStep::ClosingWindow).name(), closed.kind());
        let present = EventDetail::AgentPresent {
            version: "1".into(),
        };
        assert_eq!(Stage::Step(JobStep::WaitingForAgent).name(), present.kind());
        assert_eq!(
            StepError::new(JobStep::Preparing, "no").to_string(),
            "prepared: no"
        );
    }
}
