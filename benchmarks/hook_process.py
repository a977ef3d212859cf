"""PREPARE_JOB and JOB_EXIT as the starter runs them (one process each), where their time goes.

Run as `.venv/bin/python benchmarks/hook_process.py [--runs N] [--against CHECKOUT ...]
[--steps]` (as root: the helper service is root's; a minute or two; never inside the tests).

Each checkout measured (this one, and every --against one: another worktree or an exported
commit with its own .venv) gets a private site on libvirt's test driver and a private helper
service of its own code, as `benchmarks/job_overhead.py` part 2 does; the hook cycles
(PREPARE_JOB, then JOB_EXIT on the ad with its updates) alternate between the checkouts round
by round, so a shared machine's load falls on all of them alike. Printed per checkout: the
cycle's wall times (median, min, max), then the parts of a hook process:

- the interpreter's start: `python -I -S -c pass`, and as the hook starts it (`-c pass`, site
  and the venv's .pth files included);
- the hook's imports, as `-X importtime` counts them on a real PREPARE_JOB / JOB_EXIT
  (top-level modules, self and children);
- the service's own time for the request (its log's "in N ms", where the checkout logs it).

`--steps` instead times each step of the service's side in this process, warmed as the
service warms itself: the input copy, the confined child, the define, the ledger's opens,
write transactions and closes (each step's median, and its total a cycle with the tail).

Numbers are measured, never adjusted: medians with min-max and n, and the load average before
and after (the machine is shared: compare checkouts within one run, not across runs).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from job_overhead import bench_ad, make_job, write_test_site  # noqa: E402 - beside this file

from sd_batch.condor.jobad import parse_job_ad  # noqa: E402
from sd_batch.localrun.outcome import updated_ad  # noqa: E402

HOOKS = ("PREPARE_JOB", "JOB_EXIT")
#: The service's log line for a request, with its time where the checkout logs it.
SERVICE_LINE = re.compile(r"(prepare|cleanup) \S+ for uid \d+ \(pid \d+\): ok in (\d+) ms")


class Checkout:
    """One checkout's private site, service and hooks."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root = root.resolve()
        self.python = self.root / ".venv" / "bin" / "python"
        self.hooks = self.root / "sd_batch" / "data" / "condor_hooks"
        if not self.python.exists():
            raise SystemExit(f"{self.root} has no .venv (scripts/venv there)")
        self.site = work
        self.sandbox = make_job(work / "job").parent
        config = write_test_site(work)
        self.socket = work / "run" / "helper.sock"
        self.env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(work),
            "CONDOR_CONFIG": "/dev/null",
            "SD_BATCH_CONFIG": str(config),
            "_CONDOR_SCRATCH_DIR": str(self.sandbox),
            "_CONDOR_SMARTDOMAINS_HELPER_SOCKET": str(self.socket),
        }
        self.times: dict[str, list[float]] = {hook: [] for hook in HOOKS}
        self.service: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.site / "service.log", "ab")  # noqa: SIM115 - the service's, closed with it
        self.service = subprocess.Popen(
            [str(self.python), "-I", "-m", "sd_batch.helper.service", "--socket", str(self.socket)],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        for _ in range(400):
            if self.socket.exists():
                return
            if self.service.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"{self.root}: no service: {(self.site / 'service.log').read_text()}")

    def stop(self) -> None:
        if self.service is not None:
            self.service.terminate()
            self.service.wait(timeout=30)

    def ad(self, tag: str) -> str:
        return bench_ad(self.sandbox, f"{self.site.name}-{tag}")

    def cycle(self, tag: str, keep: bool) -> str:
        """PREPARE_JOB, then JOB_EXIT on the updated ad: each timed as one process."""
        ad = self.ad(tag)
        for hook, argv in (("PREPARE_JOB", ["prepare_job"]), ("JOB_EXIT", ["job_exit", "exit"])):
            started = time.perf_counter()
            done = subprocess.run(
                [str(self.hooks / argv[0]), *argv[1:]],
                input=ad.encode(),
                capture_output=True,
                env=self.env,
                cwd=self.sandbox,
                check=False,
            )
            took = time.perf_counter() - started
            if hook == "PREPARE_JOB":
                if b"HookStatusCode = 0" not in done.stdout:
                    raise SystemExit(
                        f"{self.root}: PREPARE_JOB failed: {done.stdout!r} {done.stderr!r}"
                    )
                ad = updated_ad(parse_job_ad(ad), done.stdout.decode()).text
            elif b"(exit): removed" not in done.stderr:
                raise SystemExit(f"{self.root}: JOB_EXIT did not clean up: {done.stderr!r}")
            if keep:
                self.times[hook].append(took)
        return ad

    def flags(self) -> list[str]:
        """The interpreter flags the checkout's hook scripts start Python with."""
        script = (self.hooks / "prepare_job").read_text(encoding="utf-8")
        return ["-I"] if " -I -m sd_batch.helper.hooks" in script else []

    def python_start(self, flags: list[str], runs: int) -> list[float]:
        took = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([str(self.python), *flags, "-c", "pass"], env=self.env, check=True)
            took.append(time.perf_counter() - started)
        return took

    def importtime(self, verb: str, stdin: str, argv: list[str]) -> tuple[float, list[str], str]:
        """Total top-level import time of a real hook run (ms), its biggest modules, and what
        it printed."""
        done = subprocess.run(
            [str(self.python), *self.flags(), "-X", "importtime", "-m", "sd_batch.helper.hooks"]
            + [verb, *argv],
            input=stdin.encode(),
            capture_output=True,
            env=self.env,
            cwd=self.sandbox,
            check=False,
        )
        rows = []
        for line in done.stderr.decode().splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if match and len(match.group(3)) <= 1:  # top-level imports only
                rows.append((int(match.group(2)) / 1000, match.group(4)))
        rows.sort(reverse=True)
        top = [f"{ms:.1f} ms {name}" for ms, name in rows[:6]]
        return sum(ms for ms, _ in rows), top, done.stdout.decode()

    def service_ms(self) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {"prepare": [], "cleanup": []}
        for line in (self.site / "service.log").read_text(errors="replace").splitlines():
            match = SERVICE_LINE.search(line)
            if match:
                found[match.group(1)].append(float(match.group(2)))
        return found


#: --steps: what is timed inside the service's prepare, paused start and cleanup, by module
#: path and attribute (a name a later change removed is left out, and said so).
STEPS = (
    ("sd_batch.batch.jobs", "_copy_bounded", "input disk copied"),
    ("sd_batch.batch.jobs", "run_confined", "confined child (the description resolved)"),
    ("sd_batch.deploy.engine", "Engine.deploy_vm", "define (test driver)"),
    ("sd_batch.deploy.engine", "Engine.teardown", "teardown (cleanup)"),
    ("sd_batch.staging", "create_output_disk", "output disk made"),
    ("sd_batch.ledger.store", "Ledger.open", "ledger opened"),
    ("sd_batch.ledger.store", "Ledger.close", "ledger closed"),
    ("sd_batch.ledger.store", "Ledger._write", "ledger write transactions"),
    ("sd_batch.batch.privileged", "site_config", "site config read"),
)


def steps(cycles: int) -> None:
    """The service's side in this process, warmed as the service warms itself (every module,
    the fork server, the ledger held open): `perform(prepare)`, `start_paused`,
    `perform(cleanup)` on the test driver, each step timed where it runs."""
    import contextlib
    import functools
    import importlib
    import io

    from sd_batch.batch import privileged
    from sd_batch.guest.contract import Manifest
    from sd_batch.helper.service import ServiceConnections, warm_up
    from sd_batch.staging import write_input_tar

    with tempfile.TemporaryDirectory(prefix="sd-hooksteps-") as tmp:
        work = Path(tmp)
        os.environ["SD_BATCH_CONFIG"] = str(write_test_site(work / "site"))
        sandbox = make_job(work / "job").parent
        warm_up()
        held = privileged.hold_ledger()
        took: dict[str, list[float]] = {}

        def timer(label: str, fn: object) -> object:
            @functools.wraps(fn)  # type: ignore[arg-type]
            def timed(*args: object, **kwargs: object) -> object:
                started = time.perf_counter()
                try:
                    return fn(*args, **kwargs)  # type: ignore[operator]
                finally:
                    took.setdefault(label, []).append(time.perf_counter() - started)

            return timed

        for module_name, attribute, label in STEPS:
            owner: object = importlib.import_module(module_name)
            *path, name = attribute.split(".")
            for part in path:
                owner = getattr(owner, part, None)
            fn = getattr(owner, name, None)
            if fn is None:
                print(f"  ({module_name}.{attribute} is gone: not timed)")
                continue
            if name == "_write":  # a context manager: time the transaction it holds
                inner = fn

                @contextlib.contextmanager
                def write(self: object, what: str, inner: object = inner) -> object:
                    started = time.perf_counter()
                    with inner(self, what) as db:  # type: ignore[operator]
                        yield db
                    took.setdefault("ledger write transactions", []).append(
                        time.perf_counter() - started
                    )

                setattr(owner, name, write)
            else:
                setattr(owner, name, timer(label, fn))
        ad = bench_ad(sandbox, "steps")
        job_id = parse_job_ad(ad).global_job_id
        buffer = io.BytesIO()
        write_input_tar(
            sandbox,
            Manifest(("./job.sh",), {}, "."),
            buffer,
            job_ad_text=ad,
            machine_ad_text=None,
            max_bytes=1 << 30,
        )
        connections = ServiceConnections()
        whole: dict[str, list[float]] = {"prepare": [], "paused start": [], "cleanup": []}
        uid = os.getuid()
        for i in range(cycles + 1):
            if i == 1:
                took.clear()  # the first cycle warms the page cache
            began = time.perf_counter()
            answer = privileged.perform(
                privileged.Action.PREPARE,
                job_id,
                uid,
                data_in=io.BytesIO(buffer.getvalue()),
                connections=connections,
            )
            prepared = time.perf_counter()
            if answer.code != 0:
                raise SystemExit(f"prepare failed: {answer.reply}")
            privileged.start_paused(job_id, uid, connections)
            started = time.perf_counter()
            answer = privileged.perform(
                privileged.Action.CLEANUP, job_id, uid, connections=connections
            )
            if i:
                whole["prepare"].append(prepared - began)
                whole["paused start"].append(started - prepared)
                whole["cleanup"].append(time.perf_counter() - started)
        measured = {**whole, **{label: list(values) for label, values in took.items()}}
        if held is not None:
            held.close()
        connections.close()
    print(f"the service's side, in-process ({cycles} cycles; load {load()}):")
    for label, values in measured.items():
        per, each = len(values) / cycles, 1000 * sum(values) / cycles
        print(f"  {label:42s} {stats(values)}  x{per:.0f} a cycle, {each:.1f} ms")


def stats(values: list[float], scale: float = 1000.0) -> str:
    if not values:
        return "n/a"
    v = [x * scale for x in values]
    return f"{statistics.median(v):6.1f} ms (min {min(v):.1f}, max {max(v):.1f}, n={len(v)})"


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="hook cycles per checkout")
    parser.add_argument(
        "--against", type=Path, action="append", default=[], help="another checkout to compare"
    )
    parser.add_argument(
        "--steps",
        action="store_true",
        help="instead: time each step of the service's side in this process (this checkout)",
    )
    args = parser.parse_args()
    os.environ.setdefault("CONDOR_CONFIG", "/dev/null")
    if args.steps:
        steps(args.runs)
        return
    print(f"load average before: {load()}")
    with tempfile.TemporaryDirectory(prefix="sd-hookbench-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: PTH101
        checkouts = [
            Checkout(root, Path(tmp) / str(n)) for n, root in enumerate([REPO, *args.against])
        ]
        for checkout in checkouts:
            checkout.start()
        try:
            for i in range(args.runs + 1):  # the first cycle warms the page cache
                order = checkouts if i % 2 else checkouts[::-1]
                for n, checkout in enumerate(order):
                    checkout.cycle(f"{i}-{n}", keep=i > 0)
            for checkout in checkouts:
                print(f"\n{checkout.root}:")
                for hook in HOOKS:
                    print(f"  {hook:12s} {stats(checkout.times[hook])}")
                bare = checkout.python_start(["-I", "-S"], 10)
                flags = checkout.flags()
                site = checkout.python_start(flags, 10)
                print(f"  python -I -S -c pass  {stats(bare)}")
                shown = f"python {' '.join([*flags, '-c pass'])}"
                print(f"  {shown:21s} {stats(site)}  (how the hooks start)")
                ad = checkout.ad("imports")
                total, top, printed = checkout.importtime("prepare-job", ad, [])
                updated = updated_ad(parse_job_ad(ad), printed).text
                print(f"  PREPARE_JOB imports   {total:6.1f} ms: " + "; ".join(top[:4]))
                total, top, _ = checkout.importtime("job-exit", updated, ["exit"])
                print(f"  JOB_EXIT imports      {total:6.1f} ms: " + "; ".join(top[:4]))
                for action, values in checkout.service_ms().items():
                    print(f"  service {action:8s}      {stats(values, 1.0)}")
        finally:
            for checkout in checkouts:
                checkout.stop()
    print(f"\nload average after: {load()}")


if __name__ == "__main__":
    main()
