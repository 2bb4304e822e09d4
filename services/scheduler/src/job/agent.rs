//! Waiting for the agent: pinged with back-off until it answers, and its
//! protocol checked against ours before anything is asked of it.

use arca_schemas::event::EventDetail;
use arca_schemas::msg::Pong;
use arca_schemas::text::bounded;
use arca_schemas::{JobStep, PROTOCOL_VERSION, SystemConfig};

use super::step::StepError;
use super::{Driver, cancelled};

impl Driver {
    /// Agent present: retried with back-off, since an agent behind a
    /// window that just opened needs a moment to reconnect.
    pub(super) async fn wait_for_agent(&mut self, system: &SystemConfig) -> Result<(), StepError> {
        let step = JobStep::WaitingForAgent;
        self.enter(step).await?;
        let agent = self.agent(system);
        let pong = tokio::select! {
            r = agent.wait_present() => r.map_err(|e| {
                StepError::new(
                    step,
                    format!(
                        "the agent of {} did not answer within {}s ({e}); is arca-agent running there with system = {:?}?",
                        system.name, self.sched.config.agent_timeout_secs, system.name
                    ),
                )
            })?,
            _ = cancelled(self.cancel.clone()) => {
                self.note_cancel().await;
                return Err(StepError::cancelled(step));
            }
        };
        check_protocol(&system.name, &pong)?;
        self.event(EventDetail::AgentPresent {
            version: bounded(&pong.version, 64).into_owned(),
        })
        .await;
        self.check_cancel(step).await
    }
}

/// An agent that speaks another protocol than this scheduler fails the
/// job: nothing is asked of it that it could misread.
pub(super) fn check_protocol(system: &str, pong: &Pong) -> Result<(), StepError> {
    if pong.protocol == PROTOCOL_VERSION {
        return Ok(());
    }
    let (what, how) = if pong.protocol < PROTOCOL_VERSION {
        ("older", "upgrade arca-agent there")
    } else {
        ("newer", "upgrade arca-scheduler")
    };
    Err(StepError::new(
        JobStep::WaitingForAgent,
        format!(
            "the agent of {system} (version {}) speaks protocol {}, {what} than this scheduler's \
             protocol {PROTOCOL_VERSION}: {how} so that both speak the same protocol",
            bounded(&pong.version, 64),
            pong.protocol,
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pong(protocol: u32) -> Pong {
        Pong {
            system: "web01".into(),
            version: "9.9.9".into(),
            protocol,
        }
    }

    #[test]
    fn an_agent_of_another_protocol_fails_the_step_naming_both_versions() {
        assert!(check_protocol("web01", &pong(PROTOCOL_VERSION)).is_ok());
        let e = check_protocol("web01", &pong(PROTOCOL_VERSION + 1)).unwrap_err();
        assert_eq!(
            e.stage,
            super::super::step::Stage::Step(JobStep::WaitingForAgent)
        );
        let text = e.to_string();
        assert!(text.starts_with("agent-present: "), "{text}");
        assert!(
            text.contains(&format!("protocol {}", PROTOCOL_VERSION + 1)),
            "{text}"
        );
        assert!(
            text.contains(&format!("protocol {PROTOCOL_VERSION}")),
            "{text}"
        );
        assert!(text.contains("upgrade arca-scheduler"), "{text}");
        let e = check_protocol("web01", &pong(0)).unwrap_err();
        assert!(e.to_string().contains("upgrade arca-agent"), "{e}");
    }
}
