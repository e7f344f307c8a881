//! The pure core of `tern chaos`, the fault-injection tool for people who test Tern clusters,
//! in the manner of Jepsen: a **scenario** says what cluster to run, what load to send and
//! which faults to inject when ([`scenario`]); every client operation is written to a
//! **history** with its times and the node it went to ([`history`]); **checkers** read the
//! history (and what the nodes report after the faults heal) and name each broken promise
//! with the operations that broke it ([`check`]). A **timeline** draws what the calls did
//! second by second, the faults shaded ([`timeline`]).
//!
//! No I/O and no clock outside [`runner`] (the shell that starts the cluster, sends the load and
//! injects the faults) and the link relays ([`relay`], which `tern chaos relay` also runs for
//! experiments whose links need a delay): times are microseconds since the run
//! started, given by the runner, so every checker is tested on hand-written histories, and
//! what a bad link does to each datagram ([`links`]) is decided from seeded draws.

pub mod check;
pub mod convergence;
pub mod error;
pub mod history;
pub mod links;
pub mod relay;
pub mod runner;
pub mod scenario;
pub mod timeline;

pub use check::{Report, Violation};
pub use error::ChaosError;
pub use history::{Event, History, Mode, Outcome, Phase};
pub use scenario::{Fault, Scenario};

/// The scenarios shipped with Tern (`chaos/scenarios/`), by name: together they cover
/// partitions, crashes (under HTTP load and under `tern-client`'s), pauses, clock jumps, a bad
/// network, storage faults, bad peer identities and a node joining.
pub const SHIPPED: &[(&str, &str)] = &[
    ("add-node", include_str!("../scenarios/add-node.toml")),
    ("clock-jumps", include_str!("../scenarios/clock-jumps.toml")),
    (
        "corrupt-artifact-at-restart",
        include_str!("../scenarios/corrupt-artifact-at-restart.toml"),
    ),
    (
        "corrupt-sled-at-restart",
        include_str!("../scenarios/corrupt-sled-at-restart.toml"),
    ),
    ("disk-full", include_str!("../scenarios/disk-full.toml")),
    ("impostors", include_str!("../scenarios/impostors.toml")),
    (
        "kill-one-under-client-load",
        include_str!("../scenarios/kill-one-under-client-load.toml"),
    ),
    (
        "kill-one-under-load",
        include_str!("../scenarios/kill-one-under-load.toml"),
    ),
    (
        "kill-one-under-trace",
        include_str!("../scenarios/kill-one-under-trace.toml"),
    ),
    ("lossy-link", include_str!("../scenarios/lossy-link.toml")),
    (
        "partition-bridge",
        include_str!("../scenarios/partition-bridge.toml"),
    ),
    (
        "partition-minority",
        include_str!("../scenarios/partition-minority.toml"),
    ),
    (
        "partition-one-way",
        include_str!("../scenarios/partition-one-way.toml"),
    ),
    (
        "pause-one-under-load",
        include_str!("../scenarios/pause-one-under-load.toml"),
    ),
    (
        "rolling-restart",
        include_str!("../scenarios/rolling-restart.toml"),
    ),
];
