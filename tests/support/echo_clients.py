#!/usr/bin/python3
"""Opens N concurrent connections to 127.0.0.1:PORT, each POSTing its own 4 KiB payload to
/cgi-bin/echo over HTTP/1.0 with a half-close, and checks that the body comes back unchanged.

usage: echo_clients.py PORT N
Prints "failures K" and the first few failures; exits 1 when K > 0.
"""

import socket
import sys
import threading


def one(port, index, failures):
    try:
        payload = bytes((j * (index + 1)) % 256 for j in range(4096))
        request = b"POST /cgi-bin/echo HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(payload)
        with socket.create_connection(("127.0.0.1", port), timeout=120) as conn:
            conn.sendall(request + payload)
            conn.shutdown(socket.SHUT_WR)
            response = b""
            while chunk := conn.recv(65536):
                response += chunk
        body = response.split(b"\r\n\r\n", 1)[1]
        if body != payload:
            failures.append((index, f"body of {len(body)} bytes differs"))
    except Exception as error:  # every failure is reported, whatever its type
        failures.append((index, repr(error)))


def main():
    port, count = int(sys.argv[1]), int(sys.argv[2])
    failures = []
    threads = [threading.Thread(target=one, args=(port, i, failures)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("failures", len(failures), failures[:5])
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
