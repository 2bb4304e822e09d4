//! End-to-end tests: a real nats-server and every service as a process.
//!
//! Fixtures (`arca_e2e`): `Stack::start()` runs nats-server, scheduler,
//! firewall controller (`none` backend) and media in a temporary folder;
//! `Stack::start_agent` adds the agent of a system, as root or as nobody.
//! `Stack::start_net(lease)` runs nats-server, scheduler, media and an
//! nftables controller in a high-trust network namespace joined by veth to
//! two operations-center namespaces (`Net`: `hi`, `ops`, `ops2`), where
//! `Stack::start_agent_in` starts agents behind the closed port.
//! Service binaries must be built first (`cargo build --workspace --bins`,
//! which `ops/test` does).
//!
//! - `round_trip`: a tree with every kind of entry and metadata restores equal.
//! - `hooks`: pre and post hooks around the transfer, also when media dies,
//!   when the pre hook fails and when it hangs past its timeout.
//! - `postgres`: the `postgresql` kind against a real PostgreSQL under
//!   pgbench (skipped with a message without PostgreSQL, unless
//!   `ARCA_REQUIRE_POSTGRES=1`), and what a plain copy lacks.
//! - `suspend`: the `suspend` kind stops a writer for the transfer; the
//!   agent's deadline continues it when the scheduler is gone.
//! - `events`: a late subscriber reads a whole job; systems run one at a time.
//! - `faults`: a nats-server restarted at any step of ten jobs, media
//!   stopped, a silent agent (before and after media's commit), a snapshot
//!   the catalog lost, and the console's words for hooks.
//! - `bad_input`: clear errors, and nothing half-written.
//! - `repository`: corruption found and named, crashes of media survived,
//!   deduplication scoped per system.
//! - `crash`: the scheduler killed at every step of a backup and a restore;
//!   the agent's own deadline.
//! - `scheduling`: priority order, max-parallel, cancel, schedules firing.
//! - `registry`: `arca system ...`, `arca jobs`, `arca catalog rebuild`.
//! - `dashboard`: every event of real jobs validated against its JSON
//!   Schema by a Python client (nats-py).
//! - `door`: refusals of the NATS server (unknown keys, an agent configured
//!   as another system) audited, rate-limited, and said by the agent.
//! - `trust`: agents confined to their own subjects by the server, job
//!   tokens, signed manifests, cross-system restores, audit, TLS.
//! - `hostile`: the compromised-system fixture (`Stack::compromised`,
//!   `arca_testkit::hostile`) serves a real job.
//! - `hostile_media`: media bounds a compromised system's requests and
//!   refuses its hostile trees at commit; quotas; sessions closed and expired.
//! - `hostile_jobs`: a compromised system against the scheduler, the audit
//!   and events streams, job tokens and the console.
//! - `hostile_restore`: a compromised system's snapshot restored elsewhere
//!   writes nothing outside the target or through a link, keeps no
//!   privileges unless asked, and fails files whose chunk sizes lie.
//! - `compose`: the Docker Compose stack as the README runs it: images
//!   built here, both zones, PostgreSQL, kills, down and up (skipped
//!   without a Docker engine unless `ARCA_REQUIRE_DOCKER=1`).
//! - `firewall`: nftables windows between network namespaces
//!   (`Stack::start_net`; skipped with a message when not root or without
//!   `nft`, unless `ARCA_REQUIRE_NETNS=1`), and several firewalls on a path.

mod bad_input;
mod compose;
mod crash;
mod dashboard;
mod door;
mod events;
mod faults;
mod firewall;
mod hooks;
mod hostile;
mod hostile_jobs;
mod hostile_media;
mod hostile_restore;
mod metadata;
mod postgres;
mod registry;
mod repository;
mod round_trip;
mod scheduling;
mod suspend;
mod trust;
