"""The event review page (`vad ui`): events with their snapshots, clips and scores, and each camera's state."""
