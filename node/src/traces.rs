//! The node's spans of an invocation (see `tern_telemetry` for sampling and export): the root
//! where an invocation enters (HTTP or the client API), admission, an accepted async
//! invocation's run, and an MEU a peer forwarded here. Each is `Span::none()` when the
//! invocation is not traced, so an untraced request costs no span.

use tern_actors::{Error, Outcome};
use tern_wire::{FunctionName, TraceParent};
use tracing::Span;
use tracing::field::{Empty, display};

/// A root span of an invocation on this node, `$name` (a span's name is fixed where it is
/// made, so each root has its own call of this), with the fields every root records. Used as
/// a function's whole body: when the invocation is not sampled it returns `Span::none()`
/// from that function.
macro_rules! root_span {
    ($name:literal, $via:expr, $parent:expr, $function:expr, $mode:expr) => {{
        let (parent, function): (Option<&TraceParent>, &FunctionName) = ($parent, $function);
        if !tern_telemetry::sample(parent) {
            return Span::none();
        }
        let span = tracing::info_span!(
            target: "tern::trace",
            parent: None,
            $name,
            otel.kind = "server",
            via = $via,
            mode = $mode,
            function = %function,
            tenant = %function.tenant(),
            request_id = Empty,
            node = Empty,
            cold_start = Empty,
            meus = Empty,
            pre_us = Empty,
            load_us = Empty,
            reuse_us = Empty,
            inst_us = Empty,
            exec_us = Empty,
            error = Empty,
            otel.status_code = Empty,
        );
        if let Some(p) = parent {
            tern_telemetry::continue_remote(&span, p);
        }
        span
    }};
}

/// The root span of an invocation entering through `via` (`http` or `client`), continuing
/// the caller's `parent` if it sent one; traced as [`tern_telemetry::sample`] decides.
pub fn invoke(
    via: &'static str,
    parent: Option<&TraceParent>,
    function: &FunctionName,
    mode: &'static str,
) -> Span {
    root_span!("invoke", via, parent, function, mode)
}

/// The root of a keyed client call on its key's home, which another node sent it: a child of
/// the entry's `invoke` span (`parent`, carried in the call), with the same fields, so the
/// home's admission, placement and forwards sit under it in the entry's trace.
pub fn home(parent: Option<&TraceParent>, function: &FunctionName, mode: &'static str) -> Span {
    root_span!("home", "peer", parent, function, mode)
}

/// Admission of the invocation under `root`: the node's queue and the tenant's fair share.
pub fn admission(root: &Span) -> Span {
    tern_telemetry::child_span!(root, "admission", otel.status_code = Empty)
}

/// The background run of an async invocation accepted under `parent` (the accepting
/// request's root span, which has ended by then): traced when that request was.
pub fn async_run(parent: Option<&TraceParent>, function: &FunctionName, id: &str) -> Span {
    let Some(parent) = parent.filter(|p| tern_telemetry::sample_hop(p)) else {
        return Span::none();
    };
    let span = tracing::info_span!(
        target: "tern::trace",
        parent: None,
        "async_run",
        function = %function,
        request_id = id,
        node = Empty,
        cold_start = Empty,
        meus = Empty,
        pre_us = Empty,
        load_us = Empty,
        reuse_us = Empty,
        inst_us = Empty,
        exec_us = Empty,
        error = Empty,
        otel.status_code = Empty,
    );
    tern_telemetry::continue_remote(&span, parent);
    span
}

/// An MEU a peer forwarded here, continuing the peer's forwarding span when it is traced.
pub fn peer_meu(
    parent: Option<&TraceParent>,
    function: &FunctionName,
    request_id: &str,
    attempt: u32,
) -> Span {
    let Some(parent) = parent.filter(|p| tern_telemetry::sample_hop(p)) else {
        return Span::none();
    };
    let span = tracing::info_span!(
        target: "tern::trace",
        parent: None,
        "meu",
        otel.kind = "server",
        function = %function,
        request_id,
        attempt,
        error = Empty,
        otel.status_code = Empty,
    );
    tern_telemetry::continue_remote(&span, parent);
    span
}

/// Marks `span` failed with `error`.
pub fn failed(span: &Span, error: &dyn std::fmt::Display) {
    span.record("error", display(error));
    span.record("otel.status_code", "ERROR");
}

/// Records on an invocation's span where and how it ran: the node, cold start, MEUs and the
/// five terms of Eq. 3 (summed over MEUs), or the error.
pub fn outcome(span: &Span, result: &Result<Outcome, Error>) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(o) => {
            let t = &o.timings;
            span.record("node", &*o.node);
            span.record("cold_start", o.cold_start);
            span.record("meus", o.meus);
            span.record("pre_us", t.pre_us);
            span.record("load_us", t.load_us);
            span.record("reuse_us", t.reuse_us);
            span.record("inst_us", t.inst_us);
            span.record("exec_us", t.exec_us);
        }
        Err(e) => failed(span, e),
    }
}
