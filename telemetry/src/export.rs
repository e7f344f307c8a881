//! The OTLP/HTTP trace export pipeline: settings from the node's configuration and the
//! standard `OTEL_*` variables, a tracer provider, and a processor that hands ended spans to
//! the bounded export queue ([`crate::queue`]), so a slow or absent collector never blocks a
//! request and every dropped span is counted.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

use crate::queue::{BatchExport, Batching, Bounded};

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
    /// Share of new traces kept (0 to 1).
    pub ratio: f64,
    /// Whether a caller's sampled flag decides (parent-based sampling, the OpenTelemetry
    /// default); otherwise the ratio decides for every invocation, and a caller's trace is
    /// continued only when the ratio keeps it.
    pub follow_caller: bool,
    /// How long one export may take; `None`: `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`, which the
    /// exporter reads itself.
    pub timeout: Option<Duration>,
    /// Whether to name the service `tern` (not when `OTEL_SERVICE_NAME` or a `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES` names it).
    pub name_service: bool,
    /// Ended spans waiting for export at most; more are dropped and counted.
    pub queue: usize,
    /// Spans per export request at most.
    pub batch: usize,
    /// Longest wait before a partial batch is sent.
    pub delay: Duration,
    /// `service.instance.id`: the node's name.
    pub node: String,
}

/// What the node's configuration says about trace export (each `None` leaves it to the
/// standard variables).
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeTraceConfig<'a> {
    /// A base URL; `/v1/traces` is appended.
    pub otlp_endpoint: Option<&'a str>,
    pub sample_ratio: Option<f64>,
    pub follow_caller: Option<bool>,
}

impl ExportSettings {
    /// Resolves the settings: the node's configuration wins over the standard variables in
    /// `env` (`OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER`, `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`, `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`,
    /// `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`); a signal's
    /// own variable wins over the general one. `Ok(None)`: export is off (no endpoint
    /// anywhere, or turned off by a variable). What the exporter could not honour is refused
    /// here, so the node refuses to start rather than fail every export.
    pub fn resolve(
        node_config: NodeTraceConfig<'_>,
        node: &str,
        env: &HashMap<String, String>,
    ) -> Result<Option<Self>, Error> {
        let Destination::Found(to) = Destination::resolve(&TRACES, node_config.otlp_endpoint, env)?
        else {
            return Ok(None);
        };
        let var = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let (env_ratio, env_follow) =
            sampler_from_env(var("OTEL_TRACES_SAMPLER"), var("OTEL_TRACES_SAMPLER_ARG"))?;
        let (ratio, ratio_named) = match node_config.sample_ratio {
            Some(r) => (r, "trace_sample_ratio"),
            None => (env_ratio, "OTEL_TRACES_SAMPLER_ARG"),
        };
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Error::Setting {
                name: ratio_named,
                reason: format!("{ratio} is not between 0 and 1"),
            });
        }
        Ok(Some(Self {
            endpoint: to.endpoint,
            ratio,
            follow_caller: node_config.follow_caller.unwrap_or(env_follow),
            timeout: to.timeout,
            name_service: to.name_service,
            queue: 4096,
            batch: 512,
            delay: Duration::from_secs(1),
            node: node.to_owned(),
        }))
    }
}

/// One signal's standard variables and its path under a base URL.
pub(crate) struct Signal {
    pub exporter: &'static str,
    pub endpoint: &'static str,
    pub protocol: &'static str,
    pub timeout: &'static str,
    pub path: &'static str,
}

pub(crate) const TRACES: Signal = Signal {
    exporter: "OTEL_TRACES_EXPORTER",
    endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    timeout: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    path: "/v1/traces",
};

/// Where one signal goes, as far as the node's base URL and the standard variables say.
pub(crate) enum Destination {
    /// Turned off by a variable (`OTEL_SDK_DISABLED`, the signal's exporter `none`).
    Off,
    /// No endpoint in the configuration or the environment.
    NoEndpoint,
    Found(Endpoint),
}

/// A signal's receiver.
pub(crate) struct Endpoint {
    /// The full URL when the node's configuration gave the base; `None`: the exporter reads
    /// the standard variable itself.
    pub endpoint: Option<String>,
    /// How long one export may take; `None`: the standard timeout variable, which the
    /// exporter reads itself.
    pub timeout: Option<Duration>,
    /// Whether to name the service `tern` (not when the environment names it).
    pub name_service: bool,
}

impl Destination {
    /// `otlp_endpoint` (a base URL; the signal's path is appended) over `OTEL_SDK_DISABLED`,
    /// the signal's exporter, endpoint, protocol and timeout variables (each over its general
    /// `OTEL_EXPORTER_OTLP_*` form), `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`. What
    /// the exporter could not honour (another exporter or protocol, a URL that is not plain
    /// HTTP) is an error naming the setting.
    pub(crate) fn resolve(
        signal: &Signal,
        otlp_endpoint: Option<&str>,
        env: &HashMap<String, String>,
    ) -> Result<Self, Error> {
        let var = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        // The per-signal variable if set, else the general one; with the name found.
        let either = |signal: &'static str, general: &'static str| {
            var(signal)
                .map(|v| (signal, v))
                .or_else(|| var(general).map(|v| (general, v)))
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Self::Off);
        }
        match var(signal.exporter) {
            None | Some("otlp") => {}
            Some("none") => return Ok(Self::Off),
            Some(other) => {
                return Err(Error::Setting {
                    name: signal.exporter,
                    reason: format!("{other:?}: only otlp (or none) is supported"),
                });
            }
        }
        let (endpoint, named, url) = match otlp_endpoint.map(str::trim).filter(|e| !e.is_empty()) {
            Some(base) => {
                let url = format!("{}{}", base.trim_end_matches('/'), signal.path);
                (Some(url.clone()), "otlp_endpoint", url)
            }
            None => match either(signal.endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some((name, url)) => (None, name, url.to_owned()),
                None => return Ok(Self::NoEndpoint),
            },
        };
        if !url.starts_with("http://") {
            return Err(Error::Setting {
                name: named,
                reason: format!(
                    "{url:?}: an http:// URL is needed (for TLS, send to a local collector)"
                ),
            });
        }
        if let Some((name, p)) = either(signal.protocol, "OTEL_EXPORTER_OTLP_PROTOCOL")
            && p != "http/protobuf"
        {
            return Err(Error::Setting {
                name,
                reason: format!("{p:?}: only http/protobuf is supported"),
            });
        }
        let timeout = either(signal.timeout, "OTEL_EXPORTER_OTLP_TIMEOUT")
            .is_none()
            .then_some(Duration::from_secs(10));
        Ok(Self::Found(Endpoint {
            endpoint,
            timeout,
            name_service: names_no_service(env),
        }))
    }
}

/// Whether `env` leaves the service unnamed (no `OTEL_SERVICE_NAME`, no `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`), so Tern names it.
fn names_no_service(env: &HashMap<String, String>) -> bool {
    let var = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    var("OTEL_SERVICE_NAME").is_none()
        && !var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs
                .split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        })
}

/// What every signal says of its sender: the node (`service.instance.id`), the version, and
/// the service `tern` unless the environment names it (`name_service` false).
pub(crate) fn resource(node: &str, name_service: bool) -> Resource {
    let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.instance.id",
        node.to_owned(),
    ));
    if name_service {
        resource = resource.with_service_name("tern");
    }
    resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build()
}

/// The ratio, and whether a caller's decision is followed, that the standard sampler
/// variables ask for (the default, `parentbased_always_on`: every trace, callers followed).
fn sampler_from_env(sampler: Option<&str>, arg: Option<&str>) -> Result<(f64, bool), Error> {
    let ratio = || match arg {
        None => Ok(1.0),
        Some(a) => a.parse().map_err(|_| Error::Setting {
            name: "OTEL_TRACES_SAMPLER_ARG",
            reason: format!("{a:?} is not a number"),
        }),
    };
    match sampler {
        None | Some("parentbased_always_on") => Ok((1.0, true)),
        Some("always_on") => Ok((1.0, false)),
        Some("parentbased_always_off") => Ok((0.0, true)),
        Some("always_off") => Ok((0.0, false)),
        Some("parentbased_traceidratio") => Ok((ratio()?, true)),
        Some("traceidratio") => Ok((ratio()?, false)),
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

impl ExportStats {
    /// All zero (`const`, for statics).
    pub const fn new() -> Self {
        Self {
            exported: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

static STATS: ExportStats = ExportStats::new();

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
        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(t) = settings.timeout {
            builder = builder.with_timeout(t);
        }
        if let Some(e) = &settings.endpoint {
            builder = builder.with_endpoint(e.clone());
        }
        let exporter = builder
            .build()
            .map_err(|e| Error::Exporter(e.to_string()))?;
        let export = Self::with_exporter(exporter, settings, &STATS)?;
        crate::sampling::enable(settings.ratio, settings.follow_caller);
        Ok(export)
    }

    /// The pipeline around any exporter (tests record spans in memory); sampling stays as it is.
    pub(crate) fn with_exporter<E: SpanExporter + 'static>(
        exporter: E,
        settings: &ExportSettings,
        stats: &'static ExportStats,
    ) -> Result<Self, Error> {
        let resource = resource(&settings.node, settings.name_service);
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

/// Ended spans to the OTLP exporter, through the bounded queue ([`crate::queue`]).
#[derive(Debug)]
struct BoundedBatch {
    queue: Bounded<SpanData>,
}

/// A span exporter as the queue's export end.
struct Spans<E>(E);

impl<E: SpanExporter + 'static> BatchExport<SpanData> for Spans<E> {
    fn export(&self, rt: &tokio::runtime::Runtime, items: Vec<SpanData>) -> bool {
        rt.block_on(self.0.export(items)).is_ok()
    }

    fn shutdown(&self) {
        let _ = self.0.shutdown();
    }
}

impl BoundedBatch {
    fn start<E: SpanExporter + 'static>(
        mut exporter: E,
        resource: &Resource,
        settings: &ExportSettings,
        stats: &'static ExportStats,
    ) -> Result<Self, Error> {
        exporter.set_resource(resource);
        let batching = Batching {
            queue: settings.queue,
            batch: settings.batch,
            delay: settings.delay,
        };
        Ok(Self {
            queue: Bounded::start("tern-otlp", Spans(exporter), batching, stats)?,
        })
    }
}

impl SpanProcessor for BoundedBatch {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        self.queue.offer(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.queue.flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.queue.shutdown(timeout)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry_sdk::error::OTelSdkError;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn config<'a>(
        endpoint: Option<&'a str>,
        ratio: Option<f64>,
        follow_caller: Option<bool>,
    ) -> NodeTraceConfig<'a> {
        NodeTraceConfig {
            otlp_endpoint: endpoint,
            sample_ratio: ratio,
            follow_caller,
        }
    }

    fn resolve(
        node: NodeTraceConfig<'_>,
        vars: &[(&str, &str)],
    ) -> Result<Option<ExportSettings>, Error> {
        ExportSettings::resolve(node, "a", &env(vars))
    }

    #[test]
    fn export_is_off_without_an_endpoint_and_the_configured_one_wins_over_the_variables() {
        assert_eq!(resolve(config(None, None, None), &[]).unwrap(), None);
        let s = resolve(
            config(Some("http://collector:4318/"), None, None),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            (s.ratio, s.follow_caller, s.node.as_str()),
            (1.0, true, "a")
        );
        assert_eq!(s.timeout, Some(Duration::from_secs(10)));
        assert!(s.name_service);
        // The standard variable alone turns export on; the exporter reads it.
        let s = resolve(
            config(None, None, None),
            &[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces",
            )],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, None);
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(
                resolve(config(Some("http://c:4318"), None, None), &[off]).unwrap(),
                None
            );
        }
    }

    #[test]
    fn the_exporters_own_variables_are_left_to_it_and_name_the_service_when_set() {
        let on = |vars: &[(&str, &str)]| {
            resolve(config(Some("http://c:4318"), None, None), vars)
                .unwrap()
                .unwrap()
        };
        assert_eq!(on(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")]).timeout, None);
        assert_eq!(
            on(&[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2000")]).timeout,
            None
        );
        assert!(!on(&[("OTEL_SERVICE_NAME", "edge")]).name_service);
        assert!(
            !on(&[(
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod, service.name=edge"
            )])
            .name_service
        );
        assert!(on(&[("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")]).name_service);
        // The signal's own protocol wins over the general one.
        on(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ]);
    }

    #[test]
    fn the_sampler_variables_set_ratio_and_parent_following_unless_the_node_config_does() {
        let sampling = |ratio: Option<f64>, follow: Option<bool>, vars: &[(&str, &str)]| {
            resolve(config(Some("http://c:4318"), ratio, follow), vars)
                .map(|s| s.map(|s| (s.ratio, s.follow_caller)).unwrap())
        };
        assert_eq!(sampling(None, None, &[]).unwrap(), (1.0, true));
        let sampler = [
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ];
        assert_eq!(sampling(None, None, &sampler).unwrap(), (0.01, true));
        assert_eq!(
            sampling(Some(0.5), Some(false), &sampler).unwrap(),
            (0.5, false)
        );
        for (name, expected) in [
            ("always_off", (0.0, false)),
            ("parentbased_always_off", (0.0, true)),
            ("always_on", (1.0, false)),
            ("traceidratio", (1.0, false)),
        ] {
            assert_eq!(
                sampling(None, None, &[("OTEL_TRACES_SAMPLER", name)]).unwrap(),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn settings_tern_cannot_honour_are_refused_by_name() {
        let refused =
            |endpoint: Option<&str>, ratio: Option<f64>, vars: &[(&str, &str)]| match resolve(
                config(endpoint, ratio, None),
                vars,
            ) {
                Err(Error::Setting { name, .. }) => name,
                other => panic!("{other:?}"),
            };
        let c = Some("http://c");
        assert_eq!(refused(Some("https://c:4318"), None, &[]), "otlp_endpoint");
        assert_eq!(
            refused(
                None,
                None,
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")]
            ),
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        );
        assert_eq!(
            refused(
                None,
                None,
                &[(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://c:4318/v1/traces"
                )]
            ),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        );
        assert_eq!(refused(c, Some(1.5), &[]), "trace_sample_ratio");
        assert_eq!(
            refused(
                c,
                None,
                &[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "7")
                ]
            ),
            "OTEL_TRACES_SAMPLER_ARG"
        );
        assert_eq!(
            refused(c, None, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        );
        assert_eq!(
            refused(
                c,
                None,
                &[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")]
            ),
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        );
        assert_eq!(
            refused(c, None, &[("OTEL_TRACES_SAMPLER", "jaeger_remote")]),
            "OTEL_TRACES_SAMPLER"
        );
        assert_eq!(
            refused(
                c,
                None,
                &[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "lots")
                ]
            ),
            "OTEL_TRACES_SAMPLER_ARG"
        );
        assert_eq!(
            refused(c, None, &[("OTEL_TRACES_EXPORTER", "zipkin")]),
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
            follow_caller: true,
            timeout: None,
            name_service: true,
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
        static STATS: ExportStats = ExportStats::new();
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
    fn shutdown_behind_a_full_queue_and_a_stuck_receiver_returns_within_its_timeout() {
        static STATS: ExportStats = ExportStats::new();
        let exporter = Recording::default();
        let held = exporter.gate.lock().unwrap();
        let p = BoundedBatch::start(
            exporter.clone(),
            &Resource::builder_empty().build(),
            &settings(8),
            &STATS,
        )
        .unwrap();
        for _ in 0..50 {
            p.on_end(span("s"));
        }
        let t0 = Instant::now();
        assert!(matches!(
            p.shutdown_with_timeout(Duration::from_millis(200)),
            Err(OTelSdkError::Timeout(_))
        ));
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        // Once shutdown has begun, a span ending is dropped (and counted) at once.
        let before = STATS.dropped.load(Relaxed);
        p.on_end(span("late"));
        assert_eq!(STATS.dropped.load(Relaxed), before + 1);
        drop(held);
    }

    #[test]
    fn a_partial_batch_is_sent_after_the_delay_and_shutdown_sends_the_rest() {
        static STATS: ExportStats = ExportStats::new();
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
