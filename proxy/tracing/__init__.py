"""Black-box tracing: trace context into produced records, spans out of fetched ones."""
