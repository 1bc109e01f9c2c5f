"""Paced random writer over NBD (libnbd). Run with Debian's python: ``/usr/bin/python3 bench/_nbd_writer.py``.

Writes random-size (64 KiB–1 MiB, 4 KiB aligned) writes at random 4 KiB-aligned offsets, open loop: a write is
due when ``rate * elapsed`` bytes have been allowed (token bucket, no burst credit beyond the schedule), up to
``--qd`` writes in flight. If the server is slower than the rate, the writer falls behind schedule (``max_lag_s``)
and the achieved rate drops: both are reported. Data: half random, half repetitive text (``--data random`` for
incompressible only). Prints one JSON line at the end (and ``--progress`` lines every second).

    /usr/bin/python3 bench/_nbd_writer.py --uri nbd://127.0.0.1:P/d --rate 50 --duration 60
"""

import argparse
import json
import random
import sys
import time

import nbd


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uri", required=True)
    ap.add_argument("--rate", type=float, required=True, help="MB/s (10^6 bytes)")
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--qd", type=int, default=16)
    ap.add_argument("--min-kib", type=int, default=64)
    ap.add_argument("--max-kib", type=int, default=1024)
    ap.add_argument("--data", choices=("mixed", "random"), default="mixed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--flush", action="store_true", help="FLUSH at the end")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    h = nbd.NBD()
    h.connect_uri(a.uri)
    size = h.get_size()
    line = b"2025-11-25T17:00:00 INFO lifeboat agent wrote block %08d of journal segment ok\n"
    text = b"".join(line.replace(b"%08d", b"%08d" % i) for i in range(20000))
    sizes = list(range(a.min_kib * 1024, a.max_kib * 1024 + 1, 64 * 1024)) or [a.min_kib * 1024]
    bufs = {}
    for s in sizes:
        variants = [bytearray(rnd.randbytes(s)) for _ in range(2)]
        if a.data == "mixed":
            variants += [bytearray((text[o:] + text)[:s]) for o in (rnd.randrange(len(text)) for _ in range(2))]
        bufs[s] = [nbd.Buffer.from_bytearray(v) for v in variants]
    rate = a.rate * 1e6
    inflight = {}   # cookie -> (issue time, due time, bytes)
    lat, lags = [], []
    issued = done = errors = 0
    t0 = time.monotonic()
    next_progress = t0 + 1

    def reap() -> None:
        nonlocal done, errors
        while inflight:
            c = h.aio_peek_command_completed()
            if not c:
                return
            t_issue, _, n = inflight.pop(c)
            try:
                h.aio_command_completed(c)
                done += n
                lat.append(time.monotonic() - t_issue)
            except nbd.Error as e:
                errors += 1
                print(f"write failed: {e}", file=sys.stderr)

    while True:
        now = time.monotonic()
        el = now - t0
        if el >= a.duration:
            break
        while issued <= rate * el and len(inflight) < a.qd:
            n = rnd.choice(sizes)
            off = rnd.randrange(0, (size - n) // 4096 + 1) * 4096
            due = t0 + issued / rate
            lags.append(now - due)
            c = h.aio_pwrite(rnd.choice(bufs[n]), off)
            inflight[c] = (time.monotonic(), due, n)
            issued += n
        if a.progress and now >= next_progress:
            print(json.dumps({"t": round(el, 2), "issued": issued, "done": done, "inflight": len(inflight)}),
                  flush=True)
            next_progress += 1
        if len(inflight) >= a.qd:
            h.poll(-1)
        else:
            wait = t0 + issued / rate - time.monotonic()
            if inflight:
                h.poll(max(0, min(int(wait * 1000), 50)))
            elif wait > 0:
                time.sleep(min(wait, 0.05))
        reap()
    t_end_issue = time.monotonic() - t0
    while inflight:
        h.poll(-1)
        reap()
    t_done = time.monotonic() - t0
    if a.flush:
        h.flush()
    t_flush = time.monotonic() - t0
    h.shutdown()
    lat.sort()
    lags.sort()
    q = lambda v, p: v[min(len(v) - 1, int(len(v) * p))] if v else 0.0
    print(json.dumps({"target_mbps": a.rate, "issued_bytes": issued, "done_bytes": done, "errors": errors,
                      "duration_s": round(t_end_issue, 3), "drain_s": round(t_done - t_end_issue, 3),
                      "flush_s": round(t_flush - t_done, 3),
                      "achieved_mbps": round(done / t_done / 1e6, 2), "writes": len(lat),
                      "lat_p50_ms": round(q(lat, 0.5) * 1000, 2), "lat_p99_ms": round(q(lat, 0.99) * 1000, 2),
                      "lag_p99_s": round(q(lags, 0.99), 3), "max_lag_s": round(lags[-1] if lags else 0, 3)}),
          flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
