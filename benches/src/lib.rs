//! Benchmarks live in benches/benches; run `cargo xtask bench`.
