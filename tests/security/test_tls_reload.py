"""Certificate rotation without a restart: the listener serves the new certificate once
its files change, keeps the old one through a half-written rotation, and clients connect
throughout."""

from __future__ import annotations

import os
import socket
import ssl
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient
from tls_helpers import write_certificates

from shazamq.broker.security.tls_reload import CertificateReloader


def _pki(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    paths = {n: d / f"{n}.pem" for n in ("ca", "cert", "key")}
    write_certificates(paths["ca"], paths["cert"], paths["key"])
    return paths


def _rotate(src: dict[str, Path], dst: dict[str, Path], names: tuple[str, ...]) -> None:
    """Replace files the way a Secret volume does: a new file renamed over the old."""
    for n in names:
        tmp = dst[n].with_suffix(".new")
        tmp.write_bytes(src[n].read_bytes())
        os.replace(tmp, dst[n])


def _served_certificate(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw) as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return der


def _handshake(server: ssl.SSLContext) -> bytes:
    """A TLS handshake in memory against `server`; the certificate it presented."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(10):
        for i, (side, out, peer_in) in enumerate(((c, c_out, s_in), (srv, s_out, c_in))):
            if not done[i]:
                try:
                    side.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done):
            break
    der = c.getpeercert(binary_form=True)
    assert all(done) and der is not None
    return der


def _der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_reloader_loads_changed_files_and_keeps_the_old_on_a_bad_pair(tmp_path: Path) -> None:
    live, new, other = _pki(tmp_path / "live"), _pki(tmp_path / "new"), _pki(tmp_path / "o")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(live["cert"], live["key"])
    r = CertificateReloader(ctx, str(live["cert"]), str(live["key"]), str(live["ca"]))
    assert not r.check()  # nothing changed
    first = _der(live["cert"])
    _rotate(new, live, ("cert",))  # half-way: the new certificate beside the old key
    assert not r.check() and r.reloads == 0
    assert _handshake(ctx) == first  # the live context still holds the old pair
    assert not r.check()  # the same failed files are not tried again
    _rotate(new, live, ("key", "ca"))
    assert r.check() and r.reloads == 1
    assert not r.check()
    assert _handshake(ctx) == _der(new["cert"])
    _rotate(other, live, ("key",))  # a key that matches no certificate here: refused
    assert not r.check() and r.reloads == 1
    assert _handshake(ctx) == _der(new["cert"])  # the live pair is intact


def test_broker_serves_a_rotated_certificate_without_a_restart(broker_factory, tmp_path) -> None:
    live, new = _pki(tmp_path / "live"), _pki(tmp_path / "new")
    broker = broker_factory(
        security__tls__enabled=True,
        security__tls__cert_file=str(live["cert"]),
        security__tls__key_file=str(live["key"]),
        security__tls__reload_check_interval_ms=100,
    )
    first = _der(live["cert"])
    assert _served_certificate(broker.port) == first

    _rotate(new, live, ("cert",))  # a half-written rotation: still the old certificate
    time.sleep(0.5)  # several check intervals: what is asserted is that nothing changes
    assert _served_certificate(broker.port) == first

    _rotate(new, live, ("key", "ca"))
    rotated = _der(new["cert"])
    deadline = time.monotonic() + 20
    while _served_certificate(broker.port) != rotated:
        assert time.monotonic() < deadline, "the rotated certificate is never served"
        time.sleep(0.1)
    assert "TLS certificate reloaded" in broker.log_text()
    assert "cannot be loaded" in broker.log_text()

    # a client that trusts only the new CA connects and is answered
    admin = AdminClient(
        {
            "bootstrap.servers": broker.bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(new["ca"]),
            "ssl.endpoint.identification.algorithm": "none",
        }
    )
    assert admin.list_topics(timeout=20).brokers
