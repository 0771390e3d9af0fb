"""The streaming pipeline: capture -> patches -> scorer(s) -> alerts, each stage its own process over ZeroMQ."""


class PipelineError(RuntimeError):
    """A pipeline run that did not finish (a stage failed)."""
