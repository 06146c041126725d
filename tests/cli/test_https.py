"""HTTPS served by flexsync itself (FLEXSYNC_TLS_CERT_FILE / FLEXSYNC_TLS_KEY_FILE): Stripe sends live-mode events
only to https:// endpoints. The webhook URL it prints is then https://, the API and Stripe's deliveries work over
TLS, and certificate files that cannot be used stop `serve` with one line saying why."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.cli_support import run_flexsync
from tests.support import DatabaseUnderTest, free_port, server_env, wait_for
from tests.webhook_support import WEBHOOK_SECRET, sign, stripe_customer, stripe_event


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its private key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def database(tmp_path: Path) -> DatabaseUnderTest:
    # `serve` migrates it; the backend makes no difference to how the server speaks TLS.
    return DatabaseUnderTest(url=f"sqlite+aiosqlite:///{tmp_path / 'https.db'}", backend="sqlite")


def serve(database: DatabaseUnderTest, folder: Path, port: int, **tls: str) -> subprocess.Popen[bytes]:
    with (folder / "serve.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "flexsync", "serve", "--port", str(port), "--no-worker"],
            cwd=folder,
            env=server_env(database, FLEXSYNC_LOG_FORMAT="console", **tls),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_serve_speaks_https_and_prints_an_https_webhook_url(database: DatabaseUnderTest, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "server")
    port = free_port()
    process = serve(database, tmp_path, port, FLEXSYNC_TLS_CERT_FILE=str(cert), FLEXSYNC_TLS_KEY_FILE=str(key))
    try:
        base_url = f"https://127.0.0.1:{port}"
        trusted = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=base_url, verify=trusted, timeout=30) as client:

            def healthy() -> bool:
                assert process.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(healthy, what="serve to answer over HTTPS")
            printed = (tmp_path / "serve.log").read_text()
            api_key = re.search(r"API key:\s+(\S+)", printed)
            webhook_url = re.search(r"Stripe webhook URL: (\S+)", printed)
            assert api_key and webhook_url, printed
            assert webhook_url[1].startswith(f"{base_url}/v1/webhooks/stripe/")

            client.headers["x-api-key"] = api_key[1]
            keys = {"secret_key": "sk_test_https", "publishable_key": "pk_test_https", "webhook_secret": WEBHOOK_SECRET}
            connection = client.post("/v1/connections", json={"name": "Stripe", **keys})
            assert connection.status_code == 201, connection.text
            assert connection.json()["webhook_url"] == webhook_url[1]

            # Stripe's delivery, to the URL it was given, over TLS.
            event = json.dumps(stripe_event("customer.created", stripe_customer(name="Ada"))).encode()
            delivered = httpx.post(
                webhook_url[1], content=event, headers={"Stripe-Signature": sign(event)}, verify=trusted, timeout=30
            )
            assert delivered.status_code == 200, delivered.text
            assert delivered.json()["status"] == "applied"
            assert [c["name"] for c in client.get("/v1/customers").json()["items"]] == ["Ada"]

        # Plain HTTP on the same port is not served.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    finally:
        process.terminate()
        process.wait(15)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ("cert only", "FLEXSYNC_TLS_CERT_FILE and FLEXSYNC_TLS_KEY_FILE go together"),
        ("missing cert", "FLEXSYNC_TLS_CERT_FILE: No such file or directory"),
        ("another key", "does not belong to the certificate"),
        ("not PEM", "must hold a PEM certificate"),
    ],
)
def test_certificate_files_that_cannot_serve_https_stop_serve_with_one_line(
    database: DatabaseUnderTest, tmp_path: Path, files: str, expected: str
) -> None:
    cert, key = self_signed(tmp_path, "server")
    _, other_key = self_signed(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    tls = {
        "cert only": {"FLEXSYNC_TLS_CERT_FILE": str(cert)},
        "missing cert": {"FLEXSYNC_TLS_CERT_FILE": str(tmp_path / "nope.pem"), "FLEXSYNC_TLS_KEY_FILE": str(key)},
        "another key": {"FLEXSYNC_TLS_CERT_FILE": str(cert), "FLEXSYNC_TLS_KEY_FILE": str(other_key)},
        "not PEM": {"FLEXSYNC_TLS_CERT_FILE": str(garbage), "FLEXSYNC_TLS_KEY_FILE": str(key)},
    }[files]
    completed = run_flexsync(["serve", "--port", str(free_port())], env=server_env(database, **tls), cwd=tmp_path)
    assert completed.returncode == 1
    message = " ".join(completed.stderr.split())
    assert expected in message, completed.stderr
    assert "Traceback" not in completed.stderr
    assert "BEGIN" not in completed.stderr  # nothing of the files' contents
