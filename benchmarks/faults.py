"""The fault matrix (issue 6): each fault at each step, its outcome, and what it leaked.

Run as root: `.venv/bin/python benchmarks/faults.py [--quick]` (a few minutes; real libvirtd,
real QEMU, the `minimal` guest; never inside the timed tests). Prints one row per fault and
step: the outcome as HTCondor would see it (requeued / held / exit N, with the message) and
what is left once the step's recovery ran (JOB_EXIT, or `sd reap --prepared-grace 0`): our
domains in `virsh list --all`, ledger rows plus files under the state dir. Last line:
`leaks: 0` or the count.

Each scenario but the last has a private site (a fresh state dir, SD_BATCH_CONFIG) and runs
the hooks and the runner as separate processes as condor_starter does, as root, so the helper
runs without sudo and reads that config (`--via service`: a private helper service per site
instead, the production door); libvirtd "down" is a URI whose socket does not exist.
"Four jobs at once" is four real `sd run` (the slot user, sudo, the real site) in parallel,
compared before and after. `--quick` skips the kill points but one, and the four jobs;
`--only TEXT` runs the rows naming TEXT.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import faults_evict  # noqa: E402 - the eviction rows (issue 18)

from sd_batch.batch.key import JobKey  # noqa: E402
from sd_batch.condor.jobad import JobAd, job_ad_from_submit, parse_job_ad  # noqa: E402
from sd_batch.config.site import BUILTIN_TEMPLATE_DIR, SYSTEM_CONFIG, load_config  # noqa: E402
from sd_batch.ledger.store import Ledger  # noqa: E402

HOOKS = ROOT / "condor_hooks"
SD = ROOT / ".venv" / "bin" / "sd"
PYTHON = ROOT / ".venv" / "bin" / "python"
IMAGES = Path("/var/lib/sd-batch/images")
GOOD_URI = "qemu:///system"
SOCKET = Path("/run/libvirt/libvirt-sock")
ECHO = "#!/bin/sh\necho done > result.txt\ncat input.txt\n"
SLEEP = "#!/bin/sh\nsleep 600\n"
SLOW_ECHO = "#!/bin/sh\nsleep 8\necho done > result.txt\n"
OUTPUT_MIB = 16  # the private sites' output disks ([policy] output_disk_mib): tmpfs-sized
SCRATCH_TEMPLATE = """#include "minimal.sf"
sfConfig extends MinimalVM {
    disks extends DATA {
        scratch extends Disk { image "scratch.qcow2"; }
    }
}
"""
SUBMIT = """executable = job.sh
transfer_input_files = input.txt
+SDVMDescription = "minimal"
queue
"""


@dataclass
class Row:
    fault: str
    step: str
    outcome: str
    domains: int
    files: int


class Site:
    """A private site: its own state dir and config; jobs are driven hook by hook."""

    def __init__(
        self,
        root: Path,
        *,
        max_run: int = 300,
        scratch: bool = False,
        via: str = "helper",
        warm: bool = False,
    ) -> None:
        self.root, self.max_run, self.via, self.warm = root, max_run, via, warm
        self.service: subprocess.Popen[bytes] | None = None
        self.state = root / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.config = root / "site.toml"
        self.jobs: list[str] = []
        images, templates = IMAGES, [BUILTIN_TEMPLATE_DIR]
        if scratch:  # a `scratch` template: minimal plus a copy-on-write disk (an overlay)
            images, templates = self.scratch_site()
        # the site's URI names its socket through a link: "libvirtd down" removes the link,
        # so every process gets ENOENT as from a stopped daemon, and the URI (the ledger's
        # key) never changes
        self.socket = root / "libvirt-sock"
        self.libvirtd(up=True)
        uri = f"qemu+unix:///system?socket={self.socket}"
        dirs = ", ".join(f'"{d}"' for d in templates)
        self.config.write_text(
            f'image_dir = "{images}"\nstate_dir = "{self.state}"\ndefault_uri = "{uri}"\n'
            f'template_dirs = [{dirs}]\n[properties]\n"sd.flavour" = "qemu"\n'
            f"[policy]\nmax_run_seconds = {self.max_run}\noutput_disk_mib = {OUTPUT_MIB}\n"
            + ('[jobs]\nwarm = ["minimal"]\n' if warm else ""),
            encoding="utf-8",
        )
        if via == "service":
            self.start_service()

    def start_service(self) -> None:
        """A private helper service on this site's config (root; its socket under the site)."""
        sock = self.root / "run" / "helper.sock"
        log = (self.root / "service.log").open("ab")
        self.service = subprocess.Popen(
            [str(PYTHON), "-I", "-m", "sd_batch.helper.service", "--socket", str(sock)],
            env={
                "PATH": "/usr/bin:/bin",
                "HOME": "/root",
                "SD_BATCH_CONFIG": str(self.config),
                "CONDOR_CONFIG": "/dev/null",
            },
            stdout=log,
            stderr=log,
        )
        log.close()
        if not wait_for(sock.exists, 30):
            raise RuntimeError(f"the helper service did not start: see {self.root}/service.log")
        # with warm VMs: the site's jobs take one (the service makes it just after its start)
        if self.warm and not wait_for(lambda: "paused, ready" in self.service_log(), 120):
            raise RuntimeError(f"the service made no warm VM: see {self.root}/service.log")

    def service_log(self) -> str:
        """What the private helper service said (its warnings go there, not to the runner)."""
        log = self.root / "service.log"
        return log.read_text(errors="replace") if log.is_file() else ""

    def close(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.terminate()  # SIGTERM: runs under way finish, then it exits
            self.service.wait(timeout=120)

    def scratch_site(self) -> tuple[Path, list[Path]]:
        """A private image folder (the minimal guest, hard-linked, and a 64 MiB qcow2 base)
        and a template folder with scratch.sf."""
        images, templates = self.root / "images", self.root / "templates"
        shutil.copytree(IMAGES / "minimal", images / "minimal", copy_function=os.link)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(images / "scratch.qcow2"), "64M"],
            check=True,
        )
        templates.mkdir()
        (templates / "scratch.sf").write_text(SCRATCH_TEMPLATE)
        return images, [templates, BUILTIN_TEMPLATE_DIR]

    def libvirtd(self, *, up: bool) -> None:
        self.socket.unlink(missing_ok=True)
        if up:
            self.socket.symlink_to(SOCKET)

    def job(self, payload: str = ECHO, input_bytes: int = 0, vm: str = "minimal") -> Job:
        sandbox = Path(tempfile.mkdtemp(prefix="job-", dir=self.root))
        (sandbox / "job.sh").write_text(payload)
        (sandbox / "job.sh").chmod(0o755)
        (sandbox / "input.txt").write_text("hello\n" + "x" * input_bytes)
        (text,) = job_ad_from_submit(
            SUBMIT.replace('"minimal"', f'"{vm}"'),
            submit_dir=sandbox,
            owner="root",
            schedd_name=f"faults-{os.getpid()}-{len(self.jobs)}@host",
            qdate=int(time.time()),
        )
        job = Job(self, sandbox, parse_job_ad(text))
        self.jobs.append(job.domain)
        return job

    def env(self, sandbox: Path) -> dict[str, str]:
        door = (
            {"_CONDOR_SMARTDOMAINS_HELPER_SOCKET": str(self.root / "run" / "helper.sock")}
            if self.via == "service"
            else {"_CONDOR_SMARTDOMAINS_HELPER": f"{PYTHON} -m sd_batch.batch.privileged"}
        )
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/root",
            "SD_BATCH_CONFIG": str(self.config),
            "CONDOR_CONFIG": "/dev/null",
            "_CONDOR_SCRATCH_DIR": str(sandbox),
            "SD_BATCH_PYTHON": str(PYTHON),
            **door,
        }

    def reap(self) -> str:
        done = subprocess.run(
            [str(SD), "reap", "--prepared-grace", "0"],
            capture_output=True,
            text=True,
            env=self.env(self.root),
            timeout=120,
            check=False,
        )
        lines = [
            line.split(" on ")[0].split(": ")[0]
            for line in done.stdout.splitlines()
            if line.strip()
        ]
        return f"reap exit {done.returncode}: {'; '.join(lines)}"

    def warm_taken(self) -> bool:
        """Whether a job took the site's warm VM (the ledger has no warm owner left)."""
        with Ledger.for_site(load_config(self.config)) as ledger:
            return not any(o.owner_id.startswith("warm:") for o in ledger.owners())

    def leaks(self) -> tuple[int, int]:
        """(our domains libvirt still has, ledger rows + files under the state dir)."""
        listed = subprocess.run(
            ["virsh", "-c", GOOD_URI, "list", "--all", "--name"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        domains = len((set(self.jobs) & set(listed)) | set(domains_under(self.root)))
        config = load_config(self.config)
        with Ledger.for_site(config) as ledger:
            rows = len(ledger.owners())
        jobs = self.state / "jobs"
        files = sum(1 for _ in jobs.rglob("*")) if jobs.is_dir() else 0
        return domains, rows + files


class Job:
    def __init__(self, site: Site, sandbox: Path, ad: JobAd) -> None:
        self.site, self.sandbox, self.ad = site, sandbox, ad
        self.domain = self.key_domain = JobKey(os.getuid(), ad.global_job_id).domain
        self.folder = site.state / "jobs" / self.domain.removeprefix("sd-job-")
        self.updates = ""

    def spawn(self, hook: str, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(HOOKS / hook), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.sandbox,
            env=self.site.env(self.sandbox),
            start_new_session=True,
        )

    def prepare(self) -> str:
        proc = self.spawn("prepare_job")
        out, err = proc.communicate(self.ad.text, timeout=300)
        return self.read_prepare(proc.returncode, out, err)

    def read_prepare(self, code: int, out: str, err: str) -> str:
        if code < 0:
            return f"PREPARE_JOB killed by signal {-code}"
        self.updates = out
        ad = parse_job_ad(self.ad.text + out)
        status, message = ad.get("HookStatusCode"), ad.get("HookStatusMessage") or err[-200:]
        status = code if status is None else status
        if status == 0:
            taken = ad.get("SDVMDomain")  # a warm VM the job took keeps its own name
            if isinstance(taken, str) and taken != self.domain:
                self.domain = taken
                self.site.jobs.append(taken)
            return "prepared" + (" (a warm VM)" if taken != self.key_domain else "")
        return f"{'requeued' if status >= 300 else 'held'} ({status}): {message}"

    def run(self, during: Callable[[], None] | None = None) -> str:
        """The runner (the job's new Cmd), then the shadow's OnExitHold on its exit status."""
        ad = parse_job_ad(self.ad.text + self.updates)
        proc = self.spawn(Path(ad.cmd).name, *ad.arguments)
        close_stdin(proc)
        if during is not None:
            threading.Thread(target=during, daemon=True).start()
        out, err = proc.communicate(timeout=900)
        if proc.returncode < 0:
            return f"runner killed by signal {-proc.returncode}"
        exited = f"ExitBySignal = false\nExitCode = {proc.returncode}\n"
        # the shadow judges the exit on its own ad (the submitted one, transformed by the
        # schedd): PREPARE_JOB's updates never reach it
        final = parse_job_ad(self.ad.text + exited)
        if final.get("OnExitHold") is True:
            return f"held: {final.get('OnExitHoldReason')}"
        ours = [line for line in err.splitlines() if line.startswith("sd-batch:")]
        said = ours[0] if ours else (err.strip().splitlines() or [""])[-1]
        if final.get("OnExitRemove") is False:
            return f"requeued (OnExitRemove false): {said}"
        result = self.sandbox / "result.txt"
        kept = " (output ok)" if result.is_file() and result.read_text() == "done\n" else ""
        if "reconnecting" in err + self.site.service_log():  # libvirtd went away mid-wait
            kept += " (the runner reconnected)"
        return f"exit {proc.returncode}{kept}" + (f": {said}" if proc.returncode else "")

    def exit_hook(self, reason: str = "exit") -> str:
        proc = self.spawn("job_exit", reason)
        started = time.monotonic()
        _out, err = proc.communicate(self.ad.text, timeout=60)
        said = (err.strip().splitlines() or [""])[-1] if "incomplete" in err else "clean"
        return f"JOB_EXIT exit {proc.returncode} in {time.monotonic() - started:.1f} s ({said})"


def close_stdin(proc: subprocess.Popen[str], text: str = "") -> None:
    assert proc.stdin is not None
    proc.stdin.write(text)
    proc.stdin.close()
    proc.stdin = None  # communicate() then only reads


def domains_under(root: Path) -> list[str]:
    """libvirt's domains (any name) whose XML names a path under ROOT: a site's own."""
    listed = subprocess.run(
        ["virsh", "-c", GOOD_URI, "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    found = []
    for name in listed:
        xml = subprocess.run(
            ["virsh", "-c", GOOD_URI, "dumpxml", name], capture_output=True, text=True, check=False
        ).stdout
        if f"{root}/" in xml:
            found.append(name)
    return found


def remove_leftovers(root: Path) -> None:
    """Undefine what a failed scenario left (domains whose disks are under ROOT), after the
    count: the next run of the matrix starts clean."""
    for name in domains_under(root):
        for verb in ("destroy", "undefine"):
            subprocess.run(["virsh", "-c", GOOD_URI, verb, name], capture_output=True, check=False)


def wait_for(check: Callable[[], bool], timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def domstate(domain: str) -> str:
    done = subprocess.run(
        ["virsh", "-c", GOOD_URI, "domstate", domain], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


# -- the scenarios: each returns (outcome, site) ----------------------------------------------
def libvirtd_down(site: Site, step: str) -> str:
    job = site.job()
    if step == "PREPARE_JOB":
        site.libvirtd(up=False)
        said = job.prepare()
        site.libvirtd(up=True)
        if said.startswith("prepared"):  # a service's connection was open (for its warm VMs)
            return f"{said} (connection already open); {job.run()}; {job.exit_hook()}"
        return said
    if step == "PREPARE_JOB, down after the input copy":
        proc = job.spawn("prepare_job")
        close_stdin(proc, job.ad.text)
        wait_for(lambda: (job.folder / "input.img").exists())
        site.libvirtd(up=False)
        out, err = proc.communicate(timeout=300)
        said = job.read_prepare(proc.returncode, out, err)
        site.libvirtd(up=True)
        if said.startswith("prepared"):  # libvirt's connection was open already: it carries on
            said = f"{said} (connection already open); {job.run()}"
        return f"{said}; {job.exit_hook()}"
    if step == "PREPARE_JOB, restarting (down 2 s)":
        site.libvirtd(up=False)
        threading.Timer(2.0, lambda: site.libvirtd(up=True)).start()
        said = job.prepare()
        if said.startswith("prepared"):
            said = f"{said}; {job.run()}"
        return f"{said}; {job.exit_hook()}"
    said = job.prepare()
    note = (
        "no fault through the service (the link goes, but the connection it opened at "
        "PREPARE_JOB stays; see libvirtd restarting): "
        if site.via == "service"
        else ""
    )
    if step == "runner":
        site.libvirtd(up=False)
        said = job.run()
        site.libvirtd(up=True)
        return f"{note}{said}; {job.exit_hook()}"
    said = job.run()
    site.libvirtd(up=False)
    left = job.exit_hook()
    rows = site.leaks()[1]
    site.libvirtd(up=True)
    return f"{note}{said}; {left}, {rows} row(s)/file(s) left; {site.reap()}"


def systemd_runs(question: str) -> bool:
    """Whether systemd manages libvirtd here (`systemctl is-active`/`is-enabled`)."""
    if shutil.which("systemctl") is None:
        return False
    return (
        subprocess.run(
            ["systemctl", question, "--quiet", "libvirtd"], capture_output=True, check=False
        ).returncode
        == 0
    )


def stop_libvirtd() -> None:
    """Stop the real libvirtd (QEMU keeps its VMs running: libvirtd takes them back at start)."""
    if systemd_runs("is-active"):
        subprocess.run(["systemctl", "stop", "libvirtd.service"], check=True)
        return
    pid = int(Path("/run/libvirtd.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30):
        raise RuntimeError(f"libvirtd (pid {pid}) did not stop within 30 s")


def start_libvirtd() -> None:
    """Start libvirtd as setup-host does (under the subreaper), and only that: running all of
    setup-host here would also hand the host's helper service and sudoers rule to this
    checkout (a helper's matrix did, in another checkout's tests)."""
    if systemd_runs("is-enabled"):
        subprocess.run(["systemctl", "start", "libvirtd.service"], check=True)
        return
    Path("/run/libvirt/libvirt-sock").unlink(missing_ok=True)
    with open("/var/log/libvirt/libvirtd-stdout.log", "ab") as log:
        reaper = subprocess.Popen(
            [
                sys.executable,
                "-I",
                str(ROOT / "sd_batch" / "data" / "subreaper"),
                "/usr/sbin/libvirtd",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    Path("/run/sd-batch/libvirtd-subreaper.pid").write_text(f"{reaper.pid}\n")
    answers = ["virsh", "-q", "-c", "qemu:///system", "version"]
    if not wait_for(lambda: subprocess.run(answers, capture_output=True).returncode == 0, 30):
        raise RuntimeError("libvirtd did not answer on qemu:///system within 30 s")


def libvirtd_restart(site: Site, step: str) -> str:
    """The real daemon stops and starts again (~3 s) while a job's VM runs, or under JOB_EXIT."""
    job = site.job(SLOW_ECHO)
    said = job.prepare()
    if step.startswith("runner"):

        def restart_while_running() -> None:
            wait_for(lambda: domstate(job.domain) == "running")
            time.sleep(1.0)
            stop_libvirtd()
            start_libvirtd()

        return f"{said}; {job.run(restart_while_running)}; {job.exit_hook()}"
    said = f"{said}; {job.run()}"
    stop_libvirtd()
    starting = threading.Thread(target=start_libvirtd)
    starting.start()  # JOB_EXIT begins with the daemon away
    left = job.exit_hook()
    starting.join()
    return f"{said}; {left}"


def killed(site: Site, step: str) -> str:
    job = site.job()
    if step.startswith("PREPARE_JOB"):
        proc = job.spawn("prepare_job")
        close_stdin(proc, job.ad.text)
        point = (
            (lambda: (job.folder / "output.img").exists())
            if "input" in step
            else site.warm_taken
            if site.warm  # its "define" is the take of the warm VM (its rows handed over)
            else (lambda: domstate(job.domain) != "")
        )
        reached = wait_for(point)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        said = f"killed ({'at' if reached else 'NOT at'} the point)"
        if "next run" in step:  # the starter's next attempt at the same job starts afresh
            return f"{said}; next run: {job.prepare()}; {job.run()}; {job.exit_hook()}"
        return f"{said}; {site.reap()}"
    job.prepare()

    def kill_when_running() -> None:
        wait_for(lambda: domstate(job.domain) == "running")
        time.sleep(0.5)
        for proc_dir in Path("/proc").iterdir():  # the runner's session: runner and helper
            if proc_dir.name.isdigit():
                try:
                    if os.getsid(int(proc_dir.name)) == runner_sid[0]:
                        os.kill(int(proc_dir.name), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    runner_sid: list[int] = []
    ad = parse_job_ad(job.ad.text + job.updates)
    proc = job.spawn(Path(ad.cmd).name, *ad.arguments)
    close_stdin(proc)
    runner_sid.append(proc.pid)
    kill_when_running()
    proc.communicate(timeout=60)
    return f"runner killed ({proc.returncode}); {site.reap()}"


def never_off(site: Site, _step: str) -> str:
    job = site.job(SLEEP)
    job.prepare()
    return f"{job.run()}; {job.exit_hook()}"


def crashed(site: Site, _step: str) -> str:
    job = site.job(SLEEP)
    job.prepare()

    def destroy() -> None:
        wait_for(lambda: domstate(job.domain) == "running")
        time.sleep(1.0)
        subprocess.run(
            ["virsh", "-c", GOOD_URI, "destroy", job.domain], capture_output=True, check=False
        )

    return f"{job.run(destroy)}; {job.exit_hook()}"


def disk_full(site: Site, step: str) -> str:
    """A small tmpfs as the state dir. Input: 2 MiB, and a 3 MiB input fills it while the input
    disk is copied. Output: 8 MiB, smaller than the output disk's reservation. Overlay: room
    for the output disk, but 9 inodes (the tmpfs, the ledger's 4 files, jobs/, the job's
    folder, input.img, output.img): the scratch disk's overlay is the file that cannot be
    made. VM running: the output disk's blocks released again (as on a filesystem without
    fallocate) and the rest of the tmpfs filled, so the guest's result write finds no room."""
    size = {
        "PREPARE_JOB input disk": "size=2M",
        "PREPARE_JOB output disk": "size=8M",
        "PREPARE_JOB overlay": f"size={OUTPUT_MIB + 8}M,nr_inodes=9",
    }.get(step, f"size={OUTPUT_MIB + 8}M")
    subprocess.run(["mount", "-t", "tmpfs", "-o", size, "sd-faults", str(site.state)], check=True)
    try:
        running = step.startswith("VM running")
        job = site.job(
            SLOW_ECHO if running else ECHO,
            input_bytes=3 * 1024**2 if "input" in step else 0,
            vm="scratch" if "overlay" in step else "minimal",
        )
        said = job.prepare()
        if running and said == "prepared":
            output, filler = job.folder / "output.img", site.state / "filler"
            size = output.stat().st_size
            subprocess.run(
                [
                    "fallocate",
                    "--punch-hole",
                    "--offset",
                    "4096",
                    "--length",
                    str(size - 4096),
                    str(output),
                ],
                check=True,
            )

            def fill_when_running() -> None:  # the payload writes its result 8 s after boot
                wait_for(lambda: domstate(job.domain) == "running")
                fill(filler)

            said = f"{said}; {job.run(fill_when_running)}"
            filler.unlink()  # the site frees space; JOB_EXIT (it writes the ledger) cleans up
        return f"{said}; {job.exit_hook()}"
    finally:
        site.close()  # a service's warm VM (its files on the tmpfs) goes with it, as it stops
        site.leaked = site.leaks()  # type: ignore[attr-defined]
        subprocess.run(["umount", str(site.state)], check=False)


def fill(path: Path) -> None:
    """Write PATH until its filesystem has no byte left."""
    with path.open("wb", buffering=0) as out:
        for chunk in (bytes(1024**2), bytes(4096)):
            try:
                while True:
                    out.write(chunk)
            except OSError:
                pass


def exit_twice(site: Site, step: str) -> str:
    # during: a 200 MiB input, so that JOB_EXIT comes while the input disk is being copied
    job = site.job(input_bytes=200 * 1024**2 if step.startswith("during") else 0)
    if step == "before PREPARE_JOB":
        return job.exit_hook()
    if step.startswith("during PREPARE_JOB"):
        proc = job.spawn("prepare_job")
        close_stdin(proc, job.ad.text)
        wait_for(lambda: (job.folder / "input.img").exists())
        first = job.exit_hook()
        out, err = proc.communicate(timeout=300)
        said = job.read_prepare(proc.returncode, out, err)
        return f"{first}; then PREPARE_JOB {said}; {site.reap()}"
    job.prepare()
    said = job.run()
    return f"{said}; {job.exit_hook()}; {job.exit_hook()}"


def four_at_once(root: Path) -> Row:
    """Four real `sd run` in parallel (slot user, sudo, the real site)."""
    config = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    runs = []
    for n in range(4):
        folder = root / f"sd-run-{n}"
        folder.mkdir(mode=0o755)
        (folder / "job.sh").write_text(ECHO)
        (folder / "input.txt").write_text(f"hello {n}\n")
        (folder / "job.sub").write_text(
            SUBMIT.replace("queue", "output = out.txt\ntransfer_output_files = result.txt\nqueue")
        )
        runs.append(
            subprocess.Popen(
                [str(SD), "run", "job.sub"],
                cwd=folder,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={
                    "PATH": "/usr/local/bin:/usr/bin:/bin",
                    "HOME": "/root",
                    "CONDOR_CONFIG": "/dev/null",
                },
            )
        )
    codes, domains = [], []
    for n, proc in enumerate(runs):
        _out, err = proc.communicate(timeout=600)
        codes.append(proc.returncode)
        domains += [w.rstrip(",") for w in err.split() if w.startswith("sd-job-")]
        result = root / f"sd-run-{n}" / "result.txt"
        if not (result.is_file() and result.read_text() == "done\n"):
            codes[-1] = f"{proc.returncode} (no output)"  # type: ignore[call-overload]
    listed = subprocess.run(
        ["virsh", "-c", GOOD_URI, "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    digests = {d.removeprefix("sd-job-") for d in domains}
    with Ledger.for_site(config) as ledger:
        rows = sum(
            1
            for o in ledger.owners()
            if hashlib.sha256(o.owner_id.encode()).hexdigest()[:16] in digests
        )
    files = sum(1 for d in digests if (config.state_dir / "jobs" / d).exists())
    outcome = "exits " + " ".join(map(str, codes)) + f" ({len(set(domains))} VMs)"
    return Row(
        "four jobs at once", "sd run x4", outcome, len(set(domains) & set(listed)), rows + files
    )


SCENARIOS: list[tuple[str, list[str], Callable[[Site, str], str], int]] = [
    (
        "libvirtd down",
        [
            "PREPARE_JOB",
            "PREPARE_JOB, down after the input copy",
            "PREPARE_JOB, restarting (down 2 s)",
            "runner",
            "JOB_EXIT",
        ],
        libvirtd_down,
        300,
    ),
    ("libvirtd restarting", ["runner (VM running)", "JOB_EXIT"], libvirtd_restart, 300),
    (
        "hook/runner SIGKILL",
        [
            "PREPARE_JOB after input copy",
            "PREPARE_JOB after define",
            "PREPARE_JOB after define, next run",
            "runner after start",
        ],
        killed,
        300,
    ),
    ("VM never powers off", ["runner (max_run_seconds 5)"], never_off, 5),
    ("VM crashes", ["runner (virsh destroy)"], crashed, 300),
    (
        "disk full (tmpfs state dir)",
        [
            "PREPARE_JOB input disk",
            "PREPARE_JOB output disk",
            "PREPARE_JOB overlay",
            "VM running (result write)",
        ],
        disk_full,
        300,
    ),
    (
        "JOB_EXIT twice/early",
        ["before PREPARE_JOB", "during PREPARE_JOB (input copy)", "twice after run"],
        exit_twice,
        300,
    ),
    ("eviction (service door)", faults_evict.STEPS, faults_evict.evicted, 300),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one kill point, no four jobs")
    parser.add_argument(
        "--only",
        metavar="TEXT",
        default="",
        help="only the rows whose fault or step contains TEXT (e.g. restarting)",
    )
    parser.add_argument(
        "--via",
        choices=("helper", "service"),
        default="helper",
        help="the hooks' door to root: the helper command (default) or a "
        "private helper service per site",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help='with --via service: each site keeps a warm VM ([jobs] warm = ["minimal"]), '
        "so its minimal jobs take one",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (the helper runs without sudo, on private state dirs)")
        return 2
    root = Path(tempfile.mkdtemp(prefix="sd-faults-"))
    root.chmod(0o755)
    rows: list[Row] = []
    try:
        for fault, steps, scenario, max_run in SCENARIOS:
            for step in steps:
                if args.quick and fault.startswith("hook") and "define" not in step:
                    continue
                if args.only not in f"{fault} | {step}":
                    continue
                site = Site(
                    root / f"site-{len(rows)}",
                    max_run=max_run,
                    scratch="overlay" in step,
                    via="service" if fault.startswith("eviction") or args.warm else args.via,
                    warm=args.warm,
                )
                try:
                    outcome = scenario(site, step)
                except Exception as exc:  # noqa: BLE001 - the matrix reports, never stops
                    outcome = f"ERROR {exc!r}"
                finally:
                    site.close()
                domains, files = getattr(site, "leaked", None) or site.leaks()
                rows.append(Row(fault, step, outcome, domains, files))
                print_row(rows[-1], first=len(rows) == 1)
        if not args.quick and args.only in "four jobs at once":
            rows.append(four_at_once(root))
            print_row(rows[-1], first=False)
    finally:
        remove_leftovers(root)
        shutil.rmtree(root, ignore_errors=True)
    leaks = sum(r.domains + r.files for r in rows)
    print(f"leaks: {leaks}")
    return 0 if leaks == 0 else 1


def print_row(row: Row, *, first: bool) -> None:
    if first:
        print("fault | step | outcome | leaked domains | leaked rows+files")
    print(f"{row.fault} | {row.step} | {row.outcome} | {row.domains} | {row.files}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
