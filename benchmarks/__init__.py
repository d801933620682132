"""Quality and speed benchmarks (printed tables + JSON); see benchmarks/README.md."""
