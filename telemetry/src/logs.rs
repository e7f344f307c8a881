//! Guests' stderr and the node's own log lines as OpenTelemetry log records, sent to an
//! OTLP/HTTP receiver through one bounded export queue ([`crate::queue`]): a guest that floods
//! stderr, a chatty node, or a receiver that is slow or down, costs dropped (and counted)
//! records, never a request or a guest's time.
//!
//! - Guests ([`LogExport::emit_guest_lines`]): one record per line the node keeps (see the
//!   node's guest logs): the line as the body, its time, and `tern.function`, `tern.tenant`,
//!   `tern.request_id` and `log.iostream = stderr` as attributes.
//! - The node ([`LogExport::node_layer`], a `tracing` layer): one record per event its
//!   filter lets through: the message as the body, the level as the severity, the event's
//!   target as the instrumentation scope, its other fields as attributes. Events of the
//!   export path itself (the OpenTelemetry crates, hyper, this crate) are never exported, so a
//!   failing export cannot feed itself.
//!
//! The resource names the service (`tern`) and the node (`service.instance.id`).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::InstrumentationScope;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{
    LogBatch, LogExporter, LogProcessor, SdkLogRecord, SdkLogger, SdkLoggerProvider,
};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

use crate::export::{Destination, Error, ExportStats, Signal};

const LOGS: Signal = Signal {
    exporter: "OTEL_LOGS_EXPORTER",
    endpoint: "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    timeout: "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
    path: "/v1/logs",
};
use crate::queue::{BatchExport, Batching, Bounded};

/// Where log records go, resolved from the node's settings and the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct LogExportSettings {
    /// The OTLP/HTTP logs URL; `None`: the exporter reads `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`
    /// or `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/logs`) itself.
    pub endpoint: Option<String>,
    /// How long one export may take; `None`: `OTEL_EXPORTER_OTLP_[LOGS_]TIMEOUT`, which the
    /// exporter reads itself.
    pub timeout: Option<Duration>,
    /// Whether to name the service `tern` (not when the environment names it).
    pub name_service: bool,
    /// `service.instance.id`: the node's name.
    pub node: String,
    /// Records waiting at most (more are dropped and counted), per request, and the longest
    /// wait of a partial batch.
    pub queue: usize,
    pub batch: usize,
    pub delay: Duration,
}

impl LogExportSettings {
    /// Resolves where log records go when a setting asks for them (`asked_by`, named in
    /// errors; `None`: nothing is forwarded): the node's `otlp_endpoint` (a base URL;
    /// `/v1/logs` is appended) over the standard variables in `env` (`OTEL_SDK_DISABLED`,
    /// `OTEL_LOGS_EXPORTER`, `OTEL_EXPORTER_OTLP_[LOGS_]ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_[LOGS_]PROTOCOL`, `OTEL_EXPORTER_OTLP_[LOGS_]TIMEOUT`,
    /// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`). `Ok(None)`: not forwarded (not asked
    /// for, or turned off by a variable). Forwarding asked for with no receiver anywhere is an
    /// error, not a silent nothing.
    pub fn resolve(
        asked_by: Option<&'static str>,
        otlp_endpoint: Option<&str>,
        node: &str,
        env: &HashMap<String, String>,
    ) -> Result<Option<Self>, Error> {
        let Some(setting) = asked_by else {
            return Ok(None);
        };
        let to = match Destination::resolve(&LOGS, otlp_endpoint, env)? {
            Destination::Off => return Ok(None),
            Destination::NoEndpoint => {
                return Err(Error::Setting {
                    name: setting,
                    reason: "no receiver: set otlp_endpoint or OTEL_EXPORTER_OTLP_[LOGS_]ENDPOINT"
                        .into(),
                });
            }
            Destination::Found(to) => to,
        };
        Ok(Some(Self {
            endpoint: to.endpoint,
            timeout: to.timeout,
            name_service: to.name_service,
            node: node.to_owned(),
            queue: 4096,
            batch: 512,
            delay: Duration::from_secs(1),
        }))
    }
}

static STATS: ExportStats = ExportStats::new();

/// The process's log record counters, guests' and the node's together (all zero while
/// forwarding is off).
pub fn stats() -> &'static ExportStats {
    &STATS
}

type Item = (SdkLogRecord, InstrumentationScope);

/// The logger provider's only processor: each emitted record to the bounded queue.
#[derive(Debug)]
struct ToQueue(Bounded<Item>);

impl LogProcessor for ToQueue {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        self.0.offer((record.clone(), scope.clone()));
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown(timeout)
    }
}

/// A log exporter as the queue's export end.
struct Records<E>(E);

impl<E: LogExporter + 'static> BatchExport<Item> for Records<E> {
    fn export(&self, rt: &tokio::runtime::Runtime, items: Vec<Item>) -> bool {
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            items.iter().map(|(r, s)| (r, s)).collect();
        rt.block_on(self.0.export(LogBatch::new(&refs))).is_ok()
    }

    fn shutdown(&self) {
        let _ = self.0.shutdown();
    }
}

/// The running log export. Keep it while the node runs; [`LogExport::shutdown`] sends what
/// is queued.
pub struct LogExport {
    provider: SdkLoggerProvider,
    logger: SdkLogger,
}

impl LogExport {
    /// Starts the OTLP/HTTP log exporter and its export thread.
    pub fn install(settings: &LogExportSettings) -> Result<Self, Error> {
        let mut builder = opentelemetry_otlp::LogExporter::builder().with_http();
        if let Some(t) = settings.timeout {
            builder = builder.with_timeout(t);
        }
        if let Some(e) = &settings.endpoint {
            builder = builder.with_endpoint(e.clone());
        }
        let exporter = builder
            .build()
            .map_err(|e| Error::Exporter(e.to_string()))?;
        Self::with_exporter(exporter, settings, &STATS)
    }

    /// The pipeline around any exporter (tests keep records in memory).
    pub(crate) fn with_exporter<E: LogExporter + 'static>(
        mut exporter: E,
        settings: &LogExportSettings,
        stats: &'static ExportStats,
    ) -> Result<Self, Error> {
        let resource = crate::export::resource(&settings.node, settings.name_service);
        exporter.set_resource(&resource);
        let batching = Batching {
            queue: settings.queue,
            batch: settings.batch,
            delay: settings.delay,
        };
        let queue = Bounded::start("tern-otlp-logs", Records(exporter), batching, stats)?;
        let provider = SdkLoggerProvider::builder()
            .with_log_processor(ToQueue(queue))
            .with_resource(resource)
            .build();
        let logger = provider.logger("tern");
        Ok(Self { provider, logger })
    }

    /// Sends `lines` that an MEU of `function` (owned by `tenant`) wrote to stderr, stamped
    /// `at_ms` (ms since the Unix epoch). Never waits: a full queue drops records and counts
    /// them.
    pub fn emit_guest_lines(
        &self,
        function: &str,
        tenant: &str,
        request_id: &str,
        at_ms: u64,
        lines: &[String],
    ) {
        let at = UNIX_EPOCH + Duration::from_millis(at_ms);
        for line in lines {
            let mut record = self.logger.create_log_record();
            record.set_timestamp(at);
            record.set_observed_timestamp(SystemTime::now());
            // stderr says nothing about severity; the protocol's "unspecified" would hide the
            // lines from viewers that filter by it, so: info, named as the stream.
            record.set_severity_number(Severity::Info);
            record.set_severity_text("stderr");
            record.set_body(AnyValue::from(line.clone()));
            record.add_attributes([
                ("tern.function", AnyValue::from(function.to_owned())),
                ("tern.tenant", AnyValue::from(tenant.to_owned())),
                ("tern.request_id", AnyValue::from(request_id.to_owned())),
                ("log.iostream", AnyValue::from("stderr")),
            ]);
            self.logger.emit(record);
        }
    }

    /// A `tracing` layer that sends the node's own events as records (filter it as the
    /// node's log output is filtered). Never waits: a full queue drops records and counts
    /// them.
    pub fn node_layer(&self) -> NodeLogs {
        NodeLogs {
            logger: self.logger.clone(),
        }
    }

    /// Sends what is queued (waiting at most `timeout`) and stops the export thread.
    pub fn shutdown(&self, timeout: Duration) -> Result<(), String> {
        self.provider
            .shutdown_with_timeout(timeout)
            .map_err(|e| e.to_string())
    }
}

/// The node's `tracing` events as log records ([`LogExport::node_layer`]).
pub struct NodeLogs {
    logger: SdkLogger,
}

/// Targets whose events are never exported: the export path's own (a failing export must not
/// feed itself) and the exported spans' target.
const NOT_EXPORTED: [&str; 5] = [
    "opentelemetry",
    "hyper",
    "h2",
    "tern_telemetry",
    crate::TARGET,
];

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for NodeLogs {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let target = meta.target();
        if NOT_EXPORTED.iter().any(|t| target.starts_with(t)) {
            return;
        }
        let mut record = self.logger.create_log_record();
        record.set_timestamp(SystemTime::now());
        record.set_observed_timestamp(SystemTime::now());
        let level = *meta.level();
        record.set_severity_number(match level {
            tracing::Level::TRACE => Severity::Trace,
            tracing::Level::DEBUG => Severity::Debug,
            tracing::Level::INFO => Severity::Info,
            tracing::Level::WARN => Severity::Warn,
            tracing::Level::ERROR => Severity::Error,
        });
        record.set_severity_text(level.as_str());
        record.set_target(target.to_owned());
        event.record(&mut Fields(&mut record));
        self.logger.emit(record);
    }
}

/// Copies an event's fields into a record: `message` as the body, the rest as attributes.
struct Fields<'a>(&'a mut SdkLogRecord);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: AnyValue) {
        if field.name() == "message" {
            self.0.set_body(value);
        } else {
            self.0.add_attribute(field.name(), value);
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, AnyValue::from(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, AnyValue::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        // OTLP integers are signed; a larger value keeps its digits as text.
        match i64::try_from(value) {
            Ok(v) => self.put(field, AnyValue::from(v)),
            Err(_) => self.put(field, AnyValue::from(value.to_string())),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, AnyValue::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, AnyValue::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, AnyValue::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::{Arc, Mutex};

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn forwarding_is_asked_for_and_needs_a_receiver_and_the_node_setting_wins() {
        assert_eq!(
            LogExportSettings::resolve(None, Some("http://c:4318"), "a", &env(&[])).unwrap(),
            None
        );
        let s = LogExportSettings::resolve(
            Some("guest_logs_otlp"),
            Some("http://c:4318/"),
            "a",
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://c:4318/v1/logs"));
        assert!(s.name_service);
        // The logs variable alone: the exporter reads it.
        let s = LogExportSettings::resolve(
            Some("guest_logs_otlp"),
            None,
            "a",
            &env(&[("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://c:4318/v1/logs")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, None);
        let err =
            LogExportSettings::resolve(Some("guest_logs_otlp"), None, "a", &env(&[])).unwrap_err();
        assert!(err.to_string().contains("no receiver"), "{err}");
        for (k, v, what) in [
            ("OTEL_LOGS_EXPORTER", "console", "OTEL_LOGS_EXPORTER"),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc", "PROTOCOL"),
        ] {
            let err = LogExportSettings::resolve(
                Some("guest_logs_otlp"),
                Some("http://c:4318"),
                "a",
                &env(&[(k, v)]),
            )
            .unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
        let err = LogExportSettings::resolve(
            Some("guest_logs_otlp"),
            Some("https://c:4318"),
            "a",
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
        for off in [
            ("OTEL_LOGS_EXPORTER", "none"),
            ("OTEL_SDK_DISABLED", "true"),
        ] {
            assert_eq!(
                LogExportSettings::resolve(
                    Some("guest_logs_otlp"),
                    Some("http://c:4318"),
                    "a",
                    &env(&[off])
                )
                .unwrap(),
                None
            );
        }
    }

    /// A record as kept: its body and attributes.
    type Kept = (String, Vec<(String, String)>);
    /// A record's severity and target.
    type Meta = (Option<Severity>, Option<String>);

    /// Keeps what it is sent, or refuses everything.
    #[derive(Debug, Default, Clone)]
    struct Memory {
        got: Arc<Mutex<Vec<Kept>>>,
        /// Each kept record's severity and target.
        meta: Arc<Mutex<Vec<Meta>>>,
        refuse: bool,
    }

    impl LogExporter for Memory {
        async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
            if self.refuse {
                return Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                    "refused".into(),
                ));
            }
            let mut got = self.got.lock().unwrap();
            for (record, _) in batch.iter() {
                let body = match record.body() {
                    Some(AnyValue::String(s)) => s.to_string(),
                    other => format!("{other:?}"),
                };
                let attrs = record
                    .attributes_iter()
                    .map(|(k, v)| (k.to_string(), format!("{v:?}")))
                    .collect();
                got.push((body, attrs));
                self.meta.lock().unwrap().push((
                    record.severity_number(),
                    record.target().map(|t| t.to_string()),
                ));
            }
            Ok(())
        }
    }

    fn settings(queue: usize) -> LogExportSettings {
        LogExportSettings {
            endpoint: None,
            timeout: None,
            name_service: true,
            node: "a".into(),
            queue,
            batch: 2,
            delay: Duration::from_millis(20),
        }
    }

    #[test]
    fn each_line_is_a_record_with_its_function_tenant_and_request_and_later_ones_are_counted_drops()
    {
        static STATS: ExportStats = ExportStats::new();
        let memory = Memory::default();
        let export = LogExport::with_exporter(memory.clone(), &settings(64), &STATS).unwrap();
        let lines = vec!["first".to_owned(), "second".to_owned(), "third".to_owned()];
        export.emit_guest_lines("acme/echo", "acme", "r-1", 1_700_000_000_000, &lines);
        export.shutdown(Duration::from_secs(5)).unwrap();
        let got = memory.got.lock().unwrap().clone();
        let bodies: Vec<&str> = got.iter().map(|(b, _)| b.as_str()).collect();
        assert_eq!(bodies, ["first", "second", "third"]);
        let attrs: HashMap<&str, &str> = got[0]
            .1
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (k, v) in [
            ("tern.function", "acme/echo"),
            ("tern.tenant", "acme"),
            ("tern.request_id", "r-1"),
            ("log.iostream", "stderr"),
        ] {
            assert!(
                attrs.get(k).is_some_and(|got| got.contains(v)),
                "{k}: {attrs:?}"
            );
        }
        assert_eq!(STATS.exported.load(Relaxed), 3);
        // After shutdown every record is dropped and counted, never queued.
        export.emit_guest_lines("acme/echo", "acme", "r-2", 0, &lines[..1]);
        assert_eq!(STATS.dropped.load(Relaxed), 1);
    }

    #[test]
    fn node_events_are_records_with_their_level_target_and_fields_and_the_export_path_is_left_out()
    {
        use tracing_subscriber::layer::SubscriberExt;
        static STATS: ExportStats = ExportStats::new();
        let memory = Memory::default();
        let export = LogExport::with_exporter(memory.clone(), &settings(64), &STATS).unwrap();
        let subscriber = tracing_subscriber::registry().with(export.node_layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "tern_link::mesh", peer = "b", attempt = 3u64, ok = false, "link down");
            tracing::info!(target: "opentelemetry_sdk::logs", "export failed");
            tracing::info!(target: "hyper_util::client", "connecting");
            tracing::warn!(target: "tern_telemetry::queue", "dropped");
            tracing::info!(target: crate::TARGET, "a span's event");
            tracing::error!(target: "tern_node::app", big = u64::MAX, share = 0.5, "boom");
        });
        export.shutdown(Duration::from_secs(5)).unwrap();
        let got = memory.got.lock().unwrap().clone();
        let bodies: Vec<&str> = got.iter().map(|(b, _)| b.as_str()).collect();
        assert_eq!(bodies, ["link down", "boom"]);
        let attrs = |i: usize| -> HashMap<String, String> { got[i].1.iter().cloned().collect() };
        assert_eq!(
            attrs(0)["peer"],
            format!("{:?}", AnyValue::from("b".to_owned()))
        );
        assert_eq!(attrs(0)["attempt"], format!("{:?}", AnyValue::from(3i64)));
        assert_eq!(attrs(0)["ok"], format!("{:?}", AnyValue::from(false)));
        assert_eq!(
            attrs(1)["big"],
            format!("{:?}", AnyValue::from(u64::MAX.to_string())),
            "too large for an OTLP integer: kept as text"
        );
        assert_eq!(attrs(1)["share"], format!("{:?}", AnyValue::from(0.5)));
        let meta = memory.meta.lock().unwrap().clone();
        assert_eq!(
            meta,
            [
                (Some(Severity::Warn), Some("tern_link::mesh".to_owned())),
                (Some(Severity::Error), Some("tern_node::app".to_owned())),
            ]
        );
        assert_eq!(STATS.exported.load(Relaxed), 2);
    }

    #[test]
    fn a_refusing_receiver_counts_failures_not_exports() {
        static STATS: ExportStats = ExportStats::new();
        let memory = Memory {
            refuse: true,
            ..Memory::default()
        };
        let export = LogExport::with_exporter(memory, &settings(64), &STATS).unwrap();
        export.emit_guest_lines("f", "default", "r", 0, &["x".to_owned(), "y".to_owned()]);
        export.shutdown(Duration::from_secs(5)).unwrap();
        assert_eq!(
            (STATS.exported.load(Relaxed), STATS.failed.load(Relaxed)),
            (0, 2)
        );
    }
}
