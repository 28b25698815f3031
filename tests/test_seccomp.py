"""The system-call filter of ``bwrap`` sandboxes, tried for real: a program inside makes the
calls the default filter denies (raw system calls through ctypes, and the usual tools), as
the sandbox's own command and as an exec, and reports what each returned; ordinary work
still runs; ``unconfined`` and custom Docker profiles do what they say."""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from inside import run, running, spec
from procs import Exits, read_output
from sandboxd import InvalidArgument
from sandboxd._models import SandboxOptions, SandboxSpec
from sandboxd.api import _convert as convert
from sandboxd.backends import BwrapBackend, ProcessBackend, _seccomp
from sandboxd.backends._bwrap import BwrapSandbox
from sandboxd.cli import _ctl
from sandboxd.runtime import open_controller

guarded = pytest.mark.usefixtures("watchdog")
#: Real seconds a guarded test may take before it is a hang.
GUARD = 60

# System-call numbers, for the machines the probe knows.
_NUMBERS = {
    "x86_64": {
        "keyctl": 250, "add_key": 248, "ptrace": 101, "clone": 56, "clone3": 435,
        "unshare": 272, "bpf": 321, "personality": 135, "setns": 308, "userfaultfd": 323,
    },
    "aarch64": {
        "keyctl": 219, "add_key": 217, "ptrace": 117, "clone": 220, "clone3": 435,
        "unshare": 97, "bpf": 280, "personality": 92, "setns": 268, "userfaultfd": 282,
    },
}  # fmt: skip
NUMBERS = _NUMBERS.get(platform.machine())
needs_numbers = pytest.mark.skipif(
    NUMBERS is None, reason=f"the probe knows no system-call numbers for {platform.machine()}"
)

# Makes each call, records 0 or its errno, and prints them all as JSON at the end: a call
# that killed the process would leave no output.
PROBE = r"""
import ctypes, json, os, signal, sys
NR = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def call(name, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(NR[name]), *(
        ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args))
    return (rc, 0) if rc >= 0 else (rc, ctypes.get_errno())

out = {}
with open("/proc/self/status") as f:
    out["mode"] = [l.split()[1] for l in f if l.startswith("Seccomp:")][0]
out["keyctl"] = call("keyctl", 0, -3, 0)[1]             # KEYCTL_GET_KEYRING_ID, session
out["add_key"] = call("add_key", b"user", b"probe", b"v", 1, -3)[1]
other = os.fork()
if other == 0:
    signal.pause()
    os._exit(0)
out["ptrace"] = call("ptrace", 16, other, 0, 0)[1]      # PTRACE_ATTACH another process
os.kill(other, signal.SIGKILL)
os.waitpid(other, 0)
rc, err = call("clone", 0x10000000 | signal.SIGCHLD, 0, 0, 0, 0)   # CLONE_NEWUSER
if rc == 0:
    os._exit(0)
if rc > 0:
    os.waitpid(rc, 0)
out["clone_newuser"] = err
rc, err = call("clone", signal.SIGCHLD, 0, 0, 0, 0)     # a plain fork still works
if rc == 0:
    os._exit(0)
if rc > 0:
    os.waitpid(rc, 0)
out["clone_plain"] = err
out["clone3"] = call("clone3", 0, 0)[1]
out["bpf"] = call("bpf", 5, 0, 0)[1]                    # BPF_PROG_LOAD
out["userfaultfd"] = call("userfaultfd", 0)[1]
out["setns"] = call("setns", 0, 0x10000000)[1]
out["personality"] = call("personality", 0x0040000)[1]  # ADDR_NO_RANDOMIZE
out["unshare_newuser"] = call("unshare", 0x10000000)[1]
print(json.dumps(out), flush=True)
"""
EPERM, ENOSYS = errno.EPERM, errno.ENOSYS

#: The interpreter, by its real path: a venv under /tmp would be hidden by a bwrap
#: sandbox's private /tmp.  Only the standard library is used inside.
PYTHON = os.path.realpath(sys.executable)


def probe_command() -> tuple[str, ...]:
    return (PYTHON, "-I", "-S", "-c", PROBE, json.dumps(NUMBERS))


def options(seccomp: str | Mapping[str, Any] | None = None, **kwargs: Any) -> SandboxOptions:
    return SandboxOptions(seccomp=seccomp, **kwargs)


async def run_init(seccomp: str | Mapping[str, Any] | None, *command: str) -> tuple[int, bytes]:
    """Run ``command`` as a bwrap sandbox's own command (bwrap installs the filter); its
    exit status and stdout."""
    backend = BwrapBackend()
    sandbox_spec = SandboxSpec("sc-init", "bwrap", options(seccomp, command=command))
    backend.validate(sandbox_spec)
    exits = Exits()
    async with trio.open_nursery() as nursery:
        sandbox = await backend.start(sandbox_spec, nursery, exits)
        try:
            status = await exits.wait()
            stdout, _ = read_output(sandbox.output)
        finally:
            sandbox.cleanup()
    return status, stdout


async def probe_init(seccomp: str | None) -> dict[str, Any]:
    status, stdout = await run_init(seccomp, *probe_command())
    assert status == 0, stdout
    result: dict[str, Any] = json.loads(stdout)
    return result


async def probe_exec(seccomp: str | None) -> dict[str, Any]:
    async with running("bwrap", options=options(seccomp)) as sandbox:
        done = await run(sandbox, spec(*probe_command()))
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


PROBES = {"init": probe_init, "exec": probe_exec}
#: What the default filter answers, with EPERM, and the process goes on.
DENIED = {
    "mode": "2",
    "keyctl": EPERM,
    "add_key": EPERM,
    "ptrace": EPERM,
    "clone_newuser": EPERM,
    "clone_plain": 0,
    "clone3": ENOSYS,
    "bpf": EPERM,
    "userfaultfd": EPERM,
    "setns": EPERM,
    "personality": EPERM,
    "unshare_newuser": EPERM,
}


@guarded
@needs_numbers
@pytest.mark.parametrize("where", PROBES)
@pytest.mark.parametrize("seccomp", [None, "default"])
async def test_default_filter_fails_the_denied_calls_with_eperm_and_kills_nothing(
    where: str, seccomp: str | None
) -> None:
    assert await PROBES[where](seccomp) == DENIED


@guarded
@needs_numbers
@pytest.mark.parametrize("where", PROBES)
async def test_unconfined_has_no_filter(where: str) -> None:
    """Without the filter, what the kernel itself allows a capability-less root goes
    through: a new user namespace, a keyring, tracing one's own child."""
    found = await PROBES[where]("unconfined")
    assert found["mode"] == "0"
    differs = ("keyctl", "ptrace", "clone_newuser", "unshare_newuser", "personality")
    assert {name: found[name] for name in differs} == dict.fromkeys(differs, 0), found
    assert found["clone3"] != ENOSYS


TOOLS = (
    "unshare -n true; echo unshare-n=$?; unshare -U true; echo unshare-U=$?; "
    "mount -t tmpfs none /mnt; echo mount=$?"
)


@guarded
async def test_the_usual_tools_are_refused_in_the_sandbox_and_its_execs() -> None:
    refused = {"unshare-n=1", "unshare-U=1", "mount=32"}
    status, stdout = await run_init(None, "sh", "-c", TOOLS)
    assert (status, set(stdout.decode().split())) == (0, refused)
    async with running("bwrap") as sandbox:
        done = await run(sandbox, spec("sh", "-c", TOOLS))
    assert (done.returncode, set(done.stdout.decode().split())) == (0, refused)
    assert done.stderr.count(b"unshare failed: Operation not permitted") == 2, done.stderr


@guarded
async def test_unconfined_lets_unshare_make_a_user_namespace() -> None:
    status, stdout = await run_init("unconfined", "sh", "-c", TOOLS)
    assert status == 0
    # A new user namespace needs no capability; a network namespace and a mount still do.
    assert set(stdout.decode().split()) == {"unshare-n=1", "unshare-U=0", "mount=32"}


WORK = (
    "python3 -c 'import hashlib, json; print(sum(i * i for i in range(10**5)), "
    'json.dumps({"a": [1, 2]}), hashlib.sha256(b"x").hexdigest()[:8])\'; '
    "seq 1 1000 | sort -rn | head -n 1 | tr 0-9 a-j; "
    "sh -c 'sleep 0 & wait; echo jobs ok'"
)
WORK_OUTPUT = b'333328333350000 {"a": [1, 2]} 2d711642\nbaaa\njobs ok\n'


@guarded
async def test_ordinary_work_runs_under_the_default_filter() -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    status, stdout = await run_init(None, "sh", "-c", WORK)
    assert (status, stdout) == (0, WORK_OUTPUT)
    async with running("bwrap", options=options(env=env)) as sandbox:
        done = await run(sandbox, spec("sh", "-c", WORK, env=env))
    assert (done.returncode, done.stdout, done.stderr) == (0, WORK_OUTPUT, b"")


@guarded
async def test_a_compiler_runs_under_the_default_filter() -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) on this host: only the compile case is skipped")
    program = r"#include <stdio.h>\nint main(void) { puts(\"compiled\"); return 0; }\n"
    script = f'cd /tmp && printf "{program}" > a.c && cc -O1 -o a a.c && ./a'
    async with running("bwrap") as sandbox:
        done = await run(sandbox, spec("sh", "-c", script))
    assert (done.returncode, done.stdout) == (0, b"compiled\n"), done.stderr


DENY_MKDIR = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
    "syscalls": [
        {"names": ["mkdir", "mkdirat", "no_such_call"], "action": "SCMP_ACT_ERRNO",
         "errnoRet": errno.EACCES},
        {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["uname"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
    ],
}  # fmt: skip
MKDIR = (
    "import ctypes, os\n"
    "try:\n os.mkdir('/tmp/d')\nexcept OSError as e:\n print('mkdir', e.errno)\n"
    "print('rmdir', os.path.isdir('/tmp/d'))\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "print('uname', libc.uname(None), ctypes.get_errno())\n"
    "print('uname', os.uname().sysname, flush=True)\n"
    "os.getppid()\n"
    "print('not reached')\n"
)


@guarded
async def test_a_custom_profile_fails_with_its_errno_and_kills_as_asked() -> None:
    command = (PYTHON, "-I", "-S", "-c", MKDIR)
    expected = f"mkdir {errno.EACCES}\nrmdir False\nuname -1 {errno.EPERM}\nuname Linux\n"
    status, stdout = await run_init(DENY_MKDIR, *command)
    assert (status, stdout.decode()) == (128 + signal.SIGSYS, expected)
    async with running("bwrap", options=options(DENY_MKDIR)) as sandbox:
        done = await run(sandbox, spec(*command))
        shell = await run(sandbox, spec("mkdir", "/tmp/e"))
    assert (done.returncode, done.stdout.decode()) == (-signal.SIGSYS, expected)
    assert shell.returncode == 1 and b"Permission denied" in shell.stderr


@guarded
async def test_an_exec_after_a_restart_gets_the_filter_again() -> None:
    """The record keeps the profile, not the program: an adopted sandbox compiles it."""
    backend = BwrapBackend()
    async with running("bwrap", options=options(DENY_MKDIR)) as sandbox:
        assert isinstance(sandbox, BwrapSandbox)
        async with trio.open_nursery() as nursery:
            adopted = backend.adopt(
                sandbox._spec, sandbox.pid, sandbox.identity(), nursery, Exits()
            )
            assert adopted is not None
            done = await run(adopted, spec("mkdir", "/tmp/e"))
            nursery.cancel_scope.cancel()
    assert done.returncode == 1 and b"Permission denied" in done.stderr


# -- what Create accepts -------------------------------------------------------------------------


@guarded
@pytest.mark.parametrize(
    ("profile", "field"),
    [
        ("strict", "options.seccomp"),
        ({}, "options.seccomp.defaultAction"),
        ({"defaultAction": "SCMP_ACT_NOPE"}, "options.seccomp.defaultAction"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "bogus": 1}, "options.seccomp"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": "1"},
         "options.seccomp.defaultErrnoRet"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]},
         "options.seccomp.architectures[0]"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}, "options.seccomp.syscalls"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"]}]},
         "options.seccomp.syscalls[0].action"),
        ({"defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}, {"names": [3],
                        "action": "SCMP_ACT_ALLOW"}]},
         "options.seccomp.syscalls[1].names[0]"),
        ({"defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": -1}]},
         "options.seccomp.syscalls[0].errnoRet"),
        ({"defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]},
         "options.seccomp.syscalls[0].args[0].index"),
        ({"defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_LIKE"}]}]},
         "options.seccomp.syscalls[0].args[0].op"),
    ],
)  # fmt: skip
async def test_create_refuses_a_bad_profile_naming_the_field(profile: object, field: str) -> None:
    async with open_controller(backends=[BwrapBackend()]) as controller:
        with pytest.raises(InvalidArgument, match="^" + re.escape(field) + ": "):
            await controller.create(
                "bad",
                sandboxer="bwrap",
                options=options(profile),  # type: ignore[arg-type]
            )
        assert controller.list_nowait() == []


def test_unknown_system_call_names_are_skipped_and_repeated_arguments_or_together() -> None:
    profile = _seccomp.check(
        {
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "syscalls": [
                {"names": ["no_such_call", "read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [
                    {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                    {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mmap"], "action": "SCMP_ACT_LOG", "args": [
                    {"index": 2, "value": 4, "valueTwo": 4, "op": "SCMP_CMP_MASKED_EQ"}]},
            ],
        }
    )  # fmt: skip
    assert profile is not None and profile.default_action == _seccomp.act_errno(38)
    program = _seccomp.compile_bpf(profile)
    assert program and len(program) % 8 == 0


@guarded
async def test_the_process_sandboxer_refuses_a_filter_and_status_names_the_bwrap_one() -> None:
    async with open_controller(backends=[BwrapBackend(), ProcessBackend()]) as controller:
        with pytest.raises(
            InvalidArgument, match=r"^options\.seccomp: the process backend cannot"
        ):
            await controller.create("p", sandboxer="process", options=options("unconfined"))
        described = {}
        for name, seccomp in (("d", None), ("u", "unconfined"), ("c", DENY_MKDIR)):
            await controller.create(name, sandboxer="bwrap", options=options(seccomp))
            await controller.start(name)
            described[name] = (await controller.status(name, verbose=True)).info["seccomp"]
            await controller.shutdown(name)
    assert described == {"d": "default", "u": "unconfined", "c": "custom"}


def test_the_option_crosses_the_wire_strictly() -> None:
    for value in ("default", "unconfined", DENY_MKDIR):
        args = convert.create_request({"sandbox_id": "a", "options": {"seccomp": value}})
        assert args["options"].seccomp == value
        assert convert.options_message(args["options"]) == {"seccomp": value}
    with pytest.raises(InvalidArgument, match=r"^Create\.options\.seccomp: must be"):
        convert.create_request({"sandbox_id": "a", "options": {"seccomp": 2}})


def test_a_profile_file_through_sandboxctl_parses_to_the_option(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(DENY_MKDIR))
    parser = _ctl._parser()
    for given, wanted in ((str(path), DENY_MKDIR), ("unconfined", "unconfined")):
        args = parser.parse_args(["create", "--seccomp", given, "x"])
        assert args.seccomp == wanted
    with pytest.raises(SystemExit):
        parser.parse_args(["create", "--seccomp", str(tmp_path / "missing.json"), "x"])


def test_a_rules_includes_and_excludes_and_the_arch_map_are_judged_as_docker_does() -> None:
    native = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "?")
    scmp = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}.get(
        platform.machine(), "SCMP_ARCH_RISCV64"
    )
    allow = "SCMP_ACT_ALLOW"
    profile = _seccomp.check(
        {
            "defaultAction": "SCMP_ACT_ERRNO",
            "archMap": [
                {"architecture": scmp, "subArchitectures": ["SCMP_ARCH_X86"]},
                {"architecture": "SCMP_ARCH_S390X", "subArchitectures": ["SCMP_ARCH_S390"]},
            ],
            "syscalls": [
                {"names": ["read"], "action": allow},
                {"names": ["ptrace"], "action": allow, "includes": {"caps": ["CAP_SYS_PTRACE"]}},
                {"names": ["kept"], "action": allow, "includes": {"arches": [native]}},
                {"names": ["other"], "action": allow, "includes": {"arches": ["s390x"]}},
                {"names": ["old"], "action": allow, "includes": {"minKernel": "2.6"}},
                {"names": ["future"], "action": allow, "includes": {"minKernel": "99.0"}},
                {"names": ["nocap"], "action": allow, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["notme"], "action": allow, "excludes": {"arches": [native]}},
            ],
        }
    )
    assert profile is not None
    assert [rule.names for rule in profile.rules] == [("read",), ("kept",), ("old",), ("nocap",)]
    assert profile.architectures[0] == platform.machine()


def test_a_profile_too_long_for_the_kernel_is_refused_at_create() -> None:
    rules = [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": fd, "op": "SCMP_CMP_EQ"}]}
        for fd in range(5000)
    ]  # fmt: skip
    spec = SandboxSpec(
        "long", "bwrap", options({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})
    )
    with pytest.raises(InvalidArgument, match=r"^options\.seccomp: .* more than the kernel"):
        BwrapBackend().validate(spec)
