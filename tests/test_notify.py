"""The notifier stage against a real Mosquitto broker and a local HTTP endpoint.

(a) every event of a demo-clip run reaches an MQTT subscriber and the webhook, in
    order per camera, with the anomaly states, scores, availability and Home
    Assistant discovery that go with them;
(b) the broker stopped while events fire, then started again: every event arrives;
(c) the webhook answering 500 for a while: the events are retried and delivered,
    and the retries show in the metrics;
(d) the notifier killed with kill -9 mid-delivery: nothing is lost, and the event
    delivered twice carries the same idempotency key both times.

(b) and (c) stop the broker for 3 s and fail the webhook for 3 s, which proves
resumption as well as a longer outage; VAD_FULL_OUTAGES=1 runs them at the
issue's 30 s and 20 s as well.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections import defaultdict

import pytest

from streamer.demo import SAMPLE_CLIP
from streamer.model import BUNDLED_MODEL
from streamer.pipeline import config as pipeline_config
from streamer.pipeline.config import StageRef, metrics_port
from streamer.pipeline.delivery import DeliveryError, idempotency_key
from streamer.pipeline.events import read_events
from streamer.pipeline.mqtt import MqttDestination
from streamer.pipeline.notify_config import MqttConfig, MqttTlsConfig
from streamer.pipeline.webhooks import signature

from .notify_helpers import MOSQUITTO, Broker, Receiver, Subscriber
from .pipeline_helpers import running, sample, short_dir, stages_of, try_scrape, wait_for, write_config

pytestmark = pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto not installed (Debian: apt-get install mosquitto; .ci/run does)"
)
SECRET = "test-secret"


def notify_section(broker: Broker, receiver: Receiver, score_interval: float) -> dict:
    return {
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "score_interval_seconds": score_interval},
        "webhooks": [{"url": receiver.url, "name": "ops", "secret": SECRET, "types": ["start", "update", "end"]}],
        "retry_initial_seconds": 0.2,
        "retry_max_seconds": 1.0,
    }


def by_camera(events: list[dict]) -> dict[str, list[str]]:
    """Each camera's idempotency keys in order of first arrival (a repeat is a duplicate, not a new event)."""
    keys = defaultdict(list)
    for event in events:
        key = idempotency_key(event)
        if key not in keys[event["camera"]]:
            keys[event["camera"]].append(key)
    return dict(keys)


def assert_all_delivered_in_order(logged: list[dict], received: list[dict]) -> None:
    """Every logged event arrived, and each camera's events arrived in log order."""
    expected = by_camera(logged)
    got = by_camera(received)
    for camera, keys in expected.items():
        assert got.get(camera, [])[: len(keys)] == keys, f"{camera}: received out of order or incomplete"


# (a) a demo-clip run, start to finish.


@pytest.fixture(scope="module")
def demo_run():
    """`vad run` on the bundled demo clip as two cameras, delivering to a broker and a webhook, until the clip ends."""
    with short_dir() as run_dir:
        (run_dir / "broker").mkdir()
        broker = Broker(run_dir / "broker")
        broker.start()
        receiver = Receiver()
        live = Subscriber(broker.port, ["vad/#"], client_id="live")
        try:
            cameras = [{"id": camera, "source": str(SAMPLE_CLIP)} for camera in ("cam1", "cam2")]
            config = write_config(
                run_dir,
                BUNDLED_MODEL,
                cameras,
                alerter={"exit_at_end": True},
                notify=notify_section(broker, receiver, score_interval=0.5),
            )
            cfg = pipeline_config.load(config)
            started = time.monotonic()
            with running("run", "--config", str(config), log=run_dir / "log") as (process, _):
                assert process.wait(180) == 0, (run_dir / "log").read_text()[-3000:]
            seconds = time.monotonic() - started
            wait_for(lambda: live.on("vad/available")[-1:] == [b"offline"], 10, "the notifier's offline")
            late = Subscriber(broker.port, ["vad/#", "homeassistant/#"], client_id="late")  # what a restart sees
            wait_for(lambda: len({t for t, _, _ in late.messages}) >= 7, 10, "the retained messages")
            time.sleep(0.5)  # 4 discovery configs, 2 anomaly states, the availability: no more should come
            yield {
                "logged": read_events(cfg.alerter.event_log),
                "live": live,
                "retained": {topic: payload for topic, payload, retained in late.messages if retained},
                "receiver": receiver,
                "seconds": seconds,
                "log": (run_dir / "log").read_text(),
            }
            late.close()
        finally:
            live.close()
            receiver.close()
            broker.stop()


def test_every_event_of_a_demo_clip_run_reaches_mqtt_and_the_webhook_in_order(demo_run):
    logged, live, receiver = demo_run["logged"], demo_run["live"], demo_run["receiver"]
    assert {e["camera"] for e in logged if e["type"] == "start"} == {"cam1", "cam2"}
    assert by_camera(live.events()) == by_camera(logged)  # every event, each once, in order per camera
    assert by_camera(receiver.events()) == by_camera(logged)
    assert len(live.events()) == len(receiver.requests) == len(logged)  # a clean run delivers each once
    for headers, body, _ in receiver.requests:
        event = json.loads(body)
        assert headers["Idempotency-Key"] == event["idempotency_key"] == idempotency_key(event)
        assert hmac.compare_digest(headers["X-Vad-Signature"], signature(SECRET, body))
        assert headers["Content-Type"] == "application/json"
    for camera in ("cam1", "cam2"):
        states = [b"OFF" if e["type"] == "end" else b"ON" for e in logged if e["camera"] == camera]
        assert live.on(f"vad/{camera}/anomaly") == [b"OFF"] + states  # announced at connect, then each event
        scores = [float(s) for s in live.on(f"vad/{camera}/score")]
        assert 2 <= len(scores) <= demo_run["seconds"] / 0.5 + 2  # at most one per score_interval_seconds
    assert live.on("vad/available")[0] == b"online" and live.on("vad/available")[-1] == b"offline"
    retained = demo_run["retained"]
    assert retained["vad/cam1/anomaly"] == retained["vad/cam2/anomaly"] == b"OFF"  # every event ended
    assert retained["vad/available"] == b"offline"  # the notifier stopped with the pipeline


# Home Assistant's MQTT discovery (home-assistant.io/integrations/mqtt, binary_sensor.mqtt, sensor.mqtt): the
# documented options these payloads may use, with their types; state_topic, unique_id, device and availability
# are the ones an entity needs to show up, keep its settings, belong to a device and go unavailable with us.
DISCOVERY_OPTIONS = {
    "binary_sensor": {"payload_on": str, "payload_off": str, "device_class": str},
    "sensor": {"state_class": str, "suggested_display_precision": int, "expire_after": int, "unit_of_measurement": str},
}
COMMON_OPTIONS = {"name": str, "unique_id": str, "state_topic": str, "availability": list, "device": dict}
COMMON_OPTIONS |= {"origin": dict, "qos": int}
REQUIRED_OPTIONS = {"state_topic", "unique_id", "device", "availability"}
BINARY_SENSOR_CLASSES = {"motion", "occupancy", "problem", "safety", "moving", "presence"}  # of HA's list
DISCOVERY_TOPIC = re.compile(r"^homeassistant/(binary_sensor|sensor)/([A-Za-z0-9_-]+)/config$")


def test_the_home_assistant_discovery_payloads_have_the_documented_fields(demo_run):
    retained = demo_run["retained"]
    configs = {topic: json.loads(payload) for topic, payload in retained.items() if topic.startswith("homeassistant/")}
    assert len(configs) == 4  # a binary_sensor and a sensor per camera
    unique_ids = set()
    for topic, config in configs.items():
        component, object_id = DISCOVERY_TOPIC.match(topic).groups()
        options = COMMON_OPTIONS | DISCOVERY_OPTIONS[component]
        assert REQUIRED_OPTIONS <= set(config) <= set(options), topic
        assert all(isinstance(config[key], options[key]) for key in config), topic
        assert object_id == config["unique_id"] and config["unique_id"] not in unique_ids
        unique_ids.add(config["unique_id"])
        assert config["device"]["identifiers"] and all(isinstance(i, str) for i in config["device"]["identifiers"])
        assert config["device"]["name"] in ("cam1", "cam2")
        [availability] = config["availability"]
        assert availability == {
            "topic": "vad/available",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
        state_topic = f"vad/{config['device']['name']}/{'anomaly' if component == 'binary_sensor' else 'score'}"
        assert config["state_topic"] == state_topic
        published = demo_run["live"].on(state_topic)
        if component == "binary_sensor":
            assert config["device_class"] in BINARY_SENSOR_CLASSES
            assert {config["payload_on"].encode(), config["payload_off"].encode()} == set(published)
        else:
            assert published and [float(value) for value in published]  # numbers, as a sensor needs
    devices = {json.dumps(c["device"], sort_keys=True) for c in configs.values()}
    assert len(devices) == 2  # one device per camera, shared by its two entities


# A broker that wants a password, and one that speaks TLS only.


def attempt(cfg: MqttConfig) -> str | None:
    """Deliver one event; None once the broker acknowledged it, else why not."""
    destination = MqttDestination(cfg, ["cam1"])
    event = {"event_id": uuid.uuid4().hex, "camera": "cam1", "type": "start", "seq": 1}
    try:
        destination.deliver([event])
    except DeliveryError as e:
        return str(e)
    finally:
        destination.close()
    return None


def test_the_broker_password_is_used_and_a_refusal_says_why(tmp_path):
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "vad", "right"], check=True, capture_output=True)
    passwords.chmod(0o600)
    broker = Broker(tmp_path, f"allow_anonymous false\npassword_file {passwords}\n")
    broker.start()
    try:
        wrong = attempt(
            MqttConfig(host="127.0.0.1", port=broker.port, username="vad", password="wrong", timeout_seconds=5)
        )
        assert wrong == f"broker 127.0.0.1:{broker.port} did not accept the connection: Not authorized"
        assert attempt(MqttConfig(host="127.0.0.1", port=broker.port, username="vad", password="right")) is None
    finally:
        broker.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed: no certificates for a TLS broker")
def test_tls_to_the_broker_checks_its_certificate(tmp_path):
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=vad test CA")  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=broker"
    )
    (tmp_path / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "1", "-extfile", "san.cnf")  # fmt: skip
    files = {"cafile": "ca.pem", "certfile": "server.pem", "keyfile": "server.key"}
    broker = Broker(tmp_path, "allow_anonymous true\n" + "".join(f"{k} {tmp_path / v}\n" for k, v in files.items()))
    broker.start()
    try:
        trusted = MqttTlsConfig(enabled=True, ca_file=str(tmp_path / "ca.pem"))
        assert attempt(MqttConfig(host="127.0.0.1", port=broker.port, tls=trusted)) is None
        untrusted = attempt(MqttConfig(host="127.0.0.1", port=broker.port, tls=MqttTlsConfig(enabled=True)))
        assert untrusted and "CERTIFICATE_VERIFY_FAILED" in untrusted  # the system's CAs do not know this one
        plain = attempt(MqttConfig(host="127.0.0.1", port=broker.port, timeout_seconds=2))
        assert plain and "did not accept the connection" in plain
    finally:
        broker.stop()


# (b)-(d): a daemon whose events keep firing, with faults injected.


@pytest.fixture(scope="module")
def daemon(tiny_model, synthetic_ped2):
    """`vad run` on a 20-frame clip looping at 10 fps (frames 11-20 anomalous), delivering to a broker and a webhook."""
    with short_dir() as run_dir:
        (run_dir / "broker").mkdir()
        broker = Broker(run_dir / "broker")
        broker.start()
        receiver = Receiver()
        subscriber = Subscriber(broker.port, ["vad/events"])
        camera = {
            "id": "cam1",
            "source": str(synthetic_ped2 / "Test" / "Test001"),
            "pace": True,
            "fps": 10,
            "loop": True,
        }
        config = write_config(
            run_dir,
            tiny_model,
            [camera],
            alerter={"end_after": 2, "update_every": 3},
            supervisor={"backoff": {"initial_seconds": 0.2, "max_seconds": 1.0}},
            notify=notify_section(broker, receiver, score_interval=1.0),
        )
        cfg = pipeline_config.load(config)
        try:
            with running("run", "--config", str(config), log=run_dir / "log") as (process, _):
                wait_for(lambda: subscriber.events(), 60, "a first event at the subscriber")
                yield {
                    "cfg": cfg,
                    "process": process,
                    "broker": broker,
                    "receiver": receiver,
                    "subscriber": subscriber,
                    "port": metrics_port(cfg, StageRef("notifier")),
                }
        finally:
            subscriber.close()
            receiver.close()
            broker.stop()


def logged(daemon) -> list[dict]:
    return read_events(daemon["cfg"].alerter.event_log)


def notifier_metric(daemon, name: str, **labels) -> float:
    families = wait_for(lambda: try_scrape(daemon["port"]), 10, "the notifier's metrics")
    return sample(families, name, **labels) or 0.0


def wait_for_events_after(daemon, count: int, since: int, at_least: float) -> None:
    """Wait `at_least` seconds, and until `count` more events than `since` are in the log."""
    time.sleep(at_least)
    wait_for(lambda: len(logged(daemon)) >= since + count, 60, f"{count} events to fire")


def everything_arrives(daemon) -> list[dict]:
    """Every event logged so far reaches the subscriber and the webhook, in order; returns them."""
    events = logged(daemon)
    wait_for(
        lambda: set(by_camera(events)["cam1"]) <= set(by_camera(daemon["subscriber"].events())["cam1"]), 60, "MQTT"
    )
    wait_for(
        lambda: set(by_camera(events)["cam1"]) <= set(by_camera(daemon["receiver"].events())["cam1"]), 60, "webhook"
    )
    assert_all_delivered_in_order(events, daemon["subscriber"].events())
    assert_all_delivered_in_order(events, daemon["receiver"].events())
    return events


def broker_outage(daemon, seconds: float) -> str:
    failed = notifier_metric(daemon, "vad_notify_failed_total", destination="mqtt")
    before = len(logged(daemon))
    daemon["broker"].stop()
    wait_for_events_after(daemon, 3, before, seconds)
    during = logged(daemon)[before:]
    daemon["broker"].start()
    restarted = time.monotonic()
    delivered = everything_arrives(daemon)
    caught_up = time.monotonic() - restarted
    assert {idempotency_key(e) for e in during} <= {idempotency_key(e) for e in delivered}
    failed = notifier_metric(daemon, "vad_notify_failed_total", destination="mqtt") - failed
    assert failed > 0
    return (
        f"broker down {seconds:g} s: {len(during)} events fired meanwhile, all at the subscriber "
        f"{caught_up:.1f} s after the broker was back; {failed:g} failed attempts"
    )


def webhook_outage(daemon, seconds: float) -> str:
    retried = notifier_metric(daemon, "vad_notify_retried_total", destination="ops")
    receiver = daemon["receiver"]
    before = len(logged(daemon))
    receiver.failing_until = time.monotonic() + seconds
    wait_for_events_after(daemon, 3, before, seconds)
    during = logged(daemon)[before:]
    everything_arrives(daemon)
    caught_up = time.monotonic() - receiver.failing_until
    refused = {idempotency_key(e) for e in receiver.events(status=500)}
    assert refused and refused <= {idempotency_key(e) for e in receiver.events()}  # each refused one came again
    retried = notifier_metric(daemon, "vad_notify_retried_total", destination="ops") - retried
    assert retried > 0 and notifier_metric(daemon, "vad_notify_failed_total", destination="ops") > 0
    return (
        f"webhook failing {seconds:g} s: {len(during)} events fired meanwhile, all delivered "
        f"{caught_up:.1f} s after it answered 200 again; {retried:g} retries"
    )


def test_events_fired_while_the_broker_is_down_are_delivered_after_it_is_back(daemon):
    broker_outage(daemon, 3.0)


def test_events_refused_by_a_failing_webhook_are_retried_until_delivered(daemon):
    webhook_outage(daemon, 3.0)


def test_a_notifier_killed_mid_delivery_loses_nothing_and_repeats_with_the_same_key(daemon):
    receiver, process = daemon["receiver"], daemon["process"]
    receiver.held.clear()
    receiver.release.clear()
    receiver.holding = True  # answered only once the notifier is dead, however slow the machine
    wait_for(receiver.held.is_set, 60, "a request to hold")
    headers, body, _ = receiver.requests[-1]
    notifier = stages_of(process.pid)["notifier"]
    os.kill(notifier, signal.SIGKILL)  # while the endpoint has the request and has not answered
    receiver.holding = False
    receiver.release.set()
    wait_for(lambda: stages_of(process.pid).get("notifier", notifier) != notifier, 30, "the notifier restarted")
    everything_arrives(daemon)
    copies = [(h, b) for h, b, _ in receiver.requests if h["Idempotency-Key"] == headers["Idempotency-Key"]]
    assert len(copies) >= 2 and all(b == body for _, b in copies)  # a duplicate, identical, same key


@pytest.mark.skipif(
    not os.environ.get("VAD_FULL_OUTAGES"), reason="set VAD_FULL_OUTAGES=1 for the 30 s and 20 s outages"
)
def test_full_length_outages_broker_down_30_s_webhook_failing_20_s(daemon):
    print(broker_outage(daemon, 30.0))
    print(webhook_outage(daemon, 20.0))
