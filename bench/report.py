#!/usr/bin/env python3
"""Turns the raw measurements of scripts/bench.sh into report.md and report.json.

Usage: report.py RAW_DIR OUT_DIR

Every figure is computed here from what the script recorded (wrk JSON, metric scrapes before and
after each load, bpftool program statistics, /proc CPU ticks and memory, nginx's request counter,
the decode benchmark's and tshark's counts and CPU times); nothing is typed in. A figure that was
not measured says so and why instead of carrying a number. Targets are what issue 10 asks to report
against (issue 5's where issue 10 sets none); they are never a gate (this script exits 0 whether
they are met or not).
"""
import json
import math
import re
import statistics
import sys
from pathlib import Path

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

# Loss counters that are not a lost request: a re-sent session the correlator already stored.
NOT_LOSSES = {("correlator", "duplicate")}


def load(path):
    with open(path) as f:
        return json.load(f)


def parse_prom(path):
    """{(name, ((label, value), ...)): value} of every sample in a Prometheus text file."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = tuple(sorted(LABEL.findall(m.group(3) or "")))
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        out[(m.group(1), labels)] = out.get((m.group(1), labels), 0.0) + value
    return out


def delta(before, after, name, keep=lambda labels: True):
    """Sum over the samples of `name` whose labels pass `keep`, after minus before."""
    def total(p):
        return sum(v for (n, l), v in p.items() if n == name and keep(dict(l)))
    return total(after) - total(before)


def by_labels(before, after, name, keys):
    """{label values: after - before} of a counter family, non-zero entries only."""
    out = {}
    for p, sign in ((after, 1), (before, -1)):
        for (n, l), v in p.items():
            if n != name:
                continue
            d = dict(l)
            k = tuple(d.get(x, "") for x in keys)
            out[k] = out.get(k, 0.0) + sign * v
    return {k: v for k, v in out.items() if v}


class Report:
    def __init__(self):
        self.figures = []

    def figure(self, section, key, name, value, unit, target=None, op=None, note=""):
        """Adds a figure; `op` is ">=" or "<=" against `target`; value None = not measured."""
        met = None
        if value is not None and target is not None:
            met = value >= target if op == ">=" else value <= target
        self.figures.append({
            "section": section, "key": key, "name": name, "value": value, "unit": unit,
            "target": None if target is None else f"{op} {fmt(target, unit)}",
            "met": met, "note": note,
        })


def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if unit == "×":
        return f"{v:.2f}×"
    if unit == "%":
        return f"{v:.1f} %"
    a = abs(v)
    if a >= 100 or float(v).is_integer():
        s = f"{v:,.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 1:
        s = f"{v:.2f}"
    else:
        s = f"{v:.3g}"  # three significant digits: 0.0306, not 0.03
    return f"{s} {unit}".strip()


def counted_losses(before, after):
    """{counter: count} of every loss counter that moved between two scrapes."""
    losses = {f"clovisor_dropped_total{{stage={s},reason={r}}}": v
              for (s, r), v in by_labels(before, after, "clovisor_dropped_total", ("stage", "reason")).items()
              if (s, r) not in NOT_LOSSES}
    for (r,), v in by_labels(before, after, "clovisor_collector_messages_dropped_total", ("reason",)).items():
        losses[f"clovisor_collector_messages_dropped_total{{reason={r}}}"] = v
    for (r,), v in by_labels(before, after, "clovisor_collector_decode_errors_total", ("reason",)).items():
        losses[f"clovisor_collector_decode_errors_total{{reason={r}}}"] = v
    return losses


def served(raw):
    """Requests nginx served between two status reads (the second read counts itself)."""
    return raw["after"] - raw["before"] - 1


def rate(wrks):
    return sum(w["requests"] for w in wrks) / (sum(w["duration_us"] for w in wrks) / 1e6)


# --- b. request overhead ---------------------------------------------------------------------------

def cpu_per_request(raw_cpu, served_n, clk):
    """µs of CPU per request of each process in a {before, after} tick snapshot."""
    if served_n <= 0:
        return {}
    return {k: (raw_cpu["after"][k] - raw_cpu["before"][k]) / clk / served_n * 1e6 for k in raw_cpu["after"]}


def section_b(raw, machine, rep):
    pairs = machine["knobs"]["pairs"]
    clk = machine["clk_tck"]
    modes = ("untraced", "veth", "traced", "standin", "aio")
    # Arms without a tracer: only the load's figures (and the stand-in's own).
    bare = ("untraced", "standin")
    runs = {m: [] for m in modes}
    rows = []
    standins = []
    # Per traced arm: sessions the correlator counted, requests nginx served, CPU ticks.
    acc = {m: {"sessions": 0.0, "served": 0, "ticks": {}, "points": {}, "losses": {}}
           for m in modes if m not in bare}
    aio_rss = []
    for p in range(1, pairs + 1):
        row = {"pair": p}
        for mode in modes:
            path = raw / "b" / f"pair-{p}-{mode}.wrk.json"
            if not path.exists():  # a run of a script without this arm
                continue
            w = load(path)
            runs[mode].append(w)
            row[mode] = {"requests": w["requests"], "per_s": rate([w]),
                         "p50_us": w["latency_us"]["p50"], "p99_us": w["latency_us"]["p99"],
                         "errors": sum(w["errors"].values())}
            if mode == "standin":
                si = raw / "b" / f"pair-{p}-standin.standin.json"
                if si.exists():
                    standins.append(load(si))
            if mode in bare:
                continue
            before = parse_prom(raw / "b" / f"pair-{p}-{mode}.before.prom")
            after = parse_prom(raw / "b" / f"pair-{p}-{mode}.after.prom")
            sessions = delta(before, after, "clovisor_http_requests_total")
            n = served(load(raw / "b" / f"pair-{p}-{mode}.nginx.json"))
            row[mode].update({"sessions": sessions, "served": n})
            acc[mode]["sessions"] += sessions
            acc[mode]["served"] += n
            for k, v in counted_losses(before, after).items():
                acc[mode]["losses"][k] = acc[mode]["losses"].get(k, 0) + v
            for (pts,), v in by_labels(before, after, "clovisor_correlator_exchange_points_total",
                                       ("points",)).items():
                acc[mode]["points"][pts] = acc[mode]["points"].get(pts, 0) + v
            cpu_path = raw / "b" / f"pair-{p}-{mode}.cpu.json"
            if cpu_path.exists():
                cpu = load(cpu_path)
                row[mode]["cpu_us_per_request"] = cpu_per_request(cpu, n, clk)
                for k in cpu["after"]:
                    acc[mode]["ticks"][k] = acc[mode]["ticks"].get(k, 0) + cpu["after"][k] - cpu["before"][k]
            rss_path = raw / "b" / f"pair-{p}-{mode}.rss.json"
            if mode == "aio" and rss_path.exists():
                aio_rss.append(load(rss_path)["aio"]["VmHWM_kb"])
        row["ratio"] = row["traced"]["per_s"] / row["untraced"]["per_s"]
        if "aio" in row:
            row["ratio_aio"] = row["aio"]["per_s"] / row["untraced"]["per_s"]
        if "standin" in row:
            row["ratio_standin"] = row["standin"]["per_s"] / row["untraced"]["per_s"]
        rows.append(row)
    u, t = rate(runs["untraced"]), rate(runs["traced"])
    ratio = t / u
    med = lambda mode, q: statistics.median(w["latency_us"][q] for w in runs[mode])
    # Mean latency by Little's law: wrk keeps `connections` requests in flight, so the mean time per
    # request is connections / throughput. (wrk's own mean is not used: it disagrees with its own
    # request count on a loaded machine, several times higher than connections / throughput.)
    conns = machine["knobs"]["connections"]
    added = conns * 1e6 / t - conns * 1e6 / u
    spread = [r["ratio"] for r in rows]
    rep.figure("b", "throughput_ratio", "throughput traced / untraced", ratio, "×", 0.9, ">=",
               f"{fmt(t)} vs {fmt(u)} requests/s over {pairs} interleaved rounds; "
               f"per round {min(spread):.2f}–{max(spread):.2f}; veth and socket point")
    v = rate(runs["veth"]) if runs["veth"] else None
    rep.figure("b", "throughput_ratio_veth_only", "throughput traced at the veth only / untraced",
               v / u if v else None, "×", 0.95, ">=",
               f"{fmt(v)} vs {fmt(u)} requests/s, --socket-hooks off" if v else "not run")
    rep.figure("b", "throughput_ratio_socket_point", "throughput with the socket point / veth only",
               t / v if v else None, "×",
               note="what the socket point's hooks cost on top of the veth capture" if v else "not run")
    # The stand-in: the fully traced arm's CPU share taken by a busy loop, no tracer running.
    si = rate(runs["standin"]) if runs["standin"] else None
    si_spread = [r["ratio_standin"] for r in rows if "ratio_standin" in r]
    if si and standins:
        shares = [x["share"] for x in standins]
        took = sum(x["cpu_s"] for x in standins) / (len(standins) * machine["knobs"]["wrk_seconds"])
        si_note = (f"{fmt(si)} vs {fmt(u)} requests/s, per round {min(si_spread):.2f}–{max(si_spread):.2f}; "
                   f"no tracer: a busy loop (bench/standin.py) taking the share of a CPU the probe, collector "
                   f"and correlator took in the round's fully traced run ({min(shares):.2f}–{max(shares):.2f}; "
                   f"it took {took:.2f} on average), in bursts of {standins[0]['burst_ms']:g} ms — what that "
                   "much CPU costs the load on this machine, whoever takes it")
    else:
        si_note = "not run"
    rep.figure("b", "throughput_ratio_standin", "throughput beside a stand-in of the tracer's CPU / untraced",
               si / u if si else None, "×", note=si_note)
    rep.figure("b", "throughput_ratio_traced_vs_standin", "throughput traced / beside the stand-in",
               t / si if si else None, "×",
               note="what the tracer costs the load beyond its CPU time (its programs in the load's own "
                    "context, its wake-ups, its caches)" if si else "not run")
    # How steady the machine was: the untraced arm is the same load every round, so its spread is
    # the noise the ratios above sit in.
    base = [r["untraced"]["per_s"] for r in rows]
    steady = min(base) / max(base) if base and max(base) > 0 else None
    rep.figure("b", "untraced_steadiness", "untraced throughput: slowest round / fastest", steady, "×",
               note=", ".join(fmt(b) for b in base) + " requests/s by round, the same load each time"
               + ("; under 0.80× the machine's own noise is as large as what the throughput "
                  "ratios above measure: compare them with care" if steady is not None and steady < 0.8
                  else ""))
    for q in ("p50", "p99"):
        rep.figure("b", f"{q}_us", f"{q} latency: traced − untraced (median of runs)",
                   med("traced", q) - med("untraced", q), "µs", note=
                   f"{fmt(med('traced', q))} µs vs {fmt(med('untraced', q))} µs")
    rep.figure("b", "added_us_per_request", "added latency per request (mean, traced − untraced)",
               added, "µs", note=f"connections / throughput: {fmt(conns * 1e6 / t)} µs vs "
               f"{fmt(conns * 1e6 / u)} µs with wrk -c{conns}, a closed loop, so this includes the CPU "
               "the tracer takes from nginx and wrk on this machine")
    tr = acc["traced"]
    rep.figure("b", "traced_fraction", "requests traced during the traced runs",
               100.0 * tr["sessions"] / tr["served"] if tr["served"] else None, "%",
               note=f"{fmt(tr['sessions'])} sessions / {fmt(tr['served'])} requests served")

    # The all-in-one arm: one process tracing both pods.
    def ticks_ratio(arm, procs):
        tk = acc[arm]["ticks"]
        if not tk.get("nginx") or any(p not in tk for p in procs):
            return None
        return sum(tk[p] for p in procs) / tk["nginx"]

    def us_per_request(arm, procs):
        tk, n = acc[arm]["ticks"], acc[arm]["served"]
        if not n or any(p not in tk for p in procs):
            return None
        return sum(tk[p] for p in procs) / clk / n * 1e6

    def points_note(arm):
        pts = acc[arm]["points"]
        total = sum(pts.values())
        if not total:
            return "no exchange_points counted"
        return "observations joined per exchange: " + ", ".join(
            f"{k}: {100.0 * v / total:.1f} %" for k, v in sorted(pts.items()) if v)

    a = rate(runs["aio"]) if runs["aio"] else None
    aio_spread = [r["ratio_aio"] for r in rows if "ratio_aio" in r]
    rep.figure("b", "throughput_ratio_all_in_one", "all-in-one, both pods traced: throughput / untraced",
               a / u if a else None, "×", 0.9, ">=",
               f"{fmt(a)} vs {fmt(u)} requests/s, per round {min(aio_spread):.2f}–{max(aio_spread):.2f}; "
               "`clovisor all-in-one --netns <server> --netns <client>`: both veths and both "
               "applications' sockets" if a else "not run")
    sep = ticks_ratio("traced", COMPONENTS)
    aio_ratio = ticks_ratio("aio", ("aio",))
    rep.figure("b", "all_in_one_cpu_vs_nginx", "all-in-one, both pods traced: its CPU / nginx's CPU",
               aio_ratio, "×", 0.15, "<=",
               (f"{fmt(us_per_request('aio', ('aio',)), 'µs')} vs nginx "
                f"{fmt(us_per_request('aio', ('nginx',)), 'µs')} of CPU per request over the all-in-one runs; "
                f"the separate probe + collector + correlator of the fully traced runs (server pod only): "
                f"{fmt(sep, '×')}; peak RSS {fmt(max(aio_rss) / 1024 if aio_rss else None, 'MiB')}")
               if aio_ratio is not None else "not run")
    ao = acc["aio"]
    lost = sum(ao["losses"].values())
    if not ao["served"]:
        acct = "not run"
    elif ao["sessions"] >= ao["served"]:
        acct = "every request traced"
    elif ao["sessions"] + lost >= ao["served"]:
        acct = "shortfall counted in drops: " + ", ".join(f"{k} {fmt(v)}" for k, v in ao["losses"].items())
    else:
        acct = (f"NOT accounted: {fmt(ao['served'] - ao['sessions'] - lost)} requests neither traced nor "
                "counted as dropped" + ("; counted: " + ", ".join(f"{k} {fmt(v)}" for k, v in ao["losses"].items())
                                        if ao["losses"] else ""))
    # Wake-ups of the rings' readers: IRQ-work interrupts (machine-wide) per request of each arm.
    def irq_work_per_request(arm):
        n = interrupts = 0
        for p in range(1, pairs + 1):
            path = raw / "b" / f"pair-{p}-{arm}.irqwork.json"
            wrk = raw / "b" / f"pair-{p}-{arm}.wrk.json"
            iw = load(path) if path.exists() else {}
            if iw.get("before") is not None and iw.get("after") is not None and wrk.exists():
                interrupts += iw["after"] - iw["before"]
                n += load(wrk)["requests"]
        return interrupts / n if n else None

    iwi = {m: irq_work_per_request(m) if runs[m] else None for m in modes}
    rep.figure("b", "irq_work_per_request", "all-in-one: IRQ-work interrupts per request (machine-wide)",
               iwi["aio"], "", note=(
                   "untraced " + " / veth only ".join(fmt(iwi[m], "") for m in ("untraced", "veth"))
                   + f" / fully traced {fmt(iwi['traced'], '')} (/proc/interrupts' IRQ-work line over each arm's wrk runs, "
                   "per request wrk completed): a BPF program waking a ring's reader is one (an "
                   "inter-processor interrupt, on a VM a VM exit); the programs wake it once a ring is an "
                   "eighth full, and then once until it has read") if iwi["aio"] is not None
               else "not measured: the arm did not run, or /proc/interrupts lists no IRQ-work line")
    rep.figure("b", "all_in_one_traced_fraction", "all-in-one: requests traced during its runs",
               100.0 * ao["sessions"] / ao["served"] if ao["served"] else None, "%", 100.0, ">=",
               f"{fmt(ao['sessions'])} exchanges counted (clovisor_http_requests_total) / "
               f"{fmt(ao['served'])} requests served — {acct}; {points_note('aio')}" if ao["served"] else "not run")
    return {"pairs": rows, "untraced_per_s": u, "traced_per_s": t, "ratio": ratio,
            "veth_per_s": v, "all_in_one_per_s": a, "standin_per_s": si, "standins": standins,
            "cpu_ticks": {m: acc[m]["ticks"] for m in acc}, "exchange_points": {m: acc[m]["points"] for m in acc},
            "losses": {m: acc[m]["losses"] for m in acc},
            "added_mean_us": added, "wrk_mean_latency_us": {m: [w["latency_us"]["mean"] for w in runs[m]] for m in runs if runs[m]},
            "latency_us": {m: {q: med(m, q) for q in ("p50", "p90", "p99")} for m in runs if runs[m]}}


# --- a. eBPF cost ------------------------------------------------------------------------------------

def section_a(raw, rep):
    progs = load(raw / "a" / "programs.json")
    before = {p["id"]: p for p in load(raw / "a" / "stats-before.json")}
    after = {p["id"]: p for p in load(raw / "a" / "stats-after.json")}

    def cost(ids):
        ns = sum(after[i]["run_time_ns"] - before[i]["run_time_ns"] for i in ids if i in after and i in before)
        cnt = sum(after[i]["run_cnt"] - before[i]["run_cnt"] for i in ids if i in after and i in before)
        return ns, cnt

    exchanges = served(load(raw / "a" / "nginx.json"))
    ours_ns, ours_cnt = cost(progs["tc"])
    empty_ns, empty_cnt = cost(progs["empty_tc"])
    per_pkt = ours_ns / ours_cnt if ours_cnt else None
    empty_pkt = empty_ns / empty_cnt if empty_cnt else None
    note_pkts = (f"{fmt(ours_cnt)} packets through ours, {fmt(empty_cnt)} through the empty "
                 f"program, {fmt(exchanges)} exchanges")
    rep.figure("a", "tc_ns_per_packet", "tc programs: ns per packet", per_pkt, "ns",
               note=f"empty program {fmt(empty_pkt, 'ns')}; " + note_pkts)
    rep.figure("a", "tc_ratio_vs_empty", "tc programs: cost / empty program's cost",
               per_pkt / empty_pkt if per_pkt and empty_pkt else None, "×", 1.3, "<=",
               "target from issue 5")
    per_ex = ours_ns / exchanges if exchanges > 0 else None
    rep.figure("a", "tc_us_per_exchange", "tc programs: eBPF time per HTTP exchange",
               per_ex / 1000 if per_ex is not None else None, "µs", 0.5, "<=",
               f"empty program {fmt(empty_ns / exchanges / 1000 if exchanges > 0 else None, 'µs')}, "
               f"{fmt(ours_cnt / exchanges if exchanges > 0 else None)} packets per exchange")
    tr = load(raw / "a" / "test_run.json") if (raw / "a" / "test_run.json").exists() else None
    if tr:
        cov, cop, emp = tr["covered"], tr["copying"], tr.get("empty")
        floor = emp["ns_per_packet"] if emp else None
        rep.figure("a", "tc_test_run_ns_per_packet",
                   "tc programs alone (BPF_PROG_TEST_RUN, one CPU): ns per packet, socket-covered veth",
                   cov["ns_per_packet"], "ns",
                   note=f"request {fmt(cov['request_ns'], 'ns')}, response {fmt(cov['response_ns'], 'ns')}; "
                        f"empty program {fmt(floor, 'ns')} on the same packets; medians of {tr['rounds']} rounds "
                        f"of {fmt(tr['exchanges_per_round'])} exchanges over {tr['connections']} connections; "
                        "without what the live figure adds (state shared across CPUs, caches the load cleared); "
                        "it moves with the machine between runs as the live figure does")
        rep.figure("a", "tc_test_run_copying_ns_per_packet",
                   "tc programs alone (BPF_PROG_TEST_RUN, one CPU): ns per packet, uncovered veth",
                   cop["ns_per_packet"], "ns",
                   note=f"request {fmt(cop['request_ns'], 'ns')}, response {fmt(cop['response_ns'], 'ns')}: "
                        "each exchange's record carries both messages' first bytes (a pod the socket point "
                        "does not trace)")
    else:
        rep.figure("a", "tc_test_run_ns_per_packet",
                   "tc programs alone (BPF_PROG_TEST_RUN, one CPU): ns per packet, socket-covered veth",
                   None, "ns", note="not measured")
    if progs["socket"]:
        s_ns, s_cnt = cost(progs["socket"])
        e_ns, e_cnt = cost(progs.get("empty_socket", []))
        rep.figure("a", "socket_us_per_exchange", "socket point: eBPF time per HTTP exchange",
                   s_ns / exchanges / 1000 if exchanges > 0 else None, "µs", 0.8, "<=",
                   f"{fmt(s_cnt)} runs of {len(progs['socket'])} programs (every socket send and receive "
                   f"and TCP state change on the machine, wrk's included); empty programs on the same hooks "
                   f"{fmt(e_ns / exchanges / 1000 if exchanges > 0 and e_cnt else None, 'µs')}")
        rep.figure("a", "socket_runs_per_exchange", "socket point: hook runs per HTTP exchange",
                   s_cnt / exchanges if exchanges > 0 else None, "", 6.0, "<=",
                   f"{fmt(s_cnt)} runs for {fmt(exchanges)} exchanges; the hooks fire for every socket on the "
                   f"machine (wrk's and nginx's sends and receives here), traced or not")
        rep.figure("a", "socket_ns_per_run", "socket point: ns per run", s_ns / s_cnt if s_cnt else None, "ns",
                   note=f"empty programs {fmt(e_ns / e_cnt if e_cnt else None, 'ns')} per run, "
                        f"{fmt(e_cnt)} runs")
        rep.figure("a", "socket_ratio_vs_empty", "socket point: cost / empty program's cost",
                   s_ns / e_ns if e_ns else None, "×", 1.3, "<=",
                   "same hooks, same socket calls (target from issue 5)" if e_ns
                   else "not measured: no empty tracing programs ran")
    else:
        for key, name, unit, target in (
                ("socket_us_per_exchange", "socket point: eBPF time per HTTP exchange", "µs", 0.8),
                ("socket_runs_per_exchange", "socket point: hook runs per HTTP exchange", "", 6.0),
                ("socket_ratio_vs_empty", "socket point: cost / empty program's cost", "×", 1.3)):
            rep.figure("a", key, name, None, unit, target, "<=", "not measured: no socket hooks attached")
    w = load(raw / "a" / "wrk.json")
    return {"exchanges": exchanges, "wrk_per_s": rate([w]),
            "programs": {str(i): {"name": after[i]["name"],
                                  "run_time_ns": after[i]["run_time_ns"] - before[i]["run_time_ns"],
                                  "run_cnt": after[i]["run_cnt"] - before[i]["run_cnt"]}
                         for i in after if i in before},
            "ours": {"run_time_ns": ours_ns, "run_cnt": ours_cnt},
            "empty": {"run_time_ns": empty_ns, "run_cnt": empty_cnt},
            "socket_programs": progs["socket"]}


# --- d. end to end -------------------------------------------------------------------------------------

COMPONENTS = ("probe", "collector", "correlator")
# Observation points that see an exchange in (d): the probe traces the server pod, whose exchanges
# cross its veth and nginx's socket.
D_POINTS = 2


def section_d(raw, machine, rep):
    clk = machine["clk_tck"]
    steps = []
    ring_events = traced_all = conn_events = 0
    for c in machine["knobs"]["ramp"]:
        f = raw / "d" / f"step-{c}"
        w = load(f"{f}.wrk.json")
        before, after = parse_prom(f"{f}.before.prom"), parse_prom(f"{f}.after.prom")
        n = served(load(f"{f}.nginx.json"))
        complete = delta(before, after, "clovisor_http_requests_total",
                         lambda l: l.get("status_code") != "invalid")
        incomplete = delta(before, after, "clovisor_http_requests_total",
                           lambda l: l.get("status_code") == "invalid")
        losses = counted_losses(before, after)
        lost = sum(losses.values())
        traced = complete + incomplete
        events = delta(before, after, "clovisor_probe_ring_events_total")
        ring_events += events
        # One FLOW_END per connection and point (the kernel counts each connection it ends):
        # per connection, not per exchange.
        conn_events += delta(before, after, "clovisor_probe_kernel_total",
                             lambda l: l.get("counter") in ("connections_ended", "socket_connections_ended"))
        traced_all += traced
        if traced > n and lost == 0:
            status = f"all traced, {traced - n:.0f} sessions more than requests served"
        elif traced >= n and lost == 0:
            status = "all traced"
        elif traced + lost >= n:
            status = "shortfall counted in drops"
        else:
            status = f"NOT accounted: {n - traced - lost:.0f} requests neither traced nor counted as dropped"
        cpu = load(f"{f}.cpu.json")
        cpu_per_1k = {k: ((cpu["after"][k] - cpu["before"][k]) / clk) / n * 1000 if n > 0 else None
                      for k in cpu["after"]}
        cpu_us = {k: v * 1000 if v is not None else None for k, v in cpu_per_1k.items()}
        steps.append({
            "connections": c, "wrk_requests": w["requests"], "wrk_errors": sum(w["errors"].values()),
            "served": n, "per_s": n / (w["duration_us"] / 1e6),
            "p50_us": w["latency_us"]["p50"], "p99_us": w["latency_us"]["p99"],
            "traced_complete": complete, "traced_incomplete": incomplete, "losses": losses,
            "lost": lost, "status": status, "accounted": not status.startswith("NOT"),
            "ring_events": events, "events_per_exchange": events / traced if traced else None,
            "cpu_s_per_1k": cpu_per_1k, "cpu_us_per_exchange": cpu_us,
            "exchange_points": {k[0]: v for k, v in by_labels(
                before, after, "clovisor_correlator_exchange_points_total", ("points",)).items()},
        })
    ok = [s for s in steps if s["accounted"] and s["wrk_errors"] == 0]
    best = max(ok, key=lambda s: s["per_s"]) if ok else None
    if best:
        how = ("every request traced" if best["status"].startswith("all traced")
               else "shortfall counted in clovisor_dropped_total")
        note = (f"at {best['connections']} connections: {fmt(best['served'])} requests served, "
                f"{fmt(best['traced_complete'])} traced complete + {fmt(best['traced_incomplete'])} incomplete, "
                f"{fmt(best['lost'])} counted as dropped — {how}")
    else:
        note = "no step of the ramp had every request accounted for"
    unaccounted = [s["connections"] for s in steps if not s["accounted"]]
    if unaccounted:
        note += f"; NOT accounted at {unaccounted} connections"
    rep.figure("d", "accounted", "every request accounted for (traced + counted drops ≥ served), every step",
               f"{len(steps) - len(unaccounted)} of {len(steps)} steps", "", note=
               "; ".join(f"{s['connections']} conn.: {s['status']}" for s in steps))
    rep.figures[-1]["met"] = not unaccounted
    rep.figures[-1]["target"] = "all steps"
    served_all = sum(s["served"] for s in steps)
    traced_ok = sum(min(s["traced_complete"], s["served"]) for s in steps)
    rep.figure("d", "traced_percent", "requests traced complete, whole ramp",
               100.0 * traced_ok / served_all if served_all else None, "%", 99.0, ">=",
               f"{fmt(traced_ok)} of {fmt(served_all)} requests served; a shortfall must show in the counted drops (table below)")
    rep.figure("d", "max_accounted_rps", "highest request rate with every request accounted for",
               best["per_s"] if best else None, "requests/s", note=note)
    at = f"at {best['connections']} connections" if best else ""
    for comp in COMPONENTS + ("nginx",):
        v = best["cpu_us_per_exchange"].get(comp) if best else None
        rep.figure("d", f"cpu_us_per_exchange_{comp}", f"CPU per HTTP exchange: {comp}", v, "µs",
                   None if comp == "nginx" else 2.0, "<=",
                   f"nginx itself, for comparison, {at}" if comp == "nginx" else
                   f"{at}; utime + stime of all its threads over the step / requests served")
    nginx_us = best["cpu_us_per_exchange"].get("nginx") if best else None
    tracing = sum(best["cpu_us_per_exchange"][c] for c in COMPONENTS) if best else None
    rep.figure("d", "tracing_cpu_vs_nginx", "CPU of probe + collector + correlator / nginx's CPU",
               tracing / nginx_us if nginx_us else None, "×", 0.15, "<=",
               f"{fmt(tracing, 'µs')} vs {fmt(nginx_us, 'µs')} per request, {at}; every step in the table below"
               if nginx_us else "not measured")
    # What span export adds to the correlator's figure above (which has export off), measured apart.
    export = correlator_export(raw, rep)
    rss = load(raw / "d" / "rss.json")
    idle = load(raw / "d" / "rss-idle.json")
    rss_targets = {"probe": 50.0, "correlator": 128.0}
    for comp in COMPONENTS:
        rep.figure("d", f"peak_rss_{comp}", f"peak RSS: {comp}", rss[comp]["VmHWM_kb"] / 1024, "MiB",
                   rss_targets.get(comp), "<=",
                   f"VmHWM over the ramp (reset after start-up); {fmt(idle[comp]['VmRSS_kb'] / 1024, 'MiB')} "
                   f"when idle, {fmt(idle[comp]['VmHWM_kb'] / 1024, 'MiB')} at its start-up peak")
    maps = load(raw / "d" / "probe-maps.json")
    rep.figure("d", "probe_bpf_maps_mib", "probe's BPF maps (kernel memory, not in its RSS)",
               sum(m.get("bytes_memlock", 0) for m in maps) / 2**20, "MiB",
               note=", ".join(f"{m['name']} {fmt(m.get('bytes_memlock', 0) / 2**20, 'MiB')}"
                              for m in sorted(maps, key=lambda m: -m.get("bytes_memlock", 0))
                              if m.get("bytes_memlock", 0) >= 2**16) + ", the rest under 64 KiB each")
    # Observation points that see each exchange here: the server pod's veth and nginx's socket.
    points = D_POINTS
    observed = {}
    for st in steps:
        for k, v in st["exchange_points"].items():
            observed[k] = observed.get(k, 0) + v
    merged = sum(v for v in observed.values())
    per_ex = ring_events / traced_all if traced_all else None
    rep.figure("d", "events_per_exchange", "kernel → user events per HTTP exchange (all points)",
               per_ex, "", note=f"{fmt(ring_events)} ring buffer events for {fmt(traced_all)} traced exchanges, "
               "all steps")
    per_ex_point = (ring_events - conn_events) / traced_all / points if traced_all else None
    rep.figure("d", "events_per_exchange_point", "kernel → user events per HTTP exchange and point",
               per_ex_point, "", 1.0, "<=",
               f"the events over the {points} points that see each exchange here (the server pod's veth and "
               f"nginx's socket), less the {fmt(conn_events)} that ended connections (one per connection "
               f"and point, counted by the BPF programs, over a whole keep-alive connection's exchanges); "
               f"exchanges by observations joined: "
               + (", ".join(f"{k}: {100.0 * v / merged:.1f} %" for k, v in sorted(observed.items()))
                  if merged else "not counted"))
    return {"steps": steps, "rss_kb": rss, "rss_idle_kb": idle, "probe_maps": maps,
            "correlator_export": export}


# --- c. decode throughput ----------------------------------------------------------------------------------

def section_c(raw, rep):
    d = load(raw / "c" / "decode.json")
    t = load(raw / "c" / "tshark.json")
    ours = d["records"]["complete_exchanges_per_cpu_s"]
    ours_pcap = d["pcap"]["complete_exchanges_per_cpu_s"]
    one, many = t["one_copy"], t["many_copies"]
    # tshark's start-up (loading every dissector) is paid once per run: its rate is the marginal
    # one, the extra responses of the many-copy file over the extra CPU time.
    if t["copies"] > 1 and many["cpu_s"] > one["cpu_s"]:
        ts = (many["responses"] - one["responses"]) / (many["cpu_s"] - one["cpu_s"])
        ts_note = (f"marginal: ({fmt(many['responses'])} − {fmt(one['responses'])}) responses / "
                   f"({many['cpu_s']:.2f} − {one['cpu_s']:.2f}) CPU s, {t['copies']} copies vs 1")
    else:
        ts = many["responses"] / many["cpu_s"] if many["cpu_s"] > 0 else None
        ts_note = "whole run including start-up (too few copies for a marginal rate)"
    rep.figure("c", "decode_per_cpu_s", "collector: HTTP exchanges decoded per CPU second (per core)",
               ours, "exchanges/s", 1e6, ">=",
               f"raw records → FlowTable → sessions; {d['records']['rounds']} rounds of "
               f"{d['complete_exchanges_per_round']} exchanges in {d['records']['cpu_s']:.2f} CPU s")
    if many["responses"] != t["copies"] * one["responses"]:
        ts_note += (f"; WARNING: {many['responses']} responses in {t['copies']} copies of a file with "
                    f"{one['responses']}: the copies were not all dissected as new conversations")
    rep.figure("c", "tshark_per_cpu_s", "tshark: HTTP responses dissected per CPU second", ts,
               "exchanges/s", note=ts_note)
    rep.figure("c", "decode_vs_tshark", "collector / tshark", ours / ts if ts else None, "×", 50.0, ">=")
    rep.figure("c", "pcap_decode_vs_tshark", "collector from the capture bytes / tshark (same input)",
               ours_pcap / ts if ts else None, "×",
               note=f"{fmt(ours_pcap)} exchanges per CPU second including pcap parsing and TCP tracking")
    rep.figure("c", "same_work", "exchanges per copy: collector vs tshark",
               f"{d['complete_exchanges_per_round']} vs {one['responses']}", "",
               note="the two must see (about) the same exchanges for the ratio to mean anything")
    return {"decode": d, "tshark": t, "tshark_per_cpu_s": ts,
            "decode_protocols": decode_protocols(raw, rep),
            "correlator_open": correlator_open(raw, rep)}


def decode_protocols(raw, rep):
    """Exchanges decoded per CPU second, protocol by protocol and all together, on real captures
    of every decoded protocol (collector/examples/decode_bench.rs --phase protocols)."""
    path = raw / "c" / "decode-protocols.json"
    if not path.exists():
        return None
    d = load(path)
    for name, row in d["protocols"].items():
        r = row.get("records")
        if r is None:
            continue
        rep.figure("c", f"decode_{name.replace('/', '_')}_per_cpu_s",
                   f"collector: {name} exchanges decoded per CPU second", r["complete_exchanges_per_cpu_s"],
                   "exchanges/s",
                   note=(f"the flows of {name} alone, {r['rounds']} rounds of {row['complete_exchanges_per_round']} "
                         f"exchanges ({row['records_per_round']} records) in {r['cpu_s']:.2f} CPU s"))
    r = d["records"]
    if r is not None:
        rep.figure("c", "decode_all_per_cpu_s", "collector: all protocols together, exchanges per CPU second",
                   r["complete_exchanges_per_cpu_s"], "exchanges/s",
                   note=(f"{d['complete_exchanges_per_round']} exchanges per round from "
                         f"{len(d['files'])} captures, {r['rounds']} rounds in {r['cpu_s']:.2f} CPU s"))
    return d


def correlator_export(raw, rep):
    """What span export costs the correlator, which section d's pipeline leaves out (it exports
    nothing): correlator/examples/ingest_bench.rs alone, spans encoded and batched as the exporter
    does (not sent) against export off, alternated rounds (run by scripts/bench.sh after section c;
    listed in d)."""
    runs = {"none": [], "encode": []}
    for path in sorted((raw / "c").glob("correlator-export-*.json")):
        o = load(path)
        runs["none" if o["export"] == "none" else "encode"].append(o)
    if not runs["none"] or not runs["encode"]:
        return None

    def us(rs):
        n = sum(r["exchanges"] for r in rs)
        return 1e6 * sum(r["cpu_s"] for r in rs) / n if n else None

    off, on = us(runs["none"]), us(runs["encode"])
    pairs = [1e6 * (e["cpu_s"] / e["exchanges"] - o["cpu_s"] / o["exchanges"])
             for o, e in zip(runs["none"], runs["encode"]) if o["exchanges"] and e["exchanges"]]
    span_bytes = [e["export_bytes"] / e["exchanges"] for e in runs["encode"]
                  if e.get("export_bytes") and e["exchanges"]]
    # Listed with section d's per-component figures: the correlator's CPU there has export off.
    rep.figure("d", "correlator_alone_us_export_off",
               "correlator alone: CPU per exchange, span export off (as in the pipeline's runs)", off, "µs",
               note=(f"correlator/examples/ingest_bench.rs --views merged --client outside --rate 25000, "
                     f"{len(runs['none'])} runs; one thread, no gRPC"))
    rep.figure("d", "correlator_alone_us_spans",
               "correlator alone: CPU per exchange, spans encoded and batched for export", on, "µs",
               note=(f"the same, alternated with it, the exporter's OTLP requests made but not sent"
                     + (f"; {sum(span_bytes) / len(span_bytes):,.0f} bytes of OTLP per exchange" if span_bytes else "")
                     + (f"; export's part per pair {min(pairs):.2f}–{max(pairs):.2f} µs" if pairs else "")))
    return {"off_us": off, "spans_us": on, "pairs_us": pairs}


def correlator_open(raw, rep):
    """The correlator's memory with many exchanges open in its join at once
    (correlator/examples/ingest_bench.rs --open N, run by scripts/bench.sh after section c)."""
    path = raw / "c" / "correlator-open.json"
    if not path.exists():
        return None
    o = load(path)
    n = o["exchanges"]
    two, one = o["two_views"], o["one_view"]
    # Listed with section f's memory figures (the same question, asked of the join alone).
    rep.figure("f", "correlator_open_mib",
               f"memory with {n // 1000}k concurrent open exchanges in the join", two["mib"], "MiB",
               note=(f"correlator resident memory (VmRSS) added by {n:,} exchanges open in the join and "
                     f"the store at once, both views of each joined: {two['bytes_per_exchange']:,.0f} "
                     f"bytes per exchange ({fmt(one['mib'], 'MiB')} with one view each); "
                     "correlator/examples/ingest_bench.rs, in one process without gRPC"))
    rep.figures[-1]["target"] = "bounded, reported"
    return o


# --- e. untraced namespace ----------------------------------------------------------------------------------

def section_e(raw, machine, rep):
    pairs = machine["knobs"]["pairs"]
    rows = []
    dd = {"with": [], "without": []}
    wrk = {"with": [], "without": []}
    ring = sessions = 0.0
    pipeline_cpu_s = wall_s = 0.0
    clk = machine["clk_tck"]
    for p in range(1, pairs + 1):
        row = {"round": p}
        for mode in ("without", "with"):
            f = raw / "e" / f"round-{p}-{mode}"
            d, w = load(f"{f}.dd.json"), load(f"{f}.wrk.json")
            dd[mode].append(d)
            wrk[mode].append(w)
            row[mode] = {"dd_bytes_per_cpu_s": d["bytes"] / d["cpu_s"] if d["cpu_s"] > 0 else None,
                         "dd_cpu_s": d["cpu_s"], "wrk_per_s": rate([w]),
                         "wrk_errors": sum(w["errors"].values())}
            if mode == "with":
                before, after = parse_prom(f"{f}.before.prom"), parse_prom(f"{f}.after.prom")
                ring += delta(before, after, "clovisor_probe_ring_events_total")
                sessions += delta(before, after, "clovisor_http_requests_total")
                cpu_path = Path(f"{f}.cpu.json")
                if cpu_path.exists():
                    cpu = load(cpu_path)
                    pipeline_cpu_s += sum(cpu["after"][c] - cpu["before"][c] for c in COMPONENTS) / clk
                    wall_s += cpu["wall_s"]
        a, b = row["with"], row["without"]
        row["dd_ratio"] = (a["dd_bytes_per_cpu_s"] / b["dd_bytes_per_cpu_s"]
                           if a["dd_bytes_per_cpu_s"] and b["dd_bytes_per_cpu_s"] else None)
        row["wrk_ratio"] = a["wrk_per_s"] / b["wrk_per_s"] if b["wrk_per_s"] else None
        rows.append(row)

    def dd_rate(runs):
        cpu = sum(r["cpu_s"] for r in runs)
        return sum(r["syscalls"] for r in runs) / cpu if cpu > 0 else None

    dw, dn = dd_rate(dd["with"]), dd_rate(dd["without"])
    spread = [r["dd_ratio"] for r in rows if r["dd_ratio"] is not None]
    rep.figure("e", "untraced_syscall_ratio",
               "untraced namespace, syscall loop: throughput with the probe running / without",
               dw / dn if dw and dn else None, "×", 0.97, ">=",
               f"{fmt(dw)} vs {fmt(dn)} syscalls per CPU second (`dd bs=1`, a read and a write per byte, "
               f"{fmt(machine['knobs'].get('dd_count'))} bytes a run, user + system time), {pairs} interleaved rounds"
               + (f"; per round {min(spread):.2f}–{max(spread):.2f}" if spread else ""))
    ww, wn = rate(wrk["with"]), rate(wrk["without"])
    spread = [r["wrk_ratio"] for r in rows if r["wrk_ratio"] is not None]
    rep.figure("e", "untraced_socket_ratio",
               "untraced namespace, loopback HTTP on an untraced port: throughput with the probe running / without",
               ww / wn if wn else None, "×", 0.97, ">=",
               f"{fmt(ww)} vs {fmt(wn)} requests/s, wrk → nginx on 127.0.0.1:8080 inside the namespace"
               + (f"; per round {min(spread):.2f}–{max(spread):.2f}" if spread else ""))
    rep.figure("e", "untraced_events", "kernel → user events caused by the untraced namespace", ring, "",
               0.0, "<=", f"ring buffer events while it ran with the probe running; {fmt(sessions)} sessions traced")
    rep.figure("e", "idle_pipeline_cpu", "CPU the idle pipeline took meanwhile (probe + collector + correlator)",
               100.0 * pipeline_cpu_s / wall_s if wall_s > 0 else None, "%", note=
               f"{pipeline_cpu_s:.2f} CPU s over {wall_s:.1f} s of runs with the probe running, in % of one core: "
               "taken from the cores dd, wrk and nginx share")
    return {"rounds": rows, "dd_syscalls_per_cpu_s": {"with": dw, "without": dn},
            "wrk_per_s": {"with": ww, "without": wn}, "ring_events": ring}


# --- f. memory with many open flows ------------------------------------------------------------------------

def section_f(raw, machine, rep):
    offered = machine["knobs"].get("flows")
    rss = {k: load(raw / "f" / f"rss-{k}.json") for k in ("idle", "exchanges", "open")}
    prom = {k: parse_prom(raw / "f" / f"{k}.prom") for k in ("idle", "exchanges", "open")}
    flood = {k: load(raw / "f" / f"flood-{k}.json") for k in ("exchanges", "open")}
    mib = lambda kb: kb / 1024

    def gauge(p, name):
        return sum(v for (n, _), v in p.items() if n == name)

    # Correlator: the exchanges of the first flood, held in the join.
    held = gauge(prom["exchanges"], "clovisor_correlator_join_held")
    received = delta(prom["idle"], prom["exchanges"], "clovisor_correlator_sessions_received_total")
    stored = gauge(prom["exchanges"], "clovisor_correlator_store_sessions")
    corr = rss["exchanges"]["correlator"]["VmRSS_kb"]
    corr_idle = rss["idle"]["correlator"]["VmRSS_kb"]
    rep.figure("f", "correlator_rss_held_exchanges",
               f"correlator RSS holding {fmt(offered)} exchanges in its join", mib(corr), "MiB", note=
               f"{fmt(held)} exchanges held (clovisor_correlator_join_held), {fmt(received)} sessions received, "
               f"{fmt(stored)} in the REST store (its capacity); {fmt(mib(corr_idle), 'MiB')} before, "
               f"peak {fmt(mib(rss['exchanges']['correlator']['VmHWM_kb']), 'MiB')}; "
               f"join sized for them (CLOVISOR_JOIN_MAX_ENTRIES, retention 600 s)")
    rep.figures[-1]["target"] = "bounded, reported"
    rep.figure("f", "correlator_bytes_per_exchange", "correlator: bytes per held exchange",
               (corr - corr_idle) * 1024 / held if held else None, "B",
               note="RSS growth over the exchanges held (join entry, REST store share, metrics)")
    # Collector: the open flows of the second flood (the first flood's flows all ended).
    evicted = {k[0]: v for k, v in by_labels(prom["exchanges"], prom["open"],
                                              "clovisor_collector_flows_evicted_total", ("reason",)).items()}
    open_held = offered - sum(evicted.values()) if offered is not None else None
    coll = rss["open"]["collector"]["VmRSS_kb"]
    coll_before = rss["exchanges"]["collector"]["VmRSS_kb"]
    ev_note = (", ".join(f"{v:,.0f} evicted ({k})" for k, v in sorted(evicted.items()))
               + " — counted in clovisor_collector_flows_evicted_total") if evicted else "none evicted"
    rep.figure("f", "collector_rss_open_flows",
               f"collector RSS with {fmt(offered)} open flows offered", mib(coll), "MiB", note=
               f"{fmt(open_held)} held, each with a request waiting for its response; {ev_note}; "
               f"{fmt(mib(coll_before), 'MiB')} before (after the exchanges), "
               f"{fmt(mib(rss['idle']['collector']['VmRSS_kb']), 'MiB')} idle, peak "
               f"{fmt(mib(rss['open']['collector']['VmHWM_kb']), 'MiB')}")
    rep.figures[-1]["target"] = "bounded, reported"
    per_flow = (coll - coll_before) * 1024 / open_held if open_held else None
    rep.figure("f", "collector_bytes_per_open_flow", "collector: bytes per open flow", per_flow, "B",
               note=f"RSS growth over the flows held; × {fmt(offered)} = "
                    f"{fmt(per_flow * offered / 2**20 if per_flow else None, 'MiB')}" if offered else "")
    rep.figure("f", "flood_records", "synthetic probe records delivered (acknowledged)",
               flood["exchanges"]["acked"] + flood["open"]["acked"], "", note=
               f"exchanges: {fmt(flood['exchanges']['records'])} records in {flood['exchanges']['seconds']:.1f} s; "
               f"open: {fmt(flood['open']['records'])} in {flood['open']['seconds']:.1f} s "
               "(collector/examples/flood.rs over the real probe → collector protocol)")
    return {"rss_kb": rss, "flood": flood, "join_held": held, "open_flows_held": open_held,
            "evicted": evicted}


# --- output ----------------------------------------------------------------------------------------------------

TITLES = {
    "a": "a. eBPF cost (kernel BPF run statistics, same veth, same load)",
    "b": "b. Request overhead (wrk → nginx pod, untraced vs traced, interleaved)",
    "c": "c. Collector decode throughput vs tshark (same captures)",
    "d": "d. End to end (separate probe, collector, correlator processes)",
    "e": "e. A process in an untraced namespace (with the probe running vs without, interleaved)",
    "f": "f. Memory with many open flows and held exchanges (collector and correlator, synthetic records)",
}


def met_text(f):
    if f["value"] is None:
        return "not measured"
    if f["met"] is None:
        return ""
    return "met" if f["met"] else "**not met**"


def markdown(machine, rep, details):
    m = machine
    marks = m.get("loadavg_by_section", [])
    loads = ", ".join(f"{x['section']}: {x['loadavg']}" for x in marks)
    # Each section's duration: from its mark to the next one ("end" closes the last).
    timed = [x for x in marks if "unix_s" in x]
    durations = ", ".join(f"{x['section']}: {y['unix_s'] - x['unix_s']} s" for x, y in zip(timed, timed[1:]))
    if len(timed) >= 2:
        durations += f" (total {timed[-1]['unix_s'] - timed[0]['unix_s']} s, without the build)"
    lines = [
        "# Clovisor-rs benchmark report", "",
        "Every figure below was measured side by side in this one run (`sudo bash scripts/bench.sh`).",
        "Targets are what issue 10 reports against (issue 5's where issue 10 sets none), never a gate.",
        "See docs/benchmarks.md.", "",
        "| machine | |", "| --- | --- |",
        f"| date | {m['date']} |", f"| commit | {m['commit']} |", f"| CPU | {m['cpu']} × {m['nproc']} |",
        f"| kernel | {m['kernel']} |",
        f"| load average (1, 5, 15 min) at the start of each section | {loads} |",
        f"| duration of each section | {durations or '—'} |",
        f"| wrk | {m['wrk']} |",
        f"| knobs | {json.dumps(m['knobs'])} |", "",
    ]
    for sec in ("a", "b", "c", "d", "e", "f"):
        if not any(f["section"] == sec for f in rep.figures):
            continue
        lines += [f"## {TITLES[sec]}", "", "| figure | value | target | | notes |", "| --- | --- | --- | --- | --- |"]
        for f in rep.figures:
            if f["section"] != sec:
                continue
            value = fmt(f["value"], f["unit"]) if f["value"] is not None else "—"
            lines.append(f"| {f['name']} | {value} | {f['target'] or ''} | {met_text(f)} | {f['note']} |")
        lines.append("")
        if sec == "b":
            lines += ["| round | untraced req/s | veth only req/s | traced req/s | stand-in req/s | all-in-one req/s | "
                      "ratio (traced / stand-in / aio) | p50 µs (u / v / t / s / aio) | p99 µs (u / v / t / s / aio) | "
                      "wrk errors (u / v / t / s / aio) |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            none = {"per_s": None, "p50_us": "—", "p99_us": "—", "errors": "—"}
            for r in details["b"]["pairs"]:
                u, t = r["untraced"], r["traced"]
                v, a, sd = r.get("veth", none), r.get("aio", none), r.get("standin", none)
                ra = f"{r['ratio_aio']:.2f}" if "ratio_aio" in r else "—"
                rs = f"{r['ratio_standin']:.2f}" if "ratio_standin" in r else "—"
                lines.append(f"| {r['pair']} | {fmt(u['per_s'])} | {fmt(v['per_s'])} | {fmt(t['per_s'])} | "
                             f"{fmt(sd['per_s'])} | {fmt(a['per_s'])} | {r['ratio']:.2f} / {rs} / {ra} | "
                             f"{u['p50_us']} / {v['p50_us']} / {t['p50_us']} / {sd['p50_us']} / {a['p50_us']} | "
                             f"{u['p99_us']} / {v['p99_us']} / {t['p99_us']} / {sd['p99_us']} / {a['p99_us']} | "
                             f"{u['errors']} / {v['errors']} / {t['errors']} / {sd['errors']} / {a['errors']} |")
            lines.append("")
        if sec == "e" and "e" in details:
            lines += ["| round | syscalls per CPU s: without / with | ratio | loopback req/s: without / with | ratio | "
                      "wrk errors (without / with) |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for r in details["e"]["rounds"]:
                a, b = r["with"], r["without"]
                two = lambda x: fmt(2 * x) if x is not None else "—"
                ratio = lambda x: f"{x:.3f}" if x is not None else "—"
                lines.append(f"| {r['round']} | {two(b['dd_bytes_per_cpu_s'])} / {two(a['dd_bytes_per_cpu_s'])} | "
                             f"{ratio(r['dd_ratio'])} | {fmt(b['wrk_per_s'])} / {fmt(a['wrk_per_s'])} | "
                             f"{ratio(r['wrk_ratio'])} | {b['wrk_errors']} / {a['wrk_errors']} |")
            lines.append("")
        if sec == "d":
            lines += ["| connections | served req/s | served | traced (complete + incomplete) | counted drops | "
                      "accounting | events/exchange | CPU µs per exchange: probe / collector / correlator / nginx | p50 / p99 µs |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            for s in details["d"]["steps"]:
                cpu = " / ".join(fmt(s["cpu_us_per_exchange"][k]) if s["cpu_us_per_exchange"].get(k) is not None
                                 else "—" for k in COMPONENTS + ("nginx",))
                drops = fmt(s["lost"]) + (" (" + ", ".join(f"{k} {fmt(v)}" for k, v in s["losses"].items()) + ")"
                                          if s["losses"] else "")
                lines.append(f"| {s['connections']} | {fmt(s['per_s'])} | {fmt(s['served'])} | "
                             f"{fmt(s['traced_complete'])} + {fmt(s['traced_incomplete'])} | {drops} | {s['status']} | "
                             f"{fmt(s['events_per_exchange'])} | {cpu} | {s['p50_us']} / {s['p99_us']} |")
            lines.append("")
    return "\n".join(lines)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    raw, out = Path(sys.argv[1]), Path(sys.argv[2])
    machine = load(raw / "machine.json")
    rep = Report()
    details = {}
    for sec, fn in (("a", lambda: section_a(raw, rep)), ("b", lambda: section_b(raw, machine, rep)),
                    ("c", lambda: section_c(raw, rep)), ("d", lambda: section_d(raw, machine, rep)),
                    ("e", lambda: section_e(raw, machine, rep)), ("f", lambda: section_f(raw, machine, rep))):
        if sec in ("e", "f") and not (raw / sec).is_dir():  # raw data of a script without the section
            continue
        details[sec] = fn()
    for f in rep.figures:
        if isinstance(f["value"], float) and not math.isfinite(f["value"]):
            f["value"], f["met"] = None, None
        f["status"] = ("not measured" if f["value"] is None else "reported" if f["met"] is None
                       else "met" if f["met"] else "not met")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(
        {"machine": machine, "figures": rep.figures, "details": details}, indent=2) + "\n")
    (out / "report.md").write_text(markdown(machine, rep, details) + "\n")


if __name__ == "__main__":
    main()
