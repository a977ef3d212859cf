"""The job's runner (its Cmd after PREPARE_JOB), quick to its first request.

condor_hooks/runner runs this file (`python -I .../helper/runner.py --job ID [--socket PATH]`),
not `-m`: until the `run` request is out only the standard library's socket and json are
loaded, not even the sd_batch package (its logging alone is ~14 ms), so a warm VM (`[jobs]
warm`) resumes ~20 ms after the runner's exec instead of ~60 ms. PREPARE_JOB names the
service's socket in the runner's arguments (a worker's runner otherwise reads the HTCondor
knob: ~70 ms of bindings). Everything else loads while the VM resumes (`hooks.run_job`), still
before its payload can have run long enough for a package upgrade to replace the code.
May import: the standard library; then helper.hooks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

USAGE = "usage: runner --job GLOBAL_JOB_ID [--socket PATH | --helper COMMAND...]"
#: What would steer the runner to another door or program. The runner is the job's Cmd, so
#: its environment is the job's own (submit's `environment`): once PREPARE_JOB named the door
#: it used in the arguments, these are the user's words and are dropped.
STEERING = ("_CONDOR_SMARTDOMAINS_HELPER", "_CONDOR_SMARTDOMAINS_HELPER_SOCKET")


def parse(argv: list[str]) -> tuple[str, str | None, list[str] | None] | None:
    """(job id, the service's socket, the helper command) from the runner's arguments, as
    PREPARE_JOB wrote them (at most one of the two doors); None: not ours."""
    if len(argv) < 2 or argv[0] != "--job":
        return None
    job_id, rest = argv[1], argv[2:]
    if not rest:
        return job_id, None, None
    if len(rest) == 2 and rest[0] == "--socket":
        return job_id, rest[1], None
    if len(rest) >= 2 and rest[0] == "--helper":
        return job_id, None, rest[1:]
    return None


def early_request(job_id: str, path: str) -> socket.socket | None:
    """The `run` request sent at once on PATH; None when nothing answers there, or when an
    explicit helper command is set (`client.service_socket`'s rules then decide)."""
    if "_CONDOR_SMARTDOMAINS_HELPER" in os.environ or not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        sock.sendall(json.dumps({"action": "run", "job": job_id}).encode() + b"\n")
    except OSError:
        sock.close()
        return None
    return sock


def main(argv: list[str] | None = None) -> int:
    parsed = parse(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        print(USAGE, file=sys.stderr)
        return 2
    job_id, path, helper = parsed
    if path or helper:
        for name in STEERING:
            os.environ.pop(name, None)
    if helper:
        import shlex

        os.environ["_CONDOR_SMARTDOMAINS_HELPER"] = shlex.join(helper)
    vacated: list[int] = []  # a vacate (SIGUSR2) before the link to the service is in place
    signal.signal(signal.SIGUSR2, lambda signum, _frame: vacated.append(signum))
    sock = early_request(job_id, path) if path else None
    from sd_batch.helper.hooks import run_job

    return run_job(job_id, sock, vacated=bool(vacated), known=path)


if __name__ == "__main__":
    sys.exit(main())
