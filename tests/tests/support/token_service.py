"""A registry token service for the tests, as Docker Hub's auth.docker.io works: HTTPS, GET /token?service=
&scope=repository:NAME:ACTIONS, optional Basic credentials; answers {"token": JWT} signed RS256 with the key whose
certificate is the registry's rootcertbundle (sent in the JWT's x5c header). Anonymous callers get pull on
public/* only; the right credentials get what they ask for; wrong ones get 401. Each request is logged as a JSON
line. Standard library plus the openssl command only.

Usage: token_service.py SIGNING_KEY SIGNING_CERT TLS_CERT TLS_KEY LOG USER PASSWORD ISSUER
Prints the port it listens on (127.0.0.1), then serves until killed."""

import base64
import http.server
import json
import os
import ssl
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlparse

key, cert, tls_cert, tls_key, log, user, password, issuer = sys.argv[1:9]
der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], capture_output=True, check=True).stdout
x5c = base64.b64encode(der).decode()


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def sign(claims):
    header = {"typ": "JWT", "alg": "RS256", "x5c": [x5c]}
    signing = b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())
    sig = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key], input=signing.encode(), capture_output=True, check=True
    ).stdout
    return signing + "." + b64u(sig)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        q = parse_qs(urlparse(self.path).query)
        auth = self.headers.get("Authorization")
        who = None
        if auth:
            try:
                scheme, _, value = auth.partition(" ")
                u, _, p = base64.b64decode(value).decode().partition(":")
            except Exception:
                scheme, u, p = "", "", ""
            if scheme != "Basic" or (u, p) != (user, password):
                self.log_request_line(q, "refused")
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            who = u
        access = []
        for scope in q.get("scope", []):
            for s in scope.split(" "):
                parts = s.split(":")
                if len(parts) != 3 or parts[0] != "repository":
                    continue
                kind, name, actions = parts
                acts = actions.split(",")
                if who is None:
                    acts = [a for a in acts if a == "pull"] if name.startswith("public/") else []
                access.append({"type": kind, "name": name, "actions": acts})
        self.log_request_line(q, who)
        now = int(time.time())
        service = q.get("service", [""])[0]
        claims = {
            "iss": issuer, "sub": who or "", "aud": service, "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": os.urandom(8).hex(), "access": access,
        }
        token = sign(claims)
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_request_line(self, q, who):
        with open(log, "a") as f:
            f.write(json.dumps({"account": who, "scope": q.get("scope", []), "service": q.get("service", [""])[0]}))
            f.write("\n")

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(tls_cert, tls_key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
