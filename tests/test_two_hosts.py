"""Two hosts with CURVE, set up as deploy/README.md says ("Scorers on another host").

Host A runs capture, the patch stage and the alerter (`scorer.processes: 0`); host B
runs one scorer alone (`vad stage scorer`). They are two network namespaces joined by
a veth pair made here; where namespaces cannot be made (no root, no iproute2) they are
two addresses on loopback. Each host has its own folders standing for /etc/vad and
/var/lib/vad. The configs are the two YAML blocks of deploy/README.md, with addresses
and folders replaced and a looping clip standing in for the camera; keys and
certificates are made with the commands the README gives.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .conftest import REPO
from .pipeline_helpers import running, vad_command, wait_for

README = REPO / "deploy" / "README.md"
ADDRESS_A, ADDRESS_B = "10.0.0.5", "10.0.0.6"  # as the README writes them

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")


@dataclass
class Host:
    name: str
    address: str
    prefix: tuple[str, ...]  # runs a command on this host
    root: Path  # stands for / on this host

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def vad(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, *vad_command(*args)], capture_output=True, text=True, timeout=timeout)

    def start(self, *args: str, log: Path):
        return running(*args, log=log, prefix=self.prefix)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def two_hosts(folder: Path):
    """Hosts A and B: network namespaces joined by a veth pair, or else two loopback addresses."""
    tag = f"{os.getpid() % 100000}{random.randrange(100)}"
    namespaces = [f"vadA{tag}", f"vadB{tag}"]
    made = []
    try:
        for n, (namespace, address) in enumerate(zip(namespaces, ("10.250.0.1", "10.250.0.2"))):
            ip("netns", "add", namespace)
            made.append(namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
        ip("link", "add", f"vA{tag}", "type", "veth", "peer", "name", f"vB{tag}")
        for namespace, link, address in zip(namespaces, (f"vA{tag}", f"vB{tag}"), ("10.250.0.1", "10.250.0.2")):
            ip("link", "set", link, "netns", namespace)
            ip("-n", namespace, "addr", "add", f"{address}/30", "dev", link)
            ip("-n", namespace, "link", "set", link, "up")
        hosts = [
            Host(name, address, ("ip", "netns", "exec", namespace), folder / name)
            for name, namespace, address in zip("AB", namespaces, ("10.250.0.1", "10.250.0.2"))
        ]
    except (OSError, subprocess.SubprocessError) as e:
        print(f"network namespaces unavailable ({e}): hosts A and B share loopback")
        net = random.randrange(1, 250)
        hosts = [Host(name, f"127.{net}.0.{n}", (), folder / name) for n, name in ((1, "A"), (2, "B"))]
    try:
        yield hosts
    finally:
        for namespace in made:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)


def readme_config(name: str, host: Host, other: Host, clip: Path, model: Path) -> dict:
    """The README's YAML block marked `<!-- two-hosts: NAME -->`, for this host, the clip as its camera."""
    blocks = dict(re.findall(r"<!-- two-hosts: (\S+) -->\s*```yaml\n(.*?)```", README.read_text(), re.S))
    text = textwrap.dedent(blocks[name])
    own, peer = (ADDRESS_A, ADDRESS_B) if name == "host-a" else (ADDRESS_B, ADDRESS_A)
    text = text.replace(own, host.address).replace(peer, other.address)
    if not host.prefix:  # loopback: the README's 127.0.0.1 would be shared with everything else on this machine
        text = text.replace("127.0.0.1", host.address)
    for folder in ("/etc/vad", "/var/lib/vad"):
        text = text.replace(folder, str(host.path(folder)))
    config = yaml.safe_load(text)
    config["model"] = str(model)
    config["cameras"][0].update(source=str(clip), pace=True, fps=20, loop=True)
    return config


def write_yaml(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def copy(source: Path, target_folder: Path) -> None:
    """scp -p: the file, its mode kept."""
    target_folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target_folder / source.name)


def metrics_certificates(a: Host, b: Host) -> None:
    """README step 4: a CA on host A, host B's metrics certificate and Prometheus' client certificate."""
    ca = a.path("/etc/vad/ca")
    ca.mkdir(parents=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=ca, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650",
            "-subj", "/CN=vad metrics CA", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    for name in ("scorer-b", "prometheus"):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
    (ca / "san.ext").write_text(f"subjectAltName=IP:{b.address}\n")
    openssl("x509", "-req", "-in", "scorer-b.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "825", "-extfile", "san.ext", "-out", "scorer-b.crt")  # fmt: skip
    for name in ("ca.crt", "scorer-b.crt", "scorer-b.key"):
        copy(ca / name, b.path("/etc/vad/tls"))


class Subscriber:
    """`vad alerts` on a host, its events (stdout lines) collected as they come."""

    def __init__(self, host: Host, log: Path, *args: str):
        self.log = log
        self.process = subprocess.Popen(
            [*host.prefix, *vad_command("alerts", *args)], stdout=subprocess.PIPE, stderr=open(log, "w"), text=True
        )
        self.events: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.events.append(line)

    def said(self, text: str) -> bool:
        return text in self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def scrape_on(host: Host, port: int) -> str:
    """A's loopback metrics, read from inside host A."""
    address = "127.0.0.1" if host.prefix else host.address
    code = f"import urllib.request as u; print(u.urlopen('http://{address}:{port}/metrics', timeout=5).read().decode())"
    return subprocess.run([*host.prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout


def sample_value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@needs_openssl
@pytest.mark.slow
def test_two_hosts_with_curve_as_the_deploy_readme_says(tiny_model, synthetic_ped2, tmp_path):
    clip = synthetic_ped2 / "Test" / "Test001"  # a fast mover in its second half: an event every pass
    with two_hosts(tmp_path) as (a, b):
        # 1. The pipeline's key pair on A, and the folder of subscriber keys.
        assert a.vad("keys", "generate", "--out", str(a.path("/etc/vad/keys")), "--name", "pipeline").returncode == 0
        authorized = a.path("/etc/vad/keys/authorized")
        authorized.mkdir()
        # 3. The same pair on B, nothing else; 4. certificates for B's metrics.
        for name in ("pipeline.key_secret", "pipeline.key"):
            copy(a.path(f"/etc/vad/keys/{name}"), b.path("/etc/vad/keys"))
        metrics_certificates(a, b)
        # 2, 5. The README's configs.
        config_a = write_yaml(a.path("/etc/vad/vad.yaml"), readme_config("host-a", a, b, clip, tiny_model))
        config_b = readme_config("host-b", b, a, clip, tiny_model)
        path_b = write_yaml(b.path("/etc/vad/vad.yaml"), config_b)
        # 6. Each host checks what it runs; the scorer host's check creates nothing.
        checked = a.vad("config", "check", str(config_a))
        assert checked.returncode == 0 and "CURVE on" in checked.stdout, checked.stderr
        checked = b.vad("config", "check", "--stage", "scorer", str(path_b))
        assert checked.returncode == 0 and "valid for stage scorer" in checked.stdout, checked.stderr
        assert not b.path("/var/lib/vad").exists()

        with (
            b.start("stage", "scorer", "--index", "0", "--config", str(path_b), log=tmp_path / "b.log"),
            a.start("run", "--config", str(config_a), log=tmp_path / "a.log"),  # A stops first: B sees a clean stop
        ):
            # 8. A subscriber's own key pair, allowed on A; it has the pipeline's public key.
            home = b.path("/home/ops/.vad")
            for name in ("ops-laptop", "ops-laptop-2026"):
                assert b.vad("keys", "generate", "--out", str(home), "--name", name).returncode == 0
            copy(home / "ops-laptop.key", authorized)
            copy(a.path("/etc/vad/keys/pipeline.key"), home)
            events = f"tcp://{a.address}:5560"

            def subscribe(key: str, log: str, *more: str) -> Subscriber:
                keys = ("--key", str(home / f"{key}.key_secret"), "--server-key", str(home / "pipeline.key"))
                return Subscriber(b, tmp_path / log, "--endpoint", events, *keys, *more)

            ops = subscribe("ops-laptop", "ops.log", "--timeout", "8")
            try:
                wait_for(lambda: len(ops.events) >= 2, 90, "events at the subscriber through two CURVE hops")
                health = b.vad("health", "--config", str(path_b), "--stage", "scorer")
                assert health.returncode == 0 and health.stdout.split() == ["scorer[0]", "up"], health.stderr

                # A scorer holding another key pair is refused, and says so; so does A, and counts it.
                assert (
                    b.vad("keys", "generate", "--out", str(b.path("/etc/vad/keys")), "--name", "rogue").returncode == 0
                )
                rogue = {**config_b, "metrics": {**config_b["metrics"], "base_port": 9200}}
                rogue["security"]["curve"]["secret_key"] = str(b.path("/etc/vad/keys/rogue.key_secret"))
                path_rogue = write_yaml(b.path("/etc/vad/rogue.yaml"), rogue)
                with b.start("stage", "scorer", "--index", "0", "--config", str(path_rogue), log=tmp_path / "r.log"):
                    patches = f"tcp://{a.address}:5551"
                    wait_for(
                        lambda: (
                            f"scorer: {patches} refused our handshake: it closed the handshake"
                            in (tmp_path / "r.log").read_text()
                        ),
                        30,
                        "the rogue scorer to report the refusal",
                    )
                    refused = b.vad("health", "--config", str(path_rogue), "--stage", "scorer")
                    assert refused.returncode == 1 and "refuse its handshake" in refused.stderr
                    assert (
                        f"patcher: refused a client on {patches}: the client expects another server key"
                        in (tmp_path / "a.log").read_text()
                    )
                    patcher_metrics = scrape_on(a, 9101)
                    assert sample_value(
                        patcher_metrics, "vad_handshakes_failed_total", side="server", reason="wrong_key"
                    ), patcher_metrics[-2000:]

                # Rotation: the key file is overwritten with a new key. The old key is refused from the next
                # handshake, and the alerter drops the subscribers once so that it is checked again at once.
                before = len(ops.events)
                (authorized / "ops-laptop.key").write_bytes((home / "ops-laptop-2026.key").read_bytes())
                wait_for(
                    lambda: ops.said("refused our handshake: our public key is not in its authorized_keys"),
                    20,
                    "the revoked subscriber to say it is refused",
                )
                revoked_at = len(ops.events)
                assert revoked_at - before <= 4  # what was already on the wire when the file was replaced
                rotated = subscribe("ops-laptop-2026", "ops2.log", "--count", "2", "--timeout", "60")
                assert rotated.process.wait(90) == 0 and len(rotated.events) == 2
                assert ops.process.wait(60) == 1  # --timeout 8: no event since it was refused
                assert len(ops.events) == revoked_at
                assert ops.said(f"vad: error: {events} refused every handshake for 8 s")
            finally:
                ops.stop()
        for log in ("a.log", "b.log", "r.log", "ops.log", "ops2.log"):
            assert "Traceback" not in (tmp_path / log).read_text(), log
        # Both hosts stopped cleanly: each link closed after the end of its streams, none was dropped.
        for log in ("a.log", "b.log"):
            assert "dropped (" not in (tmp_path / log).read_text(), log
