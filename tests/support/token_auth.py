"""A token service like Docker Hub's (auth.docker.io), for a real registry with ``auth: token``.

The registry (distribution) is configured to trust a self-signed certificate; this
service signs JWTs (RS256, ``x5c`` header) with its key. It answers
``GET /token?service=…&scope=repository:NAME:pull`` anonymously for public repositories
and with Basic credentials for private ones, and records every request.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

__all__ = ["TokenRequest", "TokenService"]

SERVICE = "test-registry"
ISSUER = "test-token-issuer"


@dataclass(frozen=True)
class TokenRequest:
    scope: str
    user: str | None
    granted: bool


@dataclass
class TokenService:
    """Run with ``with TokenService(tmp_path) as tokens:``; ``registry_config()`` is the
    ``auth`` section for :class:`RegistryProcess` (``extra_config``)."""

    workdir: Path
    users: dict[str, str] = field(default_factory=dict)
    public_prefixes: tuple[str, ...] = ("library/",)
    expires_in: int = 300
    bad_tokens: int = 0  # the next N tokens are signed for the wrong audience
    requests: list[TokenRequest] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = self.workdir / "token-ca.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def registry_config(self) -> dict[str, Any]:
        return {
            "auth": {
                "token": {
                    "realm": self.realm,
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(self.cert_path),
                }
            }
        }

    def __enter__(self) -> TokenService:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, scope: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if scope is None or r.scope == scope)

    def _sign(self, scope: str, granted: bool) -> str:
        _, name, actions = scope.split(":") if scope.count(":") == 2 else ("", "", "")
        now = int(time.time())
        with self._lock:
            audience = SERVICE
            if self.bad_tokens > 0:
                self.bad_tokens -= 1
                audience = "someone-else"
        claims = {
            "iss": ISSUER,
            "sub": "anonymous",
            "aud": audience,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": (
                [{"type": "repository", "name": name, "actions": actions.split(",")}]
                if granted and name
                else []
            ),
        }
        x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"x5c": [x5c]})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                scope = query.get("scope", [""])[0]
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    raw = base64.b64decode(header[6:]).decode(errors="replace")
                    user, _, password = raw.partition(":")
                    if service.users.get(user) != password:
                        with service._lock:
                            service.requests.append(TokenRequest(scope, user, False))
                        self.send_response(401)
                        self.send_header("Content-Type", "application/json")
                        self.end_headers()
                        self.wfile.write(b'{"details":"incorrect username or password"}')
                        return
                name = scope.split(":")[1] if scope.count(":") == 2 else ""
                granted = user is not None or name.startswith(service.public_prefixes)
                with service._lock:
                    service.requests.append(TokenRequest(scope, user, granted))
                token = service._sign(scope, granted)
                with service._lock:
                    service.issued.append(token)
                body = json.dumps(
                    {
                        "token": token,
                        "access_token": token,
                        "expires_in": service.expires_in,
                        "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
