"""Sans-I/O Kafka protocol codec: pure functions on bytes, no asyncio."""
