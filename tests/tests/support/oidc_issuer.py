#!/usr/bin/python3
"""A small OpenID Connect issuer for the end-to-end tests, built on authlib (keys, JWKS, JWT signing).

Serves over TLS (its own test CA, written to DIR/ca.pem):
  GET  /.well-known/openid-configuration   discovery
  GET  /jwks                                the published keys (RS256, ES256 and Ed25519)
  POST /device/authorize                    RFC 8628 device authorization (form: client_id, scope)
  POST /device/approve                      what the user's click does (form: user_code, sub, email, groups)
  POST /token                               device_code and refresh_token grants
and, for the tests only, JSON endpoints under /admin: mint a token, rotate or retire a key, change settings,
read poll statistics, get a key's public PEM (what an attacker has).

Prints "READY <issuer URL>" on stdout once it listens.
"""

import argparse
import datetime
import ipaddress
import json
import secrets
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from authlib.common.security import generate_token
from authlib.jose import JsonWebKey, jwt
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOCK = threading.Lock()
KEY_PARAMS = {"RS256": ("RSA", 2048), "ES256": ("EC", "P-256"), "EdDSA": ("OKP", "Ed25519")}


def tls_files(d):
    """A CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    now = datetime.datetime.utcnow()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test OIDC CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    with open(f"{d}/ca.pem", "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(f"{d}/server.pem", "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(f"{d}/server.key", "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


class State:
    def __init__(self):
        self.url = None
        self.keys = {}  # kid -> (alg, private JsonWebKey)
        self.current = {}  # alg -> kid used to sign
        self.client_id = "dcos-cli"
        self.token_ttl = 300
        self.sign_alg = "RS256"
        self.interval = 1
        self.slow_down_first = False
        self.devices = {}  # device_code -> dict
        self.refresh = {}  # refresh token -> identity
        self.stats = {"polls": 0, "too_fast": 0, "slow_down_sent": 0, "refreshed": 0}
        for alg in KEY_PARAMS:
            self.rotate(alg)

    def rotate(self, alg):
        kty, crv = KEY_PARAMS[alg]
        key = JsonWebKey.generate_key(kty, crv, is_private=True)
        kid = f"{alg.lower()}-{secrets.token_hex(4)}"
        self.keys[kid] = (alg, key)
        old = self.current.get(alg)
        self.current[alg] = kid
        return kid, old

    def jwks(self):
        out = []
        for kid, (alg, key) in self.keys.items():
            d = key.as_dict(is_private=False)
            d.update({"kid": kid, "use": "sig", "alg": alg})
            out.append(d)
        return {"keys": out}

    def sign(self, claims, alg=None, kid=None, omit_kid=False, header_kid=None):
        alg = alg or self.sign_alg
        kid = kid or self.current[alg]
        key_alg, key = self.keys[kid]
        header = {"alg": key_alg, "typ": "JWT"}
        if not omit_kid:
            header["kid"] = header_kid or kid
        return jwt.encode(header, claims, key).decode()

    def identity_tokens(self, ident):
        now = int(time.time())
        base = {"iss": self.url, "iat": now, "exp": now + self.token_ttl, **ident}
        id_token = self.sign({**base, "aud": self.client_id})
        access = self.sign({**base, "aud": [self.client_id, "dcos-exec"]})
        rt = generate_token(40)
        self.refresh[rt] = ident
        return {"access_token": access, "id_token": id_token, "token_type": "Bearer",
                "expires_in": self.token_ttl, "refresh_token": rt}


S = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("oidc-issuer: " + fmt % args + "\n")

    def reply(self, status, body, ctype="application/json"):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n).decode()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            return json.loads(raw or "{}")
        return {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}

    def do_GET(self):
        path = urllib.parse.urlparse(self.path)
        with LOCK:
            if path.path == "/.well-known/openid-configuration":
                return self.reply(200, {
                    "issuer": S.url,
                    "jwks_uri": f"{S.url}/jwks",
                    "token_endpoint": f"{S.url}/token",
                    "device_authorization_endpoint": f"{S.url}/device/authorize",
                    "grant_types_supported": [DEVICE_CODE_GRANT_TYPE, "refresh_token"],
                    "id_token_signing_alg_values_supported": list(KEY_PARAMS),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                })
            if path.path == "/jwks":
                return self.reply(200, S.jwks())
            if path.path == "/admin/stats":
                return self.reply(200, S.stats)
            if path.path == "/admin/public.pem":
                kid = urllib.parse.parse_qs(path.query)["kid"][0]
                return self.reply(200, S.keys[kid][1].as_pem(is_private=False).decode(), "text/plain")
            if path.path == "/admin/jwks-entry":
                kid = urllib.parse.parse_qs(path.query)["kid"][0]
                return self.reply(200, [k for k in S.jwks()["keys"] if k["kid"] == kid][0])
        self.reply(404, {"error": "not_found"})

    def do_POST(self):
        b = self.body()
        with LOCK:
            p = self.path
            if p == "/device/authorize":
                if b.get("client_id") != S.client_id:
                    return self.reply(401, {"error": "invalid_client"})
                code = generate_token(32)
                user_code = "-".join(secrets.token_hex(2).upper() for _ in range(2))
                S.devices[code] = {"user_code": user_code, "ident": None, "interval": S.interval,
                                   "last": None, "expires": time.time() + 300, "denied": False, "first": True}
                answer = {
                    "device_code": code, "user_code": user_code,
                    "verification_uri": f"{S.url}/device",
                    "verification_uri_complete": f"{S.url}/device?user_code={user_code}",
                    "expires_in": 300, "interval": S.interval,
                }
                # scope "hostile": the answer of an issuer that attacks the CLI (terminal escapes, a bidi
                # override, an expiry that overflows); the real user code still comes first.
                if b.get("scope") == "hostile":
                    answer["user_code"] += "\x1b]0;owned\x07\u202e"
                    answer["verification_uri"] += "\x1b[2J"
                    answer["verification_uri_complete"] += "\u2066\n"
                    answer["expires_in"] = 2**64 - 1
                return self.reply(200, answer)
            if p == "/device/approve":
                for d in S.devices.values():
                    if d["user_code"] == b.get("user_code"):
                        if b.get("deny"):
                            d["denied"] = True
                        else:
                            groups = b.get("groups", "")
                            groups = groups if isinstance(groups, list) else [g for g in groups.split(",") if g]
                            d["ident"] = {"sub": b["sub"], "email": b.get("email", b["sub"]), "groups": groups}
                        return self.reply(200, {"approved": not b.get("deny")})
                return self.reply(404, {"error": "unknown user code"})
            if p == "/token":
                return self.token(b)
            if p == "/admin/mint":
                now = int(time.time())
                claims = {"iss": S.url, "iat": now, "exp": now + int(b.get("ttl", 300))}
                claims.update(b.get("claims", {}))
                for k in b.get("omit", []):
                    claims.pop(k, None)
                return self.reply(200, {"token": S.sign(claims, b.get("alg"), b.get("kid"), b.get("omit_kid", False), b.get("header_kid"))})
            if p == "/admin/rotate":
                kid, old = S.rotate(b["alg"])
                return self.reply(200, {"kid": kid, "old": old})
            if p == "/admin/current":
                return self.reply(200, S.current)
            if p == "/admin/retire":
                alg, _ = S.keys.pop(b["kid"])
                return self.reply(200, {"retired": b["kid"], "alg": alg})
            if p == "/admin/settings":
                for k in ("token_ttl", "client_id", "sign_alg", "interval", "slow_down_first"):
                    if k in b:
                        setattr(S, k, b[k])
                return self.reply(200, {"ok": True})
        self.reply(404, {"error": "not_found"})

    def token(self, b):
        gt = b.get("grant_type")
        if b.get("client_id") != S.client_id:
            return self.reply(401, {"error": "invalid_client"})
        if gt == DEVICE_CODE_GRANT_TYPE:
            d = S.devices.get(b.get("device_code", ""))
            if d is None:
                return self.reply(400, {"error": "invalid_grant"})
            now = time.time()
            S.stats["polls"] += 1
            # RFC 8628 3.5: a client polling faster than the interval is told to slow down (+5 s).
            too_fast = d["last"] is not None and now - d["last"] < d["interval"] - 0.1
            first = d["first"] and S.slow_down_first
            d["last"], d["first"] = now, False
            if too_fast:
                S.stats["too_fast"] += 1
            if too_fast or first:
                d["interval"] += 5
                S.stats["slow_down_sent"] += 1
                return self.reply(400, {"error": "slow_down"})
            if now > d["expires"]:
                return self.reply(400, {"error": "expired_token"})
            if d["denied"]:
                return self.reply(400, {"error": "access_denied"})
            if d["ident"] is None:
                return self.reply(400, {"error": "authorization_pending"})
            del S.devices[b["device_code"]]
            return self.reply(200, S.identity_tokens(d["ident"]))
        if gt == "refresh_token":
            ident = S.refresh.pop(b.get("refresh_token", ""), None)
            if ident is None:
                return self.reply(400, {"error": "invalid_grant"})
            S.stats["refreshed"] += 1
            return self.reply(200, S.identity_tokens(ident))
        return self.reply(400, {"error": "unsupported_grant_type"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()
    tls_files(args.dir)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{args.dir}/server.pem", f"{args.dir}/server.key")
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    S.url = f"https://127.0.0.1:{srv.server_address[1]}"
    print(f"READY {S.url}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
