#!/usr/bin/env python3
"""A stand-in for the tracer's CPU time, for section b of scripts/bench.sh.

Busy on one CPU for BURST_MS milliseconds at a time, then asleep, so that over the run it keeps
SHARE of one CPU busy (0 < SHARE <= 1), for SECONDS seconds, then exits. The schedule is kept on
absolute times, so a late wake-up shortens the next sleep rather than lowering the share. Run it
beside the same load as the traced arm, with the share the tracer's processes took there: what
the load then loses is what that much CPU, taken in bursts of that length, costs it on this
machine — whoever takes it.

Usage: standin.py SHARE BURST_MS SECONDS
"""
import sys
import time


def main():
    share, burst_ms, seconds = (float(a) for a in sys.argv[1:4])
    if not 0 < share <= 1 or burst_ms <= 0 or seconds <= 0:
        sys.exit("standin.py: SHARE in (0, 1], BURST_MS > 0, SECONDS > 0")
    burst = burst_ms / 1e3
    period = burst / share
    clock = time.perf_counter
    start = clock()
    end = start + seconds
    cycle = start
    while cycle < end:
        busy_until = cycle + burst
        while clock() < busy_until:
            pass
        cycle += period
        rest = cycle - clock()
        if rest > 0:
            time.sleep(rest)


if __name__ == "__main__":
    main()
