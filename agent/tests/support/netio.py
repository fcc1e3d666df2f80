"""Tiny traffic tools for the netns fault tests; every mode bounds its own life.

serve ADDR LIFE BYTES PORT...   TCP: each connection gets BYTES bytes, then EOF
fetch ADDR PORT TIMEOUT [SRC]   TCP: connect (from SRC), read to EOF; prints "BYTES SECONDS"
udp-echo ADDR PORT LIFE         UDP: echo each datagram; prints how many arrived
udp-blast ADDR PORT COUNT       UDP: send COUNT datagrams 2 ms apart; prints "SENT ECHOED"
"""
import socket
import sys
import threading
import time


def serve(addr, life, size, ports):
    body = b"x" * size

    def handle(conn):
        try:
            conn.sendall(body)
        except OSError:
            pass
        finally:
            conn.close()

    def accept(sock):
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    for port in ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(64)
        threading.Thread(target=accept, args=(s,), daemon=True).start()
    print("ready", flush=True)
    time.sleep(life)


def fetch(addr, port, timeout, src=None):
    s = socket.socket()
    s.settimeout(timeout)
    if src:
        s.bind((src, 0))
    start = time.monotonic()
    try:
        s.connect((addr, port))
        n = 0
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            n += len(chunk)
    except OSError as e:
        print(f"error {e}", flush=True)
        sys.exit(1)
    took = time.monotonic() - start
    if n == 0:
        print("error: no bytes", flush=True)
        sys.exit(1)
    print(f"{n} {took:.6f}", flush=True)


def udp_echo(addr, port, life):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    print("ready", flush=True)
    end = time.monotonic() + life
    got = 0
    s.settimeout(life)
    while time.monotonic() < end:
        try:
            data, peer = s.recvfrom(2048)
        except socket.timeout:
            break
        got += 1
        s.sendto(data, peer)
        s.settimeout(1.0)  # the blast is over once it has been quiet for a second
    print(got, flush=True)


def udp_blast(addr, port, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    echoed = set()

    def drain():
        while True:
            try:
                data = s.recv(2048)
            except OSError:  # nothing left, or an ICMP error
                return
            echoed.add(data)

    for i in range(count):
        try:
            s.sendto(b"%08d" % i, (addr, port))
        except PermissionError:
            pass  # dropped by the local output hook: lost like any other
        time.sleep(0.002)
        drain()
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        time.sleep(0.01)
        drain()
    print(f"{count} {len(echoed)}", flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "serve":
        serve(args[0], float(args[1]), int(args[2]), [int(p) for p in args[3:]])
    elif mode == "fetch":
        fetch(args[0], int(args[1]), float(args[2]), args[3] if len(args) > 3 else None)
    elif mode == "udp-echo":
        udp_echo(args[0], int(args[1]), float(args[2]))
    elif mode == "udp-blast":
        udp_blast(args[0], int(args[1]), int(args[2]))
    else:
        sys.exit(f"unknown mode {mode}")
