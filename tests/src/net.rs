//! The network namespaces of [`Stack::start_net`](crate::Stack::start_net):
//! a high-trust namespace and two operations-center namespaces.

use arca_testkit::netns::{self, End, Netns};

/// The namespaces of [`Stack::start_net`]:
///
/// ```text
///  test (root ns) --leg-- hi: nats-server, scheduler, media, firewall (nftables)
///                         | to-ops   10.203.1.1/24  fd00:203:1::1/64
///                         |   ops:   eth0 10.203.1.2/24  fd00:203:1::2/64
///                         | to-ops2  10.203.2.1/24  fd00:203:2::1/64
///                         |   ops2:  eth0 10.203.2.2/24  fd00:203:2::2/64
/// ```
///
/// The controller guards traffic arriving on `to-ops` and `to-ops2`; the
/// test's leg is high trust.
pub struct Net {
    /// High-trust namespace.
    pub hi: Netns,
    /// First operations-center namespace.
    pub ops: Netns,
    /// Second operations-center namespace.
    pub ops2: Netns,
}

/// An operations-center namespace of [`Net`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// `ops`.
    Ops,
    /// `ops2`.
    Ops2,
}

/// Address of `hi` on the `ops` side.
pub const HI_FOR_OPS: &str = "10.203.1.1";
/// IPv6 address of `hi` on the `ops` side.
pub const HI_FOR_OPS6: &str = "fd00:203:1::1";
/// Address of `ops`.
pub const OPS: &str = "10.203.1.2";
/// IPv6 address of `ops`.
pub const OPS6: &str = "fd00:203:1::2";
/// Address of `hi` on the `ops2` side.
pub const HI_FOR_OPS2: &str = "10.203.2.1";
/// Address of `ops2`.
pub const OPS2: &str = "10.203.2.2";

impl Net {
    pub(crate) fn create() -> anyhow::Result<(Net, String)> {
        let net = Net {
            hi: Netns::create("hi")?,
            ops: Netns::create("ops")?,
            ops2: Netns::create("ops2")?,
        };
        netns::veth(
            End {
                ns: &net.hi,
                ifname: "to-ops",
                addrs: &["10.203.1.1/24", "fd00:203:1::1/64"],
            },
            End {
                ns: &net.ops,
                ifname: "eth0",
                addrs: &["10.203.1.2/24", "fd00:203:1::2/64"],
            },
        )?;
        netns::veth(
            End {
                ns: &net.hi,
                ifname: "to-ops2",
                addrs: &["10.203.2.1/24", "fd00:203:2::1/64"],
            },
            End {
                ns: &net.ops2,
                ifname: "eth0",
                addrs: &["10.203.2.2/24", "fd00:203:2::2/64"],
            },
        )?;
        let leg = netns::root_leg(&net.hi, "to-test")?;
        Ok((net, leg))
    }
}
