//! The OTLP/HTTP export pipeline: settings from the node's configuration and the standard
//! `OTEL_*` variables, a tracer provider, and a bounded batch processor.
//!
//! The processor is ours rather than the SDK's `BatchSpanProcessor`: that one counts the spans
//! it drops when its queue is full but only logs the number at shutdown, and an operator needs
//! it as a metric while the node runs. Ours hands each ended span to a bounded queue without
//! waiting (a full queue drops the span and counts it), and one thread batches and exports, so
//! a slow or absent collector never blocks a request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

/// What can stop the export pipeline from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting (or `OTEL_*` variable) has a value Tern cannot use.
    #[error("invalid trace export setting {name}: {reason}")]
    Setting { name: &'static str, reason: String },
    /// The OTLP exporter refused its configuration (for example an endpoint that is not a URL).
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    /// The export thread could not be started.
    #[error("cannot start the span export thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Where and how much to export, resolved from the node's settings and the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportSettings {
    /// The OTLP/HTTP traces URL; `None`: the exporter reads `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// or `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`) itself.
    pub endpoint: Option<String>,
    /// Share of new traces kept (0 to 1); a caller's sampled flag always wins.
    pub ratio: f64,
    /// Ended spans waiting for export at most; more are dropped and counted.
    pub queue: usize,
    /// Spans per export request at most.
    pub batch: usize,
    /// Longest wait before a partial batch is sent.
    pub delay: Duration,
    /// `service.instance.id`: the node's name.
    pub node: String,
}

impl ExportSettings {
    /// Resolves the settings: `otlp_endpoint` (a base URL, `/v1/traces` is appended) and
    /// `sample_ratio` from the node's configuration win over the standard variables in `env`
    /// (`OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER`, `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`, `OTEL_TRACES_SAMPLER[_ARG]`). `Ok(None)`:
    /// export is off (no endpoint anywhere, or turned off by a variable).
    pub fn resolve(
        otlp_endpoint: Option<&str>,
        sample_ratio: Option<f64>,
        node: &str,
        env: &HashMap<String, String>,
    ) -> Result<Option<Self>, Error> {
        let var = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match var("OTEL_TRACES_EXPORTER") {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(Error::Setting {
                    name: "OTEL_TRACES_EXPORTER",
                    reason: format!("{other:?}: only otlp (or none) is supported"),
                });
            }
        }
        let endpoint = match otlp_endpoint.map(str::trim).filter(|e| !e.is_empty()) {
            Some(base) => Some(format!("{}/v1/traces", base.trim_end_matches('/'))),
            None if var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
                || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() =>
            {
                None
            }
            None => return Ok(None),
        };
        if let Some(e) = &endpoint
            && !e.starts_with("http://")
        {
            return Err(Error::Setting {
                name: "otlp_endpoint",
                reason: format!(
                    "{e:?}: an http:// URL is needed (for TLS, send to a local collector)"
                ),
            });
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(p) = var(name).filter(|p| *p != "http/protobuf") {
                return Err(Error::Setting {
                    name: if name.contains("TRACES") {
                        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
                    } else {
                        "OTEL_EXPORTER_OTLP_PROTOCOL"
                    },
                    reason: format!("{p:?}: only http/protobuf is supported"),
                });
            }
        }
        let ratio = match sample_ratio {
            Some(r) => r,
            None => ratio_from_env(var("OTEL_TRACES_SAMPLER"), var("OTEL_TRACES_SAMPLER_ARG"))?,
        };
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Error::Setting {
                name: "trace_sample_ratio",
                reason: format!("{ratio} is not between 0 and 1"),
            });
        }
        Ok(Some(Self {
            endpoint,
            ratio,
            queue: 4096,
            batch: 512,
            delay: Duration::from_secs(1),
            node: node.to_owned(),
        }))
    }
}

/// The ratio the standard sampler variables ask for (the default, `parentbased_always_on`,
/// keeps every trace). Only parent-based samplers exist here: a caller's decision is followed.
fn ratio_from_env(sampler: Option<&str>, arg: Option<&str>) -> Result<f64, Error> {
    match sampler {
        None | Some("always_on" | "parentbased_always_on") => Ok(1.0),
        Some("always_off" | "parentbased_always_off") => Ok(0.0),
        Some("traceidratio" | "parentbased_traceidratio") => match arg {
            None => Ok(1.0),
            Some(a) => a.parse().map_err(|_| Error::Setting {
                name: "OTEL_TRACES_SAMPLER_ARG",
                reason: format!("{a:?} is not a number"),
            }),
        },
        Some(other) => Err(Error::Setting {
            name: "OTEL_TRACES_SAMPLER",
            reason: format!("{other:?} is not supported"),
        }),
    }
}

/// Spans handed to the exporter, by fate; process-wide, like the pipeline itself.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Accepted by the collector.
    pub exported: AtomicU64,
    /// Dropped because the queue was full (or the pipeline had shut down).
    pub dropped: AtomicU64,
    /// Sent but refused, or not delivered (collector down, timeout).
    pub failed: AtomicU64,
}

static STATS: ExportStats = ExportStats {
    exported: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

/// The process's export counters (all zero while export is off).
pub fn stats() -> &'static ExportStats {
    &STATS
}

/// The running export pipeline. Keep it for the life of the process; [`Export::shutdown`]
/// sends what is queued.
pub struct Export {
    provider: SdkTracerProvider,
}

impl Export {
    /// Starts the OTLP/HTTP exporter and the export thread, and turns sampling on. Add
    /// [`Export::layer`] to the process's subscriber.
    pub fn install(settings: &ExportSettings) -> Result<Self, Error> {
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_timeout(Duration::from_secs(10));
        if let Some(e) = &settings.endpoint {
            builder = builder.with_endpoint(e.clone());
        }
        let exporter = builder
            .build()
            .map_err(|e| Error::Exporter(e.to_string()))?;
        let export = Self::with_exporter(exporter, settings, &STATS)?;
        crate::sampling::enable(settings.ratio);
        Ok(export)
    }

    /// The pipeline around any exporter (tests record spans in memory); sampling stays as it is.
    pub(crate) fn with_exporter<E: SpanExporter + 'static>(
        exporter: E,
        settings: &ExportSettings,
        stats: &'static ExportStats,
    ) -> Result<Self, Error> {
        let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            settings.node.clone(),
        ));
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("tern");
        }
        let resource = resource
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let processor = BoundedBatch::start(exporter, &resource, settings, stats)?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            // Sampling happened before the span existed (`crate::sample`): whatever reaches
            // the SDK is kept.
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(resource)
            .build();
        Ok(Self { provider })
    }

    /// The `tracing` layer that turns Tern's spans (target [`crate::TARGET`], and only those)
    /// into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("tern"))
            // Each of these costs a clock read or an allocation per span, for attributes an
            // operator of Tern does not need.
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_context_activation(false)
            .with_filter(Targets::new().with_target(crate::TARGET, LevelFilter::INFO))
    }

    /// Sends what is queued (waiting at most `timeout`) and stops the export thread.
    pub fn shutdown(self, timeout: Duration) -> Result<(), String> {
        self.provider
            .shutdown_with_timeout(timeout)
            .map_err(|e| e.to_string())
    }
}

enum Msg {
    Span(Box<SpanData>),
    /// Export what is queued, then answer.
    Flush(mpsc::Sender<()>),
    /// Export what is queued, answer, and end the thread.
    Shutdown(mpsc::Sender<()>),
}

/// The bounded batch processor (see the module's documentation).
#[derive(Debug)]
struct BoundedBatch {
    queue: SyncSender<Msg>,
    stats: &'static ExportStats,
}

impl BoundedBatch {
    fn start<E: SpanExporter + 'static>(
        mut exporter: E,
        resource: &Resource,
        settings: &ExportSettings,
        stats: &'static ExportStats,
    ) -> Result<Self, Error> {
        exporter.set_resource(resource);
        let (queue, rx) = mpsc::sync_channel(settings.queue);
        let (batch, delay) = (settings.batch.max(1), settings.delay);
        std::thread::Builder::new()
            .name("tern-otlp".into())
            .spawn(move || export_loop(exporter, rx, batch, delay, stats))
            .map_err(Error::Thread)?;
        Ok(Self { queue, stats })
    }

    fn ask(&self, make: fn(mpsc::Sender<()>) -> Msg, timeout: Duration) -> OTelSdkResult {
        let (tx, rx) = mpsc::channel();
        // A full queue waits here: flush and shutdown are rare and may block their caller.
        self.queue
            .send(make(tx))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        rx.recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for BoundedBatch {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        match self.queue.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Msg::Flush, Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Msg::Shutdown, timeout)
    }
}

/// The export thread: batches of at most `batch` spans, sent when full or `delay` after the
/// first span of the batch arrived. The OTLP client is async (hyper), so the thread runs a
/// small current-thread runtime of its own, apart from the node's workers.
fn export_loop<E: SpanExporter>(
    exporter: E,
    rx: Receiver<Msg>,
    batch: usize,
    delay: Duration,
    stats: &'static ExportStats,
) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        // Without a runtime nothing can be sent: every span is dropped (and counted).
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Span(_) => {
                    stats.dropped.fetch_add(1, Relaxed);
                }
                Msg::Flush(done) => {
                    let _ = done.send(());
                }
                Msg::Shutdown(done) => {
                    let _ = done.send(());
                    return;
                }
            }
        }
        return;
    };
    let send = |spans: &mut Vec<SpanData>| {
        if spans.is_empty() {
            return;
        }
        let n = spans.len() as u64;
        match rt.block_on(exporter.export(std::mem::take(spans))) {
            Ok(()) => stats.exported.fetch_add(n, Relaxed),
            Err(_) => stats.failed.fetch_add(n, Relaxed),
        };
    };
    let mut spans: Vec<SpanData> = Vec::with_capacity(batch);
    let mut deadline: Option<Instant> = None;
    loop {
        let msg = match deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        match msg {
            Ok(Msg::Span(span)) => {
                spans.push(*span);
                deadline.get_or_insert_with(|| Instant::now() + delay);
                if spans.len() >= batch {
                    send(&mut spans);
                    deadline = None;
                }
            }
            Ok(Msg::Flush(done)) => {
                send(&mut spans);
                deadline = None;
                let _ = done.send(());
            }
            Ok(Msg::Shutdown(done)) => {
                // What was queued behind the request goes too; then the queue closes, so a
                // span ending later is counted as dropped instead of waiting in a dead queue.
                while let Ok(msg) = rx.try_recv() {
                    if let Msg::Span(span) = msg {
                        spans.push(*span);
                    }
                }
                drop(rx);
                send(&mut spans);
                let _ = exporter.shutdown();
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut spans);
                deadline = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut spans);
                return;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn export_is_off_without_an_endpoint_and_the_configured_one_wins_over_the_variables() {
        assert_eq!(
            ExportSettings::resolve(None, None, "a", &env(&[])).unwrap(),
            None
        );
        let s = ExportSettings::resolve(
            Some("http://collector:4318/"),
            None,
            "a",
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!((s.ratio, s.node.as_str()), (1.0, "a"));
        // The standard variable alone turns export on; the exporter reads it.
        let s = ExportSettings::resolve(
            None,
            None,
            "a",
            &env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces",
            )]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, None);
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(
                ExportSettings::resolve(Some("http://c:4318"), None, "a", &env(&[off])).unwrap(),
                None
            );
        }
    }

    #[test]
    fn the_sampler_variables_set_the_ratio_unless_the_node_config_does() {
        let ratio = |config: Option<f64>, vars: &[(&str, &str)]| {
            ExportSettings::resolve(Some("http://c:4318"), config, "a", &env(vars))
                .map(|s| s.unwrap().ratio)
        };
        assert_eq!(ratio(None, &[]).unwrap(), 1.0);
        let sampler = [
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ];
        assert_eq!(ratio(None, &sampler).unwrap(), 0.01);
        assert_eq!(ratio(Some(0.5), &sampler).unwrap(), 0.5);
        assert_eq!(
            ratio(None, &[("OTEL_TRACES_SAMPLER", "always_off")]).unwrap(),
            0.0
        );
    }

    #[test]
    fn settings_tern_cannot_honour_are_refused_by_name() {
        let refused = |endpoint: &str, ratio: Option<f64>, vars: &[(&str, &str)]| {
            match ExportSettings::resolve(Some(endpoint), ratio, "a", &env(vars)) {
                Err(Error::Setting { name, .. }) => name,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(refused("https://c:4318", None, &[]), "otlp_endpoint");
        assert_eq!(refused("http://c", Some(1.5), &[]), "trace_sample_ratio");
        assert_eq!(
            refused("http://c", None, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        );
        assert_eq!(
            refused(
                "http://c",
                None,
                &[("OTEL_TRACES_SAMPLER", "jaeger_remote")]
            ),
            "OTEL_TRACES_SAMPLER"
        );
        assert_eq!(
            refused(
                "http://c",
                None,
                &[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "lots")
                ]
            ),
            "OTEL_TRACES_SAMPLER_ARG"
        );
        assert_eq!(
            refused("http://c", None, &[("OTEL_TRACES_EXPORTER", "zipkin")]),
            "OTEL_TRACES_EXPORTER"
        );
    }

    /// An exporter that records batches, and can be held shut to fill the queue.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Recording {
        pub(crate) spans: Arc<Mutex<Vec<String>>>,
        pub(crate) data: Arc<Mutex<Vec<SpanData>>>,
        gate: Arc<Mutex<()>>,
    }

    impl SpanExporter for Recording {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let _open = self.gate.lock().unwrap();
            self.spans
                .lock()
                .unwrap()
                .extend(batch.iter().map(|s| s.name.clone().into_owned()));
            self.data.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    pub(crate) fn settings(queue: usize) -> ExportSettings {
        ExportSettings {
            endpoint: None,
            ratio: 1.0,
            queue,
            batch: 4,
            delay: Duration::from_millis(20),
            node: "a".into(),
        }
    }

    fn span(name: &'static str) -> SpanData {
        use opentelemetry::trace::{SpanContext, SpanKind, Status};
        SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn a_full_queue_drops_spans_without_blocking_and_counts_every_one() {
        static STATS: ExportStats = ExportStats {
            exported: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        let exporter = Recording::default();
        let held = exporter.gate.lock().unwrap();
        let p = BoundedBatch::start(
            exporter.clone(),
            &Resource::builder_empty().build(),
            &settings(8),
            &STATS,
        )
        .unwrap();
        // The thread takes at most one batch (4) into the held export; 8 more fill the queue.
        let t0 = Instant::now();
        for _ in 0..100 {
            p.on_end(span("s"));
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "on_end blocked");
        drop(held);
        p.force_flush().unwrap();
        let exported = STATS.exported.load(Relaxed);
        let dropped = STATS.dropped.load(Relaxed);
        assert_eq!(
            exported + dropped,
            100,
            "{exported} exported, {dropped} dropped"
        );
        assert!(dropped >= 100 - 8 - 4, "only {dropped} dropped");
        assert_eq!(exporter.spans.lock().unwrap().len() as u64, exported);
        p.shutdown().unwrap();
        p.on_end(span("late"));
        assert_eq!(STATS.dropped.load(Relaxed), dropped + 1);
    }

    #[test]
    fn a_partial_batch_is_sent_after_the_delay_and_shutdown_sends_the_rest() {
        static STATS: ExportStats = ExportStats {
            exported: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        let exporter = Recording::default();
        let p = BoundedBatch::start(
            exporter.clone(),
            &Resource::builder_empty().build(),
            &settings(64),
            &STATS,
        )
        .unwrap();
        p.on_end(span("a"));
        let t0 = Instant::now();
        while exporter.spans.lock().unwrap().is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "partial batch not sent"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        p.on_end(span("b"));
        p.shutdown().unwrap();
        assert_eq!(*exporter.spans.lock().unwrap(), ["a", "b"]);
        assert_eq!(STATS.exported.load(Relaxed), 2);
    }
}
