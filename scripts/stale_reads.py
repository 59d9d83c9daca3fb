#!/usr/bin/env python3
"""Counts stale reads through several `reverse_proxy` replicas sharing one
PostgreSQL, as a user would see them.

An origin serves versioned documents (`Cache-Control: max-age=300`, GETs
answered after a random 0-100 ms, `--origin-delay`, so they overlap writes); threads send GETs and
PUTs through random replicas. A read is **stale** when it started more than
`--grace` seconds after a PUT that made a newer version of its path had
returned (through any replica) and still got the older version.

    cargo build --example reverse_proxy
    scripts/stale_reads.py --proxy-bin target/debug/examples/reverse_proxy

Uses (and drops) a database of its own on DATABASE_URL's server (default
postgres://postgres@127.0.0.1:5432/postgres). Prints one summary line.
"""

import argparse
import http.client
import http.server
import os
import random
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit, urlunsplit


class Origin(http.server.BaseHTTPRequestHandler):
    versions = {}
    lock = threading.Lock()
    delay = 0.1

    def log_message(self, *args):
        pass

    def do_GET(self):
        with Origin.lock:
            v = Origin.versions.get(self.path, 0)
        time.sleep(random.random() * Origin.delay)  # the read happened; the answer is on its way
        body = f"v{v}".encode()
        self.send_response(200)
        self.send_header("Cache-Control", "max-age=300")
        self.send_header("ETag", f'"v{v}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        with Origin.lock:
            v = Origin.versions.get(self.path, 0) + 1
            Origin.versions[self.path] = v
        body = str(v).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def psql(url, sql):
    subprocess.run(["psql", "-q", "-d", url, "-c", sql], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy-bin", required=True)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--threads", type=int, default=12)
    ap.add_argument("--paths", type=int, default=4)
    ap.add_argument("--grace", type=float, default=0.25)
    ap.add_argument("--put-ratio", type=float, default=0.01)
    ap.add_argument("--origin-delay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args()
    random.seed(args.seed)
    Origin.delay = args.origin_delay

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    db = f"c3_stale_{os.getpid()}"
    u = urlsplit(base)
    db_url = urlunsplit((u.scheme, u.netloc, "/" + db, u.query, ""))
    psql(base, f"CREATE DATABASE {db}")

    origin_port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", origin_port), Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    procs, ports = [], []
    try:
        for _ in range(args.replicas):
            port = free_port()
            env = dict(os.environ, DATABASE_URL=db_url, RUST_LOG="warn")
            procs.append(subprocess.Popen(
                [args.proxy_bin, "--listen", f"127.0.0.1:{port}",
                 "--upstream", f"http://127.0.0.1:{origin_port}"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ports.append(port)
        for p in ports:
            wait_port(p)

        reads, writes = [], []
        log_lock = threading.Lock()
        deadline = time.time() + args.seconds

        def worker(seed):
            rng = random.Random(seed)
            conns = {p: http.client.HTTPConnection("127.0.0.1", p, timeout=10) for p in ports}
            while time.time() < deadline:
                port = rng.choice(ports)
                path = f"/item{rng.randrange(args.paths)}"
                c = conns[port]
                if rng.random() < args.put_ratio:
                    c.request("PUT", path, body=b"x")
                    r = c.getresponse()
                    v = int(r.read())
                    with log_lock:
                        writes.append((path, v, time.monotonic()))
                else:
                    t0 = time.monotonic()
                    c.request("GET", path)
                    r = c.getresponse()
                    body = r.read().decode()
                    t1 = time.monotonic()
                    with log_lock:
                        reads.append((path, int(body[1:]), t0, t1, port))

        threads = [threading.Thread(target=worker, args=(args.seed + i,)) for i in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        server.shutdown()
        psql(base, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")

    stale, worst = 0, 0.0
    for path, v, t0, _t1, _port in reads:
        newer = [t for (p, wv, t) in writes if p == path and wv > v and t < t0]
        if newer:
            lag = t0 - min(newer)
            if lag > args.grace:
                stale += 1
                worst = max(worst, lag)
    print(f"stale_reads: {stale} of {len(reads)} reads stale (started > {args.grace}s after a newer PUT "
          f"returned; worst {worst:.2f}s), {len(writes)} writes, {args.replicas} replicas, "
          f"{args.seconds}s, seed {args.seed}")


if __name__ == "__main__":
    main()
