#!/usr/bin/env python3
"""Client-efficiency benchmark: stampede against wrk on one core.

What it measures: requests per client CPU-second (user + sys of the client
process, read from the kernel's rusage of that very child via os.wait4), for

  (a) wrk -t1 -c50 -d{duration}s            closed model, 50 connections
  (b) stampede closed model, concurrency 50   1 agent, 1 worker thread
  (c) stampede open model, fixed rate         1 agent, 1 worker thread
  (c') the same with `batch_window` (--batch-window, default 1 ms): the
       pacer starts the arrivals due within the window in one wake-up

and with oha on PATH (or --oha PATH), interleaved in the same repetitions:

  (f) oha -c50 -z{duration}s                   closed model, 50 connections
  (g) oha -q{rate} --latency-correction        open model at the same rate
                                              as (c), latency from the
                                              intended send time

and with --https, interleaved in the same repetitions:

  (d) wrk -t1 -c50 over https://               closed model, 50 connections
  (e) stampede closed model over https://      concurrency 50, the plan
                                              trusting the target's CA

against a second built-in target serving TLS (`stampede target --tls`, a
certificate from a CA generated at its start), pinned like the first.

against stampede's built-in HTTP/1.1 target. The target is pinned to one core
(`taskset -c 0`), every client to another (`taskset -c 1`). The three runs are
interleaved in every repetition so that drift on the machine (other builds,
thermal, page cache) hits all of them alike.

stampede is measured as a whole process: coordinator, in-process agent, gRPC
on loopback, the ~1 s common-start lead, the drain and the report writing are
all in its CPU time. Its request count is report.json's totals.requests.

Usage:  python3 benchmarks/run.py [--reps N] [--duration S] [--quick] [--bin PATH] [--https] [--oha PATH | --no-oha]
Raw results go to benchmarks/results/<timestamp>.json.

Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

# An open-model run counts as not keeping its schedule (the client was
# measured, not the target) past these shares; the same bound stampede itself
# uses for its `invalid` verdict (docs/plan.md, "Open model").
SATURATION_SHARE = 0.01


# --------------------------------------------------------------------------
# Environment


def die(msg: str) -> "None":
    print(f"run.py: {msg}", file=sys.stderr)
    sys.exit(2)


def need_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if not path:
        die(f"`{name}` not found; {hint}")
    return path


def machine_info() -> dict:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        info["wrk_version"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0].strip()
    except (OSError, IndexError):
        pass
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip() != ""
        info["git_rev"] = rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def build() -> Path:
    """cargo build --release -p stampede-coordinator; returns the binary."""
    cargo = need_tool("cargo", "install Rust or pass --bin PATH")
    cmd = [cargo, "build", "--release", "-p", "stampede-coordinator"]
    print("building:", " ".join(cmd[1:]), f"(CARGO_TARGET_DIR={os.environ.get('CARGO_TARGET_DIR', '<default>')})", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    meta = subprocess.run([cargo, "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT, capture_output=True, text=True, check=True)
    binary = Path(json.loads(meta.stdout)["target_directory"]) / "release" / "stampede"
    if not binary.is_file():
        die(f"build finished but {binary} is missing")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            die(f"the target exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    die(f"the target did not listen on port {port} within {timeout}s")


# --------------------------------------------------------------------------
# CPU accounting


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a running process (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the comm field: state is fields[0], utime fields[11], stime fields[12].
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def core_busy_s(cores: list[int]) -> dict[int, float]:
    """Busy (non-idle, non-iowait) seconds per core since boot, from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        m = re.match(r"cpu(\d+)\s+(.*)", line)
        if m and int(m.group(1)) in cores:
            v = [int(x) for x in m.group(2).split()]
            user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
            out[int(m.group(1))] = (user + nice + system + irq + softirq + steal) / CLK_TCK
    return out


def run_measured(cmd: list[str], out_path: Path, env: dict | None = None) -> dict:
    """Runs `cmd` as a child, waits with os.wait4 and returns its rusage."""
    with open(out_path, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
    return {
        "exit": proc.returncode,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "wall_s": wall,
        "voluntary_ctx_switches": ru.ru_nvcsw,
        "involuntary_ctx_switches": ru.ru_nivcsw,
        "output": out_path.read_text(errors="replace"),
    }


# --------------------------------------------------------------------------
# Clients


def parse_wrk_time(s: str) -> float:
    """'186.00us' / '1.15ms' / '2.00s' / '1.00m' -> milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s.strip())
    if not m:
        raise ValueError(f"unrecognised wrk time {s!r}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[m.group(2)]
    return float(m.group(1)) * scale


def parse_wrk(text: str) -> dict:
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError("no 'N requests in' line in wrk's output:\n" + text)
    res = {
        "requests": int(m.group(1)),
        "elapsed_s": parse_wrk_time(m.group(2) + m.group(3)) / 1e3,
    }
    m = re.search(r"Requests/sec:\s*([\d.]+)", text)
    res["throughput_rps"] = float(m.group(1)) if m else res["requests"] / res["elapsed_s"]
    for pct, key in (("50", "p50_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s*{pct}%\s+(\S+)", text, re.M)
        res[key] = parse_wrk_time(m.group(1)) if m else None
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors += int(m.group(1))
    res["errors"] = errors
    return res


def oha_json_flags(oha: str) -> list[str]:
    """oha 1.x prints JSON with `--output-format json`; older ones with `-j`."""
    help_text = subprocess.run([oha, "--help"], capture_output=True, text=True).stdout
    return ["--output-format", "json"] if "--output-format" in help_text else ["-j"]


def parse_oha(text: str) -> dict:
    """oha's JSON summary. Requests are the responses it received (its
    statusCodeDistribution); requests cut off by the end of `-z` are reported
    by oha as an error ("aborted due to deadline") and are not counted, like
    wrk's unfinished requests."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in oha's output:\n" + text)
    j = json.loads(text[start:])
    requests = sum(int(v) for v in j.get("statusCodeDistribution", {}).values())
    errors = {k: int(v) for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k}
    pct = j.get("latencyPercentiles", {})
    ms = lambda k: pct[k] * 1e3 if pct.get(k) is not None else None
    elapsed = j["summary"]["total"]
    return {"requests": requests, "elapsed_s": elapsed, "errors": sum(errors.values()),
            "throughput_rps": requests / elapsed if elapsed else float("nan"),
            "p50_ms": ms("p50"), "p90_ms": ms("p90"), "p99_ms": ms("p99")}


# The `--checks` run's step: a status check and a body check on every
# response (the body is `ok`), so both the head and the body are kept.
CHECKS = "checks: [ { name: status-ok, status: 200 }, { name: says-ok, body_contains: ok } ]"


def plan_yaml(name: str, port: int, duration: int, load: str, checks: bool = False, tls_ca: Path | None = None) -> str:
    extra = f", {CHECKS}" if checks else ""
    scheme = "https" if tls_ca else "http"
    tls = f"tls: {{ ca: {tls_ca} }}\n" if tls_ca else ""
    return (
        f"name: {name}\n"
        f"target: {scheme}://127.0.0.1:{port}\n"
        f"{tls}"
        "phases:\n"
        f"  - {{ name: hold, duration: {duration}s, load: {load} }}\n"
        "steps:\n"
        f"  - {{ name: get, request: {{ method: GET, path: / }}{extra} }}\n"
    )


def parse_report(report: dict) -> dict:
    phase = report["phases"][0]
    res = {
        "verdict": report.get("verdict"),
        "verdict_reasons": report.get("verdict_reasons"),
        "requests": report["totals"]["requests"],
        "elapsed_s": report.get("duration_s"),
        "errors": report["totals"]["errors"],
        "throughput_rps": report["totals"]["throughput_rps"],
        "p50_ms": report["latency_ms"]["p50"],
        "p90_ms": report["latency_ms"]["p90"],
        "p99_ms": report["latency_ms"]["p99"],
        "service_p50_ms": report["service_ms"]["p50"],
        "service_p99_ms": report["service_ms"]["p99"],
        "start_skew_ms": [a.get("start_skew_ms") for a in report.get("agents", [])],
    }
    if "schedule" in phase:
        res["schedule"] = phase["schedule"]
    return res


# --------------------------------------------------------------------------
# One repetition


class Bench:
    def __init__(self, args, binary: Path, port: int, target: subprocess.Popen, workdir: Path,
                 https: tuple[int, subprocess.Popen, Path] | None = None):
        self.args = args
        self.binary = binary
        self.port = port
        self.target = target
        self.workdir = workdir
        # --https: the TLS target's port, process and CA file.
        self.https = https
        self.pin = ["taskset", "-c", str(args.client_core)]

    def wait_quiet(self) -> dict:
        """Waits (up to --max-wait s) until both cores are nearly idle, so a
        concurrent build or test run does not land in the measurement."""
        cores = [self.args.target_core, self.args.client_core]
        t0 = time.monotonic()
        while True:
            b0 = core_busy_s(cores)
            time.sleep(1.0)
            b1 = core_busy_s(cores)
            busy = max(b1[c] - b0[c] for c in cores)
            waited = time.monotonic() - t0
            if busy <= self.args.quiet or waited >= self.args.max_wait:
                if busy > self.args.quiet:
                    print(f"  warning: cores still {busy:.0%} busy after waiting {waited:.0f}s; measuring anyway", flush=True)
                return {"busy_share_before": busy, "waited_s": waited}

    def measured(self, label: str, cmd: list[str], target: subprocess.Popen | None = None) -> dict:
        cores = [self.args.target_core, self.args.client_core]
        target = target or self.target
        quiet = self.wait_quiet()
        busy0 = core_busy_s(cores)
        tcpu0 = proc_cpu_s(target.pid)
        load0 = Path("/proc/loadavg").read_text().split()[0]
        r = run_measured(self.pin + cmd, self.workdir / f"{label}.out")
        tcpu1 = proc_cpu_s(target.pid)
        busy1 = core_busy_s(cores)
        r["target_cpu_s"] = tcpu1 - tcpu0
        r["core_busy_s"] = {str(c): busy1[c] - busy0[c] for c in cores}
        # Busy time on the client's core that this client did not account
        # for: other processes (e.g. a concurrent build), or softirq work.
        r["client_core_foreign_s"] = r["core_busy_s"][str(self.args.client_core)] - r["cpu_s"]
        r["target_core_foreign_s"] = r["core_busy_s"][str(self.args.target_core)] - r["target_cpu_s"]
        r["loadavg_1m_before"] = float(load0)
        r["quiet_check"] = quiet
        return r

    def wrk(self, https: bool = False) -> dict:
        d = self.args.duration
        url = f"https://127.0.0.1:{self.https[0]}/" if https else f"http://127.0.0.1:{self.port}/"
        cmd = ["wrk", "-t1", f"-c{self.args.concurrency}", f"-d{d}s", "--latency", url]
        r = self.measured("wrk-https" if https else "wrk", cmd, self.https[1] if https else None)
        if r["exit"] != 0:
            die(f"wrk exited with {r['exit']}:\n{r['output']}")
        r.update(parse_wrk(r["output"]))
        return r

    def oha(self, open_model: bool) -> dict:
        """oha closed (-c) or open (-q RATE with --latency-correction: latency
        from the intended send time, as stampede's open model measures)."""
        d = self.args.duration
        cmd = [self.args.oha_path, "--no-tui", *self.args.oha_json, "-z", f"{d}s", "-c", str(self.args.concurrency)]
        if open_model:
            cmd += ["-q", f"{self.args.rate:g}", "--latency-correction"]
        label = "oha_open" if open_model else "oha_closed"
        r = self.measured(label, cmd + [f"http://127.0.0.1:{self.port}/"])
        if r["exit"] != 0:
            die(f"oha exited with {r['exit']}:\n{r['output']}")
        r.update(parse_oha(r["output"]))
        return r

    def stampede(self, label: str, load: str, checks: bool = False, binary: Path | None = None, https: bool = False) -> dict:
        plan = self.workdir / f"{label}.yaml"
        port, target, ca = self.https if https else (self.port, None, None)
        plan.write_text(plan_yaml(f"bench-{label}", port, self.args.duration, load, checks, tls_ca=ca))
        out = self.workdir / f"{label}-out"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [str(binary or self.binary), "run", str(plan), "--local-agents", "1", "--workers", "1", "--out", str(out)]
        r = self.measured(label, cmd, target)
        # 0 pass/warn, 1 SLO fail (none here), 3 untrustworthy numbers
        # (a saturated open run): keep those and flag them; 2 is an error.
        report_path = out / "report.json"
        if r["exit"] not in (0, 1, 3) or not report_path.is_file():
            die(f"stampede {label} exited with {r['exit']}:\n{r['output']}")
        r.update(parse_report(json.loads(report_path.read_text())))
        return r


def derive(run: dict) -> None:
    run["req_per_cpu_s"] = run["requests"] / run["cpu_s"] if run["cpu_s"] > 0 else float("nan")
    run["cpu_us_per_req"] = run["cpu_s"] / run["requests"] * 1e6 if run["requests"] else float("nan")


def open_run_kept_schedule(run: dict, rate: float, duration: int) -> tuple[bool, str]:
    s = run.get("schedule")
    if not s:
        return False, "no schedule in report"
    scheduled = s.get("scheduled", 0)
    problems = []
    if scheduled <= 0:
        problems.append("nothing scheduled")
    else:
        if s.get("dropped", 0) / scheduled > SATURATION_SHARE:
            problems.append(f"dropped {s['dropped']}/{scheduled}")
        if s.get("late", 0) / scheduled > SATURATION_SHARE:
            problems.append(f"late {s['late']}/{scheduled}")
    if s.get("saturated"):
        problems.append("report says saturated")
    if run.get("verdict") == "invalid" or run.get("exit") == 3:
        problems.append(f"verdict {run.get('verdict')}")
    expected = rate * duration
    if run["requests"] < (1 - SATURATION_SHARE) * expected:
        problems.append(f"{run['requests']} requests of {expected:.0f} intended")
    if run.get("errors"):
        problems.append(f"{run['errors']} errors")
    return (not problems), ", ".join(problems) or "ok"


# --------------------------------------------------------------------------
# Summary


def stats(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def runs_of(rep: dict) -> list[dict]:
    return [rep[k] for k in ("wrk", "closed", "open", "open_batched", "checks", "baseline", "baseline_open", "wrk_https", "https", "oha_closed", "oha_open") if k in rep]


def summarize(reps: list[dict]) -> dict:
    w = [r["wrk"] for r in reps]
    c = [r["closed"] for r in reps]
    o = [r["open"] for r in reps]
    return {
        "wrk_closed_req_per_cpu_s": stats([x["req_per_cpu_s"] for x in w]),
        "stampede_closed_req_per_cpu_s": stats([x["req_per_cpu_s"] for x in c]),
        "ratio_closed_stampede_over_wrk": stats([r["ratio_closed"] for r in reps]),
        "wrk_closed_cpu_us_per_req": stats([x["cpu_us_per_req"] for x in w]),
        "stampede_closed_cpu_us_per_req": stats([x["cpu_us_per_req"] for x in c]),
        "stampede_open_cpu_us_per_req": stats([x["cpu_us_per_req"] for x in o]),
        "ratio_open_over_closed_cpu_per_req": stats([r["ratio_open_closed"] for r in reps]),
        "wrk_closed_throughput_rps": stats([x["throughput_rps"] for x in w]),
        "stampede_closed_throughput_rps": stats([x["throughput_rps"] for x in c]),
        "stampede_open_throughput_rps": stats([x["throughput_rps"] for x in o]),
        "wrk_closed_p50_ms": stats([x["p50_ms"] for x in w]),
        "wrk_closed_p99_ms": stats([x["p99_ms"] for x in w]),
        "stampede_closed_p50_ms": stats([x["p50_ms"] for x in c]),
        "stampede_closed_p99_ms": stats([x["p99_ms"] for x in c]),
        "stampede_open_p50_ms": stats([x["p50_ms"] for x in o]),
        "stampede_open_p99_ms": stats([x["p99_ms"] for x in o]),
        "wrk_closed_cpu_s": stats([x["cpu_s"] for x in w]),
        "stampede_closed_cpu_s": stats([x["cpu_s"] for x in c]),
        "stampede_open_cpu_s": stats([x["cpu_s"] for x in o]),
        "target_cpu_share_wrk": stats([x["target_cpu_s"] / x["elapsed_s"] for x in w]),
        "target_cpu_share_stampede_closed": stats([x["target_cpu_s"] / x["elapsed_s"] for x in c]),
        "client_core_foreign_s_max": max(x["client_core_foreign_s"] for r in reps for x in runs_of(r)),
        "target_core_foreign_s_max": max(x["target_core_foreign_s"] for r in reps for x in runs_of(r)),
        "open_schedule_kept_reps": sum(1 for r in reps if r["open_kept_schedule"]),
        "reps": len(reps),
        **optional_summary(reps),
    }


def optional_summary(reps: list[dict]) -> dict:
    """The `--checks` and `--baseline-bin` runs, when they were made."""
    out = {}
    if "checks" in reps[0]:
        out["stampede_checks_cpu_us_per_req"] = stats([r["checks"]["cpu_us_per_req"] for r in reps])
        out["ratio_checks_over_closed_cpu_per_req"] = stats([r["ratio_checks_closed"] for r in reps])
    if "baseline" in reps[0]:
        out["baseline_closed_cpu_us_per_req"] = stats([r["baseline"]["cpu_us_per_req"] for r in reps])
        out["ratio_closed_over_baseline_cpu_per_req"] = stats([r["ratio_closed_baseline"] for r in reps])
        out["baseline_open_cpu_us_per_req"] = stats([r["baseline_open"]["cpu_us_per_req"] for r in reps])
        out["ratio_open_over_baseline_cpu_per_req"] = stats([r["ratio_open_baseline"] for r in reps])
        out["baseline_open_p50_ms"] = stats([r["baseline_open"]["p50_ms"] for r in reps])
    if "open_batched" in reps[0]:
        b = [r["open_batched"] for r in reps]
        out["batched_cpu_us_per_req"] = stats([x["cpu_us_per_req"] for x in b])
        out["ratio_batched_over_closed_cpu_per_req"] = stats([r["ratio_batched_closed"] for r in reps])
        out["batched_p50_ms"] = stats([x["p50_ms"] for x in b])
        out["batched_p99_ms"] = stats([x["p99_ms"] for x in b])
        out["batched_dispatch_lag_p50_ms"] = stats([x["schedule"]["dispatch_lag_p50_ms"] for x in b])
        out["batched_kept_schedule_reps"] = sum(1 for r in reps if r["batched_kept_schedule"])
        if "oha_open" in reps[0]:
            out["batched_req_per_cpu_s"] = stats([x["req_per_cpu_s"] for x in b])
            out["ratio_batched_stampede_over_oha"] = stats([r["ratio_batched_oha"] for r in reps])
    if "oha_closed" in reps[0]:
        out["oha_closed_req_per_cpu_s"] = stats([r["oha_closed"]["req_per_cpu_s"] for r in reps])
        out["ratio_closed_stampede_over_oha"] = stats([r["ratio_closed_oha"] for r in reps])
        out["oha_open_req_per_cpu_s"] = stats([r["oha_open"]["req_per_cpu_s"] for r in reps])
        out["stampede_open_req_per_cpu_s"] = stats([r["open"]["req_per_cpu_s"] for r in reps])
        out["ratio_open_stampede_over_oha"] = stats([r["ratio_open_oha"] for r in reps])
        out["oha_open_throughput_rps"] = stats([r["oha_open"]["throughput_rps"] for r in reps])
        out["oha_open_p50_ms"] = stats([r["oha_open"]["p50_ms"] for r in reps])
        out["oha_open_p99_ms"] = stats([r["oha_open"]["p99_ms"] for r in reps])
        out["open_p50_stampede_minus_oha_ms"] = stats([r["open_p50_minus_oha_ms"] for r in reps])
    if "https" in reps[0]:
        out["wrk_https_req_per_cpu_s"] = stats([r["wrk_https"]["req_per_cpu_s"] for r in reps])
        out["stampede_https_req_per_cpu_s"] = stats([r["https"]["req_per_cpu_s"] for r in reps])
        out["ratio_https_stampede_over_wrk"] = stats([r["ratio_https"] for r in reps])
        out["wrk_https_cpu_us_per_req"] = stats([r["wrk_https"]["cpu_us_per_req"] for r in reps])
        out["stampede_https_cpu_us_per_req"] = stats([r["https"]["cpu_us_per_req"] for r in reps])
        out["wrk_https_throughput_rps"] = stats([r["wrk_https"]["throughput_rps"] for r in reps])
        out["stampede_https_throughput_rps"] = stats([r["https"]["throughput_rps"] for r in reps])
        out["stampede_https_p99_ms"] = stats([r["https"]["p99_ms"] for r in reps])
        out["wrk_https_p99_ms"] = stats([r["wrk_https"]["p99_ms"] for r in reps])
    return out


def fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def table(summary: dict, args) -> str:
    rows = [
        ("wrk closed: requests / CPU-s", "wrk_closed_req_per_cpu_s", ",.0f"),
        ("stampede closed: requests / CPU-s", "stampede_closed_req_per_cpu_s", ",.0f"),
        ("ratio stampede / wrk (closed, per rep)", "ratio_closed_stampede_over_wrk", ".3f"),
        ("wrk closed: CPU µs / request", "wrk_closed_cpu_us_per_req", ".2f"),
        ("stampede closed: CPU µs / request", "stampede_closed_cpu_us_per_req", ".2f"),
        (f"stampede open {args.rate:g}/s: CPU µs / request", "stampede_open_cpu_us_per_req", ".2f"),
        ("ratio open / closed CPU per request (per rep)", "ratio_open_over_closed_cpu_per_req", ".3f"),
        ("wrk closed: throughput req/s", "wrk_closed_throughput_rps", ",.0f"),
        ("stampede closed: throughput req/s", "stampede_closed_throughput_rps", ",.0f"),
        ("stampede open: throughput req/s", "stampede_open_throughput_rps", ",.1f"),
        ("wrk closed: p50 ms", "wrk_closed_p50_ms", ".3f"),
        ("wrk closed: p99 ms", "wrk_closed_p99_ms", ".3f"),
        ("stampede closed: p50 ms", "stampede_closed_p50_ms", ".3f"),
        ("stampede closed: p99 ms", "stampede_closed_p99_ms", ".3f"),
        ("stampede open: p50 ms (from intended start)", "stampede_open_p50_ms", ".3f"),
        ("stampede open: p99 ms (from intended start)", "stampede_open_p99_ms", ".3f"),
        ("wrk closed: client CPU s per run", "wrk_closed_cpu_s", ".2f"),
        ("stampede closed: client CPU s per run", "stampede_closed_cpu_s", ".2f"),
        ("stampede open: client CPU s per run", "stampede_open_cpu_s", ".3f"),
        ("target core busy share, wrk run", "target_cpu_share_wrk", ".2f"),
        ("target core busy share, stampede closed run", "target_cpu_share_stampede_closed", ".2f"),
        ("stampede closed with 2 checks: CPU µs / request", "stampede_checks_cpu_us_per_req", ".2f"),
        ("ratio closed with checks / without (CPU per request, per rep)", "ratio_checks_over_closed_cpu_per_req", ".3f"),
        ("baseline binary closed: CPU µs / request", "baseline_closed_cpu_us_per_req", ".2f"),
        ("ratio closed / baseline binary closed (CPU per request, per rep)", "ratio_closed_over_baseline_cpu_per_req", ".3f"),
        (f"baseline binary open {args.rate:g}/s: CPU µs / request", "baseline_open_cpu_us_per_req", ".2f"),
        ("ratio open / baseline binary open (CPU per request, per rep)", "ratio_open_over_baseline_cpu_per_req", ".3f"),
        ("baseline binary open: p50 ms (from intended start)", "baseline_open_p50_ms", ".3f"),
        ("oha closed: requests / CPU-s", "oha_closed_req_per_cpu_s", ",.0f"),
        ("ratio stampede / oha (closed, per rep)", "ratio_closed_stampede_over_oha", ".3f"),
        (f"stampede open {args.rate:g}/s: requests / CPU-s", "stampede_open_req_per_cpu_s", ",.0f"),
        (f"oha open {args.rate:g}/s (latency correction): requests / CPU-s", "oha_open_req_per_cpu_s", ",.0f"),
        ("ratio stampede / oha (open, per rep)", "ratio_open_stampede_over_oha", ".3f"),
        ("oha open: throughput req/s", "oha_open_throughput_rps", ",.1f"),
        ("oha open: p50 ms (latency correction)", "oha_open_p50_ms", ".3f"),
        ("oha open: p99 ms (latency correction)", "oha_open_p99_ms", ".3f"),
        ("open p50: stampede - oha, ms (per rep)", "open_p50_stampede_minus_oha_ms", ".3f"),
        (f"stampede open {args.rate:g}/s, batch window {args.batch_window:g} ms: CPU µs / request", "batched_cpu_us_per_req", ".2f"),
        ("ratio open batched / closed CPU per request (per rep)", "ratio_batched_over_closed_cpu_per_req", ".3f"),
        ("stampede open batched: requests / CPU-s", "batched_req_per_cpu_s", ",.0f"),
        ("ratio stampede open batched / oha (open, per rep)", "ratio_batched_stampede_over_oha", ".3f"),
        ("stampede open batched: p50 ms (from intended start)", "batched_p50_ms", ".3f"),
        ("stampede open batched: p99 ms (from intended start)", "batched_p99_ms", ".3f"),
        ("stampede open batched: dispatch lag p50 ms", "batched_dispatch_lag_p50_ms", ".3f"),
        ("wrk https closed: requests / CPU-s", "wrk_https_req_per_cpu_s", ",.0f"),
        ("stampede https closed: requests / CPU-s", "stampede_https_req_per_cpu_s", ",.0f"),
        ("ratio stampede / wrk (https closed, per rep)", "ratio_https_stampede_over_wrk", ".3f"),
        ("wrk https closed: CPU µs / request", "wrk_https_cpu_us_per_req", ".2f"),
        ("stampede https closed: CPU µs / request", "stampede_https_cpu_us_per_req", ".2f"),
        ("wrk https closed: throughput req/s", "wrk_https_throughput_rps", ",.0f"),
        ("stampede https closed: throughput req/s", "stampede_https_throughput_rps", ",.0f"),
        ("wrk https closed: p99 ms", "wrk_https_p99_ms", ".3f"),
        ("stampede https closed: p99 ms", "stampede_https_p99_ms", ".3f"),
    ]
    rows = [r for r in rows if r[1] in summary]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'metric':<{width}} | {'median':>12} | {'min – max':>25} |", f"|{'-' * (width + 2)}|{'-' * 14}|{'-' * 27}|"]
    for label, key, spec in rows:
        s = summary[key]
        rng = f"{fmt(s['min'], spec)} – {fmt(s['max'], spec)}"
        lines.append(f"| {label:<{width}} | {fmt(s['median'], spec):>12} | {rng:>25} |")
    kept = summary["open_schedule_kept_reps"]
    n = summary["reps"]
    sched = "KEPT in every rep" if kept == n else f"NOT KEPT in {n - kept} of {n} reps (SATURATED: open-model figures measure the client)"
    lines.append(f"| {'open run kept its schedule':<{width}} | {f'{kept}/{n}':>12} | {sched:>25} |")
    d, dk = summary.get("discarded_reps", 0), summary.get("disturbed_reps_kept", 0)
    note = f"{d} disturbed rep(s) redone" + (f", {dk} DISTURBED kept" if dk else "")
    lines.append(f"| {'reps kept (other load on the cores)':<{width}} | {n:>12} | {note:>25} |")
    return "\n".join(lines)


def verdicts(summary: dict) -> str:
    r = summary["ratio_closed_stampede_over_wrk"]
    o = summary["ratio_open_over_closed_cpu_per_req"]
    out = []
    if r["median"] is not None:
        ok = r["median"] >= 1.0
        out.append(f"target 1 (closed >= 1.0x wrk req/CPU-s): median {r['median']:.3f}x "
                   f"(range {r['min']:.3f}–{r['max']:.3f}) -> {'MET' if ok else 'NOT MET'}"
                   + ("" if (r["min"] >= 1.0) == ok else " (range straddles 1.0)"))
    if o["median"] is not None:
        # Issue 11 tightened this from 2x to 1.5x.
        ok = o["median"] <= 1.5
        out.append(f"target 2 (open CPU/request <= 1.5x closed): median {o['median']:.3f}x "
                   f"(range {o['min']:.3f}–{o['max']:.3f}) -> {'MET' if ok else 'NOT MET'}"
                   + ("" if (o["max"] <= 1.5) == ok else " (range straddles 1.5)")
                   + ("" if summary["open_schedule_kept_reps"] == summary["reps"] else " [open run SATURATED in some reps]"))
    h = summary.get("ratio_https_stampede_over_wrk")
    if h and h["median"] is not None:
        ok = h["median"] >= 1.0
        out.append(f"target 3 (https closed >= 1.0x wrk req/CPU-s): median {h['median']:.3f}x "
                   f"(range {h['min']:.3f}–{h['max']:.3f}) -> {'MET' if ok else 'NOT MET'}"
                   + ("" if (h["min"] >= 1.0) == ok else " (range straddles 1.0)"))
    q = summary.get("ratio_open_stampede_over_oha")
    if q and q["median"] is not None:
        ok = q["median"] >= 2.0
        out.append(f"target 4 (open req/CPU-s >= 2x oha's rate mode): median {q['median']:.3f}x "
                   f"(range {q['min']:.3f}–{q['max']:.3f}) -> {'MET' if ok else 'NOT MET'}")
        d = summary["open_p50_stampede_minus_oha_ms"]
        ok = abs(d["median"]) <= 0.1
        out.append(f"target 5 (open p50 within 0.1 ms of oha --latency-correction): median difference {d['median']:+.3f} ms "
                   f"(range {d['min']:+.3f}–{d['max']:+.3f}) -> {'MET' if ok else 'NOT MET'}")
    b = summary.get("ratio_batched_over_closed_cpu_per_req")
    if b and b["median"] is not None:
        ok = b["median"] <= 1.5
        out.append(f"target 2 with the batch window (open batched CPU/request <= 1.5x closed): median {b['median']:.3f}x "
                   f"(range {b['min']:.3f}–{b['max']:.3f}) -> {'MET' if ok else 'NOT MET'}"
                   + ("" if summary["batched_kept_schedule_reps"] == summary["reps"] else " [batched run SATURATED in some reps]"))
        qb = summary.get("ratio_batched_stampede_over_oha")
        if qb and qb["median"] is not None:
            ok = qb["median"] >= 2.0
            out.append(f"target 4 with the batch window (open batched req/CPU-s >= 2x oha's rate mode): median {qb['median']:.3f}x "
                       f"(range {qb['min']:.3f}–{qb['max']:.3f}) -> {'MET' if ok else 'NOT MET'}")
    if summary["client_core_foreign_s_max"] > 0.2:
        out.append(f"note: up to {summary['client_core_foreign_s_max']:.2f} s of busy time on the client core was not the client's "
                   "(other processes or softirq); see client_core_foreign_s in the JSON")
    if summary["target_core_foreign_s_max"] > 0.5:
        out.append(f"note: up to {summary['target_core_foreign_s_max']:.2f} s of busy time on the target core was not the target's "
                   "(other processes, or loopback softirq work charged to the core); see target_core_foreign_s in the JSON")
    return "\n".join(out)


# --------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    ap.add_argument("--duration", type=int, default=10, help="seconds of load per run (default 10)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 reps of 3 s")
    ap.add_argument("--bin", type=Path, help="use this stampede binary instead of building one")
    ap.add_argument("--checks", action="store_true",
                    help="also run the closed model with two checks on every response (what checks cost)")
    ap.add_argument("--baseline-bin", type=Path,
                    help="also run the closed and open models with this other stampede binary (e.g. an earlier revision), "
                         "interleaved: a regression check of the hot path")
    ap.add_argument("--https", action="store_true",
                    help="also run wrk and stampede (closed model) against a second built-in target serving TLS, interleaved")
    ap.add_argument("--oha", type=Path, help="oha binary (default: `oha` on PATH, when there)")
    ap.add_argument("--no-oha", action="store_true", help="do not run oha even when it is installed")
    ap.add_argument("--rate", type=float, default=5000.0, help="open-model rate, req/s (default 5000)")
    ap.add_argument("--batch-window", type=float, default=1.0,
                    help="also run the open model with this `batch_window`, ms (default 1; 0: no such run)")
    ap.add_argument("--concurrency", type=int, default=50, help="closed-model connections (default 50)")
    ap.add_argument("--target-core", type=int, default=0)
    ap.add_argument("--client-core", type=int, default=1)
    ap.add_argument("--port", type=int, default=0, help="target port (default: a free one)")
    ap.add_argument("--quiet", type=float, default=0.10,
                    help="before each run, wait until both cores are at most this busy over 1 s (default 0.10)")
    ap.add_argument("--max-wait", type=float, default=300.0, help="longest wait for quiet cores, s (default 300)")
    ap.add_argument("--disturbed", type=float, default=None,
                    help="a rep is redone when any of its runs saw more than this many seconds of other busy time on "
                         "the target or client core (default: 5%% of --duration, at least 0.3 s)")
    ap.add_argument("--max-retries", type=int, default=10, help="most disturbed reps to redo (default 10)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for the raw JSON (default benchmarks/results)")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.duration = 2, 3
    if args.reps < 1 or args.duration < 1:
        die("--reps and --duration must be at least 1")

    need_tool("taskset", "install util-linux (apt-get install -y util-linux)")
    need_tool("wrk", "install wrk (apt-get install -y wrk)")
    ncpu = os.cpu_count() or 1
    if max(args.target_core, args.client_core) >= ncpu or args.target_core == args.client_core:
        die(f"need two distinct cores (have {ncpu}); see --target-core/--client-core")

    args.oha_path = None if args.no_oha else (str(args.oha) if args.oha else shutil.which("oha"))
    if args.oha_path:
        args.oha_json = oha_json_flags(args.oha_path)
    else:
        print("oha not found: the oha runs are skipped (install: cargo install oha --locked)", flush=True)
    binary = args.bin.resolve() if args.bin else build()
    if not binary.is_file():
        die(f"{binary} is not a file")
    info = machine_info()
    port = args.port or free_port()
    started = dt.datetime.now(dt.timezone.utc)
    print(f"machine: {info['nproc']} cpus, {info['cpu_model']}, kernel {info['kernel']}")
    print(f"binary: {binary}")
    print(f"{args.reps} reps x (wrk closed, stampede closed, stampede open {args.rate:g}/s), {args.duration}s each; "
          f"target on core {args.target_core}, clients on core {args.client_core}, port {port}", flush=True)

    # Turn SIGTERM into an exception so the target is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="stampede-bench-"))
    target_log = open(workdir / "target.log", "wb")
    target = subprocess.Popen(["taskset", "-c", str(args.target_core), str(binary), "target", "--listen", f"127.0.0.1:{port}"],
                              stdout=target_log, stderr=subprocess.STDOUT)
    https = None
    if args.https:
        tls_port = free_port()
        tls_dir = workdir / "tls"
        tls_target = subprocess.Popen(["taskset", "-c", str(args.target_core), str(binary), "target", "--listen", f"127.0.0.1:{tls_port}",
                                       "--tls", "--tls-dir", str(tls_dir)], stdout=target_log, stderr=subprocess.STDOUT)
        https = (tls_port, tls_target, tls_dir / "ca.pem")
    reps: list[dict] = []
    discarded: list[dict] = []
    try:
        wait_listening(port, target)
        if https:
            wait_listening(https[0], https[1])
        bench = Bench(args, binary, port, target, workdir, https)
        # Warm-up (not counted): page cache, the target's allocator, TCP.
        subprocess.run(bench.pin + ["wrk", "-t1", "-c50", "-d1s", f"http://127.0.0.1:{port}/"], capture_output=True)
        closed_load = f"{{ model: closed, concurrency: {args.concurrency} }}"
        open_load = f"{{ model: open, rate: {args.rate:g}/s }}"
        batched_load = f"{{ model: open, rate: {args.rate:g}/s, batch_window: {args.batch_window * 1000:g}us }}"
        limit = args.disturbed if args.disturbed is not None else max(0.3, 0.05 * args.duration)
        attempts = 0
        while len(reps) < args.reps:
            attempts += 1
            i = len(reps)
            rep: dict = {"rep": i + 1, "attempt": attempts}
            rep["wrk"] = bench.wrk()
            rep["closed"] = bench.stampede("closed", closed_load)
            rep["open"] = bench.stampede("open", open_load)
            runs = ["wrk", "closed", "open"]
            if args.batch_window > 0:
                rep["open_batched"] = bench.stampede("open_batched", batched_load)
                runs.append("open_batched")
            if args.checks:
                rep["checks"] = bench.stampede("checks", closed_load, checks=True)
                runs.append("checks")
            if args.baseline_bin:
                rep["baseline"] = bench.stampede("baseline", closed_load, binary=args.baseline_bin.resolve())
                rep["baseline_open"] = bench.stampede("baseline_open", open_load, binary=args.baseline_bin.resolve())
                runs += ["baseline", "baseline_open"]
            if args.oha_path:
                rep["oha_closed"] = bench.oha(open_model=False)
                rep["oha_open"] = bench.oha(open_model=True)
                runs += ["oha_closed", "oha_open"]
            if https:
                rep["wrk_https"] = bench.wrk(https=True)
                rep["https"] = bench.stampede("https", closed_load, https=True)
                runs += ["wrk_https", "https"]
            for k in runs:
                derive(rep[k])
                rep[k].pop("output", None)
            if args.checks:
                rep["ratio_checks_closed"] = rep["checks"]["cpu_us_per_req"] / rep["closed"]["cpu_us_per_req"]
            if args.baseline_bin:
                rep["ratio_closed_baseline"] = rep["closed"]["cpu_us_per_req"] / rep["baseline"]["cpu_us_per_req"]
                rep["ratio_open_baseline"] = rep["open"]["cpu_us_per_req"] / rep["baseline_open"]["cpu_us_per_req"]
            rep["ratio_closed"] = rep["closed"]["req_per_cpu_s"] / rep["wrk"]["req_per_cpu_s"]
            if args.oha_path:
                rep["ratio_closed_oha"] = rep["closed"]["req_per_cpu_s"] / rep["oha_closed"]["req_per_cpu_s"]
                rep["ratio_open_oha"] = rep["open"]["req_per_cpu_s"] / rep["oha_open"]["req_per_cpu_s"]
                rep["open_p50_minus_oha_ms"] = rep["open"]["p50_ms"] - rep["oha_open"]["p50_ms"]
            if https:
                rep["ratio_https"] = rep["https"]["req_per_cpu_s"] / rep["wrk_https"]["req_per_cpu_s"]
            rep["ratio_open_closed"] = rep["open"]["cpu_us_per_req"] / rep["closed"]["cpu_us_per_req"]
            if args.batch_window > 0:
                rep["ratio_batched_closed"] = rep["open_batched"]["cpu_us_per_req"] / rep["closed"]["cpu_us_per_req"]
                rep["batched_kept_schedule"] = open_run_kept_schedule(rep["open_batched"], args.rate, args.duration)[0]
                if args.oha_path:
                    rep["ratio_batched_oha"] = rep["open_batched"]["req_per_cpu_s"] / rep["oha_open"]["req_per_cpu_s"]
            kept, why = open_run_kept_schedule(rep["open"], args.rate, args.duration)
            rep["open_kept_schedule"], rep["open_schedule_note"] = kept, why
            # Another process on either core during a run: /proc/stat busy
            # time that neither the client nor the target accounts for.
            disturbed = [f"{k} ({max(rep[k]['client_core_foreign_s'], rep[k]['target_core_foreign_s']):.2f} s foreign)"
                         for k in runs
                         if max(rep[k]["client_core_foreign_s"], rep[k]["target_core_foreign_s"]) > limit]
            rep["disturbed"] = disturbed
            w, c, o = rep["wrk"], rep["closed"], rep["open"]
            line = (f"wrk {w['requests']} req / {w['cpu_s']:.2f} CPU-s = {w['req_per_cpu_s']:,.0f}/CPU-s | "
                    f"stampede closed {c['requests']} / {c['cpu_s']:.2f} = {c['req_per_cpu_s']:,.0f} ({rep['ratio_closed']:.3f}x) | "
                    f"open {o['requests']} / {o['cpu_s']:.3f} = {o['cpu_us_per_req']:.2f} µs/req "
                    f"({rep['ratio_open_closed']:.2f}x closed; schedule {why})")
            if args.batch_window > 0:
                ob = rep["open_batched"]
                line += f" | open batched {ob['cpu_us_per_req']:.2f} µs/req ({rep['ratio_batched_closed']:.2f}x closed), p50 {ob['p50_ms']:.3f} ms"
            if args.oha_path:
                oc, oo = rep["oha_closed"], rep["oha_open"]
                line += (f" | oha closed {oc['req_per_cpu_s']:,.0f}/CPU-s ({rep['ratio_closed_oha']:.3f}x), "
                         f"open {oo['req_per_cpu_s']:,.0f}/CPU-s ({rep['ratio_open_oha']:.3f}x), "
                         f"p50 stampede-oha {rep['open_p50_minus_oha_ms']:+.3f} ms")
            if https:
                wh, h = rep["wrk_https"], rep["https"]
                line += (f" | https: wrk {wh['req_per_cpu_s']:,.0f}/CPU-s, stampede {h['req_per_cpu_s']:,.0f}/CPU-s "
                         f"({rep['ratio_https']:.3f}x)")
            if disturbed and len(discarded) < args.max_retries:
                discarded.append(rep)
                print(f"rep {i + 1}/{args.reps} DISCARDED, other load on the cores during {', '.join(disturbed)}: {line}", flush=True)
                continue
            if disturbed:
                print(f"  warning: retries exhausted (--max-retries {args.max_retries}); keeping a disturbed rep", flush=True)
            reps.append(rep)
            print(f"rep {i + 1}/{args.reps}: {line}", flush=True)
    finally:
        for t in [target] + ([https[1]] if https else []):
            t.terminate()
            try:
                t.wait(timeout=5)
            except subprocess.TimeoutExpired:
                t.kill()
        target_log.close()

    summary = summarize(reps)
    summary["discarded_reps"] = len(discarded)
    summary["disturbed_reps_kept"] = sum(1 for r in reps if r["disturbed"])
    print()
    print(table(summary, args))
    print()
    print(verdicts(summary))

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"{stamp}.json"
    path.write_text(json.dumps({
        "started_at": started.isoformat(),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "settings": {"checks": args.checks, "https": args.https, "oha": args.oha_path, "baseline_bin": str(args.baseline_bin) if args.baseline_bin else None, "reps": args.reps, "duration_s": args.duration, "rate": args.rate, "batch_window_ms": args.batch_window, "concurrency": args.concurrency,
                     "target_core": args.target_core, "client_core": args.client_core, "binary": str(binary)},
        "machine": info,
        "summary": summary,
        "reps": reps,
        "discarded_reps": discarded,
    }, indent=2))
    print(f"\nraw results: {path}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
