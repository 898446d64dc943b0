"""asv benchmarks of wsi-harness (see docs/benchmarks.md)."""
