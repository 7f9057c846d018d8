"""The quickstart demo: Kafka, Jaeger, two sidecars and two tracing-unaware apps."""
