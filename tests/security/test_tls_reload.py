"""Certificate rotation without a restart: the listener serves the new certificate once
its files change, keeps the old one through a half-written rotation, and clients connect
throughout."""

from __future__ import annotations

import os
import socket
import ssl
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from tls_helpers import write_certificates, write_client_certificate

from shazamq.broker.security.tls_reload import CertificateReloader


def _pki(d: Path) -> dict[str, Path]:
    """A CA, a server pair it signed, and a client pair it signed (for mTLS)."""
    d.mkdir(parents=True, exist_ok=True)
    paths = {n: d / f"{n}.pem" for n in ("ca", "cert", "key", "ca-key", "client", "client-key")}
    write_certificates(
        paths["ca"],
        paths["cert"],
        paths["key"],
        ca_key_path=paths["ca-key"],
        ca_common_name=f"test CA {d.name}",
    )
    write_client_certificate(
        paths["ca"], paths["ca-key"], paths["client"], paths["client-key"], [("CN", "alice")]
    )
    return paths


def _server_context(files: dict[str, Path], *, mtls: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(files["cert"], files["key"])
    if mtls:
        ctx.load_verify_locations(files["ca"])
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _reloader(live: dict[str, Path], *, mtls: bool = False) -> CertificateReloader:
    names = ("cert", "key", "ca") if mtls else ("cert", "key")
    return CertificateReloader(
        _server_context(live, mtls=mtls),
        lambda: _server_context(live, mtls=mtls),
        [str(live[n]) for n in names],
    )


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


def _handshake(server: ssl.SSLContext, client_pair: tuple[Path, Path] | None = None) -> bytes:
    """A TLS handshake in memory against `server`; the certificate it presented. Raises
    `ssl.SSLError` when the server refuses the client's certificate."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    if client_pair is not None:
        client.load_cert_chain(*client_pair)
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


def test_reloader_serves_changed_files_and_keeps_the_old_on_a_bad_pair(tmp_path: Path) -> None:
    live, new, other = _pki(tmp_path / "live"), _pki(tmp_path / "new"), _pki(tmp_path / "o")
    r = _reloader(live)
    ctx = r.listener  # what the server was created with: every handshake starts there
    assert not r.check()  # nothing changed
    first = _der(live["cert"])
    _rotate(new, live, ("cert",))  # half-way: the new certificate beside the old key
    assert not r.check() and r.reloads == 0
    assert _handshake(ctx) == first  # the old pair is still served
    assert not r.check()  # the same failed files are not tried again
    _rotate(new, live, ("key", "ca"))
    assert r.check() and r.reloads == 1
    assert not r.check()
    assert _handshake(ctx) == _der(new["cert"])
    _rotate(other, live, ("key",))  # a key that matches no certificate here: refused
    assert not r.check() and r.reloads == 1
    assert _handshake(ctx) == _der(new["cert"])  # the served pair is intact


def test_a_ca_rotated_out_is_no_longer_trusted(tmp_path: Path) -> None:
    live, new = _pki(tmp_path / "live"), _pki(tmp_path / "new")
    old_client = (tmp_path / "old-client.pem", tmp_path / "old-client-key.pem")
    old_client[0].write_bytes(live["client"].read_bytes())
    old_client[1].write_bytes(live["client-key"].read_bytes())
    new_client = (new["client"], new["client-key"])
    r = _reloader(live, mtls=True)
    assert _handshake(r.listener, old_client) == _der(live["cert"])
    with pytest.raises(ssl.SSLError):
        _handshake(r.listener, new_client)  # not yet trusted

    _rotate(new, live, ("cert", "key", "ca"))
    assert r.check()
    assert _handshake(r.listener, new_client) == _der(new["cert"])
    # loading into the live context would have kept the old CA beside the new one
    with pytest.raises(ssl.SSLError):
        _handshake(r.listener, old_client)


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


def _mtls_admin(bootstrap: str, ca: Path, pair: tuple[Path, Path]) -> AdminClient:
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(ca),
            "ssl.certificate.location": str(pair[0]),
            "ssl.key.location": str(pair[1]),
            "ssl.endpoint.identification.algorithm": "none",
        }
    )


def test_broker_stops_trusting_a_rotated_out_ca(broker_factory, tmp_path) -> None:
    live, new = _pki(tmp_path / "live"), _pki(tmp_path / "new")
    old_ca = tmp_path / "old-ca.pem"
    old_ca.write_bytes(live["ca"].read_bytes())
    old_client = (tmp_path / "old-client.pem", tmp_path / "old-client-key.pem")
    old_client[0].write_bytes(live["client"].read_bytes())
    old_client[1].write_bytes(live["client-key"].read_bytes())
    broker = broker_factory(
        security__tls__enabled=True,
        security__tls__cert_file=str(live["cert"]),
        security__tls__key_file=str(live["key"]),
        security__tls__ca_file=str(live["ca"]),
        security__tls__reload_check_interval_ms=100,
    )
    assert _mtls_admin(broker.bootstrap, old_ca, old_client).list_topics(timeout=20).brokers

    _rotate(new, live, ("cert", "key", "ca"))
    deadline = time.monotonic() + 20
    while _served_certificate(broker.port) != _der(new["cert"]):
        assert time.monotonic() < deadline, "the rotated certificate is never served"
        time.sleep(0.1)
    new_client = (new["client"], new["client-key"])
    assert _mtls_admin(broker.bootstrap, new["ca"], new_client).list_topics(timeout=20).brokers
    # the old client trusts both CAs, so it can only fail on the broker refusing its
    # certificate: the rotated-out CA no longer signs anything the broker accepts
    both = tmp_path / "both-cas.pem"
    both.write_bytes(old_ca.read_bytes() + new["ca"].read_bytes())
    with pytest.raises(KafkaException):
        _mtls_admin(broker.bootstrap, both, old_client).list_topics(timeout=3)
    assert _mtls_admin(broker.bootstrap, both, new_client).list_topics(timeout=20).brokers
