//! The scene of the hostile restore tests: a compromised system `evil`,
//! an honest one `good`, a target folder and a canary beside it.

use arca_e2e::{AgentUser, Stack, system};
use arca_runtime::rpc;
use arca_schemas::msg::{JobsStarted, StartRestore};
use arca_schemas::subject::{self, SchedulerVerb};
use arca_schemas::tree::Node;
use arca_schemas::{JobRecord, SnapshotId};
use arca_testkit::hostile::{Compromised, plan_tree};
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;

/// What a test's hostile tree is built from: the compromised system and
/// its backup's start request.
pub(super) type Build = Arc<
    dyn Fn(Compromised, arca_schemas::msg::StartBackupTransfer) -> BoxFuture<'static, Vec<Node>>
        + Send
        + Sync,
>;

/// A stack with `evil` (compromised) and `good` (a real agent, as the
/// test's user), and a folder holding the restore target and the canary.
pub(super) struct Scene {
    pub(super) stack: Stack,
    pub(super) _evil: Compromised,
    pub(super) _serving: tokio::task::JoinHandle<()>,
    pub(super) out: tempfile::TempDir,
}

impl Scene {
    pub(super) async fn start(build: Build) -> Scene {
        let mut stack = Stack::start().await.unwrap();
        let evil_data = tempfile::tempdir().unwrap();
        let good_data = tempfile::tempdir().unwrap();
        stack
            .load_systems(vec![
                system("evil", &[evil_data.path()]),
                system("good", &[good_data.path()]),
            ])
            .await
            .unwrap();
        let evil = stack.compromised("evil").await.unwrap();
        let serving = evil
            .serve(plan_tree(move |c, start| build(c, start)))
            .await
            .unwrap();
        stack.start_agent("good", AgentUser::Same).await.unwrap();
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir(out.path().join("canary")).unwrap();
        std::fs::write(out.path().join("canary/kept"), b"as it was").unwrap();
        Scene {
            stack,
            _evil: evil,
            _serving: serving,
            out,
        }
    }

    pub(super) fn target(&self) -> PathBuf {
        self.out.path().join("target")
    }

    pub(super) fn canary(&self) -> PathBuf {
        self.out.path().join("canary")
    }

    /// Asserts that the canary folder holds exactly what it held.
    pub(super) fn canary_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(self.canary())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("kept")],
            "written outside the target"
        );
        assert_eq!(
            std::fs::read(self.canary().join("kept")).unwrap(),
            b"as it was"
        );
    }

    /// Backs `evil` up; the snapshot, or the job that made none.
    pub(super) async fn evil_snapshot(&self) -> Result<SnapshotId, JobRecord> {
        let job = self.stack.backup(&["evil"]).await.unwrap()[0];
        let (_, rec) = self.stack.wait_job(job).await.unwrap();
        rec.snapshot.clone().ok_or(rec)
    }

    /// Restores `snapshot` onto `good` into the target, as an operator
    /// allowing the cross-system restore does.
    pub(super) async fn restore_onto_good(
        &self,
        snapshot: &SnapshotId,
        keep_privileges: bool,
    ) -> JobRecord {
        let r: JobsStarted = rpc::request(
            &self.stack.client,
            subject::scheduler("main", SchedulerVerb::Restore),
            &StartRestore {
                snapshot: snapshot.clone(),
                target: Some(self.target().display().to_string()),
                to_system: Some("good".into()),
                allow_cross_system: true,
                operator: Some("alice".into()),
                filter: Default::default(),
                keep_privileges,
            },
        )
        .await
        .unwrap();
        self.stack.wait_job(r.jobs[0]).await.unwrap().1
    }
}

pub(super) fn build<F, Fut>(f: F) -> Build
where
    F: Fn(Compromised, arca_schemas::msg::StartBackupTransfer) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<Node>> + Send + 'static,
{
    Arc::new(move |c, s| Box::pin(f(c, s)))
}
