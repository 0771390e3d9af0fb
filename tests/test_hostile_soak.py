"""The hostile-peer soak's core, briefly: benchmarks/hostile_soak.py on the synthetic clips for seconds.

The benchmark runs the daemon for minutes (docs/hardening.md); here its whole path
runs short, so the attack, the live subscriber and the checks it prints stay working.
"""

from __future__ import annotations

from .pipeline_helpers import load_benchmark


def test_a_daemon_under_a_hostile_peer_loses_no_event_and_stays_small(tiny_model, synthetic_ped2):
    soak = load_benchmark("hostile_soak")
    args = soak.parse(["--data", str(synthetic_ped2), "--model", str(tiny_model), "--warm-up", "8", "--duration", "15"])
    result = soak.run(args)
    assert soak.passed(result), result
    assert result["events logged"] > 0 and sum(c["clean passes"] for c in result["cameras"].values()) > 0
    sent = result["attack"]["sent"]
    assert {"malformed", "foreign", "replayed", "prefix flood", "big prefix"} <= set(sent)
    rejected = {reason for (stage, reason) in result["rejected"] if stage == "alerter"}
    assert {"malformed", "foreign_stream", "subscription"} <= rejected
