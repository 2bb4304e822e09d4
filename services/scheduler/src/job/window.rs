//! The job's firewall windows: opened on every firewall of the path in
//! order, renewed while the job runs, closed in reverse order at the end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_runtime::peer::FirewallPeer;
use arca_runtime::rpc::RpcError;
use arca_schemas::event::EventDetail;
use arca_schemas::msg::{CloseWindow, OpenWindow, RenewWindow};
use arca_schemas::{JobRecord, JobStep, SystemConfig};

use super::Driver;
use super::step::StepError;
use crate::Scheduler;

impl Driver {
    /// Window opened: every firewall on the path, in order.
    pub(super) async fn open_windows(&mut self, system: &SystemConfig) -> Result<(), StepError> {
        self.enter(JobStep::OpeningWindow).await?;
        for fw in &system.firewalls {
            // Recorded before asking, so that clean-up closes it even if
            // the scheduler dies between the request and its answer.
            if !self.rec.open_windows.contains(fw) {
                self.rec.open_windows.push(fw.clone());
                self.save().await?;
            }
            let req = OpenWindow {
                job: self.rec.id,
                system: system.name.clone(),
                address: system.address.clone(),
                lease_secs: self.sched.config.lease_secs,
            };
            let r = match self.firewall(fw).open(&req).await {
                Ok(r) => r,
                Err(e) => {
                    // Its close is still attempted (it may have opened
                    // without answering), but last: the windows that did
                    // open close first, without waiting for it.
                    if let Some(last) = self.rec.open_windows.pop() {
                        self.rec.open_windows.insert(0, last);
                        self.save().await?;
                    }
                    return Err(StepError::new(
                        JobStep::OpeningWindow,
                        format!("firewall {fw} did not open: {e}"),
                    ));
                }
            };
            {
                let mut confirmed = self.confirmed.lock().expect("confirmed lock");
                if !confirmed.contains(fw) {
                    confirmed.push(fw.clone());
                }
            }
            self.event(EventDetail::WindowOpened {
                firewall: fw.clone(),
                backend: r.backend,
                address: system.address.clone(),
                expires: r.expires,
            })
            .await;
        }
        self.check_cancel(JobStep::OpeningWindow).await
    }

    /// Closes every window this job opened, in reverse order of opening.
    /// Returns the first failure; every window is attempted.
    pub(super) async fn close_windows(&mut self) -> Option<StepError> {
        let mut failure = None;
        if !self.rec.open_windows.is_empty() {
            self.enter_cleanup(JobStep::ClosingWindow).await;
        }
        while let Some(fw) = self.rec.open_windows.last().cloned() {
            let close = CloseWindow { job: self.rec.id };
            match self.firewall(&fw).close(&close).await {
                Ok(_) => {
                    self.event(EventDetail::WindowClosed {
                        firewall: fw.clone(),
                    })
                    .await
                }
                Err(e) => {
                    let step = JobStep::ClosingWindow;
                    let msg = format!(
                        "firewall {fw} did not confirm closing: {e}; its lease ends the window within {}s",
                        self.sched.config.lease_secs
                    );
                    self.step_failed(step, &msg).await;
                    failure.get_or_insert(StepError::new(step, msg));
                }
            }
            self.rec.open_windows.pop();
            self.save_or_log().await;
        }
        failure
    }
}

/// Renews the job's confirmed windows every third of a lease while the job
/// runs; each renewal is a `window-renewed` event. A renewal that fails for
/// a passing reason is logged and tried again at the next turn (the lease
/// still bounds the window); one refused because the controller no longer
/// holds the window is reported on `lost`, and renewing stops.
pub(super) async fn renew_leases(
    sched: Arc<Scheduler>,
    rec: JobRecord,
    confirmed: Arc<Mutex<Vec<String>>>,
    lost: tokio::sync::oneshot::Sender<String>,
) {
    let lease = sched.config.lease_secs;
    let every = Duration::from_secs((lease / 3).max(1));
    loop {
        tokio::time::sleep(every).await;
        let firewalls = confirmed.lock().expect("confirmed lock").clone();
        for fw in firewalls {
            let req = RenewWindow {
                job: rec.id,
                lease_secs: lease,
            };
            let peer = FirewallPeer::new(sched.link(), &fw);
            match peer.renew(&req, every).await {
                // Published aside: a publish JetStream is slow to take
                // (retried for up to 30 s) must not delay the next renewal.
                Ok(r) => {
                    let (s, rec, firewall) = (sched.clone(), rec.clone(), fw.clone());
                    tokio::spawn(async move {
                        arca_runtime::events::publish(
                            &s.state.js,
                            rec.id,
                            rec.kind,
                            &rec.system,
                            EventDetail::WindowRenewed {
                                firewall,
                                expires: r.expires,
                            },
                        )
                        .await
                    });
                }
                Err(RpcError::Remote(e)) if e.code == arca_schemas::ErrorCode::NotFound => {
                    tracing::warn!(job = %rec.id, firewall = %fw, error = %e, "window lost");
                    let _ = lost.send(fw);
                    return;
                }
                Err(e) => {
                    tracing::debug!(job = %rec.id, firewall = %fw, error = %e, "lease not renewed")
                }
            }
        }
    }
}
