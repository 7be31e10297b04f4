"""The metadata quorum over TLS: voters and an observer replicate over mutually authenticated
TLS; a node with a certificate from another CA, or without TLS at all, can neither join nor
inject records while the others go on; members restart and reconnect.

Certificates are made here: one CA for the cluster, one for outsiders, a certificate per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import pathlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shazamq.broker.cluster.quorum import SNAPSHOT_FILE, MetadataQuorum, QuorumUnavailable

from .conftest import ClusterFactory
from .test_quorum import SECRET, KeyValues, eventually, free_port, put

pytestmark = pytest.mark.timeout(60)


# --- certificates ------------------------------------------------------------------------


class Authority:
    """A CA writing PEM files: its own certificate and keys/certificates it signs."""

    def __init__(self, directory: pathlib.Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = directory / f"{name}-ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str) -> tuple[pathlib.Path, pathlib.Path]:
        """(cert_file, key_file) for a node: client and server use, 127.0.0.1 as its SAN."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file = self.directory / f"{self.name}-{name}.pem"
        key_file = self.directory / f"{self.name}-{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_file, key_file

    def contexts(self, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        cert_file, key_file = self.issue(name)
        return MetadataQuorum.tls_contexts(str(cert_file), str(key_file), str(self.ca_file))


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


Authorities = tuple[Authority, Authority, Authority]


@pytest.fixture(scope="module")
def authorities(tmp_path_factory: pytest.TempPathFactory) -> Authorities:
    """The cluster's CA and two unrelated ones."""
    directory = tmp_path_factory.mktemp("pki")
    return (
        Authority(directory, "cluster"),
        Authority(directory, "outsider"),
        Authority(directory, "stranger"),
    )


# --- members -----------------------------------------------------------------------------


class Member:
    """One quorum member (TLS or not) and what its callbacks saw on the event loop."""

    def __init__(
        self,
        node_id: int,
        voters: dict[int, tuple[str, int]],
        journal_dir: pathlib.Path,
        tls: tuple[ssl.SSLContext, ssl.SSLContext] | None,
    ) -> None:
        self.node_id = node_id
        self.journal_dir = journal_dir
        self.machine = KeyValues()  # applied in pysyncobj's thread
        self.view = KeyValues()  # the event loop's copy, fed by on_apply/on_restore
        self.applied: list[bytes] = []
        self.leadership: list[bool] = []
        self.quorum = MetadataQuorum(
            node_id=node_id,
            voters=voters,
            bind_host="127.0.0.1",
            journal_dir=journal_dir,
            secret=SECRET,  # the same secret everywhere: TLS alone must keep outsiders out
            machine=self.machine,
            on_apply=self._on_apply,
            on_restore=self.view.restore,
            on_leadership=self.leadership.append,
            tls=tls,
        )

    def _on_apply(self, record: bytes) -> None:
        self.applied.append(record)
        self.view.apply(record)


class Cluster:
    """Voters 1..3 on loopback; members come and go, their journal dirs stay."""

    def __init__(self, root: pathlib.Path, ca: Authority) -> None:
        self.root = root
        self.ca = ca
        self.voters = {nid: ("127.0.0.1", free_port()) for nid in (1, 2, 3)}
        self.members: dict[int, Member] = {}

    async def start(
        self, node_id: int, tls: tuple[ssl.SSLContext, ssl.SSLContext] | str | None = "cluster"
    ) -> Member:
        """Start a member; by default with a certificate from the cluster's CA."""
        contexts = self.ca.contexts(f"node-{node_id}") if tls == "cluster" else tls
        assert not isinstance(contexts, str)
        member = Member(node_id, self.voters, self.root / f"node-{node_id}", contexts)
        await member.quorum.start()
        self.members[node_id] = member
        return member

    async def stop(self, node_id: int) -> Member:
        member = self.members.pop(node_id)
        await member.quorum.stop()
        return member

    async def stop_all(self) -> None:
        await asyncio.gather(*(m.quorum.stop() for m in self.members.values()))
        self.members.clear()

    async def leader(self, among: list[int]) -> Member:
        members = [self.members[nid] for nid in among]

        def agreed() -> bool:
            leaders = [m for m in members if m.quorum.is_leader]
            return len(leaders) == 1 and all(
                m.quorum.leader_id == leaders[0].node_id for m in members
            )

        await eventually(agreed, f"one leader that {among} agree on")
        return next(m for m in members if m.quorum.is_leader)

    def converged(self, among: list[int]) -> bool:
        members = [self.members[nid] for nid in among]
        first = members[0].view.data
        return all(m.view.data == first and m.machine.data == first for m in members)


@pytest.fixture
async def cluster(tmp_path: pathlib.Path, authorities: Authorities) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, authorities[0])
    try:
        yield c
    finally:
        await c.stop_all()


def _records(n: int, prefix: str) -> dict[str, str]:
    return {f"{prefix}{i}": f"value-{i}" for i in range(n)}


async def _assert_outsiders_shut_out(
    cluster: Cluster, good: list[int], outsiders: list[Member], *, isolated: bool = True
) -> None:
    """The `good` voters elect and commit; no outsider applies, forges or learns anything.

    `isolated`: the outsiders cannot reach one another either (otherwise an outside voter
    counts an outside observer as a peer and runs hopeless elections).
    """
    leader = await cluster.leader(among=good)
    assert await leader.quorum.propose(put("real")) == 0
    for outsider in outsiders:
        with pytest.raises(QuorumUnavailable):
            await outsider.quorum.propose(put(f"forged-{outsider.node_id}"), timeout=1.0)
    assert await cluster.members[good[-1]].quorum.propose(put("real-2")) == 0
    await eventually(lambda: cluster.converged(good), "the honest voters agree")
    assert cluster.members[good[0]].view.data == {"real": "v", "real-2": "v"}
    for outsider in outsiders:
        assert outsider.applied == [] and outsider.view.data == {} and outsider.machine.data == {}
        assert outsider.quorum.leader_id is None and not outsider.quorum.is_leader
        assert outsider.leadership == []
        status = outsider.quorum.status()
        if isolated:
            assert status["voters_connected"] == (1 if outsider.quorum.is_voter else 0)
            assert status["term"] == 0  # it never reached a peer to start an election with
        else:
            assert status["voters_connected"] == 1  # only the outside voter: never a good one
    assert all(cluster.members[n].quorum.status()["voters_connected"] == len(good) for n in good)


# --- tests -------------------------------------------------------------------------------


async def test_voters_and_observer_replicate_over_tls(
    cluster: Cluster, authorities: Authorities
) -> None:
    for nid in (1, 2, 3, 9):
        await cluster.start(nid)
    leader = await cluster.leader(among=[1, 2, 3, 9])
    expected = _records(20, "k")
    results = await asyncio.gather(*(leader.quorum.propose(put(k, v)) for k, v in expected.items()))
    assert results == [0] * len(expected)
    follower = next(m for nid, m in cluster.members.items() if nid != 9 and m is not leader)
    assert await follower.quorum.propose(put("from-follower")) == 0
    assert await cluster.members[9].quorum.propose(put("from-observer")) == 0
    expected |= {"from-follower": "v", "from-observer": "v"}
    await eventually(lambda: cluster.converged([1, 2, 3, 9]), "all four members converge")
    assert cluster.members[9].view.data == expected
    # every member applied the same records in the same order
    orders = {tuple(m.applied) for m in cluster.members.values()}
    assert len(orders) == 1 and len(next(iter(orders))) == len(expected)

    # The wire is TLS with client certificates: a client with a cluster certificate gets a
    # session, one without a certificate is refused by the voter.
    await asyncio.to_thread(_probe, cluster.voters[1], authorities[0], "node-1")


def _probe(address: tuple[str, int], ca: Authority, name: str) -> None:
    """The quorum port speaks TLS as `name` and refuses a client without a certificate."""
    _, client = ca.contexts("probe")
    with (
        socket.create_connection(address, timeout=5) as raw,
        client.wrap_socket(raw) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        peer = tls.getpeercert()
        assert peer and ("commonName", name) in peer["subject"][0]
    anonymous = ssl.create_default_context(cafile=str(ca.ca_file))
    anonymous.check_hostname = False
    with (
        socket.create_connection(address, timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
        anonymous.wrap_socket(raw) as tls,
    ):
        # TLS 1.3: the client's handshake ends first; it hears of the refusal on its read
        tls.sendall(b"\0" * 8)
        if not tls.recv(1):
            raise ConnectionError("closed by the voter")


async def test_certificate_from_another_ca_cannot_join_or_inject(
    cluster: Cluster, authorities: Authorities
) -> None:
    await cluster.start(1)
    await cluster.start(2)
    # A listed voter and an observer with the right secret but certificates of other CAs
    # (two different ones: with the same CA they would reach each other).
    impostor = await cluster.start(3, tls=authorities[1].contexts("node-3"))
    observer = await cluster.start(8, tls=authorities[2].contexts("node-8"))
    await _assert_outsiders_shut_out(cluster, [1, 2], [impostor, observer])

    # the real voter 3 takes its place and catches up; the cluster goes on with all three
    await cluster.stop(3)
    await cluster.start(3)
    assert await cluster.members[1].quorum.propose(put("after")) == 0
    await eventually(lambda: cluster.converged([1, 2, 3]), "voter 3 catches up")
    assert cluster.members[3].view.data == {"real": "v", "real-2": "v", "after": "v"}
    assert observer.applied == []


async def test_plaintext_node_cannot_talk_to_tls_nodes(cluster: Cluster) -> None:
    await cluster.start(1)
    await cluster.start(2)
    plain_voter = await cluster.start(3, tls=None)
    plain_observer = await cluster.start(9, tls=None)
    # The two plaintext members do reach each other (same secret): the control showing that
    # only the missing TLS keeps them from the others.
    await eventually(
        lambda: plain_observer.quorum.status()["voters_connected"] == 1,
        "the plaintext observer reaches the plaintext voter",
    )
    await _assert_outsiders_shut_out(cluster, [1, 2], [plain_voter, plain_observer], isolated=False)


async def test_restarts_over_tls(cluster: Cluster) -> None:
    for nid in (1, 2, 3, 9):
        await cluster.start(nid)
    leader = await cluster.leader(among=[1, 2, 3, 9])
    for key in ("a", "b"):
        assert await leader.quorum.propose(put(key)) == 0

    # a follower and the observer go away and come back: they reconnect and catch up
    follower = next(nid for nid in (1, 2, 3) if nid != leader.node_id)
    await cluster.stop(follower)
    await cluster.stop(9)
    assert await leader.quorum.propose(put("c")) == 0
    await cluster.start(follower)
    await cluster.start(9)
    await eventually(lambda: cluster.converged([1, 2, 3, 9]), "the restarted members catch up")
    assert cluster.members[9].view.data == {"a": "v", "b": "v", "c": "v"}

    # every member stops; all come back from their journals and commit again
    await cluster.stop_all()
    for nid in (1, 2, 3, 9):
        await cluster.start(nid)
    await eventually(lambda: cluster.converged([1, 2, 3, 9]), "the journals are replayed")
    assert await cluster.members[9].quorum.propose(put("d"), timeout=10.0) == 0
    await eventually(lambda: cluster.converged([1, 2, 3, 9]), "the new record is everywhere")
    assert all(
        m.view.data == {"a": "v", "b": "v", "c": "v", "d": "v"} for m in cluster.members.values()
    )


async def test_large_records_and_a_snapshot_transfer_over_tls(cluster: Cluster) -> None:
    # Records of hundreds of KiB overflow the 64 KiB socket buffers, so TLS writes stall
    # ("want write") and resume, and reads come in many TLS records.
    for nid in (1, 2, 3):
        await cluster.start(nid)
    leader = await cluster.leader(among=[1, 2, 3])
    follower = next(m for m in cluster.members.values() if m is not leader)
    big = {f"big{i}": os.urandom(200_000).hex() for i in range(6)}
    results = await asyncio.gather(
        *(leader.quorum.propose(put(k, v), timeout=15.0) for k, v in big.items())
    )
    assert results == [0] * len(big)
    await eventually(lambda: cluster.converged([1, 2, 3]), "the big records are everywhere")
    await cluster.stop(follower.node_id)

    missed = {f"missed{i}": os.urandom(200_000).hex() for i in range(4)}
    for k, v in missed.items():
        assert await leader.quorum.propose(put(k, v), timeout=15.0) == 0
    survivors = list(cluster.members)
    await eventually(lambda: cluster.converged(survivors), "both survivors have every record")
    # both compact, so whichever leads when the follower returns must send it a snapshot
    for nid in survivors:
        cluster.members[nid].quorum.request_snapshot()
    await eventually(
        lambda: all(
            (m.journal_dir / SNAPSHOT_FILE).exists()
            and (m.quorum.status()["log_entries"] or 99) <= 3
            for m in cluster.members.values()
        ),
        "the survivors compacted their logs",
    )
    back = await cluster.start(follower.node_id)
    await eventually(lambda: cluster.converged([1, 2, 3]), "the follower installs the snapshot")
    assert back.view.data == big | missed
    assert back.machine.restores >= 1  # it could only catch up from the snapshot


def test_contexts_without_peer_verification_are_refused(
    tmp_path: pathlib.Path, authorities: Authorities
) -> None:
    server, client = authorities[0].contexts("lax")
    client.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="require peer certificates"):
        MetadataQuorum(
            node_id=1,
            voters={1: ("127.0.0.1", free_port())},
            bind_host="127.0.0.1",
            journal_dir=tmp_path,
            secret=SECRET,
            machine=KeyValues(),
            on_apply=lambda record: None,
            on_restore=lambda data: None,
            on_leadership=lambda leading: None,
            tls=(server, client),
        )


# --- brokers -----------------------------------------------------------------------------


def test_brokers_with_quorum_tls_form_a_cluster(
    cluster_factory: ClusterFactory, authorities: Authorities
) -> None:
    """`cluster.quorum_tls` end to end: the brokers' metadata quorum runs over TLS (the Kafka
    listener stays plaintext) and a topic created through one broker reaches all three."""
    ca = authorities[0]

    def extra(node_id: int) -> dict[str, Any]:
        cert_file, key_file = ca.issue(f"broker-{node_id}")
        tls = {"cert_file": str(cert_file), "key_file": str(key_file), "ca_file": str(ca.ca_file)}
        return {"cluster": {"quorum_tls": True}, "security": {"tls": tls}}

    cluster = cluster_factory.start(3, netns=False, extra_config=extra)

    def admin(bootstrap: str) -> AdminClient:
        return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})

    def wait(check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(KafkaException):  # a broker still starting up
                if check():
                    return
            assert time.monotonic() < deadline, f"not within 30s: {what}"
            time.sleep(0.2)

    # registration goes through the quorum: every broker sees all three
    wait(
        lambda: all(len(admin(b.bootstrap).list_topics(timeout=5).brokers) == 3 for b in cluster),
        "every broker sees three brokers",
    )
    client = admin(cluster.bootstrap)
    client.create_topics([NewTopic("over-tls", 3, 3)])["over-tls"].result(timeout=20)

    def everywhere() -> bool:
        for broker in cluster:
            meta = admin(broker.bootstrap).list_topics("over-tls", timeout=5).topics.get("over-tls")
            if meta is None or meta.error is not None or len(meta.partitions) != 3:
                return False
            if any(len(p.replicas) != 3 for p in meta.partitions.values()):
                return False
        return True

    wait(everywhere, "the topic reaches every broker")
    for broker in cluster:
        _probe(broker.config.cluster.voter_map()[broker.node_id], ca, f"broker-{broker.node_id}")
