#!/usr/bin/env python3
"""How a filesystem takes fsyncs of several appended files (docs/benchmarks.md, "The disk's
own floor"): one file; six one after another; six at once from six threads; six written and
then one syncfs; and six files overwritten in place instead of appended, after the space was
written with zeros, `fallocate`d or `ftruncate`d ahead (an append changes the file size, so
its fdatasync also writes the inode; an overwrite of written blocks does not). Medians / p90 /
p99 in ms over ROUNDS rounds.

    python3 docs/bench/fsync_patterns.py DIR [BYTES_PER_FILE] [ROUNDS]
"""
import ctypes
import os
import sys
import tempfile
import threading
import time

directory = sys.argv[1] if len(sys.argv) > 1 else "."
size = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 200
libc = ctypes.CDLL("libc.so.6", use_errno=True)
buf = b"x" * size

with tempfile.TemporaryDirectory(dir=directory) as d:
    fds = [os.open(f"{d}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_APPEND) for i in range(6)]

    def single():
        os.write(fds[0], buf)
        os.fdatasync(fds[0])

    def serial():
        for fd in fds:
            os.write(fd, buf)
        for fd in fds:
            os.fdatasync(fd)

    def parallel():
        for fd in fds:
            os.write(fd, buf)
        threads = [threading.Thread(target=os.fdatasync, args=(fd,)) for fd in fds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def syncfs():
        for fd in fds:
            os.write(fd, buf)
        libc.syncfs(fds[0])

    ahead = rounds * 2 * size + size
    prepared = {}
    for how in ("zeroed", "fallocated", "truncated"):
        files = [os.open(f"{d}/{how}{i}", os.O_WRONLY | os.O_CREAT) for i in range(6)]
        for fd in files:
            if how == "zeroed":
                os.write(fd, bytes(ahead))
            elif how == "fallocated":
                os.posix_fallocate(fd, 0, ahead)
            else:
                os.ftruncate(fd, ahead)
            os.fsync(fd)
        prepared[how] = (files, [0] * 6)

    def overwrite(how):
        files, positions = prepared[how]

        def run():
            for i, fd in enumerate(files):
                os.pwrite(fd, buf, positions[i])
                positions[i] += size
            for fd in files:
                os.fdatasync(fd)
        return run

    for name, f in [("one file", single), ("six serial", serial), ("six parallel", parallel),
                    ("six + syncfs", syncfs), ("six serial", serial), ("six parallel", parallel),
                    ("six zeroed", overwrite("zeroed")), ("six fallocated", overwrite("fallocated")),
                    ("six truncated", overwrite("truncated")), ("six serial", serial)]:
        xs = []
        for _ in range(rounds):
            t = time.perf_counter()
            f()
            xs.append((time.perf_counter() - t) * 1000)
        xs.sort()
        print(f"{name:14} p50 {xs[len(xs) // 2]:.2f}  p90 {xs[int(len(xs) * .9)]:.2f}  "
              f"p99 {xs[int(len(xs) * .99)]:.2f} ms")
    for fd in fds + [fd for files, _ in prepared.values() for fd in files]:
        os.close(fd)
