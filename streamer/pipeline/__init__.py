"""The streaming pipeline: capture -> patches -> scorer(s) -> alerts, each stage its own process over ZeroMQ."""
