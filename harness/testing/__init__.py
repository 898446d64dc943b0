"""Test support shipped with the package: hypothesis strategies and in-memory sinks."""
