"""The Portainer agent as Portainer 2.21.4 sees it at registration, and the signature both use.

An agent (portainer/agent 2.21.4) serves TLS with its own self-signed certificate on its port.
``http/handler/handler.go``: every answer carries ``Portainer-Agent`` (its version),
``Portainer-Agent-API-Version`` and ``Portainer-Agent-Platform`` (1, Docker); ``GET /ping`` is
public and answers 204 (``http/handler/ping/ping.go``); everything else (the Docker API it
proxies) first goes through ``http/security/notary.go``: no ``X-PortainerAgent-PublicKey`` /
``X-PortainerAgent-Signature`` -> 403 "Missing request signature headers", a signature that
does not verify -> 403 "Invalid request signature".

The signature (``api/crypto/ecdsa.go`` ``CreateSignature`` on Portainer's side,
``crypto/ecdsa.go`` ``VerifySignature`` on the agent's): ECDSA P-256 over the MD5 of the
message, r||s padded to 32 bytes each, base64 without padding; the public key hex-encoded
DER (PKIX). With ``AGENT_SECRET`` set the message is the secret on both sides (else
"Portainer-App"), so an agent whose secret differs refuses every signed request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

VERSION = "2.21.4"
PLATFORM_DOCKER = "1"            # agent.go PlatformDocker (portainer.AgentPlatformDocker)
DEFAULT_MESSAGE = "Portainer-App"  # portainer.PortainerAgentSignatureMessage
PUBLIC_KEY_HEADER, SIGNATURE_HEADER = "X-PortainerAgent-PublicKey", "X-PortainerAgent-Signature"


class Signer:
    """Portainer's side: a key pair made at start (``GenerateKeyPair``) and the secret, if any."""

    def __init__(self, secret: str = ""):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.secret = secret
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_key = der.hex()

    def headers(self) -> dict[str, str]:
        digest = hashlib.md5((self.secret or DEFAULT_MESSAGE).encode()).digest()
        r, s = utils.decode_dss_signature(self.key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.MD5()))))
        raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return {PUBLIC_KEY_HEADER: self.public_key,
                SIGNATURE_HEADER: base64.b64encode(raw).decode().rstrip("=")}


def verify(secret: str, public_key_hex: str, signature: str) -> bool:
    """The agent's ``VerifySignature`` (with a secret the key is taken from the request each time)."""
    try:
        key = serialization.load_der_public_key(bytes.fromhex(public_key_hex))
        raw = base64.b64decode(signature + "=" * (-len(signature) % 4))
    except ValueError:
        return False
    if len(raw) != 64 or not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    digest = hashlib.md5((secret or DEFAULT_MESSAGE).encode()).digest()
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        key.verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.MD5())))
        return True
    except InvalidSignature:
        return False


def serve_agent(address: str, port: int, secret: str, cert: str, key: str) -> None:  # pragma: no cover - child
    """An agent on ``address:port`` with ``AGENT_SECRET=secret``, until the process is ended."""

    class Agent(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code: int, body=None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Portainer-Agent", VERSION)
            self.send_header("Portainer-Agent-API-Version", "2")
            self.send_header("Portainer-Agent-Platform", PLATFORM_DOCKER)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.startswith("/ping"):
                return self.reply(204)
            pub, sig = self.headers.get(PUBLIC_KEY_HEADER), self.headers.get(SIGNATURE_HEADER)
            if not pub or not sig:
                return self.reply(403, {"message": "Missing request signature headers", "details": "Unauthorized"})
            if not verify(secret, pub, sig):
                return self.reply(403, {"message": "Invalid request signature", "details": "Unauthorized"})
            # the Docker API behind it, as far as Portainer's snapshot asks
            return self.reply(200, {"ServerVersion": "27.1.2", "Swarm": {"ControlAvailable": False}})

    server = ThreadingHTTPServer((address, port), Agent)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
