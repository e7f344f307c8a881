//! Traces that leave the process: which invocations are traced (head sampling, decided once at
//! the node that accepts the invocation), W3C Trace Context in and out of a span, and the
//! OTLP/HTTP export pipeline ([`export`]) with a bounded queue whose drops are counted; and
//! guests' stderr and the node's own log lines forwarded as OTLP log records ([`logs`])
//! through the same kind of queue.
//!
//! Tern's spans are ordinary `tracing` spans at target [`TARGET`]. They exist only for a traced
//! invocation: the root is created only when [`sample`] says so, and every other span only
//! when its parent exists (`Span::none()` otherwise). An untraced request therefore pays for
//! no span at all, and with export off [`sample`] is one relaxed atomic load.
//!
//! ```text
//! invoke (server, entry node) ─┬─ admission
//!                              ├─ placement (policy, candidates, chosen node)
//!                              └─ forward (client, per attempt) ══ mesh ══► meu (server, peer)
//!                                                                            └─ guest | cell
//! ```

pub mod export;
pub mod logs;
mod queue;
mod sampling;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tern_wire::TraceParent;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use export::{Error, Export, ExportSettings, ExportStats, NodeTraceConfig};
pub use logs::{LogExport, LogExportSettings, NodeLogs};
pub use sampling::{sample, sample_hop};

/// The `tracing` target of every span Tern exports. The node's log output leaves it out, and
/// only it reaches the exporter.
pub const TARGET: &str = "tern::trace";

/// Makes `span` continue the trace of a span in another process (an HTTP caller, a client, or
/// the peer that forwarded an MEU). Call it before the span is first entered.
pub fn continue_remote(span: &tracing::Span, parent: &TraceParent) {
    if span.is_disabled() || !parent.is_valid() {
        return;
    }
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.parent_id),
        TraceFlags::new(parent.flags),
        true,
        TraceState::default(),
    );
    // Fails only when the span has already started, which callers rule out.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// The `traceparent` that makes a span in another process a child of `span`: what a node
/// sends with a forwarded MEU. `None` for an untraced span (or where export is off).
pub fn traceparent(span: &tracing::Span) -> Option<TraceParent> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        parent_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}

/// A child span of `parent` at [`TARGET`], or `Span::none()` when the parent is not traced:
/// `child_span!(parent, "name", field = value, ...)`, fields as in `tracing::info_span!`.
#[macro_export]
macro_rules! child_span {
    ($parent:expr, $name:literal $(, $($fields:tt)*)?) => {{
        let parent: &::tracing::Span = $parent;
        if parent.is_disabled() {
            ::tracing::Span::none()
        } else {
            ::tracing::info_span!(target: "tern::trace", parent: parent, $name $(, $($fields)*)?)
        }
    }};
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::export::tests::{Recording, settings};
    use tracing_subscriber::layer::SubscriberExt;

    static STATS: ExportStats = ExportStats::new();

    #[test]
    fn a_span_continues_its_remote_parent_and_hands_its_own_id_to_the_next_hop() {
        let exporter = Recording::default();
        let export = Export::with_exporter(exporter.clone(), &settings(64), &STATS).unwrap();
        let subscriber = tracing_subscriber::registry().with(export.layer());
        let caller: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap();
        let (next_hop, untraced) = tracing::subscriber::with_default(subscriber, || {
            let root = tracing::info_span!(target: "tern::trace", "invoke", function = "echo");
            continue_remote(&root, &caller);
            let child = child_span!(&root, "forward", node = "b");
            let next_hop = traceparent(&child).unwrap();
            // A span of another target is not exported, and an untraced parent has no child.
            let _log = tracing::info_span!("not_exported").entered();
            let untraced = child_span!(&tracing::Span::none(), "forward");
            (next_hop, untraced.is_disabled())
        });
        assert!(untraced);
        assert_eq!(next_hop.trace_id, caller.trace_id);
        assert!(next_hop.sampled());
        export.shutdown(std::time::Duration::from_secs(5)).unwrap();
        let spans = exporter.data.lock().unwrap();
        let names: Vec<_> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["forward", "invoke"]);
        let (forward, invoke) = (&spans[0], &spans[1]);
        assert_eq!(invoke.span_context.trace_id().to_bytes(), caller.trace_id);
        assert_eq!(invoke.parent_span_id.to_bytes(), caller.parent_id);
        assert!(invoke.parent_span_is_remote);
        assert_eq!(forward.parent_span_id, invoke.span_context.span_id());
        assert_eq!(
            forward.span_context.span_id().to_bytes(),
            next_hop.parent_id
        );
        assert!(
            invoke
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "function" && kv.value.as_str() == "echo")
        );
    }
}
