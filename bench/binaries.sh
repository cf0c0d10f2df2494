# Sourced by the bench scripts: P and A, the publisher and agent binaries
# (from BIN=DIR, or a release build made here), and W, a scratch directory.
# Run from the repository root.
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p strata-publisher -p strata-agent
  BIN=$PWD/target/release
fi
P=$BIN/strata-publisher
A=$BIN/strata-agent
W=$(mktemp -d)
