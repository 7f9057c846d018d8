"""The real-component test bed: Kafka brokers, Java tools and clients, started on loopback."""
