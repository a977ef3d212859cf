"""What sd-batch adds to one job, measured: `sd run` against raw QEMU, and the hook cycle.

Run as `.venv/bin/python benchmarks/job_overhead.py [--runs N] [--only qemu|hooks]` (as root;
a few minutes; never inside the tests).

1. The same payload (a shell script reading an input file and writing a result) through `sd run`
   (job ad, scratch dir, PREPARE_JOB, the runner booting the VM through the helper service when
   setup-host started it, else sudo and the helper, and libvirtd, JOB_EXIT, outputs back;
   everything a user waits for) and through raw `qemu-system-x86_64` booting the same kernel,
   initramfs, command line, memory and vCPUs with the same input and output disks (built by
   `sd_batch.staging` from the same sandbox), `-accel tcg -nodefaults`, serial to a file, timed
   from spawn until QEMU exits when the guest powers off. Rounds alternate which goes first.
   Both medians and their ratio (target <= 1.15, with the seconds added), the guest alone under
   libvirt against raw QEMU (target <= 1.05), and where sd run's time goes, phase by phase with
   its target: its progress lines and libvirt's lifecycle events (`virsh event`: Started, or
   Resumed when the helper service started the VM paused during PREPARE_JOB, to Shutdown), so
   the guest's own run time is told apart from what we add around it.
2. A full PREPARE_JOB + JOB_EXIT cycle on libvirt's test driver, each hook a separate process
   as the starter runs it (target <= 150 ms wall each, Python start included), through each
   way to the privileged side: the helper service (a private one, on the same site), the
   helper command run directly, and (as root, with sudo) the helper command through sudo; the
   ratios; and what a hook process spends on interpreter start and imports (`-X importtime`).

Numbers are measured, never adjusted: medians with min-max and n.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from raw_qemu import RawBoot  # noqa: E402 - next to this file

from sd_batch.batch.key import JobLimits  # noqa: E402
from sd_batch.condor.jobad import job_ad_from_submit, parse_job_ad  # noqa: E402
from sd_batch.config.site import SYSTEM_CONFIG, load_config  # noqa: E402
from sd_batch.config.templates import find_template  # noqa: E402
from sd_batch.data import HOOKS_DIR  # noqa: E402
from sd_batch.guest.contract import SECTOR, Manifest  # noqa: E402
from sd_batch.lang import load_file  # noqa: E402
from sd_batch.localrun.outcome import updated_ad  # noqa: E402
from sd_batch.staging import create_output_disk, result_tar_from_disk, write_input_tar  # noqa: E402
from sd_batch.vm.spec import vm_spec  # noqa: E402

SD = REPO / ".venv" / "bin" / "sd"
PYTHON = REPO / ".venv" / "bin" / "python"
PAYLOAD = "#!/bin/sh\ntr a-z A-Z < input.txt > result.txt\necho done\n"
SUBMIT = """executable = job.sh
transfer_input_files = input.txt
output = job.out
error = job.err
+SDVMDescription = "minimal"
queue
"""
NODE_XML = """<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>
<active>2</active><mhz>2400</mhz><model>x86_64</model></cpu><memory>4194304</memory></node>
"""


GUEST = "the guest (boot, payload, power-off), as libvirt saw it"


def stats(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):7.3f} {unit} (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})"


def make_job(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.sh").write_text(PAYLOAD, encoding="utf-8")
    (folder / "job.sh").chmod(0o755)
    (folder / "input.txt").write_text("the same input for both\n" * 100, encoding="utf-8")
    (folder / "job.sub").write_text(SUBMIT, encoding="utf-8")
    return folder / "job.sub"


# -- 1. sd run against raw QEMU ---------------------------------------------------------------
def run_sd(submit: Path, sock: Path) -> tuple[float, dict[str, float]]:
    """Wall seconds of one `sd run`, and where they went: its progress lines and libvirt's
    lifecycle events (`virsh event`), all timestamped on the wall clock. The hooks reach the
    privileged side through the helper service on SOCK (this checkout's code)."""
    for name in ("job.out", "job.err", "result.txt"):
        (submit.parent / name).unlink(missing_ok=True)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/root",
        "CONDOR_CONFIG": "/dev/null",
        "_CONDOR_SMARTDOMAINS_HELPER_SOCKET": str(sock),
    }
    events = subprocess.Popen(
        ["virsh", "-c", "qemu:///system", "event", "--loop", "--timestamp", "--event", "lifecycle"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)  # let virsh register before the domain exists
    started, wall0 = time.perf_counter(), time.time()
    proc = subprocess.Popen(
        [str(SD), "run", submit.name],
        cwd=submit.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    marks: list[tuple[float, str]] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        marks.append((time.time(), line.strip()))
    out = proc.stdout.read() if proc.stdout else ""
    code = proc.wait()
    total, wall1 = time.perf_counter() - started, time.time()
    events.terminate()
    lifecycle = events.communicate()[0]
    if code != 0 or (submit.parent / "result.txt").read_text()[:3] != "THE":
        raise SystemExit(f"sd run failed ({code}):\n{out}\n" + "\n".join(m for _, m in marks))
    domain = re.search(r"VM (sd-job-[0-9a-f]+) ready", "\n".join(m for _, m in marks))
    name = domain.group(1) if domain else ""
    booted = _event_time(lifecycle, name, "Started")  # None: a warm VM, started long before
    # the guest runs from its start, or from its resume when the helper started it paused
    running = _event_time(lifecycle, name, "Resumed") or booted
    off = _event_time(lifecycle, name, "Shutdown")
    t = [wall0, *(w for w, _ in marks), wall1]  # start, PREPARE, ready, running, JOB_EXIT, end
    if len(t) != 6 or running is None or off is None:
        raise SystemExit(f"unexpected progress: {marks} / {lifecycle}")
    parts = {
        "sd start, job ad, scratch dir, inputs": t[1] - t[0],
        "PREPARE_JOB (hook + helper: input disk, resolve, define or take a warm VM)": t[2] - t[1],
        "(beside it) the VM's paused start, from PREPARE_JOB's end": (
            booted - t[2] if booted is not None else None
        ),
        "runner until the guest runs (runner, helper, libvirt start or resume)": running - t[3],
        GUEST: off - running,
        "runner after power-off (event, result tar, extraction)": t[4] - off,
        "JOB_EXIT + output transfer + scratch cleanup + exit": t[5] - t[4],
    }
    return total, {k: v for k, v in parts.items() if v is not None}


def _event_time(text: str, domain: str, event: str) -> float | None:
    """The wall time of `virsh event --timestamp`'s first EVENT line for DOMAIN."""
    for line in text.splitlines():
        if f"'{domain}': {event}" in line:
            stamp = line.split("+0000")[0]
            return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
    return None


def raw_boot() -> RawBoot:
    """The kernel, initrd, command line, memory and vCPUs sd gives a `minimal` job VM."""
    config = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    description = load_file(
        find_template("minimal", config),
        include_dirs=[*config.include_dirs, *config.template_dirs],
        properties=dict(config.properties),
        environ=None,
    )
    assert description.sfconfig is not None
    return RawBoot.of(vm_spec(description.sfconfig, default_name="bench"), config.image_dir)


def run_raw(sandbox: Path, work: Path, boot: RawBoot, round_no: int) -> tuple[float, float]:
    """(seconds from QEMU's spawn to its exit, seconds to build both disks)."""
    built = time.perf_counter()
    input_img, output_img = work / f"in-{round_no}.img", work / f"out-{round_no}.img"
    with open(input_img, "wb") as out:
        size = write_input_tar(
            sandbox, Manifest(("./job.sh",), {}, "."), out, max_bytes=JobLimits().max_input_bytes
        )
        out.write(b"\0" * (-size % SECTOR))
    create_output_disk(output_img, JobLimits().output_disk_bytes)
    built = time.perf_counter() - built
    argv = boot.argv(
        work / f"console-{round_no}.log",
        "-blockdev",
        f"driver=file,filename={input_img},node-name=in,read-only=on",
        "-device",
        "virtio-blk-pci,drive=in,serial=sd-input",
        "-blockdev",
        f"driver=file,filename={output_img},node-name=out",
        "-device",
        "virtio-blk-pci,drive=out,serial=sd-output",
    )
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=300, check=False)
    took = time.perf_counter() - started
    with tarfile.open(fileobj=result_tar_from_disk(output_img), mode="r|") as tar:
        members = {m.name: tar.extractfile(m).read() if m.isfile() else b"" for m in tar}  # type: ignore[union-attr]
    if done.returncode != 0 or members.get("exit_status") != b"exit 0\n":
        raise SystemExit(f"raw QEMU run failed: {done.stderr.decode()} {members.keys()}")
    input_img.unlink()
    output_img.unlink()
    return took, built


def bench_vs_qemu(work: Path, runs: int) -> None:
    print(f"== 1. one job: sd run vs raw qemu-system-x86_64 ({runs} runs each, alternating)")
    if os.geteuid() != 0:
        print("   skipped: run me as root (sd run drops to the slot user)")
        return
    submit = make_job(work / "job")
    sandbox = work / "sandbox"
    sandbox.mkdir()
    for name in ("job.sh", "input.txt"):
        shutil.copy2(submit.parent / name, sandbox / name)
    boot = raw_boot()
    # Private helper services of this checkout (the system one at /run/sd-batch may run another
    # checkout's code): the production door, measured as it is. "cold" on the site's own
    # config; "warm" on a copy of it with `[jobs] warm = ["minimal"]` and a state folder of its
    # own (another checkout's reaper on the shared one would not know a taken warm VM).
    base = {"PATH": "/usr/bin:/bin", "HOME": "/root", "CONDOR_CONFIG": "/dev/null"}
    cold = _start_service(work / "service", base)
    warm_site = work / "warm-service"
    warm_config = _warm_site(warm_site)
    warm = _start_service(warm_site, {**base, "SD_BATCH_CONFIG": str(warm_config)})
    socks = {
        "cold": work / "service" / "run" / "helper.sock",
        "warm": warm_site / "run" / "helper.sock",
    }
    try:
        _bench_vs_qemu(submit, sandbox, work, boot, runs, socks, load_config(warm_config))
    finally:
        for service in (cold, warm):
            service.terminate()
            service.wait(timeout=60)


def _warm_site(folder: Path) -> Path:
    """A copy of the site's config with one warm `minimal` VM and a state folder of its own."""
    system = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    folder.mkdir(parents=True, exist_ok=True)
    flavour = system.properties.get("sd.flavour", "qemu")
    path = folder / "site.toml"
    path.write_text(
        f'default_uri = "{system.default_uri}"\nimage_dir = "{system.image_dir}"\n'
        f'state_dir = "{folder / "state"}"\n[properties]\n"sd.flavour" = "{flavour}"\n'
        '[jobs]\nwarm = ["minimal"]\n',
        encoding="utf-8",
    )
    return path


def _wait_warm(config: object) -> None:
    """Until the warm service's VM is made and paused (else its job would take the cold path)."""
    from sd_batch.ledger.store import Ledger, ResourceKind

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with Ledger.for_site(config) as ledger:  # type: ignore[arg-type]
            names = [
                r.name
                for o in ledger.owners()
                if o.owner_id.startswith("warm:")
                for r in ledger.resources(o)
                if r.kind is ResourceKind.DOMAIN
            ]
        for name in names:
            state = subprocess.run(
                ["virsh", "-c", "qemu:///system", "domstate", name],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            if state == "paused":
                return
        time.sleep(0.2)
    raise SystemExit("the warm service made no warm VM within 120 s (see its service.log)")


def _bench_vs_qemu(
    submit: Path,
    sandbox: Path,
    work: Path,
    boot: RawBoot,
    runs: int,
    socks: dict[str, Path],
    warm_config: object,
) -> None:
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    raw_times: list[float] = []
    disk_times: list[float] = []
    phases: dict[str, dict[str, list[float]]] = {"cold": {}, "warm": {}}
    run_sd(submit, socks["cold"])  # warm the page cache for all (kernel, initrd, venv)
    _wait_warm(warm_config)
    run_sd(submit, socks["warm"])
    run_raw(sandbox, work, boot, -1)
    kinds = ("cold", "warm", "raw")
    for i in range(runs):
        for which in kinds[i % 3 :] + kinds[: i % 3]:  # each goes first in turn
            if which == "raw":
                took, built = run_raw(sandbox, work, boot, i)
                raw_times.append(took)
                disk_times.append(built)
                continue
            if which == "warm":
                _wait_warm(warm_config)  # made after the last claim, in the background
            total, parts = run_sd(submit, socks[which])
            times[which].append(total)
            for name, value in parts.items():
                phases[which].setdefault(name, []).append(value)
    logs = {
        "cold": (work / "service" / "service.log").read_text(),
        "warm": (work / "warm-service" / "service.log").read_text(),
    }
    taken = logs["warm"].count("took warm VM")
    print(f"   raw QEMU (spawn to exit):             {stats(raw_times)}")
    print(f"   raw: building both disks (staging):   {stats(disk_times, 'ms', 1000)}")
    print(f"   load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    for which in ("cold", "warm"):
        label = "without warm VMs" if which == "cold" else "with a warm VM"
        extra = f"; {taken} of {runs + 1} jobs took the warm VM" if which == "warm" else ""
        listed = "[]" if which == "cold" else '["minimal"]'
        print(f"\n   -- sd run {label} ([jobs] warm = {listed}{extra})")
        _report(times[which], raw_times, phases[which])
        for label, pattern in SERVICE_LINES:
            found = [float(m) for m in re.findall(pattern, logs[which])]
            if found:
                print(f"   {label}: {stats(found, 'ms', 1)}")


#: What the services' logs say, per job: the label and the line's pattern (milliseconds).
SERVICE_LINES = (
    (
        "PREPARE_JOB inside the service (input disk, resolve, define or take)",
        r"prepare \S+ for uid \d+ \(pid \d+\): ok in (\d+) ms",
    ),
    (
        "of which the warm VM's claim (match, ledger rows handed over)",
        r"took warm VM \S+ \((\d+) ms\)",
    ),
    (
        "after PREPARE_JOB's reply, the job's two disks plugged into the warm VM",
        r"plugged into warm VM \S+ in (\d+) ms",
    ),
    ("after PREPARE_JOB's reply, the VM's paused start (cold)", r"VM started paused in (\d+) ms"),
    (
        "in the service, from the runner's request to its VM running",
        r"running (\d+) ms after the run request",
    ),
)


def _report(sd_times: list[float], raw_times: list[float], phases: dict[str, list[float]]) -> None:
    sd_median, raw_median = statistics.median(sd_times), statistics.median(raw_times)
    guest = statistics.median(phases[GUEST])
    print(f"   sd run (whole job, as the user waits): {stats(sd_times)}")
    print(f"   sd run's guest alone (libvirt events): {stats(phases[GUEST])}")
    ratio = sd_median / raw_median
    print(
        f"   ratio sd run / raw QEMU: {ratio:.3f} (we add {sd_median - raw_median:+.2f} s, "
        f"{100 * (ratio - 1):+.1f} %; target <= 1.15): {_verdict(ratio <= 1.15)}"
    )
    print(
        f"   guest alone under libvirt / raw QEMU: {guest / raw_median:.3f} "
        f"({guest - raw_median:+.2f} s; target <= 1.05): {_verdict(guest / raw_median <= 1.05)}"
    )
    print(
        f"   sd run minus its own guest time: {sd_median - guest:.2f} s (what we add around a boot)"
    )
    targets = {"PREPARE_JOB": 0.150, "runner until": 0.050, "runner after power-off": 0.100}
    print("   where sd run's time goes (medians):")
    for name, values in phases.items():
        median = statistics.median(values)
        target = next(
            (
                f"  target <= {1000 * t:.0f} ms: {_verdict(median <= t)}"
                for start, t in targets.items()
                if name.startswith(start)
            ),
            "",
        )
        print(f"     {median:6.3f} s  {name}{target}")


def _verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


# -- 2. the hook cycle on the test driver ------------------------------------------------------
def bench_ad(sandbox: Path, tag: str) -> str:
    """SUBMIT's job ad as a schedd holds it, in SANDBOX; TAG makes its GlobalJobId unique."""
    (ad,) = job_ad_from_submit(
        SUBMIT,
        submit_dir=sandbox,
        owner="bench",
        schedd_name=f"bench{os.getpid()}-{tag}@x",
        qdate=1,
    )
    return ad


def write_test_site(site: Path) -> Path:
    """A site on libvirt's test driver (a fake kernel: no VM boots): its site.toml."""
    (site / "images" / "minimal").mkdir(parents=True)
    for name in ("vmlinux", "initrd.img"):
        (site / "images" / "minimal" / name).write_bytes(b"x")
    (site / "node.xml").write_text(NODE_XML, encoding="utf-8")
    config = site / "site.toml"
    config.write_text(
        f'image_dir = "{site / "images"}"\nstate_dir = "{site / "state"}"\n'
        f'default_uri = "test://{site / "node.xml"}"\n[properties]\n"sd.flavour" = "qemu"\n',
        encoding="utf-8",
    )
    return config


def bench_hooks(work: Path, runs: int) -> None:
    print(
        f"\n== 2. PREPARE_JOB + JOB_EXIT on test:/// as separate processes ({runs} cycles "
        "per way to the privileged side, interleaved)"
    )
    site = work / "site"
    config = write_test_site(site)
    submit = make_job(work / "hookjob")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(work),
        "CONDOR_CONFIG": "/dev/null",
        "SD_BATCH_CONFIG": str(config),
        "_CONDOR_SCRATCH_DIR": str(submit.parent),
    }
    condor_config = site / "condor_config"  # a worker's: the hook reads the knob through it
    condor_config.write_text(
        f"SMARTDOMAINS_HELPER_SOCKET = {site / 'run' / 'helper.sock'}\n", encoding="utf-8"
    )
    ways = {
        "helper service (one Python per hook)": {
            **env,
            "_CONDOR_SMARTDOMAINS_HELPER_SOCKET": str(site / "run" / "helper.sock"),
        },
        "helper service, its socket read from an HTCondor config (a worker's case)": {
            **env,
            "CONDOR_CONFIG": str(condor_config),
        },
        "helper command, run directly": {
            **env,
            "_CONDOR_SMARTDOMAINS_HELPER": f"{PYTHON} -m sd_batch.batch.privileged",
        },
    }
    if os.geteuid() == 0 and shutil.which("sudo"):
        ways["helper command through sudo"] = {
            **env,
            "_CONDOR_SMARTDOMAINS_HELPER": (
                f"sudo -n /usr/bin/env SD_BATCH_CONFIG={config} CONDOR_CONFIG=/dev/null "
                f"{PYTHON} -I -m sd_batch.batch.privileged"
            ),
        }
    service = _start_service(site, env)
    times: dict[str, dict[str, list[float]]] = {
        w: {"PREPARE_JOB": [], "JOB_EXIT": []} for w in ways
    }
    try:
        for i in range(runs + 1):  # the first cycle of each warms the page cache
            for n, way in enumerate(ways):
                ad = bench_ad(submit.parent, f"{i}-{n}")
                took = _hook_cycle(ad, ways[way], submit.parent)
                for hook, seconds in took.items():
                    if i:
                        times[way][hook].append(seconds)
    finally:
        service.terminate()
        service.wait(timeout=30)
    for way, hooks in times.items():
        print(f"   {way}:")
        for name, values in hooks.items():
            verdict = "MET" if statistics.median(values) <= 0.150 else "NOT MET"
            print(f"     {name:12s} {stats(values, 'ms', 1000)}  target <= 150 ms: {verdict}")
    fast = times["helper service (one Python per hook)"]
    for way in ways:
        if not way.startswith("helper service"):
            ratios = ", ".join(
                f"{name} {statistics.median(times[way][name]) / statistics.median(v):.1f}x"
                for name, v in fast.items()
            )
            print(f"   {way} / helper service: {ratios}")
    bare = [_timed([str(PYTHON), "-c", "pass"]) for _ in range(runs)]
    isolated = [_timed([str(PYTHON), "-I", "-S", "-c", "pass"]) for _ in range(runs)]
    print(f"   python start alone (venv):      {stats(bare, 'ms', 1000)}")
    print(f"   python -I -S start (no site):   {stats(isolated, 'ms', 1000)}")
    service = _start_service(site, env)  # the hooks' imports as they run: through the service
    ways_env = ways["helper service (one Python per hook)"]
    for module, args in (
        ("sd_batch.helper.hooks", ["prepare-job"]),
        ("sd_batch.helper.hooks", ["job-exit"]),
        ("sd_batch.batch.privileged", ["probe"]),
    ):
        print(
            f"   imports of `python -m {module} {args[0]}` (-X importtime, self+children, top 8):"
        )
        for line in _importtime(module, args, ways_env, submit.parent, ad.encode())[:8]:
            print(f"     {line}")
    service.terminate()
    service.wait(timeout=30)
    print(
        "   through the helper command a hook is two Python processes (the hook, then the "
        "helper it runs), so interpreter start and imports count twice; through the service "
        "once, and the service has libvirt's connection, lark's parser and its modules loaded."
    )


def _start_service(site: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A private helper service (root) on SITE's config, listening under SITE/run."""
    sock = site / "run" / "helper.sock"
    site.mkdir(parents=True, exist_ok=True)
    log = open(site / "service.log", "ab")  # noqa: SIM115 - the service's, closed with it
    proc = subprocess.Popen(
        [str(PYTHON), "-I", "-m", "sd_batch.helper.service", "--socket", str(sock)],
        env=env,
        stdout=log,
        stderr=log,
    )
    for _ in range(200):
        if sock.exists():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"the helper service did not start: {(site / 'service.log').read_text()}")


def _hook_cycle(ad: str, env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Wall seconds of PREPARE_JOB, then of JOB_EXIT on the ad with its updates (as the
    starter hands it on)."""
    took = {}
    for name, argv in (("PREPARE_JOB", ["prepare_job"]), ("JOB_EXIT", ["job_exit", "exit"])):
        started = time.perf_counter()
        done = subprocess.run(
            [str(HOOKS_DIR / argv[0]), *argv[1:]],
            input=ad.encode(),
            capture_output=True,
            env=env,
            cwd=cwd,
            check=False,
        )
        took[name] = time.perf_counter() - started
        if name == "PREPARE_JOB" and b"HookStatusCode = 0" not in done.stdout:
            raise SystemExit(f"PREPARE_JOB failed: {done.stdout!r} {done.stderr!r}")
        if name == "PREPARE_JOB":
            ad = updated_ad(parse_job_ad(ad), done.stdout.decode()).text
        if name == "JOB_EXIT" and b"(exit): removed" not in done.stderr:
            raise SystemExit(f"JOB_EXIT did not clean up: {done.stderr!r}")
    return took


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def _importtime(
    module: str, args: list[str], env: dict[str, str], cwd: Path, stdin: bytes = b""
) -> list[str]:
    done = subprocess.run(
        [str(PYTHON), "-X", "importtime", "-m", module, *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=cwd,
        check=False,
    )
    rows = []
    for line in done.stderr.decode().splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(3)) <= 2:  # top-level imports only
            rows.append((int(match.group(2)), match.group(4)))
    total = sum(c for c, _ in rows)
    out = [f"{c / 1000:7.1f} ms  {name}" for c, name in sorted(rows, reverse=True)]
    return [f"{total / 1000:7.1f} ms  (all top-level imports)", *out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions of each (default 5)")
    parser.add_argument(
        "--hook-runs",
        type=int,
        default=20,
        help="hook cycles per way to the privileged side (default 20)",
    )
    parser.add_argument(
        "--only", choices=("qemu", "hooks"), help="run only part 1 (qemu) or part 2 (hooks)"
    )
    args = parser.parse_args()
    os.environ.setdefault("CONDOR_CONFIG", "/dev/null")
    with tempfile.TemporaryDirectory(prefix="sd-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # noqa: PTH101 - the slot user reads the job folder
        if args.only != "hooks":
            bench_vs_qemu(work, args.runs)
        if args.only != "qemu":
            bench_hooks(work, args.hook_runs)


if __name__ == "__main__":
    main()
