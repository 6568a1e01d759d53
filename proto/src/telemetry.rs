//! Tracing for every banger process: human logs on a terminal, JSON logs
//! under systemd, and OTLP span export only when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (no exporter and no cost otherwise).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Flushes exported spans when dropped; keep it alive for the whole `main`.
#[must_use = "dropping the guard stops span export"]
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, to stderr.
    Text,
    /// One JSON object per line (systemd's journal, log shippers).
    Json,
}

impl LogFormat {
    /// JSON when started by systemd (`JOURNAL_STREAM` set) or when
    /// `BANGER_LOG_FORMAT=json`; text otherwise.
    pub fn detect() -> LogFormat {
        match std::env::var("BANGER_LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            Ok("text") => LogFormat::Text,
            _ if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }
}

/// Installs the global subscriber for a process named `service_name`
/// (`RUST_LOG` filters, default `default_level`).
pub fn init(service_name: &'static str, default_level: &str) -> TelemetryGuard {
    // Before the OTLP HTTP exporter (or anything else) builds a client.
    crate::tls::install_crypto_provider();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt_layer = match LogFormat::detect() {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .boxed(),
    };
    let (provider, warning) = match otlp_provider(service_name) {
        Ok(provider) => (provider, None),
        Err(e) => (None, Some(e)),
    };
    // Export banger's own spans (steps, RPCs), not the transport internals
    // of h2/tower/hyper, which would bury them.
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service_name))
            .with_filter(Targets::new().with_target("banger", tracing::Level::INFO))
    });
    let _ = Registry::default()
        .with(otel_layer)
        .with(fmt_layer.with_filter(filter))
        .try_init();
    if let Some(warning) = warning {
        tracing::warn!("OTLP export disabled: {warning}");
    }
    TelemetryGuard { provider }
}

/// Builds an OTLP exporter from the standard `OTEL_EXPORTER_OTLP_*`
/// variables; `None` when no endpoint is configured.
fn otlp_provider(service_name: &'static str) -> Result<Option<SdkTracerProvider>, String> {
    let endpoint_set = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    if !endpoint_set {
        return Ok(None);
    }
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "grpc".into());
    use opentelemetry_otlp::WithExportConfig as _;
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match protocol.as_str() {
        "grpc" => builder.with_tonic().build(),
        "http/protobuf" => builder
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
        other => {
            return Err(format!(
                "unsupported OTEL_EXPORTER_OTLP_PROTOCOL {other:?}; use grpc or http/protobuf"
            ));
        }
    }
    .map_err(|e| e.to_string())?;
    let resource = Resource::builder().with_service_name(service_name).build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}
