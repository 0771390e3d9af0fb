"""/metrics over TLS with client certificates, and the warning for metrics offered beyond loopback without them."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from streamer.cli import main
from streamer.pipeline import config as pipeline_config
from streamer.pipeline import telemetry
from streamer.pipeline.config import StageRef, free_port_base, metrics_port

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def signed_certificate(folder: Path, name: str, *extensions: str) -> None:
    """NAME.key and NAME.crt signed by the CA in folder (deploy/README.md, "Metrics beyond loopback")."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)  # fmt: skip
    (folder / f"{name}.ext").write_text("".join(f"{e}\n" for e in extensions))
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "825", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=folder)  # fmt: skip


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    """A private CA, the metrics certificate of 127.0.0.1 and a client certificate for Prometheus."""
    folder = tmp_path_factory.mktemp("tls")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650",
            "-subj", "/CN=vad metrics CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)  # fmt: skip
    signed_certificate(folder, "metrics", "subjectAltName=IP:127.0.0.1")
    signed_certificate(folder, "prometheus")
    return folder


def write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "vad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def check(path: Path, capsys) -> tuple[int, str, str]:
    code = main(["config", "check", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


@needs_openssl
def test_metrics_over_tls_admit_only_client_certificates_and_vad_health_has_one(
    certificates, tiny_model, tmp_path, capsys
):
    tls = {name: str(certificates / f"metrics.{ext}") for name, ext in (("certificate", "crt"), ("key", "key"))}
    config = {
        "model": str(tiny_model),
        "run_dir": str(tmp_path / "run"),
        "cameras": [{"id": "cam1", "source": 0}],
        "metrics": {"base_port": free_port_base(5), "tls": {**tls, "client_ca": str(certificates / "ca.crt")}},
    }
    path = write(tmp_path, config)
    code, out, err = check(path, capsys)
    assert code == 0 and err == "", err
    cfg = pipeline_config.load(path)
    port = metrics_port(cfg, StageRef("scorer"))
    telemetry.serve(cfg.metrics, port)
    url = f"https://127.0.0.1:{port}/metrics"

    with pytest.raises(OSError):  # plain HTTP gets no metrics
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    anonymous = ssl.create_default_context(cafile=str(certificates / "ca.crt"))
    with pytest.raises(OSError):  # TLS without a client certificate is refused
        urllib.request.urlopen(url, timeout=5, context=anonymous).read()
    prometheus = ssl.create_default_context(cafile=str(certificates / "ca.crt"))
    prometheus.load_cert_chain(certificates / "prometheus.crt", certificates / "prometheus.key")
    assert b"vad_links_refused" in urllib.request.urlopen(url, timeout=5, context=prometheus).read()

    assert main(["health", "--config", str(path), "--stage", "scorer"]) == 0
    assert capsys.readouterr().out.split() == ["scorer[0]", "up"]

    config["metrics"]["tls"]["key"] = str(certificates / "prometheus.key")  # not the certificate's key
    code, _, err = check(write(tmp_path, config), capsys)
    assert code == 2 and "- metrics.tls: cannot load the certificate, key or client_ca" in err


@pytest.mark.parametrize(
    "tls, warning", [(None, "over plain HTTP"), ({}, "encrypted, but to anyone"), ({"client_ca": "ca.crt"}, None)]
)
def test_metrics_beyond_loopback_without_client_certificates_are_warned_about(
    tiny_model, tmp_path, capsys, tls, warning
):
    config = {
        "model": str(tiny_model),
        "run_dir": str(tmp_path / "run"),
        "cameras": [{"id": "cam1", "source": 0}],
        "metrics": {"host": "0.0.0.0"},
        "security": {"allow_remote": True, "curve": {"enabled": False}},
    }
    if tls is not None:
        certificates = tmp_path / "tls"
        certificates.mkdir()
        tls = {"certificate": "metrics.crt", "key": "metrics.key", **tls}
        config["metrics"]["tls"] = {name: str(certificates / file) for name, file in tls.items()}
    from streamer.pipeline.checks import warnings

    found = [w for w in warnings(pipeline_config.load(write(tmp_path, config))) if w.startswith("metrics on ")]
    if warning is None:
        assert found == []
    else:
        assert len(found) == 1 and warning in found[0] and "Set metrics.tls with client_ca" in found[0]
