//! The `postgresql` kind against a real PostgreSQL that the test starts in
//! a temporary folder (as the user `postgres`: the server refuses root),
//! with `pgbench` writing throughout every backup.
//!
//! Needs root, the user `postgres` and PostgreSQL's programs (`initdb`,
//! `pg_ctl`, `psql`, `pgbench`, `pg_amcheck`, the `amcheck` extension),
//! found in `ARCA_PG_BIN` or the newest `/usr/lib/postgresql/*/bin`. When
//! they are missing the tests say `SKIPPED` and why, unless
//! `ARCA_REQUIRE_POSTGRES=1` (as `ops/test` sets), which makes that a
//! failure.
//!
//! The cluster is set up so that backups are tested hard: `max_wal_size`
//! is small, so checkpoints happen during the transfers, and WAL segments
//! are recycled while the data directory is read.

use std::path::{Path, PathBuf};

use arca_e2e::{AgentUser, Stack, system};
use arca_schemas::event::{EventDetail, JobEvent};
use arca_schemas::{Application, JobStatus, PostgresqlSpec, SystemConfig};

mod cluster;

use cluster::{Cluster, Pg, postgres};

fn spec(pg: &Pg, c: &Cluster) -> PostgresqlSpec {
    PostgresqlSpec {
        data_directory: c.data.display().to_string(),
        host: c.sock.display().to_string(),
        port: c.port,
        user: "postgres".into(),
        database: "postgres".into(),
        password_file: None,
        bin_dir: Some(pg.bin.display().to_string()),
        stop_command: None,
        start_command: None,
        log_file: None,
        timeout_secs: 300,
    }
}

fn pg_system(name: &str, pg: &Pg, c: &Cluster, with_kind: bool) -> SystemConfig {
    let mut sys = system(name, &[&c.data]);
    if with_kind {
        sys.applications = vec![Application::Postgresql(spec(pg, c))];
    }
    sys
}

fn finished_output(events: &[JobEvent]) -> String {
    events
        .iter()
        .find_map(|e| match &e.detail {
            EventDetail::Finished { output, .. } => Some(output.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn prepared_output(events: &[JobEvent]) -> String {
    events
        .iter()
        .find_map(|e| match &e.detail {
            EventDetail::Prepared { output, .. } => Some(output.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// A temporary folder the cluster's owner (not the test's user) can enter.
fn work_dir() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    work
}

/// Where a restore into `target` puts the data directory `data`.
fn restored(target: &Path, data: &Path) -> PathBuf {
    target.join(data.strip_prefix("/").unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_under_pgbench_restore_to_clusters_that_recover_and_pass_amcheck() {
    let Some(pg) =
        postgres("backups_under_pgbench_restore_to_clusters_that_recover_and_pass_amcheck")
    else {
        return;
    };
    let work = work_dir();
    let live = Cluster::init(&pg, &work.path().join("live"));
    live.start().unwrap();
    let o = live
        .client("pgbench")
        .args(["-i", "-s", "2", "-q", "postgres"])
        .output()
        .unwrap();
    assert!(o.status.success(), "pgbench -i: {o:?}");

    let mut stack = Stack::start().await.unwrap();
    stack
        .load_systems(vec![pg_system("pg", &pg, &live, true)])
        .await
        .unwrap();
    stack.start_agent("pg", AgentUser::Same).await.unwrap();

    let mut bench = live.pgbench();
    let mut last = None;
    let mut changed_while_read = 0;
    for round in 1..=5 {
        let before = live.balances()[4];
        let checkpoints = live.checkpoints();
        let job = stack.backup(&["pg"]).await.unwrap()[0];
        let (events, rec) = stack.wait_job(job).await.unwrap();
        let checkpoints = checkpoints.done();
        assert_eq!(rec.status, JobStatus::Succeeded, "round {round}: {rec:#?}");
        let after = live.balances()[4];
        assert!(
            after > before,
            "round {round}: pgbench did not write during the backup ({before} -> {after} history rows)"
        );
        assert!(
            prepared_output(&events).contains("backup mode started"),
            "{events:#?}"
        );
        let finished = finished_output(&events);
        assert!(
            finished.contains("backup mode ended") && finished.contains("backup_label"),
            "{finished}"
        );
        let snap = rec.snapshot.clone().unwrap();
        // Files of the data directory written while read are what the
        // backup mode is for: recovery replays the WAL over them. They are
        // marked in the snapshot but are no warnings (which would advise
        // to quiesce the application).
        let in_data: Vec<_> = rec
            .file_warnings
            .iter()
            .filter(|w| Path::new(&w.path).starts_with(&live.data))
            .collect();
        assert!(
            in_data.is_empty(),
            "round {round}: warnings for files PostgreSQL's backup mode covers: {in_data:#?}"
        );
        let listing = stack.arca(&["ls", &snap.to_string(), live.data.to_str().unwrap()]);
        assert!(listing.status.success(), "arca ls: {listing:?}");
        changed_while_read += String::from_utf8_lossy(&listing.stdout)
            .lines()
            .filter(|l| l.ends_with("(changed while read)"))
            .count();

        let target = work.path().join(format!("restore-{round}"));
        // Kept owners: the copy runs as the cluster's user.
        let job = stack
            .restore_with(&snap, Some(&target), Default::default(), true)
            .await
            .unwrap();
        let (events, rec) = stack.wait_job(job).await.unwrap();
        assert_eq!(rec.status, JobStatus::Succeeded, "round {round}: {rec:#?}");
        assert!(
            finished_output(&events).contains("not started here"),
            "{events:#?}"
        );
        let data = restored(&target, &live.data);
        assert!(data.join("backup_label").is_file());
        assert!(!data.join("postmaster.pid").exists());
        let copy = Cluster::on(&pg, data, &pg.folder(&target.join("run")));
        copy.start()
            .unwrap_or_else(|e| panic!("round {round}: the restored cluster did not start: {e}"));
        let sums = copy.balances();
        let checked = copy.amcheck();
        let log = copy.server_log();
        eprintln!(
            "round {round}: {} history rows before the backup, {} after, {} in the restored copy; \
             {checkpoints} checkpoint(s) during the backup; sums (branches, tellers, accounts, history) {:?}",
            before,
            after,
            sums[4],
            &sums[..4]
        );
        // It recovered from the backup's label, which the server renames
        // once recovery ends.
        assert!(
            copy.data.join("backup_label.old").is_file()
                && !copy.data.join("backup_label").exists(),
            "round {round}: the backup label was not used\n{log}"
        );
        assert!(log.contains("redo starts at"), "round {round}: {log}");
        assert!(
            sums[0] == sums[3] && sums[1] == sums[3] && sums[2] == sums[3],
            "round {round}: the restored copy is inconsistent: sums {sums:?}\n{log}"
        );
        assert!(
            sums[4] >= before,
            "round {round}: the restored copy lacks rows written before the backup"
        );
        if let Err(report) = checked {
            panic!("round {round}: amcheck found corruption:\n{report}\n{log}");
        }
        copy.stop();
        drop(copy);
        let _ = std::fs::remove_dir_all(&target);
        last = Some(snap);
    }
    let _ = bench.kill();
    let _ = bench.wait();
    eprintln!(
        "{changed_while_read} file(s) of the data directory changed while read in the five backups, without a warning"
    );

    // In place: the pre-restore stops the server and moves its data
    // directory aside, the post-restore starts it on the restored one.
    let job = stack.restore(&last.unwrap(), None).await.unwrap();
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}\n{events:#?}");
    let pre = prepared_output(&events);
    assert!(pre.contains("stopped") && pre.contains("kept at"), "{pre}");
    let post = finished_output(&events);
    assert!(post.contains("accepts connections"), "{post}");
    let aside = PathBuf::from(format!("{}.before-restore-{job}", live.data.display()));
    assert!(aside.join("PG_VERSION").is_file(), "{}", aside.display());
    let sums = live.balances();
    assert!(
        sums[0] == sums[3] && sums[1] == sums[3] && sums[2] == sums[3],
        "restored in place: {sums:?}"
    );
    live.amcheck().unwrap();
}

/// The same backup without the `postgresql` kind: a plain copy of a live
/// data directory. Arca claims nothing for it, and it shows why: there is
/// no `backup_label`, so PostgreSQL cannot know the copy is a backup. It
/// would start crash recovery from whatever checkpoint `global/pg_control`
/// named when that file was read, which may be later than the data files
/// read before it: changes made in between are then never replayed, and
/// the copy starts with torn or lost pages and says nothing. The copy even
/// holds the live server's `postmaster.pid`, so on the same host it does
/// not start at all while the original runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_plain_copy_of_a_live_cluster_is_not_claimed_consistent() {
    let Some(pg) = postgres("a_plain_copy_of_a_live_cluster_is_not_claimed_consistent") else {
        return;
    };
    let work = work_dir();
    let live = Cluster::init(&pg, &work.path().join("live"));
    live.start().unwrap();
    let o = live
        .client("pgbench")
        .args(["-i", "-s", "2", "-q", "postgres"])
        .output()
        .unwrap();
    assert!(o.status.success(), "pgbench -i: {o:?}");
    let mut stack = Stack::start().await.unwrap();
    stack
        .load_systems(vec![pg_system("plain", &pg, &live, false)])
        .await
        .unwrap();
    stack.start_agent("plain", AgentUser::Same).await.unwrap();

    let mut bench = live.pgbench();
    let checkpoints = live.checkpoints();
    let job = stack.backup(&["plain"]).await.unwrap()[0];
    let (events, rec) = stack.wait_job(job).await.unwrap();
    drop(checkpoints);
    let _ = bench.kill();
    let _ = bench.wait();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    // Nothing in the job says the copy is consistent.
    for e in &events {
        if let EventDetail::Prepared { output, .. } | EventDetail::Finished { output, .. } =
            &e.detail
        {
            assert!(!output.contains("postgresql"), "{output}");
        }
    }
    let target = work.path().join("restore");
    let job = stack
        .restore(rec.snapshot.as_ref().unwrap(), Some(&target))
        .await
        .unwrap();
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let data = restored(&target, &live.data);
    assert!(
        !data.join("backup_label").exists(),
        "a plain copy has no backup label"
    );
    assert!(data.join("postmaster.pid").exists());
    let copy = Cluster::on(&pg, data.clone(), &pg.folder(&target.join("run")));
    let refused = copy
        .start()
        .expect_err("a copy holding a live postmaster.pid started");
    assert!(refused.contains("postmaster.pid"), "{refused}");

    // Started anyway (as an operator would, removing the lock file), it
    // runs crash recovery, not backup recovery: what it holds afterwards is
    // luck. Whether this copy happens to pass is printed, not asserted.
    std::fs::remove_file(data.join("postmaster.pid")).unwrap();
    match copy.start() {
        Ok(()) => {
            assert!(!data.join("backup_label.old").exists());
            let sums = copy.balances();
            let agree = sums[..3].iter().all(|s| *s == sums[3]);
            eprintln!(
                "plain copy: started by crash recovery; sums (branches, tellers, accounts, \
                 history) {:?}: {}; amcheck {}",
                &sums[..4],
                if agree {
                    "agree (by luck)"
                } else {
                    "INCONSISTENT"
                },
                if copy.amcheck().is_ok() {
                    "passed"
                } else {
                    "FOUND CORRUPTION"
                }
            );
        }
        Err(e) => eprintln!("plain copy: did not start: {e}"),
    }
}

/// `spec` with a shorter timeout: a server that does not come up fails the
/// test in a minute, not five.
fn quick_system(name: &str, pg: &Pg, c: &Cluster) -> SystemConfig {
    let mut sys = system(name, &[&c.data]);
    let mut spec = spec(pg, c);
    spec.timeout_secs = 60;
    sys.applications = vec![Application::Postgresql(spec)];
    sys
}

/// A server whose port and socket folder were given only on its command
/// line (`pg_ctl start -o '-p PORT -k DIR'`), restored in place, is
/// started again with those options, from its `postmaster.opts`: it comes
/// up on the same port and socket, holding the restored data. A bare
/// `pg_ctl start` would bring it up on the default port and socket, or
/// not at all.
#[tokio::test(flavor = "multi_thread")]
async fn restored_in_place_a_server_comes_up_again_with_the_options_it_was_started_with() {
    let Some(pg) =
        postgres("restored_in_place_a_server_comes_up_again_with_the_options_it_was_started_with")
    else {
        return;
    };
    let work = work_dir();
    let live = Cluster::init_on_command_line(&pg, &work.path().join("live"));
    let conf = std::fs::read_to_string(live.data.join("postgresql.conf")).unwrap();
    assert!(!conf.contains(live.sock.to_str().unwrap()));
    live.start().unwrap();
    live.sql("CREATE TABLE t (v text); INSERT INTO t VALUES ('backed up')");

    let mut stack = Stack::start().await.unwrap();
    stack
        .load_systems(vec![quick_system("pgcl", &pg, &live)])
        .await
        .unwrap();
    stack.start_agent("pgcl", AgentUser::Same).await.unwrap();
    let job = stack.backup(&["pgcl"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    live.sql("INSERT INTO t VALUES ('after the backup')");

    let job = stack
        .restore(rec.snapshot.as_ref().unwrap(), None)
        .await
        .unwrap();
    let (events, rec) = stack.wait_job(job).await.unwrap();
    let log = live.server_log();
    assert_eq!(
        rec.status,
        JobStatus::Succeeded,
        "{rec:#?}\n{events:#?}\n{log}"
    );
    let pre = prepared_output(&events);
    assert!(
        pre.contains("from postmaster.opts") && pre.contains(&format!("port {}", live.port)),
        "{pre}"
    );
    assert!(pre.contains("stopped") && pre.contains("kept at"), "{pre}");
    let post = finished_output(&events);
    eprintln!("pre-restore:\n{pre}\npost-restore:\n{post}");
    assert!(post.contains("as before the restore"), "{post}");
    // Where it was, with the restored data.
    assert_eq!(live.sql("SHOW port"), live.port.to_string());
    assert_eq!(
        live.sql("SHOW unix_socket_directories"),
        live.sock.display().to_string()
    );
    assert_eq!(live.sql("SELECT string_agg(v, ',') FROM t"), "backed up");
    assert_eq!(live.sql("SELECT pg_is_in_recovery()"), "f");
}

/// When the agent cannot tell how the running server was started (its
/// `postmaster.opts` is gone), an in-place restore is refused before
/// anything is stopped: the server runs on with its data as it was.
#[tokio::test(flavor = "multi_thread")]
async fn an_in_place_restore_is_refused_before_anything_stops_when_the_start_is_unknown() {
    let Some(pg) =
        postgres("an_in_place_restore_is_refused_before_anything_stops_when_the_start_is_unknown")
    else {
        return;
    };
    let work = work_dir();
    let live = Cluster::init_on_command_line(&pg, &work.path().join("live"));
    live.start().unwrap();
    live.sql("CREATE TABLE t (v text); INSERT INTO t VALUES ('backed up')");

    let mut stack = Stack::start().await.unwrap();
    stack
        .load_systems(vec![quick_system("pgno", &pg, &live)])
        .await
        .unwrap();
    stack.start_agent("pgno", AgentUser::Same).await.unwrap();
    let job = stack.backup(&["pgno"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    live.sql("INSERT INTO t VALUES ('after the backup')");
    std::fs::remove_file(live.data.join("postmaster.opts")).unwrap();
    let pid = || {
        std::fs::read_to_string(live.data.join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let pid_before = pid();

    let job = stack
        .restore(rec.snapshot.as_ref().unwrap(), None)
        .await
        .unwrap();
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}\n{events:#?}");
    let pre = prepared_output(&events);
    eprintln!("pre-restore:\n{pre}");
    assert!(
        pre.contains("postmaster.opts")
            && pre.contains("Nothing was stopped")
            && pre.contains("start-command"),
        "{pre}"
    );
    assert!(
        rec.error
            .as_deref()
            .unwrap_or("")
            .contains("postmaster.opts"),
        "{rec:#?}"
    );
    assert_eq!(rec.stats.bytes, 0, "{rec:#?}");
    // The same server process, on its data as it was, nothing moved aside.
    assert_eq!(pid(), pid_before);
    assert_eq!(
        live.sql("SELECT string_agg(v, ',' ORDER BY v) FROM t"),
        "after the backup,backed up"
    );
    let aside: Vec<_> = std::fs::read_dir(live.data.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("before-restore"))
        .collect();
    assert!(aside.is_empty(), "{aside:?}");
}
