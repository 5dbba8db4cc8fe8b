"""TLS, mTLS and scoped API keys, the same on both transports, and safe defaults: real servers on
127.0.0.1, certificates generated here (a CA, a server certificate for 127.0.0.1, client
certificates from that CA and from another)."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from runtime.client import TesseraClient
from runtime.keys import client_of_key, new_key
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from tests.conftest import REPO_ROOT
from tests.helpers import issue, write_pem
from tests.runtime.conftest import Server

x509 = pytest.importorskip("cryptography.x509", reason="the dev extra's cryptography is not installed")
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by another CA
    stranger_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")

    def write(name: str, cert: Any, key: Any) -> tuple[Path, Path]:
        write_pem(root / f"{name}.pem", root / f"{name}.key", cert, key)
        return root / f"{name}.pem", root / f"{name}.key"

    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca, other = (
        issue("tessera test CA", ca_key, None, None, ca=True),
        issue("another CA", other_key, None, None, ca=True),
    )
    ca_pem, _ = write("ca", ca, ca_key)
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("server", "client", "stranger")}
    server = write("server", issue("server", keys["server"], ca, ca_key), keys["server"])
    client = write("client", issue("client", keys["client"], ca, ca_key), keys["client"])
    stranger = write("stranger", issue("stranger", keys["stranger"], other, other_key), keys["stranger"])
    return Pki(ca_pem, *server, *client, *stranger)


def tls_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """An HTTP client's TLS: trusting `ca`, presenting `cert` where given."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def test_tls_refuses_plaintext_and_serves_tls_on_both_transports(
    bundle: Path, pki: Pki, tmp_path: Path
) -> None:
    s = Server(
        bundle, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), data_dir=tmp_path
    )
    try:
        assert s.http.startswith("https://")
        with TesseraClient(s.target, 10, tls_ca=pki.ca) as secure:
            secure.wait_ready()
            assert secure.embed_texts(["over TLS"]).shape == (1, 16)
        with TesseraClient(s.target, 5) as plain:
            assert refused(lambda: plain.info()).code() == grpc.StatusCode.UNAVAILABLE
        with httpx.Client(base_url=s.http, verify=tls_context(pki.ca), timeout=30) as http:
            assert http.post("/v1/embed", json={"items": [{"text": "over TLS"}]}).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(s.http.replace("https", "http") + "/readyz", timeout=5)
        assert any("; TLS, no keys)" in line for line in s.lines)
    finally:
        assert s.stop() == 0


def test_mtls_refuses_clients_without_a_certificate_from_its_ca(
    bundle: Path, pki: Pki, tmp_path: Path
) -> None:
    flags = (
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
    )
    s = Server(bundle, *flags, data_dir=tmp_path)
    try:
        with TesseraClient(
            s.target, 10, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key
        ) as ok:
            ok.wait_ready()
            assert ok.embed_texts(["mutual"]).shape == (1, 16)
        for cert, key in ((None, None), (pki.stranger_cert, pki.stranger_key)):
            with TesseraClient(s.target, 5, tls_ca=pki.ca, tls_cert=cert, tls_key=key) as client:
                assert refused(lambda c=client: c.info()).code() == grpc.StatusCode.UNAVAILABLE
        with httpx.Client(
            base_url=s.http, verify=tls_context(pki.ca, pki.client_cert, pki.client_key), timeout=30
        ) as http:
            assert http.get("/v1/info").status_code == 200
        for pair in ((None, None), (pki.stranger_cert, pki.stranger_key)):
            with pytest.raises(httpx.HTTPError):
                httpx.get(s.http + "/v1/info", verify=tls_context(pki.ca, *pair), timeout=5)
    finally:
        assert s.stop() == 0


def add_key(path: Path, scopes: str) -> str:
    cmd = [sys.executable, "-m", "runtime", "keys", "add", "--file", str(path), "--scopes", scopes]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()


GRPC_CALLS: dict[str, tuple[str, Callable[[Any], object]]] = {  # method -> (scope, a call needing it)
    "Embed": ("read", lambda s: s.Embed(pb.EmbedRequest(items=[pb.Item(text="x")]), timeout=10)),
    "EmbedStream": (
        "read",
        lambda s: list(s.EmbedStream(iter([pb.EmbedRequest(items=[pb.Item(text="x")])]), timeout=10)),
    ),
    "Lookup": ("read", lambda s: s.Lookup(pb.LookupRequest(items=[pb.Item(text="x")]), timeout=10)),
    "Info": ("read", lambda s: s.Info(pb.InfoRequest(), timeout=10)),
    "ListCollections": ("read", lambda s: s.ListCollections(pb.ListCollectionsRequest(), timeout=10)),
    "Search": (
        "read",
        lambda s: s.Search(
            pb.SearchRequest(collection="keyed", query=pb.Item(text="x"), top_k=1), timeout=10
        ),
    ),
    "Count": ("read", lambda s: s.Count(pb.CountRequest(collection="keyed"), timeout=10)),
    "Get": ("read", lambda s: s.Get(pb.GetRequest(collection="keyed", ids=["r"]), timeout=10)),
    "ListRecords": ("read", lambda s: s.ListRecords(pb.ListRecordsRequest(collection="keyed"), timeout=10)),
    "Upsert": (
        "write",
        lambda s: s.Upsert(
            pb.UpsertRequest(collection="keyed", records=[pb.Record(id="r", content=pb.Item(text="x"))]),
            timeout=10,
        ),
    ),
    "Delete": ("write", lambda s: s.Delete(pb.DeleteRequest(collection="keyed", ids=["r"]), timeout=10)),
    "CreateCollection": (
        "admin",
        lambda s: s.CreateCollection(pb.CreateCollectionRequest(name="keyed2"), timeout=10),
    ),
    "DropCollection": (
        "admin",
        lambda s: s.DropCollection(pb.DropCollectionRequest(name="keyed2"), timeout=10),
    ),
}
HTTP_CALLS: dict[str, tuple[str, str, str, Any]] = {  # route -> (scope, verb, path, body)
    "embeddings": ("read", "POST", "/v1/embeddings", {"input": "x"}),
    "embed": ("read", "POST", "/v1/embed", {"items": [{"text": "x"}]}),
    "lookup": ("read", "POST", "/v1/lookup", {"items": [{"text": "x"}]}),
    "info": ("read", "GET", "/v1/info", None),
    "list": ("read", "GET", "/v1/collections", None),
    "search": ("read", "POST", "/v1/collections/keyed/search", {"query": {"text": "x"}}),
    "count": ("read", "POST", "/v1/collections/keyed/count", {}),
    "get": ("read", "POST", "/v1/collections/keyed/get", {"ids": ["h"]}),
    "list_records": ("read", "POST", "/v1/collections/keyed/list", {}),
    "upsert": (
        "write",
        "POST",
        "/v1/collections/keyed/records",
        {"records": [{"id": "h", "item": {"text": "x"}}]},
    ),
    "delete": ("write", "POST", "/v1/collections/keyed/delete", {"ids": ["h"]}),
    "create": ("admin", "POST", "/v1/collections", {"name": "keyed3"}),
    "drop": ("admin", "DELETE", "/v1/collections/keyed3", None),
}


def test_admission_knows_a_keyed_client_by_its_key_id_and_never_its_secret() -> None:
    """With keys on, fair queueing and the heavy-read rate keep one history per key, whatever
    connection a request came on (runtime/admission.py); without keys, per connection."""
    from runtime import http_api

    key, entry = new_key(["read"])
    secret = key.rpartition("_")[2]
    scope = {"headers": [(b"authorization", f"Bearer {key}".encode())], "client": ("127.0.0.1", 50123)}
    other_connection = {**scope, "client": ("127.0.0.1", 50124)}
    assert http_api.client_of(scope, keyed=True) == http_api.client_of(other_connection, keyed=True)
    assert http_api.client_of(scope, keyed=True) == client_of_key(key) == f"key {entry.id}"
    assert secret not in client_of_key(key)
    assert http_api.client_of(scope, keyed=False) == "127.0.0.1:50123"
    assert http_api.client_of({"headers": [], "client": ("10.0.0.2", 7)}, keyed=True) == "10.0.0.2:7"


def test_api_keys_guard_every_rpc_and_route_by_scope(bundle: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    keys = {scope: add_key(key_file, scope) for scope in ("read", "write", "admin")}
    assert all(
        k not in key_file.read_text() and k.split("_")[1] in key_file.read_text() for k in keys.values()
    )
    s = Server(bundle, "--api-keys", str(key_file), data_dir=tmp_path / "data")
    try:
        with TesseraClient(s.target, 10, api_key=keys["admin"]) as admin:
            admin.wait_ready()  # health stays open
            admin.create_collection("keyed")
        clients = {
            None: TesseraClient(s.target, 10),
            **{k: TesseraClient(s.target, 10, api_key=v) for k, v in keys.items()},
        }
        clients["forged"] = TesseraClient(s.target, 10, api_key=keys["read"][:-4] + "AAAA")
        for method, (scope, call) in GRPC_CALLS.items():
            for who in (None, "forged"):
                err = refused(lambda c=clients[who], call=call: call(c.stub))
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (method, who)
                assert err.details() in (
                    "invalid API key",
                    "an API key is required (authorization: Bearer <key>)",
                )
            wrong = "read" if scope != "read" else "write"
            err = refused(lambda c=clients[wrong], call=call: call(c.stub))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, method
            call(clients[scope].stub)  # the right scope: served
        for name, (scope, verb, path, body) in HTTP_CALLS.items():

            def send(key: str | None, verb: str = verb, path: str = path, body: Any = body) -> httpx.Response:
                headers = {"authorization": f"Bearer {key}"} if key else {}
                return httpx.request(verb, s.http + path, json=body, headers=headers, timeout=30)

            assert send(None).status_code == 401 and send(keys["read"][:-4] + "AAAA").status_code == 401, name
            assert send(keys["read" if scope != "read" else "write"]).status_code == 403, name
            assert send(keys[scope]).status_code in (200, 201), (name, send(keys[scope]).text)
        assert (
            httpx.get(s.http + "/healthz").status_code == 200
            and httpx.get(s.http + "/readyz").status_code == 200
        )
        metrics = s.metrics()
        assert metrics['tessera_requests_total{code="UNAUTHENTICATED",method="Embed",transport="http"}'] >= 2
        assert (
            metrics['tessera_requests_total{code="PERMISSION_DENIED",method="Upsert",transport="grpc"}'] >= 1
        )
        # revoked, then reloaded on SIGHUP: the key stops working
        key_id = keys["write"].split("_")[1]
        subprocess.run([sys.executable, "-m", "runtime", "keys", "revoke", "--file", str(key_file), key_id],
                       cwd=REPO_ROOT, check=True)  # fmt: skip
        s.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any("reloaded 2 API keys" in line for line in s.lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        err = refused(lambda: GRPC_CALLS["Upsert"][1](clients["write"].stub))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        for c in clients.values():
            c.close()
    finally:
        assert s.stop() == 0
    log = "".join(s.lines)
    assert not any(k.split("_", 2)[2] in log for k in keys.values())  # no secret ever logged


def start(bundle: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "runtime", "serve", "--bundle", str(bundle), "--port", "0", *flags]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_bad_tls_or_key_files_stop_the_start_in_one_line(bundle: Path, pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    cases = [
        (("--tls-cert", str(pki.server_cert)), "TLS needs both --tls-cert and --tls-key"),
        (
            ("--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(pki.server_key)),
            "none.pem: no such file",
        ),
        (("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key)), "do not go together"),
        (
            (
                "--tls-cert",
                str(pki.server_cert),
                "--tls-key",
                str(pki.server_key),
                "--tls-client-ca",
                str(tmp_path / "junk.pem"),
            ),
            "not a readable CA certificate",
        ),
        (("--api-keys", str(tmp_path / "junk.pem")), "unreadable key file"),
    ]
    for flags, message in cases:
        result = start(bundle, "--data-dir", str(tmp_path / "data"), *flags)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr.strip().splitlines()[-1], (flags, result.stderr)


def test_beyond_loopback_warns_and_keeps_reflection_off_and_metrics_at_home(
    bundle: Path, tmp_path: Path
) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    s = Server(bundle, "--host", "0.0.0.0", data_dir=tmp_path / "a")
    try:
        assert any("WITHOUT TLS OR API KEYS" in line for line in s.lines)
        with s.client() as client:
            stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            assert refused(lambda: list(stub.ServerReflectionInfo(iter([request]), timeout=5))).code() == (
                grpc.StatusCode.UNIMPLEMENTED
            )
        assert any(f"metrics on http://127.0.0.1:{s.metrics_port}/metrics" in line for line in s.lines)
        assert httpx.get(f"http://127.0.0.1:{s.metrics_port}/other").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{s.metrics_port}/metrics").status_code == 200
    finally:
        assert s.stop() == 0
    quiet = Server(bundle, "--host", "0.0.0.0", "--insecure", "--reflection", "on", data_dir=tmp_path / "b")
    try:
        assert not any("WITHOUT TLS OR API KEYS" in line for line in quiet.lines)
        with quiet.client() as client:
            stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            assert next(
                iter(stub.ServerReflectionInfo(iter([request]), timeout=5))
            ).list_services_response.service
    finally:
        assert quiet.stop() == 0
