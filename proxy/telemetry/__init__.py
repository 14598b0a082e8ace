"""OpenTelemetry for the sidecar: the `[tracing]` policy (outermost layer), its providers, the
GenAI attributes and metrics, and the Prometheus text served at /metrics.
"""
