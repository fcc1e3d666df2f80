//! Logging for the binaries: human-readable lines on stderr, filtered by
//! `RUST_LOG` (default given by the caller), and — when an OTLP endpoint is given by
//! `--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` — the same spans
//! exported as OpenTelemetry traces over gRPC.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Flushes exported spans when dropped; keep it alive until exit.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. Must run inside a tokio runtime when an
/// OTLP endpoint is set (the exporter's gRPC channel needs one).
pub fn init(service: &'static str, default_level: &str, otlp_endpoint: Option<String>) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let endpoint = otlp_endpoint.or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()).filter(|e| !e.is_empty());
    let Some(endpoint) = endpoint else {
        let _ = tracing_subscriber::registry().with(filter).with(fmt).try_init();
        return Ok(Telemetry { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(layer).try_init();
    Ok(Telemetry { provider: Some(provider) })
}
