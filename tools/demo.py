"""The demo behind ``tools/demo``: a real sandbox's whole life, step by step, with sandboxctl."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

BIN = os.path.dirname(sys.executable)
SANDBOXD = os.path.join(BIN, "sandboxd")
SANDBOXCTL = os.path.join(BIN, "sandboxctl")


def wait_until_ready(ready: int, daemon: subprocess.Popen[bytes], limit: float = 15.0) -> None:
    """Wait for the daemon's ``READY`` line on the pipe it was given with --ready-fd."""
    readable, _, _ = select.select([ready], [], [], limit)
    line = os.read(ready, 4096) if readable else b""
    os.close(ready)
    if line.startswith(b"READY "):
        return
    if not readable:
        raise SystemExit("demo: the daemon did not start listening in time")
    daemon.wait()
    raise SystemExit(f"demo: the daemon exited with status {daemon.returncode}")


def step(
    title: str,
    args: list[str],
    check: Callable[[Any], str | None],
    expect_status: int = 0,
    *,
    output: bool = False,
) -> Any:
    """Run ``sandboxctl --json --timing ARGS``; ``check`` returns a complaint or None.  It is
    given the JSON reply, stderr when a failure is expected, or with ``output`` the text the
    command printed (``exec``)."""
    started = time.perf_counter()
    proc = subprocess.run(
        [SANDBOXCTL, "--json", "--timing", *args], capture_output=True, text=True, check=False
    )
    wall_ms = (time.perf_counter() - started) * 1000
    rtts = [
        line.rsplit("round trip ", 1)[1]
        for line in proc.stderr.splitlines()
        if "round trip" in line
    ]
    reply = proc.stdout if output else json.loads(proc.stdout) if proc.stdout.strip() else None
    problem = None
    if proc.returncode != expect_status:
        problem = f"exit status {proc.returncode}, expected {expect_status}: {proc.stderr.strip()}"
    else:
        problem = check(reply if expect_status == 0 or output else proc.stderr)
    if output:
        shown = f"{proc.stdout!r}, exit status {proc.returncode}"
    else:
        shown = json.dumps(reply) if reply is not None else proc.stderr.strip().splitlines()[-1]
    mark = "ok  " if problem is None else "FAIL"
    print(
        f"{mark} {title:<34} round trip {', '.join(rtts) or '-':>10}  ({wall_ms:.0f} ms "
        f"with sandboxctl's start-up)"
    )
    print(f"       $ sandboxctl {' '.join(args)}\n       -> {shown}")
    if problem is not None:
        raise SystemExit(f"demo: {title}: {problem}")
    return reply


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sandboxd-demo-") as tmp:
        sock = os.path.join(tmp, "sandboxd.sock")
        os.environ["SANDBOXD_SOCKET"] = sock
        log = open(os.path.join(tmp, "daemon.log"), "wb")  # noqa: SIM115
        ready, ready_w = os.pipe()
        daemon = subprocess.Popen(
            [
                SANDBOXD,
                "serve",
                "--socket",
                sock,
                "--state-dir",
                os.path.join(tmp, "state"),
                "--ready-fd",
                str(ready_w),
            ],
            stderr=log,
            pass_fds=(ready_w,),
        )
        os.close(ready_w)
        print(f"demo: daemon started (pid {daemon.pid}) on {sock}")
        try:
            wait_until_ready(ready, daemon)
            step("version", ["version"], lambda r: None if r["protocol"] == 1 else "protocol")
            step(
                "create a sandbox running sleep",
                [
                    "create",
                    "demo1",
                    "--sandboxer",
                    "process",
                    "--label",
                    "demo=yes",
                    "--",
                    "sleep",
                    "300",
                ],
                lambda r: None if r == {"sandbox_id": "demo1"} else "unexpected reply",
            )
            started = step(
                "start it",
                ["start", "demo1"],
                lambda r: None if r["pid"] > 0 and alive(r["pid"]) else "no live process",
            )
            pid = started["pid"]
            step(
                "status: ready",
                ["status", "demo1"],
                lambda r: None if r["state"] == "ready" and r["pid"] == pid else "not ready",
            )
            step(
                "exec a second command inside",
                ["exec", "demo1", "--", "sh", "-c", "echo inside; exit 3"],
                lambda out: None if out == "inside\n" else f"printed {out!r}",
                expect_status=3,
                output=True,
            )
            step("stop (SIGTERM, 5 s grace)", ["stop", "demo1", "--timeout", "5"], lambda r: None)
            step(
                "wait: killed by SIGTERM = 143",
                ["wait", "demo1"],
                lambda r: None if r["exit_status"] == 143 else f"exit status {r['exit_status']}",
            )
            step(
                "status: stopped, process gone",
                ["status", "demo1"],
                lambda r: (
                    None
                    if r["state"] == "stopped" and "exited_at" in r and not alive(pid)
                    else "not stopped"
                ),
            )
            step("shutdown", ["shutdown", "demo1"], lambda r: None)
            step(
                "status after shutdown: NOT_FOUND",
                ["status", "demo1"],
                lambda err: None if "NOT_FOUND" in err else "expected NOT_FOUND",
                expect_status=15,
            )
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                status = daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                status = daemon.wait()
            log.close()
        if status != 0:
            with open(os.path.join(tmp, "daemon.log")) as f:
                print(f.read(), file=sys.stderr)
            raise SystemExit(f"demo: the daemon exited with status {status} on SIGTERM")
        print("demo: daemon stopped (exit 0); every step did what it should")
    return 0


if __name__ == "__main__":
    sys.exit(main())
