//! OTLP export of traces and logs: off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or a signal's
//! own `OTEL_EXPORTER_OTLP_*_ENDPOINT`) is set.
