"""Checkpoint size and save/restore time of an evicted job's VM (issue 18).

Run as root: `.venv/bin/python benchmarks/checkpoint.py [--memory 256 1024]` (real libvirtd,
real QEMU, the `minimal` guest). For each memory size, one `sd run --evict-after` of a job
counting for 20 s, through a helper service of this checkout on a private socket; the
service's own log lines give the times: the save (pause + virDomainSave), the pack (gzip of the
save file and the output disk, signed), the check-and-unpack at the next PREPARE_JOB and the
restore (virDomainRestore). Prints one row per size. Numbers on a shared, loaded 2-core host
under TCG are not what a KVM worker sees: compare sizes, not absolutes.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SD = ROOT / ".venv" / "bin" / "sd"
PYTHON = ROOT / ".venv" / "bin" / "python"
SUB = """executable = count.sh
arguments = 20
transfer_input_files = my.sf
request_memory = {memory}
output = job.out
error = job.err
+SDVMDescription = "my.sf"
queue
"""
COUNT = """#!/bin/sh
i=0; while [ $i -lt $1 ]; do i=$((i+1)); echo $i >> count.txt; sleep 1; done
"""
SF = '#include "minimal.sf"\nsfConfig extends MinimalVM {{\n    memory {memory};\n}}\n'
PATTERNS = {
    "save_s": r"the VM was saved in ([\d.]+) s",
    "pack_s": r"checkpoint packed in ([\d.]+) s",
    "bytes": r"checkpoint packed in [\d.]+ s: (\d+) bytes",
    "unpack_s": r"checkpoint checked and unpacked in ([\d.]+) s",
    "restore_s": r"resumed from its checkpoint in ([\d.]+) s",
}


def one(memory: int, sock: Path, log: Path) -> dict[str, str]:
    with tempfile.TemporaryDirectory(prefix="sd-ckpt-bench-") as folder:
        job = Path(folder)
        (job / "job.sub").write_text(SUB.format(memory=memory))
        (job / "count.sh").write_text(COUNT)
        (job / "my.sf").write_text(SF.format(memory=memory))
        before = log.read_text()
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/root",
            "CONDOR_CONFIG": "/dev/null",
            "_CONDOR_SMARTDOMAINS_HELPER_SOCKET": str(sock),
        }
        done = subprocess.run(
            [str(SD), "run", "job.sub", "--evict-after", "10"],
            cwd=job,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            return {"error": (done.stdout + done.stderr)[-400:]}
        count = (job / "count.txt").read_text().split()
        found = {"steps": f"{len(count)} (1..{count[-1]})"}
        text = log.read_text()[len(before) :]
        for name, pattern in PATTERNS.items():
            match = re.search(pattern, text)
            found[name] = match.group(1) if match else "?"
        return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", type=int, nargs="+", default=[256, 1024])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sd-ckpt-bench-", dir="/run"))
    folder.chmod(0o755)
    sock, log = folder / "helper.sock", folder / "service.log"
    with open(log, "wb") as out:
        service = subprocess.Popen(
            [str(PYTHON), "-I", "-m", "sd_batch.helper.service", "--socket", str(sock)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        while not sock.exists():
            time.sleep(0.2)
        print(
            f"{'memory':>8} {'checkpoint':>12} {'save s':>7} {'pack s':>7} {'unpack s':>9} "
            f"{'restore s':>10}  steps"
        )
        for memory in args.memory:
            row = one(memory, sock, log)
            if "error" in row:
                print(f"{memory:>5} MiB  failed: {row['error']}")
                continue
            size = f"{int(row['bytes']) / 2**20:.1f} MiB" if row["bytes"].isdigit() else "?"
            print(
                f"{memory:>5} MiB {size:>12} {row['save_s']:>7} {row['pack_s']:>7} "
                f"{row['unpack_s']:>9} {row['restore_s']:>10}  {row['steps']}",
                flush=True,
            )
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)
        for path in (sock, log):
            path.unlink(missing_ok=True)
        folder.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
