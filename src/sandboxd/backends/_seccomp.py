"""System-call filters for ``bwrap`` sandboxes: profiles compiled to BPF with libseccomp.

Theory of operation.  ``options.seccomp`` is absent or ``"default"`` (the filter below),
``"unconfined"`` (no filter), or a profile in Docker's JSON format (see
:func:`parse_profile`).  A profile is compiled by libseccomp (``libseccomp.so.2``, loaded
with ctypes: a small C API, and the one Debian installs with bubblewrap's neighbours) into a
classic BPF program, which bubblewrap installs for the sandbox's command (``--seccomp
FD``) and the exec relay for each exec's command (``prctl(PR_SET_SECCOMP)``, after
no_new_privs).  A filter is inherited by every child and cannot be removed: whatever runs
in the sandbox runs under it.  Compiling the default filter takes about 5 ms: it is
compiled once per daemon; a custom profile, at Create (to refuse what libseccomp refuses)
and at Start.

The default filter allows every call but a deny list, each denied call failing with EPERM
(nothing is killed: a program that probes for a feature goes on without it).  Why a deny
list, where Docker's profile allows a list: the sandbox already runs with no capability,
so what the list takes away is the kernel code that an unprivileged process can still
reach and that sandboxes have no use for (keyrings, namespaces, bpf, perf, userfaultfd,
io_uring, ...) or the calls that must fail anyway (mount, modules, clock, reboot).  An
allow list must track every new system call that libc starts to use (clone3, faccessat2,
close_range, ...), and breaks ordinary programs on newer libcs when it lags.  The price: a
system call newer than the list is allowed until the list names it, with only the
kernel's own checks (no capability, no_new_privs) in its way.  Whoever wants Docker's
allow list gives Docker's profile as ``options.seccomp``.

Denied: kernel keyrings (add_key, keyctl, request_key); tracing and reading other
processes (ptrace, process_vm_readv/writev, kcmp, pidfd_getfd); mounts (mount, umount2,
pivot_root, the new mount API: fsopen, fsconfig, fsmount, fspick, move_mount, open_tree,
mount_setattr); namespaces (unshare and clone with any CLONE_NEW* flag, setns; clone3
answers ENOSYS, as in Docker's profile, since its flags are in memory a filter cannot read:
libc then falls back to clone, whose flags it can); kernel modules, kexec, reboot; bpf,
perf_event_open, userfaultfd, io_uring; swapon/swapoff; setting clocks (settimeofday,
clock_settime, clock_adjtime, adjtimex, stime); acct, quotactl, lookup_dcookie,
open_by_handle_at, name_to_handle_at, syslog, iopl/ioperm, and the like (see
:data:`DENIED`); personality() setting READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE or
MMAP_PAGE_ZERO (a filter cannot compare one argument with several values, so queries with
0xffffffff are refused too).  Calls of another architecture's ABI than those the filter
knows (x86_64, i386 and x32 on x86_64; aarch64 and arm on aarch64) answer ENOSYS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import platform
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from .._errors import FailedPrecondition, InvalidArgument

DEFAULT: Final = "default"
UNCONFINED: Final = "unconfined"

#: libseccomp's action values (seccomp.h).
ACT_KILL_PROCESS: Final = 0x80000000
ACT_KILL_THREAD: Final = 0x00000000
ACT_TRAP: Final = 0x00030000
ACT_LOG: Final = 0x7FFC0000
ACT_ALLOW: Final = 0x7FFF0000
_ACT_ERRNO: Final = 0x00050000


def act_errno(err: int) -> int:
    """The action that fails a call with ``err``."""
    return _ACT_ERRNO | (err & 0xFFFF)


#: Docker's action names; SCMP_ACT_ERRNO takes its errno from the rule or the profile.
ACTIONS: Final[Mapping[str, int | None]] = {
    "SCMP_ACT_ALLOW": ACT_ALLOW,
    "SCMP_ACT_ERRNO": None,
    "SCMP_ACT_KILL": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": ACT_TRAP,
    "SCMP_ACT_LOG": ACT_LOG,
}
#: Docker's comparison names, as libseccomp's enum scmp_compare.
OPERATORS: Final[Mapping[str, int]] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
_PROFILE_FIELDS: Final = frozenset(
    {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls"}
)
_ARCH_MAP_FIELDS: Final = frozenset({"architecture", "subArchitectures"})
_RULE_FIELDS: Final = frozenset(
    {"names", "name", "action", "errnoRet", "args", "comment", "includes", "excludes"}
)
_FILTER_FIELDS: Final = frozenset({"caps", "arches", "minKernel"})
_ARG_FIELDS: Final = frozenset({"index", "value", "valueTwo", "op"})
#: Docker's names (Go's) of the native architecture, for a rule's includes and excludes.
_GO_ARCHES: Final[Mapping[str, str]] = {"x86_64": "amd64", "aarch64": "arm64"}

#: System calls the default filter fails with EPERM, whatever their arguments.
DENIED: Final = (
    # kernel keyrings: shared by every process of a user, not namespaced
    "add_key", "keyctl", "request_key",
    # other processes' memory and state
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # mounts, old API and new
    "mount", "umount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr",
    # joining namespaces (creating them: see the flag rules)
    "setns",
    # the kernel itself
    "init_module", "finit_module", "delete_module", "create_module", "query_module",
    "get_kernel_syms", "kexec_load", "kexec_file_load", "reboot", "bpf", "perf_event_open",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "swapon",
    "swapoff", "syslog", "iopl", "ioperm", "acct", "quotactl", "quotactl_fd",
    "lookup_dcookie", "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl", "vm86", "vm86old",
    "vhangup", "fanotify_init",
    # clocks
    "settimeofday", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64",
    "adjtimex", "stime",
    # file handles: open_by_handle_at escapes a chroot
    "open_by_handle_at", "name_to_handle_at",
)  # fmt: skip
#: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET; and NEWTIME, which in
#: clone's flags is part of the exit signal, so it is checked for unshare only.
NAMESPACE_FLAGS: Final = (
    0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000,
)  # fmt: skip
CLONE_NEWTIME: Final = 0x00000080
#: READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, MMAP_PAGE_ZERO.
PERSONALITY_FLAGS: Final = (0x0400000, 0x0040000, 0x0100000)
#: The ABIs a filter covers, by native architecture (libseccomp's names).
ARCHITECTURES: Final[Mapping[str, tuple[str, ...]]] = {
    "x86_64": ("x86_64", "x86", "x32"),
    "aarch64": ("aarch64", "arm"),
}
#: Docker's architecture names, as libseccomp's.
_DOCKER_ARCHES: Final[Mapping[str, str]] = {
    "SCMP_ARCH_X86": "x86",
    "SCMP_ARCH_X86_64": "x86_64",
    "SCMP_ARCH_X32": "x32",
    "SCMP_ARCH_ARM": "arm",
    "SCMP_ARCH_AARCH64": "aarch64",
    "SCMP_ARCH_MIPS": "mips",
    "SCMP_ARCH_MIPS64": "mips64",
    "SCMP_ARCH_MIPS64N32": "mips64n32",
    "SCMP_ARCH_MIPSEL": "mipsel",
    "SCMP_ARCH_MIPSEL64": "mipsel64",
    "SCMP_ARCH_MIPSEL64N32": "mipsel64n32",
    "SCMP_ARCH_PPC": "ppc",
    "SCMP_ARCH_PPC64": "ppc64",
    "SCMP_ARCH_PPC64LE": "ppc64le",
    "SCMP_ARCH_S390": "s390",
    "SCMP_ARCH_S390X": "s390x",
    "SCMP_ARCH_RISCV64": "riscv64",
}


@attrs.frozen(slots=True)
class Condition:
    """Argument ``index`` compared by ``op`` (libseccomp's number) with ``value`` (for
    MASKED_EQ: the mask) and ``value_two`` (for MASKED_EQ: the value)."""

    index: int
    op: int
    value: int
    value_two: int = 0


@attrs.frozen(slots=True)
class Rule:
    """``action`` for the calls named, when every condition holds (conditions on one
    argument more than once are each a rule of their own, as runc adds them)."""

    names: tuple[str, ...]
    action: int
    conditions: tuple[Condition, ...] = ()


@attrs.frozen(slots=True)
class Profile:
    """A filter: ``default_action`` for every call no rule matches."""

    default_action: int
    rules: tuple[Rule, ...]
    #: libseccomp's names of the ABIs covered; empty: the native one.
    architectures: tuple[str, ...] = ()


def default_profile() -> Profile:
    """The default filter (see the module's docstring)."""
    eperm = act_errno(errno.EPERM)

    def any_flag(name: str, flags: Sequence[int]) -> list[Rule]:
        # One rule a flag: libseccomp takes a single comparison per argument in a rule.
        masked = OPERATORS["SCMP_CMP_MASKED_EQ"]
        return [Rule((name,), eperm, (Condition(0, masked, flag, flag),)) for flag in flags]

    return Profile(
        ACT_ALLOW,
        (
            Rule(DENIED, eperm),
            Rule(("clone3",), act_errno(errno.ENOSYS)),
            *any_flag("clone", NAMESPACE_FLAGS),
            *any_flag("unshare", (*NAMESPACE_FLAGS, CLONE_NEWTIME)),
            *any_flag("personality", PERSONALITY_FLAGS),
        ),
        native_architectures(),
    )


def native_architectures() -> tuple[str, ...]:
    return ARCHITECTURES.get(platform.machine(), ())


def describe(seccomp: str | Mapping[str, Any] | None) -> str:
    """``default``, ``unconfined`` or ``custom``: what Status says of ``options.seccomp``."""
    if seccomp is None or seccomp == DEFAULT:
        return DEFAULT
    return UNCONFINED if seccomp == UNCONFINED else "custom"


def check(seccomp: object, where: str = "options.seccomp") -> Profile | None:
    """The profile ``options.seccomp`` asks for (None: unconfined); InvalidArgument naming
    the field when it is neither ``"default"``, ``"unconfined"`` nor a valid profile."""
    if seccomp is None or seccomp == DEFAULT:
        return default_profile()
    if seccomp == UNCONFINED:
        return None
    if isinstance(seccomp, Mapping):
        return parse_profile(seccomp, where)
    raise InvalidArgument(
        f"{where}: must be 'default', 'unconfined' or a profile in Docker's JSON format, "
        f"got {seccomp!r}"
    )


def parse_profile(value: Mapping[str, Any], where: str) -> Profile:
    """A profile in Docker's JSON format: ``defaultAction``, ``defaultErrnoRet``,
    ``architectures`` (or, without them, the native entry of ``archMap``) and ``syscalls``
    (``names``, ``action``, ``errnoRet``, ``args``: ``index``, ``value``, ``valueTwo``,
    ``op``; ``includes`` and ``excludes``, judged as Docker judges them for a container
    with no capability).  System-call names this kernel does not know are skipped, as
    Docker skips them; anything malformed is InvalidArgument naming the field.
    ``SCMP_ACT_ERRNO`` without an errno fails with ``defaultErrnoRet``, or EPERM."""
    _fields(value, _PROFILE_FIELDS, where)
    if "defaultAction" not in value:
        raise InvalidArgument(f"{where}.defaultAction: is required")
    default_errno = errno.EPERM
    if value.get("defaultErrnoRet") is not None:
        default_errno = _errno(value["defaultErrnoRet"], f"{where}.defaultErrnoRet")
    default = _action(value["defaultAction"], None, default_errno, f"{where}.defaultAction")
    arches = [
        _architecture(name, f"{where}.architectures[{i}]")
        for i, name in enumerate(_list(value.get("architectures"), f"{where}.architectures"))
    ]
    for i, entry in enumerate(_list(value.get("archMap"), f"{where}.archMap")):
        entry_where = f"{where}.archMap[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidArgument(f"{entry_where}: must be a map")
        _fields(entry, _ARCH_MAP_FIELDS, entry_where)
        main = _architecture(entry.get("architecture"), f"{entry_where}.architecture")
        subs = [
            _architecture(name, f"{entry_where}.subArchitectures[{j}]")
            for j, name in enumerate(
                _list(entry.get("subArchitectures"), f"{entry_where}.subArchitectures")
            )
        ]
        if not value.get("architectures") and main == platform.machine():
            arches = [main, *subs]  # as Docker: the native entry, when none are listed
    rules = []
    for i, entry in enumerate(_list(value.get("syscalls"), f"{where}.syscalls")):
        rule_where = f"{where}.syscalls[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidArgument(f"{rule_where}: must be a map")
        _fields(entry, _RULE_FIELDS, rule_where)
        applies = _applies(entry, rule_where)
        names = _list(entry.get("names"), f"{rule_where}.names")
        if entry.get("name") is not None:
            names = [*names, entry["name"]]
        for j, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise InvalidArgument(f"{rule_where}.names[{j}]: must be a system call's name")
        if "action" not in entry:
            raise InvalidArgument(f"{rule_where}.action: is required")
        errno_ret = None
        if entry.get("errnoRet") is not None:
            errno_ret = _errno(entry["errnoRet"], f"{rule_where}.errnoRet")
        action = _action(entry["action"], errno_ret, default_errno, f"{rule_where}.action")
        conditions = tuple(
            _condition(arg, f"{rule_where}.args[{k}]")
            for k, arg in enumerate(_list(entry.get("args"), f"{rule_where}.args"))
        )
        if applies:  # checked whole all the same: a malformed rule is refused anywhere
            rules.append(Rule(tuple(names), action, conditions))
    return Profile(default, tuple(rules), tuple(arches))


def _architecture(name: object, where: str) -> str:
    if not isinstance(name, str) or name not in _DOCKER_ARCHES:
        raise InvalidArgument(f"{where}: unknown architecture {name!r}")
    return _DOCKER_ARCHES[name]


def _applies(entry: Mapping[str, Any], where: str) -> bool:
    """Whether a rule's ``includes`` and ``excludes`` keep it, as Docker judges them for a
    container with no capability on this machine and kernel."""
    native = _GO_ARCHES.get(platform.machine(), platform.machine())
    release = _kernel_version(os.uname().release)
    applies = True
    for kind in ("includes", "excludes"):
        found = entry.get(kind)
        if found is None:
            continue
        if not isinstance(found, Mapping):
            raise InvalidArgument(f"{where}.{kind}: must be a map")
        _fields(found, _FILTER_FIELDS, f"{where}.{kind}")
        caps = _list(found.get("caps"), f"{where}.{kind}.caps")
        arches = _list(found.get("arches"), f"{where}.{kind}.arches")
        minimum = found.get("minKernel")
        if minimum is not None and not isinstance(minimum, str):
            raise InvalidArgument(f"{where}.{kind}.minKernel: must be text such as '4.8'")
        newer = minimum is not None and release >= _kernel_version(minimum)
        if kind == "includes":
            # caps: the sandbox has none, so a rule for holders of one never applies.
            wanted = not caps and (not arches or native in arches) and (minimum is None or newer)
        else:
            wanted = native not in arches and not newer
        applies = applies and wanted
    return applies


def _kernel_version(text: str) -> tuple[int, ...]:
    """``"6.1.0-18-amd64"`` as ``(6, 1, 0)``."""
    return tuple(int(n) for n in re.findall(r"\d+", text.split("-")[0])[:3])


def _fields(value: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in value:
        if key not in allowed:
            raise InvalidArgument(f"{where}: unknown field {key!r}")


def _list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidArgument(f"{where}: must be an array")
    return list(value)


def _integer(value: object, where: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise InvalidArgument(f"{where}: must be an integer from {low} to {high}")
    return value


def _errno(value: object, where: str) -> int:
    return _integer(value, where, 0, 0xFFFF)


def _action(value: object, errno_ret: int | None, default_errno: int, where: str) -> int:
    if not isinstance(value, str) or value not in ACTIONS:
        raise InvalidArgument(f"{where}: unknown action {value!r} (known: {', '.join(ACTIONS)})")
    action = ACTIONS[value]
    if action is None:
        return act_errno(default_errno if errno_ret is None else errno_ret)
    return action


def _condition(value: object, where: str) -> Condition:
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{where}: must be a map")
    _fields(value, _ARG_FIELDS, where)
    for name in ("index", "value", "op"):
        if name not in value:
            raise InvalidArgument(f"{where}.{name}: is required")
    op = value["op"]
    if not isinstance(op, str) or op not in OPERATORS:
        raise InvalidArgument(
            f"{where}.op: unknown operator {op!r} (known: {', '.join(OPERATORS)})"
        )
    return Condition(
        index=_integer(value["index"], f"{where}.index", 0, 5),
        op=OPERATORS[op],
        value=_integer(value["value"], f"{where}.value", 0, 2**64 - 1),
        value_two=_integer(value.get("valueTwo", 0), f"{where}.valueTwo", 0, 2**64 - 1),
    )


# -- compiling, with libseccomp ---------------------------------------------------------------


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


#: The longest program the kernel installs (instructions of 8 bytes).
BPF_MAXINSNS: Final = 4096
_NR_SCMP_ERROR: Final = -1
_FLTATR_ACT_BADARCH: Final = 2


@functools.cache
def _libseccomp() -> ctypes.CDLL | None:
    """libseccomp, with the prototypes used here declared; None when it is not installed."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    except OSError:
        return None
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_release.restype = None
    lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
    lib.seccomp_arch_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_native.argtypes = ()
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp),
    )  # fmt: skip
    lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
    return lib


def unavailable_reason() -> str | None:
    """Why filters cannot be compiled here, or None."""
    if _libseccomp() is None:
        return "libseccomp is not installed (apt-get install libseccomp2)"
    return None


def compile_bpf(profile: Profile) -> bytes:
    """``profile`` as a BPF program (struct sock_filter[], for ``bwrap --seccomp`` and
    ``PR_SET_SECCOMP``).  FailedPrecondition when libseccomp is missing or refuses it
    (InvalidArgument for a rule it refuses: an action or comparison it cannot do)."""
    lib = _libseccomp()
    if lib is None:
        raise FailedPrecondition(f"options.seccomp: {unavailable_reason()}")
    ctx = lib.seccomp_init(profile.default_action)
    if not ctx:
        raise InvalidArgument("options.seccomp: libseccomp refuses the default action")
    try:
        # Another ABI's calls would bypass rules written for this one: they fail instead.
        _check(lib.seccomp_attr_set(ctx, _FLTATR_ACT_BADARCH, act_errno(errno.ENOSYS)), "it")
        native = lib.seccomp_arch_native()
        for name in profile.architectures:
            token = lib.seccomp_arch_resolve_name(name.encode())
            if token and token != native:
                rc = lib.seccomp_arch_add(ctx, token)
                if rc != -errno.EEXIST:
                    _check(rc, f"architecture {name}")
        for rule in profile.rules:
            _add_rule(lib, ctx, rule)
        memfd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, memfd), "export")
            program = os.pread(memfd, os.fstat(memfd).st_size, 0)
        finally:
            os.close(memfd)
    finally:
        lib.seccomp_release(ctx)
    if len(program) // 8 > BPF_MAXINSNS:
        raise InvalidArgument(
            f"options.seccomp: the profile makes a program of {len(program) // 8} "
            f"instructions, more than the kernel takes ({BPF_MAXINSNS})"
        )
    return program


def _add_rule(lib: ctypes.CDLL, ctx: int, rule: Rule) -> None:
    indexes = [c.index for c in rule.conditions]
    # libseccomp takes one comparison per argument in a rule; runc adds several as an OR.
    groups: Sequence[Sequence[Condition]] = (
        [[c] for c in rule.conditions] if len(set(indexes)) < len(indexes) else [rule.conditions]
    )
    for name in rule.names:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr == _NR_SCMP_ERROR:
            continue  # unknown here: skipped, as Docker does
        for group in groups:
            array = (_ArgCmp * max(1, len(group)))(
                *(_ArgCmp(c.index, c.op, c.value, c.value_two) for c in group)
            )
            rc = lib.seccomp_rule_add_array(ctx, rule.action, nr, len(group), array)
            if rc == -errno.EACCES:
                continue  # the rule's action is the default action: nothing to add
            _check(rc, f"the rule for {name}")


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise InvalidArgument(f"options.seccomp: libseccomp refuses {what}: {os.strerror(-rc)}")


@functools.cache
def default_bpf() -> bytes:
    """The default filter, compiled once."""
    return compile_bpf(default_profile())


def filter_for(seccomp: str | Mapping[str, Any] | None) -> bytes | None:
    """The BPF program for ``options.seccomp``; None for ``"unconfined"``."""
    profile = check(seccomp)
    if profile is None:
        return None
    if seccomp is None or seccomp == DEFAULT:
        return default_bpf()
    return compile_bpf(profile)
