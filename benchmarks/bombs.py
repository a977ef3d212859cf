"""Bombs against a running helper service (issue 16): each case's outcome, the service's peak
memory and CPU, and whether it still answers a probe afterwards.

Run as root: `.venv/bin/python benchmarks/bombs.py [--only TEXT]` (a minute or two; no QEMU:
the site's hypervisor is libvirt's test driver, and no bomb gets as far as a VM). A private
helper service runs on a private site (as `faults.py --via service` does) and gets:

- language bombs as a job's own description, through the real PREPARE_JOB hook run as the
  slot user (components, strings, vectors and includes that double at each of 40 levels):
  the confined child's limits hold them even without the language's own budgets;
- crafted input disks, sent as any `sd-slots` process can (not a tar, no marker, the
  CVE-2024-6232 PAX header, digits, sparse records, a bad mtime, `x.sf` with `x.sf/y.sf`);
- the service's door: a 2000-deep JSON line, a request trickling a byte every 2 s, 16 uids
  holding 32 connections each while root and another user probe.

Per case: `outcome | peak RSS MiB (VmHWM) | CPU s (the service's user+system, this case) |
probe after`. The builders here (`crafted`, `bomb_sf`...) are what tests/test_bombs.py sends.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the private service of the tests (conftest.py)

from sd_batch.condor.jobad import job_ad_from_submit  # noqa: E402
from sd_batch.guest import contract  # noqa: E402

from conftest import Service, User, helper_site, new_job, start_service  # noqa: E402

SLOT_USER, GROUP = "sdslot1", "sd-slots"
Member = tuple[tarfile.TarInfo, bytes]


# --- the bombs ------------------------------------------------------------------------------------
def bomb_sf(levels: int = 40) -> str:
    """2**LEVELS components from a 1.9 KB file: each level extends the one below twice."""
    lines = ["C0 extends { x 1; }"]
    lines += [
        f"C{n} extends {{ a extends C{n - 1}; b extends C{n - 1}; }}" for n in range(1, levels + 1)
    ]
    return "\n".join([*lines, f"sfConfig extends C{levels};"]) + "\n"


def doubling_sf(first: str, operator: str, levels: int = 40) -> str:
    """An attribute that doubles at each level: `s1 (s0 ++ s0); ...` (strings, vectors)."""
    lines = ["sfConfig extends {", f"  v0 {first};"]
    lines += [f"  v{n} (v{n - 1} {operator} v{n - 1});" for n in range(1, levels + 1)]
    return "\n".join([*lines, "}"]) + "\n"


def include_files(levels: int = 31) -> dict[str, str]:
    """LEVELS files that each include the next twice: 2**(LEVELS-1) expansions."""
    files = {
        f"f{n}.sf": f'#include "f{n + 1}.sf";\n#include "f{n + 1}.sf";\n' for n in range(levels - 1)
    }
    files[f"f{levels - 1}.sf"] = "x 1;\n"
    files["main.sf"] = 'sfConfig extends {\n#include "f0.sf";\n}\n'
    return files


LANGUAGE = {
    "components doubling 40 times (1.9 KB)": ({"bomb.sf": bomb_sf()}, "bomb.sf"),
    "a string ++ doubling 40 times": (
        {"bomb.sf": doubling_sf('"xxxxxxxxxxxxxxxx"', "++")},
        "bomb.sf",
    ),
    "a vector <> doubling 40 times": ({"bomb.sf": doubling_sf("[|1, 2, 3, 4|]", "<>")}, "bomb.sf"),
    "31 files each including the next twice": (include_files(), "main.sf"),
}


def member(name: str, data: bytes = b"") -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def tar_of(members: list[Member], *, end: bool = True) -> bytes:
    """MEMBERS as ustar, with the two end blocks if END (no padding to a record)."""
    out = b"".join(
        info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512) for info, data in members
    )
    return out + bytes(1024) if end else out


def pax_header(records: bytes) -> bytes:
    """A raw PAX extended header carrying RECORDS (tarfile would never write a bad one)."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(records)
    return info.tobuf(tarfile.USTAR_FORMAT) + records + bytes(-len(records) % 512)


def record(keyword: str, value: bytes) -> bytes:
    """One PAX record, `LEN keyword=value\\n`, LEN counting its own digits."""
    body = f" {keyword}=".encode() + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def job_ad(name: str, description: str = "minimal") -> tuple[str, str]:
    """(GlobalJobId, job ad) of a job named NAME asking for DESCRIPTION."""
    submit = f'executable = /bin/true\n+SDVMDescription = "{description}"\nqueue\n'
    schedd = f"bomb-{name.replace(' ', '-')}-{os.getpid()}@test"
    (ad,) = job_ad_from_submit(
        submit, submit_dir=Path("/"), owner="root", schedd_name=schedd, qdate=1700000000
    )
    job = next(line.split('"')[1] for line in ad.splitlines() if line.startswith("GlobalJobId"))
    return job, ad


INPUT_CASES = (
    "not a tar",
    "no marker",
    "cve-2024-6232",
    "digits under the size limit",
    "sparse",
    "mtime nan",
    "conflict",
)


def crafted(case: str) -> tuple[str, bytes, str]:
    """(job id, input disk, what the hold must say) for each of INPUT_CASES."""
    job, ad = job_ad(case, "x.sf" if case == "conflict" else "minimal")
    head = [
        member(contract.INPUT_MARKER, contract.INPUT_MARKER_TEXT),
        member(contract.JOB_AD_MEMBER, ad.encode()),
    ]
    start, rest = tar_of(head, end=False), tar_of([member("sandbox/a")])
    if case == "not a tar":
        return job, os.urandom(64 * 1024), "holds no valid tar header"
    if case == "no marker":
        return job, tar_of(head[1:]), "is not an sd-batch input"
    if case == "cve-2024-6232":  # 200,000 digits: 39 s of CPU for an unpatched tarfile
        return job, start + pax_header(b"9" * 200_000) + rest, "extended tar header of"
    if case == "digits under the size limit":
        digits = pax_header(record("comment", b"1" * 60_000))
        return job, start + digits + rest, "more than 40 digits"
    if case == "sparse":
        sparse = pax_header(record("GNU.sparse.major", b"1") + record("GNU.sparse.minor", b"0"))
        return job, start + sparse + rest, "sparse member"
    if case == "mtime nan":
        return job, start + pax_header(record("mtime", b"nan")) + rest, "is not a time"
    assert case == "conflict"
    files = [
        member("sandbox/x.sf", b"sfConfig extends { x 1; }\n"),
        member("sandbox/x.sf/y.sf", b"y 1;\n"),
    ]
    return job, tar_of(head + files), "conflicts with another of its .sf files"


# --- the private site and its service (tests/conftest.py's, as the tests use them) ---------------
def usage(service: Service) -> tuple[float, float]:
    """The service's (peak RSS in MiB, CPU seconds so far)."""
    status = Path(f"/proc/{service.proc.pid}/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    fields = Path(f"/proc/{service.proc.pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return hwm / 1024, cpu


def answers(service: Service) -> bool:
    """Whether the service lives and answers root's probe."""
    if service.proc.poll() is not None:
        return False
    try:
        return service.ask(b'{"action": "probe"}\n', timeout=120).get("ok") is True
    except (OSError, ValueError):  # no reply line, or not JSON
        return False


def prepare_hook(site: Service, name: str, files: dict[str, str], description: str) -> str:
    """PREPARE_JOB as the slot user on a scratch dir holding FILES; its HookStatusMessage."""
    submit = f'executable = /bin/true\n+SDVMDescription = "{description}"\nqueue\n'
    job = new_job(site, User.named(SLOT_USER), name, files, submit)
    code, out, err = job.hook("prepare_job", timeout=300)
    found = [line for line in out.splitlines() if line.startswith("HookStatus")]
    return " ".join(found) or f"exit {code}: {err.strip()[-200:]}"


def trickle(site: Service) -> str:
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(site.socket))
        sock.settimeout(0.1)
        for byte in b'{"action": "probe"            ':
            sock.sendall(bytes([byte]))
            time.sleep(2)
            try:
                reply = sock.recv(4096).decode().strip()
            except TimeoutError:
                continue
            return f"cut after {time.monotonic() - started:.1f} s: {reply}"
    return "never cut"


HOARD = """import socket, sys
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    try:  # past its cap the service answers Busy and closes: a write may then meet EPIPE
        s.connect(sys.argv[1])
        s.sendall(b'{')
    except OSError:
        pass
    socks.append(s)
print("ready", flush=True)
sys.stdin.read()
"""
PROBE = """import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"action": "probe"}\\n')
except OSError:
    pass
print(s.makefile("rb").readline().decode().strip())
"""


def as_uid(uid: int, gid: int, script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["/usr/bin/python3", "-I", "-c", script, *args],
        user=uid,
        group=gid,
        extra_groups=[],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def probe_as(uid: int, gid: int, sock: Path) -> dict[str, object]:
    """A probe from a process of UID:GID; its reply."""
    out, _ = as_uid(uid, gid, PROBE, str(sock)).communicate("", timeout=60)
    reply: dict[str, object] = json.loads(out)
    return reply


def hoarders(site: Service) -> str:
    import grp

    gid = grp.getgrnam(GROUP).gr_gid  # uids of no account: the kernel's credentials count
    procs = [as_uid(61000 + i, gid, HOARD, str(site.socket), "32") for i in range(16)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.readline()
        started = time.monotonic()
        root = site.ask(b'{"action": "probe"}\n', timeout=120).get("ok")
        other = probe_as(61999, gid, site.socket)
        mine = probe_as(61000, gid, site.socket)
        took = time.monotonic() - started
    finally:
        for proc in procs:
            proc.communicate("", timeout=60)
    return (
        f"root's probe ok={root}, another user's ok={other.get('ok')}, a hoarder's "
        f"{mine.get('error')} ({took:.1f} s)"
    )


def cases() -> list[tuple[str, Callable[[Service], str]]]:
    found: list[tuple[str, Callable[[Service], str]]] = []
    for number, (name, (files, description)) in enumerate(LANGUAGE.items()):
        found.append(
            (
                f"language: {name}",
                lambda site, n=f"bomb{number}", f=files, d=description: prepare_hook(site, n, f, d),
            )
        )
    for case in INPUT_CASES:

        def send(site: Service, case: str = case) -> str:
            job, data, _ = crafted(case)
            request = json.dumps({"action": "prepare", "job": job}).encode() + b"\n" + data
            reply = site.ask(request, timeout=120)
            return f"{reply.get('disposition')}: {reply.get('message')}"

        found.append((f"input disk: {case}", send))
    found.append(
        (
            "request: a 2000-deep JSON line",
            lambda site: str(
                site.ask(b"[" * 2000 + b"]" * 2000 + b"\n", timeout=120).get("message")
            ),
        )
    )
    found.append(("request: a byte every 2 s", trickle))
    found.append(("request: 16 uids x 32 connections", hoarders))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the cases naming TEXT")
    parser.add_argument(
        "--policy",
        default="max_resolve_mib = 512\nmax_resolve_seconds = 60\n",
        help="the private site's [policy] lines",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run me as root (a root service, the slot user)")
    root = helper_site(Path(tempfile.mkdtemp(prefix="sd-bombs-")), args.policy)
    site = start_service(root)
    failures = 0
    try:
        print(f"{'case':<48} {'s':>5} {'peak MiB':>8} {'CPU s':>6}  probe  outcome")
        for name, run in cases():
            if args.only and args.only not in name:
                continue
            _, cpu_before = usage(site)
            started = time.monotonic()
            try:
                outcome = run(site)
            except Exception as exc:  # noqa: BLE001 - a row says what went wrong
                outcome = f"ERROR {exc!r}"
            took = time.monotonic() - started
            peak, cpu = usage(site)
            alive = answers(site)
            failures += not alive
            print(
                f"{name:<48} {took:5.1f} {peak:8.0f} {cpu - cpu_before:6.2f}  "
                f"{'yes' if alive else 'NO':<5}  {outcome[:160]}",
                flush=True,
            )
    finally:
        site.proc.terminate()
        site.proc.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    print(f"service died or stopped answering: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
