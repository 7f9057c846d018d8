"""kafka-trace-proxy: a Kafka wire-protocol sidecar that adds distributed tracing."""
