"""Performance benchmarks: the proxy measured against a direct connection and a C relay."""
