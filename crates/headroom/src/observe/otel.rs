//! OTLP export of traces and logs (HTTP/protobuf), for Datadog, New Relic, Grafana and any
//! OpenTelemetry collector. Off unless the standard variables say where to send:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (then `/v1/traces` and `/v1/logs` under it), or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` for one signal.
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and the
//! batch settings (`OTEL_BSP_*`, `OTEL_BLRP_*`) are read by the OpenTelemetry SDK itself;
//! `OTEL_SDK_DISABLED=true` turns export off.
//!
//! Logs are every `tracing` event the log filter lets through (rate-limit events included),
//! traces the spans (a job attempt is one; the proxy's are at debug level, to stay off the
//! hot path unless asked for).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{LogExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::Layer;

/// Where to send, read from `OTEL_*` variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtelConfig {
    pub traces_endpoint: Option<String>,
    pub logs_endpoint: Option<String>,
    pub service_name: Option<String>,
}

impl OtelConfig {
    /// Reads the variables through `var` (`std::env::var` in the server). An unsupported
    /// protocol is an error naming the variable.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<OtelConfig> {
        let get = |k: &str| {
            var(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(OtelConfig::default());
        }
        for key in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
        ] {
            if let Some(p) = get(key) {
                if p != "http/protobuf" {
                    anyhow::bail!(
                        "{key}=\"{p}\": Headroom exports OTLP over \"http/protobuf\" only; \
                         point it at the collector's HTTP port (usually 4318)"
                    );
                }
            }
        }
        let base = get("OTEL_EXPORTER_OTLP_ENDPOINT").map(|b| b.trim_end_matches('/').to_string());
        let signal = |own: &str, path: &str| {
            get(own).or_else(|| base.as_ref().map(|b| format!("{b}{path}")))
        };
        Ok(OtelConfig {
            traces_endpoint: signal("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "/v1/traces"),
            logs_endpoint: signal("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "/v1/logs"),
            service_name: get("OTEL_SERVICE_NAME"),
        })
    }

    pub fn enabled(&self) -> bool {
        self.traces_endpoint.is_some() || self.logs_endpoint.is_some()
    }
}

/// Flushes and stops the exporters when dropped (at the end of `headroom serve`).
#[derive(Default)]
pub struct OtelGuard {
    tracer: Option<SdkTracerProvider>,
    logger: Option<SdkLoggerProvider>,
}

impl OtelGuard {
    pub fn enabled(&self) -> bool {
        self.tracer.is_some() || self.logger.is_some()
    }
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Some(t) = self.tracer.take() {
            let _ = t.shutdown();
        }
        if let Some(l) = self.logger.take() {
            let _ = l.shutdown();
        }
    }
}

pub type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync + 'static>;

/// The exporter's own HTTP client logs through `tracing` too: exporting those would feed
/// itself.
fn not_the_exporter(meta: &tracing::Metadata<'_>) -> bool {
    let t = meta.target();
    !(t.starts_with("opentelemetry")
        || t.starts_with("hyper")
        || t.starts_with("reqwest")
        || t.starts_with("h2")
        || t.starts_with("tower")
        || t.starts_with("rustls"))
}

/// The `tracing` layers that export to OTLP (none when `config` enables nothing), and the
/// guard that flushes them.
pub fn layers<S>(config: &OtelConfig) -> anyhow::Result<(Vec<BoxedLayer<S>>, OtelGuard)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    let mut layers: Vec<BoxedLayer<S>> = Vec::new();
    let mut guard = OtelGuard::default();
    if !config.enabled() {
        return Ok((layers, guard));
    }
    let resource = {
        let b = Resource::builder();
        match &config.service_name {
            // The SDK reads OTEL_SERVICE_NAME itself.
            Some(_) => b.build(),
            None => b.with_service_name("headroom").build(),
        }
    };
    if let Some(endpoint) = &config.traces_endpoint {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| anyhow::anyhow!("OTLP traces exporter for {endpoint}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.clone())
            .build();
        let tracer = provider.tracer("headroom");
        layers.push(Box::new(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::filter::filter_fn(not_the_exporter)),
        ));
        guard.tracer = Some(provider);
    }
    if let Some(endpoint) = &config.logs_endpoint {
        let exporter = LogExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| anyhow::anyhow!("OTLP logs exporter for {endpoint}: {e}"))?;
        let provider = SdkLoggerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        layers.push(Box::new(
            opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(&provider)
                .with_filter(tracing_subscriber::filter::filter_fn(not_the_exporter)),
        ));
        guard.logger = Some(provider);
    }
    Ok((layers, guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn off_by_default_on_with_the_standard_variables() {
        assert!(!OtelConfig::from_vars(vars(&[])).unwrap().enabled());
        let c = OtelConfig::from_vars(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]))
            .unwrap();
        assert_eq!(
            c.traces_endpoint.as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(c.logs_endpoint.as_deref(), Some("http://c:4318/v1/logs"));
        let c = OtelConfig::from_vars(vars(&[(
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "http://l/ingest",
        )]))
        .unwrap();
        assert_eq!(c.traces_endpoint, None);
        assert_eq!(c.logs_endpoint.as_deref(), Some("http://l/ingest"));
        let c = OtelConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]))
        .unwrap();
        assert!(!c.enabled());
        let e = OtelConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
    }
}
