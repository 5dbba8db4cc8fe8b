"""TLS for both transports, from one set of files: `--tls-cert` and `--tls-key` (the server's chain
and key, PEM), and `--tls-client-ca` to require client certificates signed by that CA (mTLS).

The files are read and checked once at start — readable, PEM, the key matching the certificate, the
CA loadable — so a mistake stops the start with one line naming the file, not a failed handshake
later. gRPC gets `grpc.ssl_server_credentials`, uvicorn the same files.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import StartError


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path
    client_ca: Path | None  # mTLS where set

    def grpc_credentials(self) -> Any:
        import grpc

        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    def uvicorn_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.client_ca:
            options |= {"ssl_ca_certs": str(self.client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return options


def load_tls(cert: str, key: str, client_ca: str) -> Tls | None:
    """The checked TLS files, or None where TLS is off; a bad set raises StartError naming the file."""
    if not (cert or key or client_ca):
        return None
    if not (cert and key):
        raise StartError("TLS needs both --tls-cert and --tls-key")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path and not Path(path).is_file():
            raise StartError(f"{flag} {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise StartError(f"--tls-cert {cert} and --tls-key {key} do not go together ({e.reason or e})") from e
    except OSError as e:
        raise StartError(f"--tls-cert {cert} / --tls-key {key}: unreadable ({e})") from e
    if client_ca:
        try:
            context.load_verify_locations(client_ca)
        except (ssl.SSLError, OSError) as e:
            raise StartError(f"--tls-client-ca {client_ca}: not a readable CA certificate ({e})") from e
    return Tls(Path(cert), Path(key), Path(client_ca) if client_ca else None)
