"""The demo's web app: a plain-text page on port 5000 that names the machine serving it.

The page shows the hostname and kernel the app runs on and counts the requests served, so a
client can tell that the response came from inside the container's microVM.
"""

import os
import platform
import signal
import socket
import sys
import threading

import flask

PORT = 5000

app = flask.Flask(__name__)
lock = threading.Lock()
requests_served = 0


@app.route("/")
def index():
    global requests_served
    with lock:
        requests_served += 1
        count = requests_served
    uname = os.uname()
    body = (
        "Hello from my-flask-app!\n"
        f"hostname: {socket.gethostname()}\n"
        f"kernel: {uname.sysname} {uname.release} {uname.machine}\n"
        f"python: {platform.python_version()}, flask: {flask.__version__}\n"
        f"requests served: {count}\n"
    )
    return flask.Response(body, mimetype="text/plain")


def stop(signum, _frame):
    print(f"my-flask-app: received {signal.Signals(signum).name}, exiting", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    print(f"my-flask-app: listening on 0.0.0.0:{PORT} on {socket.gethostname()}", flush=True)
    app.run(host="0.0.0.0", port=PORT)
