# A peer of the dcos CLI for attack tests. Prints its port on the first line of stdout, then serves until killed.
#   relay PORT            forwards each TCP connection to 127.0.0.1:PORT (stop it with SIGSTOP to freeze the link)
#   silent CERT KEY       accepts TLS, reads, and never answers
#   endless STATUS CERT KEY
#                         answers every request with STATUS and a chunked body that never ends
import socket, ssl, sys, threading

mode = sys.argv[1]
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0))
ls.listen(64)
print(ls.getsockname()[1], flush=True)


def pump(src, dst):
    try:
        while True:
            d = src.recv(65536)
            if not d:
                break
            dst.sendall(d)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def tls(conn, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx.wrap_socket(conn, server_side=True)


def serve(conn):
    try:
        if mode == "relay":
            up = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
            threading.Thread(target=pump, args=(up, conn), daemon=True).start()
            pump(conn, up)
        elif mode == "silent":
            s = tls(conn, sys.argv[2], sys.argv[3])
            while s.recv(65536):
                pass
        elif mode == "endless":
            s = tls(conn, sys.argv[3], sys.argv[4])
            d = b""
            while b"\r\n\r\n" not in d:
                chunk = s.recv(65536)
                if not chunk:
                    return
                d += chunk
            s.sendall(("HTTP/1.1 %s\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n" % sys.argv[2]).encode())
            chunk = b"%x\r\n" % (1 << 16) + b"[" * (1 << 16) + b"\r\n"
            while True:
                s.sendall(chunk)
    except (OSError, ssl.SSLError):
        pass


while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
