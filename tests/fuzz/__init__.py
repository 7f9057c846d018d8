"""Hostile and malformed input: property tests, unit cases and a coverage-guided fuzzer."""
