"""The embedded broker's security: TLS, SCRAM users (one principal per processor) and least-privilege ACLs.

``BrokerSecrets`` keeps what the secured broker and its clients share in ``<state>/kafka/security`` (0700,
files 0600): a CA and the broker's certificate (made with ``cryptography``), the broker key's password and one
random SCRAM-SHA-512 password per principal. ``acls`` derives each principal's ACLs from the topology
(``processors.topology``): a processor reads its sources and side inputs, writes its output topics and the
dead-letter topic, and owns its consumer group, its state topics and its transactional ids; nothing else.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from streams.config import KafkaConfig

ADMIN = "sdg-admin"  # the broker itself, `sdg broker start`, and the command line (topics, publish, console)
READER = "sdg-reader"  # trainers and `sdg subscribe`: read the catalog topics, write nothing
MECHANISM: Final = "SCRAM-SHA-512"


def principal(processor: str) -> str:
    """The SCRAM user a processor (``sdg run NAME``) connects as."""
    return f"sdg-{processor}"


def principals() -> list[str]:
    from processors.topology import PROCESSORS

    return [ADMIN, READER, *(principal(name) for name in PROCESSORS if name != "passthrough")]


def private_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, owner-only (0600) from the first byte: it may hold secrets."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


@dataclass(frozen=True)
class BrokerSecrets:
    """The CA, the broker's key and certificate, and every principal's password, made once per state directory."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def keystore(self) -> Path:
        """The broker's key and certificate chain, a password-protected PKCS#12 key store (Java 17 reads no
        PBES2-encrypted PEM keys)."""
        return self.folder / "broker.p12"

    @property
    def passwords_file(self) -> Path:
        return self.folder / "passwords.json"

    def ensure(self, *hosts: str) -> BrokerSecrets:
        """Make what is missing: passwords for every principal (new processors get theirs), the CA and a
        certificate for ``hosts`` (and localhost)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        stored = self._passwords()
        wanted = {name: stored.get(name) or secrets.token_urlsafe(24) for name in [*principals(), "broker-key"]}
        if wanted != stored:
            private_write(self.passwords_file, json.dumps(wanted, indent=2).encode())
        if not (self.ca.exists() and self.keystore.exists()):
            self._certificates(hosts, wanted["broker-key"])
        return self

    def password(self, user: str) -> str:
        try:
            return self._passwords()[user]
        except KeyError:
            raise KeyError(f"no password for {user!r} in {self.passwords_file}; start the secured broker once "
                           "(sdg broker start) to make them") from None

    def _passwords(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.passwords_file.read_text()))
        except FileNotFoundError:
            return {}

    def _certificates(self, hosts: tuple[str, ...], key_password: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import pkcs12
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.UTC)
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sdg-edge local CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=3650))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        names: list[x509.GeneralName] = [x509.DNSName("localhost")]
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=825))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                      x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        private_write(self.keystore, pkcs12.serialize_key_and_certificates(
            b"broker", key, cert, [ca], serialization.BestAvailableEncryption(key_password.encode())))
        private_write(self.ca, ca.public_bytes(serialization.Encoding.PEM))


def broker_properties(secrets_: BrokerSecrets, host: str, port: int, controller_port: int, *,
                      bind: str | None = None) -> dict[str, str]:
    """``server.properties`` of a secured node advertised as ``host`` and listening on ``bind`` (``host`` by
    default): SASL_SSL (SCRAM-SHA-512) for clients and between brokers, SASL_PLAINTEXT (PLAIN: KRaft controllers
    do not take SCRAM) for the controller (loopback on one machine, the cluster's private network in compose),
    the standard authorizer, and nothing allowed without an ACL."""
    listen = bind if bind is not None else host
    admin = secrets_.password(ADMIN)
    scram = f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN}" password="{admin}";'
    plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
             f'username="{ADMIN}" password="{admin}" user_{ADMIN}="{admin}";')
    return {
        "listeners": f"SASL_SSL://{listen}:{port},CONTROLLER://{listen}:{controller_port}",
        "advertised.listeners": f"SASL_SSL://{host}:{port}",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": plain,
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(secrets_.keystore),
        "ssl.keystore.password": secrets_.password("broker-key"),
        "ssl.key.password": secrets_.password("broker-key"),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(secrets_.ca),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{ADMIN}",
        "allow.everyone.if.no.acl.found": "false",
    }


def scram_bootstrap(secrets_: BrokerSecrets) -> list[str]:
    """``kafka-storage format`` arguments that create the admin's SCRAM credential with the cluster."""
    return ["--add-scram", f"{MECHANISM}=[name={ADMIN},password={secrets_.password(ADMIN)}]"]


def client_properties(secrets_: BrokerSecrets, user: str = ADMIN) -> dict[str, str]:
    """A Java client's settings (``--command-config`` of Kafka's own tools) that reach the secured cluster as
    ``user``."""
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": MECHANISM,
        "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
                            f'username="{user}" password="{secrets_.password(user)}";',
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(secrets_.ca),
    }


Acl = tuple[str, str, str, str]  # (resource type, name, pattern: LITERAL or PREFIXED, operation)


def acls(name: str) -> list[Acl]:
    """What the principal ``name`` may do, least first: from the topology for a processor's principal."""
    from processors.topology import PROCESSORS
    from streams.dead_letter import DLQ_TOPIC

    if name == READER:
        return [("TOPIC", "sdg.", "PREFIXED", "READ"), ("GROUP", "sdg-subscribe-", "PREFIXED", "READ"),
                ("GROUP", "sdg-train", "PREFIXED", "READ")]
    spec = PROCESSORS[name.removeprefix("sdg-")]
    own = name  # principal(processor): its group, and the prefix of its state topics and transactional ids
    granted: list[Acl] = [("TOPIC", t, "LITERAL", "READ") for t in (*spec.sources, *spec.side_inputs)]
    granted += [("TOPIC", t, "LITERAL", "WRITE") for t in (*spec.output_topics(), DLQ_TOPIC)]
    granted += [("GROUP", own, "PREFIXED", "READ"), ("TOPIC", own, "PREFIXED", "ALL"),
                ("TRANSACTIONAL_ID", own, "PREFIXED", "ALL")]
    if spec.side_inputs:  # a generator's rate caps: a group of its own per worker
        granted.append(("GROUP", "sdg-control-", "PREFIXED", "READ"))
    return granted


def apply(kafka: KafkaConfig, secrets_: BrokerSecrets, *, timeout_s: float = 30) -> int:
    """Create (or reset) every principal's SCRAM credential and its ACLs, as the admin; returns the ACL count.

    Idempotent: the broker keeps one credential per user and one copy of each ACL."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialAlteration,
        UserScramCredentialUpsertion,
    )

    from streams.admin import admin_client

    client = admin_client(kafka)
    granted = [user for user in principals() if user != ADMIN]  # the admin is a super user
    scram = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    users: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(user, scram, secrets_.password(user).encode()) for user in granted]
    for future in client.alter_user_scram_credentials(users).values():
        future.result(timeout=timeout_s)
    bindings = [AclBinding(getattr(ResourceType, kind), resource, getattr(ResourcePatternType, pattern),
                           f"User:{user}", "*", getattr(AclOperation, operation), AclPermissionType.ALLOW)
                for user in granted for kind, resource, pattern, operation in acls(user)]
    for future in client.create_acls(bindings, request_timeout=timeout_s).values():
        future.result(timeout=timeout_s)
    return len(bindings)
