//! The node ↔ cell protocol: tern-wire frames (a `u32` length, then bincode) over two pipes,
//! the cell's standard input (requests) and standard output (answers).
//!
//! Before any frame the node writes one byte, [`GO`], once the cell's process is in its
//! cgroup; the cell jails itself only then, so everything it starts is limited. The cell's
//! first frame is [`FromCell::Ready`]. After that, requests carry ids the node chose and
//! answers name them; the node trusts nothing else a cell sends (an id it did not ask, a
//! frame over the limit or one that does not decode ends the cell).

use serde::{Deserialize, Serialize};
use tern_wire::{AnswerPart, ApiError, FunctionInfo, FunctionName, ModuleHash, Timings};

/// The byte that lets a cell start jailing itself.
pub const GO: u8 = b'!';

/// From the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToCell {
    /// Load `info`'s artifact (compiled by the node into the artifact directory) and keep it
    /// ready; answered by [`FromCell::Installed`] with the same `id`.
    Install { id: u64, info: FunctionInfo },
    /// Forget a function (no answer).
    Remove(FunctionName),
    /// Run one MEU of version `hash` of `function`; answered by [`FromCell::Ran`] with the
    /// same `id`, unless cancelled (`not_found`, without `Started`, if the cell has another
    /// version of it).
    Run {
        id: u64,
        function: FunctionName,
        hash: ModuleHash,
        input: Vec<u8>,
        items: u32,
        /// The node's request id, which the guest sees as `TERN_REQUEST_ID` (empty: the
        /// run's id).
        request_id: String,
        /// Send a component's answer as it is written ([`FromCell::Part`]s between `Started`
        /// and `Ran`, whose output then has no body).
        stream: bool,
    },
    /// The caller went away: stop MEU `id`, waiting or running (no answer).
    Cancel { id: u64 },
    /// Are you there? Answered by [`FromCell::Pong`] with the same `id`.
    Ping { id: u64 },
}

/// From the cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromCell {
    /// Jailed, runtime up, seccomp installed.
    Ready,
    Pong {
        id: u64,
    },
    Installed {
        id: u64,
        result: Result<(), ApiError>,
    },
    /// MEU `id` is about to run: from here a death of the cell may have cut it short, so
    /// it is not run again elsewhere. Before it, it certainly did not run.
    Started {
        id: u64,
    },
    Ran {
        id: u64,
        result: Result<Outcome, ApiError>,
        /// What the guest wrote to stderr (the first bytes), and how many more it wrote.
        stderr: Vec<u8>,
        stderr_cut: u64,
        /// CPU time the guest used, nanoseconds, whatever the result (a guest that trapped or
        /// ran out its time cost the machine too).
        guest_cpu_ns: u64,
    },
    /// A piece of MEU `id`'s answer, for a run asked to stream, in order.
    Part {
        id: u64,
        part: AnswerPart,
    },
}

/// A finished MEU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub output: Vec<u8>,
    pub cold_start: bool,
    pub timings: Timings,
    /// The guest's own `memory.grow`s that added pages.
    pub memory_grows: u64,
}
