#!/usr/bin/env python3
"""Probes of the machine under the store benchmarks (docs/performance.md, "Storage").

  vm_probe.py wal DIR SIZE RATE [append|overwrite] [HOGS]
      SIZE-byte write + fdatasync into DIR/probe at RATE/s for 4 s (one batch's WAL write),
      with HOGS busy-looping processes beside it (default 0); prints P50/P99/max and every
      call over 2 ms as "start ms:latency ms", then the calls over 6 ms by the phase of
      their end within CLOCK_MONOTONIC's 100 ms periods.
  vm_probe.py sleep SECONDS
      sleeps 0.5 ms in a loop and prints how much later than asked it woke (P50/P99/P99.9
      and the count over 2 ms): how long a ready thread waits for a CPU.
"""
import os
import signal
import sys
import time


def pct(s, p):
    return s[min(len(s) - 1, int(len(s) * p))]


def hog():
    pid = os.fork()
    if pid == 0:
        while True:
            pass
    return pid


def wal(directory, size, rate, mode, hogs):
    hog_pids = [hog() for _ in range(hogs)]
    path = os.path.join(directory, "probe")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
    buf = os.urandom(size)
    if mode == "overwrite":
        os.write(fd, os.urandom(size * int(rate * 4) + (1 << 20)))
        os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_SET)
    lat, t0, n = [], time.monotonic(), 0
    while time.monotonic() - t0 < 4:
        due = t0 + n / rate
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        a = time.monotonic()
        os.write(fd, buf)
        os.fdatasync(fd)
        lat.append((a - t0, time.monotonic() - a))
        n += 1
    for pid in hog_pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    os.close(fd)
    os.unlink(path)
    s = sorted(l for _, l in lat)
    print(f"wal {mode} {size} B at {rate:.0f}/s, {hogs} hogs: n={len(s)} P50 "
          f"{pct(s, .5) * 1e6:.0f} us P99 {pct(s, .99) * 1e6:.0f} us max {s[-1] * 1e6:.0f} us")
    print(" ".join(f"{t * 1000:.0f}ms:{l * 1000:.1f}" for t, l in lat if l > 0.002))
    phases = sorted(int(((t0 + t + l) * 1000) % 100) for t, l in lat if l > 0.006)
    print(f"over 6 ms: {len(phases)}; end phase (ms mod 100):", " ".join(map(str, phases)))


def sleep(seconds):
    lat, t0 = [], time.monotonic()
    while time.monotonic() - t0 < seconds:
        a = time.monotonic()
        time.sleep(0.0005)
        lat.append(time.monotonic() - a - 0.0005)
    s = sorted(lat)
    print(f"oversleep P50 {pct(s, .5) * 1e6:.0f} us P99 {pct(s, .99) * 1e6:.0f} us "
          f"P99.9 {pct(s, .999) * 1e6:.0f} us, over 2 ms: {sum(1 for x in s if x > 0.002)}")


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "wal":
        wal(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]),
            sys.argv[5] if len(sys.argv) > 5 else "append",
            int(sys.argv[6]) if len(sys.argv) > 6 else 0)
    elif len(sys.argv) == 3 and sys.argv[1] == "sleep":
        sleep(float(sys.argv[2]))
    else:
        sys.exit(__doc__)
