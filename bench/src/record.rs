//! One line per request: what [`crate::load::run_with_records`] writes for later analysis
//! (per function, per node, cold starts over time), as JSON Lines.

use std::io::{self, Write};

use serde::Serialize;

use crate::replay::ReplayPlan;

/// One request of the measured window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// When the request was due, µs from the start of the run (warm-up included): its
    /// planned time in an open loop or a replay, its send time in a closed loop.
    pub at_us: u64,
    /// The replay target it went to (index into [`ReplayPlan::targets`]); 0 outside a replay.
    pub target: u32,
    /// From the planned send time to the end of the response; `None` without a response.
    pub latency_us: Option<u64>,
    /// HTTP status; `None` without a response.
    pub status: Option<u16>,
    /// Error code of a failed request (see [`crate::Report::errors_by_code`]).
    pub code: Option<String>,
    /// `x-tern-node`: the node that answered.
    pub node: Option<String>,
    /// `x-tern-cold-start: true`.
    pub cold: bool,
    /// `x-tern-duration-us`: the server's own time for the request.
    pub server_us: Option<u64>,
}

#[derive(Serialize)]
struct Line<'a> {
    at_ms: f64,
    function: Option<&'a str>,
    trace_function: Option<usize>,
    n: Option<u32>,
    status: Option<u16>,
    code: Option<&'a str>,
    latency_us: Option<u64>,
    server_us: Option<u64>,
    node: Option<&'a str>,
    cold: bool,
}

/// Write `records` as JSON Lines: `at_ms` (see [`RequestRecord::at_us`]), and with a plan the `function`, `trace_function`
/// row and matrix size `n` of its target, then `status`, `code`, `latency_us`, `server_us`,
/// `node` and `cold` (absent values are `null`).
pub fn write_jsonl(
    out: &mut impl Write,
    records: &[RequestRecord],
    plan: Option<&ReplayPlan>,
) -> io::Result<()> {
    for r in records {
        let target = plan.and_then(|p| p.targets.get(r.target as usize));
        let line = Line {
            at_ms: r.at_us as f64 / 1_000.0,
            function: target.map(|t| t.function.as_str()),
            trace_function: target.map(|t| t.trace_function),
            n: target.and_then(|t| t.n),
            status: r.status,
            code: r.code.as_deref(),
            latency_us: r.latency_us,
            server_us: r.server_us,
            node: r.node.as_deref(),
            cold: r.cold,
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
