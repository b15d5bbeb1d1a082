#!/usr/bin/python3
"""Runs a command on a new pseudo-terminal of a given size and copies its output to stdout.

usage: tty_run.py ROWS COLS [--resize ROWS COLS --after TEXT] -- COMMAND [ARGS...]

The command becomes a session leader with the terminal as its controlling terminal and as its
stdin, stdout and stderr, as in an interactive shell. With --resize, the terminal changes to the
new size once the output contains TEXT, which makes the kernel send SIGWINCH to the command. The
exit status is the command's (128+N when signal N ended it), or 124 when it did not finish within
the time limit.
"""

import argparse
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time

TIME_LIMIT = 600


def set_size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def take_terminal():
    """Makes stdin, the new terminal, the controlling terminal; runs in the child after setsid."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def main():
    argv = sys.argv[1:]
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="tty_run.py")
    parser.add_argument("rows", type=int)
    parser.add_argument("cols", type=int)
    parser.add_argument("--resize", type=int, nargs=2, metavar=("ROWS", "COLS"))
    parser.add_argument("--after", default="", metavar="TEXT")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]

    master, slave = os.openpty()
    set_size(slave, args.rows, args.cols)
    process = subprocess.Popen(
        command, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=take_terminal
    )
    os.close(slave)

    output = b""
    resized = args.resize is None
    deadline = time.monotonic() + TIME_LIMIT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            process.kill()
            process.wait()
            sys.stdout.buffer.write(output)
            print(f"\ntty_run.py: {command} did not finish within {TIME_LIMIT} s", file=sys.stderr)
            return 124
        if select.select([master], [], [], min(left, 1))[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                # EIO: every process that had the terminal open has closed it.
                chunk = b""
            if not chunk:
                break
            output += chunk
        if not resized and args.after.encode() in output:
            set_size(master, *args.resize)
            resized = True
    status = process.wait()
    sys.stdout.buffer.write(output)
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
