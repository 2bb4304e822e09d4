//! Network namespaces for tests that need real packet filtering.
//!
//! Each [`Netns`] has a unique name (`arca-<pid>-<n>-<tag>`) and is deleted
//! on drop, which also removes its veth ends. [`veth`] joins two namespaces
//! with addresses from a private test range; [`root_leg`] gives the test
//! process itself (in the root namespace) a route into one, on a /30 chosen
//! to be unused. Traffic stays inside namespaces the test made.
//!
//! [`unavailable`] says why such tests cannot run here (not root, no `ip`,
//! no `nft`); [`required`] says whether they must (`ARCA_REQUIRE_NETNS=1`,
//! which `ops/test` sets when run as root, so CI never skips them).

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

impl Netns {
    /// Creates a namespace with its loopback up.
    pub fn create(tag: &str) -> anyhow::Result<Netns> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("arca-{}-{n}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NAME program`, which execs it: same pid).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `ip args...` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs a program inside the namespace and returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.command(program)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {program} in {}", self.name))
    }

    /// `nft -j list ruleset` inside the namespace.
    pub fn ruleset(&self) -> anyhow::Result<String> {
        let out = self.run("nft", &["-j", "list", "ruleset"])?;
        if !out.status.success() {
            bail!(
                "nft list ruleset failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// True when a TCP connection from inside the namespace to
    /// `address:port` completes within `secs` seconds.
    pub fn tcp_connects(&self, address: &str, port: u16, secs: u32) -> bool {
        self.run(
            "timeout",
            &[
                &secs.to_string(),
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{address}/{port}"),
            ],
        )
        .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

/// One end of a veth pair: its interface name and addresses (with prefix).
#[derive(Debug, Clone)]
pub struct End<'a> {
    /// Namespace.
    pub ns: &'a Netns,
    /// Interface name (at most 15 bytes).
    pub ifname: &'a str,
    /// Addresses with prefix, e.g. `10.203.1.1/24`, `fd00:203:1::1/64`.
    pub addrs: &'a [&'a str],
}

/// Joins two namespaces with a veth pair, created directly inside them (so
/// the names never meet in the root namespace), and brings both ends up.
pub fn veth(a: End<'_>, b: End<'_>) -> anyhow::Result<()> {
    ip(&[
        "link",
        "add",
        a.ifname,
        "netns",
        a.ns.name(),
        "type",
        "veth",
        "peer",
        "name",
        b.ifname,
        "netns",
        b.ns.name(),
    ])?;
    for end in [&a, &b] {
        for addr in end.addrs {
            if addr.contains(':') {
                end.ns
                    .ip(&["-6", "addr", "add", addr, "dev", end.ifname, "nodad"])?;
            } else {
                end.ns.ip(&["addr", "add", addr, "dev", end.ifname])?;
            }
        }
        end.ns.ip(&["link", "set", end.ifname, "up"])?;
    }
    Ok(())
}

/// A leg from the root namespace into `ns`: returns the address of `ns`'s
/// end, reachable from the test process. The /30 is picked from
/// 10.204.0.0/16 so that it is not in use in the root namespace; the root
/// end disappears with `ns`.
pub fn root_leg(ns: &Netns, ifname_in_ns: &str) -> anyhow::Result<String> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let root_if = format!("arca{}r{n}", std::process::id() % 1_000_000);
    let in_use = String::from_utf8_lossy(&ip(&["-4", "-o", "addr", "show"])?.stdout).into_owned();
    let routes = String::from_utf8_lossy(&ip(&["-4", "route", "show"])?.stdout).into_owned();
    let start = (std::process::id().wrapping_mul(31).wrapping_add(n * 7)) % 16_384;
    for i in 0..16_384u32 {
        let k = (start + i) % 16_384;
        let net = format!("10.204.{}.{}", k / 64, (k % 64) * 4);
        if in_use.contains(&format!("{net}/30")) || routes.contains(&format!("{net}/30")) {
            continue;
        }
        let root_addr = format!("10.204.{}.{}", k / 64, (k % 64) * 4 + 1);
        let ns_addr = format!("10.204.{}.{}", k / 64, (k % 64) * 4 + 2);
        ip(&[
            "link",
            "add",
            &root_if,
            "type",
            "veth",
            "peer",
            "name",
            ifname_in_ns,
            "netns",
            ns.name(),
        ])?;
        ip(&["addr", "add", &format!("{root_addr}/30"), "dev", &root_if])?;
        ip(&["link", "set", &root_if, "up"])?;
        ns.ip(&["addr", "add", &format!("{ns_addr}/30"), "dev", ifname_in_ns])?;
        ns.ip(&["link", "set", ifname_in_ns, "up"])?;
        return Ok(ns_addr);
    }
    bail!("no free /30 in 10.204.0.0/16 for a root leg")
}

/// Why namespace tests cannot run here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        return Some("not running as root (network namespaces and nftables need root)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    let nft = Command::new("nft").arg("--version").output();
    if !nft.is_ok_and(|o| o.status.success()) {
        return Some("`nft` is not installed (apt-get install nftables)".into());
    }
    None
}

/// True when namespace tests must run (`ARCA_REQUIRE_NETNS=1`): then a
/// missing prerequisite is a failure, not a skip.
pub fn required() -> bool {
    std::env::var("ARCA_REQUIRE_NETNS").is_ok_and(|v| v == "1")
}

/// For the first line of a namespace test: `false` (after saying why on
/// stderr) when it cannot run here and is not required; panics when it is
/// required but cannot run.
pub fn can_run(test: &str) -> bool {
    match unavailable() {
        None => true,
        Some(why) if required() => {
            panic!("{test}: ARCA_REQUIRE_NETNS=1 but namespace tests cannot run: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}; set ARCA_REQUIRE_NETNS=1 to make this a failure");
            false
        }
    }
}
