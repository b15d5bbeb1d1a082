"""Command server of the KVM test host.

Runs chrooted in this machine's root inside the test host and executes commands for clients that
reach it through QEMU's port forward. One TCP connection carries one command. Every message in both
directions is a frame: one kind byte, a 4-byte big-endian payload length, then the payload.

Client to server, before the command starts:
  a  one argument (argv[0] first)      e  one environment entry, KEY=VALUE
  d  working directory                 x  start the command (empty payload)
and after it:
  i  stdin data; an empty payload closes the command's stdin
Server to client:
  H  greeting, sent on accept          o  stdout data          e  stderr data
  s  exit status in ASCII decimal (128+N for signal N), always the last frame

Closing the connection before the status frame kills the command's process group.
"""

import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading

GREETING = b"bulkhead-kvm-host 1"
HEADER = struct.Struct(">cI")
CHUNK = 65536


def read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise EOFError
        buf += part
    return bytes(buf)


def read_frame(sock):
    kind, length = HEADER.unpack(read_exact(sock, HEADER.size))
    return kind, read_exact(sock, length)


class Connection:
    def __init__(self, sock):
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, kind, payload=b""):
        with self.lock:
            self.sock.sendall(HEADER.pack(kind, len(payload)) + payload)


def pump(conn, pipe, kind):
    try:
        while True:
            data = pipe.read1(CHUNK)
            if not data:
                break
            conn.send(kind, data)
    except OSError:
        pass
    finally:
        pipe.close()


def spawn_error_status(err):
    if isinstance(err, FileNotFoundError):
        return 127
    return 126


def serve_stdin(sock, proc, finished):
    """Feeds stdin frames to the command; kills it if the client goes away first."""
    stdin = proc.stdin
    try:
        while True:
            kind, data = read_frame(sock)
            if kind != b"i" or stdin is None:
                continue
            if not data:
                stdin.close()
                stdin = None
                continue
            try:
                stdin.write(data)
                stdin.flush()
            except BrokenPipeError:
                stdin.close()
                stdin = None
    except (EOFError, OSError):
        if not finished.is_set():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        if stdin is not None:
            try:
                stdin.close()
            except OSError:
                pass


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock)
        conn.send(b"H", GREETING)
        argv, env, cwd = [], {}, "/"
        try:
            while True:
                kind, data = read_frame(sock)
                if kind == b"a":
                    argv.append(os.fsdecode(data))
                elif kind == b"e":
                    key, _, value = os.fsdecode(data).partition("=")
                    env[key] = value
                elif kind == b"d":
                    cwd = os.fsdecode(data)
                elif kind == b"x":
                    break
        except (EOFError, OSError):
            return
        if not argv:
            conn.send(b"e", b"kvm-host: empty command\n")
            conn.send(b"s", b"127")
            return
        if not os.path.isdir(cwd):
            cwd = "/"
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                restore_signals=True,
            )
        except OSError as err:
            conn.send(b"e", f"kvm-host: cannot run {argv[0]}: {err.strerror}\n".encode())
            conn.send(b"s", str(spawn_error_status(err)).encode())
            return

        finished = threading.Event()
        feeder = threading.Thread(target=serve_stdin, args=(sock, proc, finished), daemon=True)
        feeder.start()
        pumps = [
            threading.Thread(target=pump, args=(conn, proc.stdout, b"o"), daemon=True),
            threading.Thread(target=pump, args=(conn, proc.stderr, b"e"), daemon=True),
        ]
        for t in pumps:
            t.start()
        code = proc.wait()
        for t in pumps:
            t.join()
        finished.set()
        status = code if code >= 0 else 128 - code
        try:
            conn.send(b"s", str(status).encode())
        except OSError:
            pass
        # Wait for the client to close, so that the status frame is not lost to a reset.
        feeder.join()


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    port = int(sys.argv[1])
    with Server(("0.0.0.0", port), Handler) as server:
        print(f"kvm-host: command server listening on port {port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
