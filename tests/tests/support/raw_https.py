# Sends raw HTTP/1.x requests over TLS, each on a new connection (or, with "repeat", one request again and
# again on one keep-alive connection), for requests the dcos client never makes: malformed handshakes, hostile
# headers, floods. Reads {"port", "ca", "requests": [...], "repeat": N} as JSON on stdin; prints the answers
# (status line and body) as a JSON list, or for "repeat" the number of answers.
import json, socket, ssl, sys

job = json.load(sys.stdin)
ctx = ssl.create_default_context(cafile=job["ca"])


def connect():
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", job["port"])), server_hostname="127.0.0.1")
    s.settimeout(10)
    return s


def answer(s):
    d = b""
    while b"\r\n\r\n" not in d:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError
        d += chunk
    head, _, body = d.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    cl = [int(l.split(b":")[1]) for l in lines if l.lower().startswith(b"content-length")]
    while cl and len(body) < cl[0]:
        body += s.recv(65536)
    return lines[0].decode(errors="replace") + "\n" + body.decode(errors="replace")


if job.get("repeat"):
    req = job["requests"][0].encode()
    n = 0
    s = connect()
    for _ in range(job["repeat"]):
        try:
            s.sendall(req)
            answer(s)
            n += 1
        except Exception:
            s = connect()
    print(json.dumps(n))
else:
    out = []
    for r in job["requests"]:
        s = connect()
        s.sendall(r.encode())
        try:
            out.append(answer(s))
        except Exception as e:
            out.append("no answer: %s" % e)
    print(json.dumps(out))
