"""The quickstart demo: Kafka, Jaeger, two sidecar proxies and two apps that know nothing about tracing."""
