"""Codec bitstreams the gateway reads and writes by hand (pure modules)."""
