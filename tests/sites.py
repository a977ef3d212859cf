"""Test scaffolding: a site on libvirt's test driver (host files, site.toml, in-process `sd`)
and jobs handed to the root side's `jobs.prepare` (`JobSite`); `wait_until` for another
process's state. Test files import these through conftest.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest

from sd_batch.batch import jobs
from sd_batch.batch.key import JobKey
from sd_batch.cli.main import Environment, main
from sd_batch.condor.jobad import job_ad_from_submit
from sd_batch.config.site import BUILTIN_TEMPLATE_DIR, SiteConfig, load_config
from sd_batch.data import HOOKS_DIR
from sd_batch.errors import DescriptionError, Disposition, SdError
from sd_batch.guest.contract import Manifest
from sd_batch.hypervisor.connections import Connections
from sd_batch.ledger.store import Ledger
from sd_batch.staging import write_input_tar


# --- a site on libvirt's test driver ------------------------------------------------------------
class Run(NamedTuple):
    """What one `sd` command did; unpacks as `code, out, err`."""

    code: int
    out: str
    err: str


def sd_in_process(environ: Mapping[str, str], *argv: str) -> Run:
    """`sd ARGV` run in this process (so on its `SHARED_CONNECTIONS`), with ENVIRON."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), Environment(stdout=out, stderr=err, environ=dict(environ)))
    return Run(code, out.getvalue(), err.getvalue())


def node_xml(cpus: int = 4, memory_kib: int = 8 << 20, images: Path | None = None) -> str:
    """A libvirt test-driver host: CPUS cores, MEMORY_KIB; with IMAGES, an `images` dir pool
    there holding a 64 MiB base.qcow2 (the site's base image, as the host sees it)."""
    pool = (
        ""
        if images is None
        else f"""
  <pool type='dir'><name>images</name><target><path>{images}</path></target>
    <volume type='file'><name>base.qcow2</name><capacity unit='MiB'>64</capacity>
      <target><format type='qcow2'/></target></volume></pool>"""
    )
    return f"""<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores><threads>1</threads>
    <active>{cpus}</active><mhz>2400</mhz><model>x86_64</model></cpu>
  <memory>{memory_kib}</memory>{pool}
</node>
"""


def write_node(
    path: Path, cpus: int = 4, memory_kib: int = 8 << 20, images: Path | None = None
) -> str:
    """Write a `node_xml` host file at PATH; its URI (each connection to it: a private host)."""
    path.write_text(node_xml(cpus, memory_kib, images), encoding="utf-8")
    return f"test://{path}"


def fake_kernel(image_dir: Path, content: tuple[bytes, bytes] = (b"kernel", b"initrd")) -> None:
    """The `minimal` flavour's kernel and initrd: files the test driver never boots."""
    (image_dir / "minimal").mkdir(parents=True, exist_ok=True)
    (image_dir / "minimal" / "vmlinux").write_bytes(content[0])
    (image_dir / "minimal" / "initrd.img").write_bytes(content[1])


def write_site_toml(
    root: Path,
    default_uri: str | None,
    *,
    image_dir: Path | None = None,
    template_dirs: Iterable[Path] = (),
    hosts: Mapping[str, str] | None = None,
    flavour: str | None = "qemu",
    tables: str = "",
) -> Path:
    """ROOT/site.toml: images in IMAGE_DIR (ROOT/images), state in ROOT/state, DEFAULT_URI,
    named HOSTS, the VM FLAVOUR (qemu: no KVM), then TABLES (`[policy]`, ... as text)."""
    lines = [f'image_dir = "{image_dir or root / "images"}"', f'state_dir = "{root / "state"}"']
    if default_uri is not None:
        lines.append(f'default_uri = "{default_uri}"')
    folders = list(template_dirs)
    if folders:
        lines.append("template_dirs = [" + ", ".join(f'"{d}"' for d in folders) + "]")
    if hosts is not None:
        lines += ["[hosts]", *(f'{name} = "{uri}"' for name, uri in hosts.items())]
    if flavour is not None:
        lines += ["[properties]", f'"sd.flavour" = "{flavour}"']
    path = root / "site.toml"
    path.write_text("\n".join(lines) + "\n" + tables, encoding="utf-8")
    return path


def site_environ(config_file: Path) -> dict[str, str]:
    """The environment of `sd` for the site of CONFIG_FILE (and no other site's settings)."""
    return {"SD_BATCH_CONFIG": str(config_file), "PATH": os.environ["PATH"]}


def ledger_rows(config: SiteConfig) -> tuple[list[str], list[str]]:
    """(owners, resources) CONFIG's ledger holds, as `kind id` / `kind name` strings."""
    with Ledger.for_site(config) as ledger:
        owners = ledger.owners()
        resources = [r for o in owners for r in ledger.resources(o)]
    return (
        [f"{o.kind.value} {o.owner_id}" for o in owners],
        [f"{r.kind.value} {r.name}" for r in resources],
    )


@dataclass
class SdSite:
    """A test site's folder and `sd`'s environment there: the base of the files' `Site`s."""

    root: Path
    environ: dict[str, str]

    @property
    def config_file(self) -> Path:
        return self.root / "site.toml"

    def sd(self, *argv: str) -> Run:
        return sd_in_process(self.environ, *argv)


# --- jobs on the root side (`jobs.prepare`) on libvirt's test driver -----------------------------
#: A user's my.sf on the site's minimal template, open for its attributes and the closing "}".
MINIMAL = '#include "minimal.sf"\nsfConfig extends MinimalVM {\n    '


@dataclass
class JobSite:
    """A private site on `test:///ROOT/node.xml` and a submit folder (SANDBOX): jobs as
    condor_submit makes them, their input disks as PREPARE_JOB writes them, handed to
    `jobs.prepare`, the root side, as the helper does."""

    root: Path
    sandbox: Path
    connections: Connections
    count: int = 0

    @property
    def config_path(self) -> Path:
        return self.root / "site.toml"

    def write_config(self, policy: str = "", templates: tuple[Path, ...] = ()) -> SiteConfig:
        write_site_toml(
            self.root,
            f"test://{self.root / 'node.xml'}",
            template_dirs=[*templates, BUILTIN_TEMPLATE_DIR],
            tables=f"[policy]\n{policy}",
        )
        return load_config(self.config_path)

    def submit(self, description: str, requests: str = "", sf_text: str | None = None) -> str:
        """The job ad of a job asking for DESCRIPTION, with REQUESTS (submit commands) and my.sf
        holding SF_TEXT: what condor_submit makes of it (the real bindings)."""
        inputs = ""
        if sf_text is not None:
            (self.sandbox / "my.sf").write_text(sf_text, encoding="utf-8")
            inputs = "transfer_input_files = my.sf\n"
        self.count += 1
        text = (
            f"executable = /bin/true\n{inputs}{requests}+SDVMDescription = {description}\nqueue\n"
        )
        (ad,) = job_ad_from_submit(
            text,
            submit_dir=self.sandbox,
            owner="tester",
            schedd_name=f"job-{os.getpid()}-{self.count}@test",
            qdate=1700000000,
        )
        return ad

    def input_disk(self, ad: str, machine: str | None = None) -> tuple[JobKey, bytes]:
        """The job of AD: its key and the input disk PREPARE_JOB writes (with the slot's
        MACHINE ad, if any)."""
        job_id = next(
            line.split('"')[1] for line in ad.splitlines() if line.startswith("GlobalJobId = ")
        )
        out = io.BytesIO()
        write_input_tar(
            self.sandbox,
            Manifest(("/bin/true",), {}, "."),
            out,
            job_ad_text=ad,
            machine_ad_text=machine,
            max_bytes=1 << 30,
        )
        return JobKey(os.getuid(), job_id), out.getvalue()

    def job(self, description: str, sf_text: str | None = None) -> tuple[JobKey, bytes]:
        """A job asking for DESCRIPTION (with my.sf holding SF_TEXT): its key and input disk."""
        return self.input_disk(self.submit(description, sf_text=sf_text))

    def prepare(
        self,
        config: SiteConfig,
        description: str,
        sf_text: str | None = None,
        key: JobKey | None = None,
    ) -> jobs.PreparedJob:
        made_key, disk = self.job(description, sf_text)
        return jobs.prepare(config, key or made_key, io.BytesIO(disk), connections=self.connections)

    def prepare_ad(self, config: SiteConfig, ad: str, machine: str | None) -> jobs.PreparedJob:
        """`jobs.prepare` of the job of AD, in a slot whose machine ad is MACHINE."""
        key, disk = self.input_disk(ad, machine)
        return jobs.prepare(config, key, io.BytesIO(disk), connections=self.connections)

    def refusal(self, sf_text: str, policy: str = "") -> SdError:
        """The hold a job with SF_TEXT as its my.sf gets, under POLICY; nothing left behind."""
        config = self.write_config(policy)
        with pytest.raises(SdError) as caught:
            self.prepare(config, '"my.sf"', sf_text)
        assert caught.value.disposition is Disposition.HOLD
        assert self.leftovers(config) == []
        return caught.value

    def leftovers(self, config: SiteConfig) -> list[str]:
        with Ledger.for_site(config) as ledger:
            rows = [f"{o.kind.value} {o.owner_id}" for o in ledger.owners()]
        folder = config.state_dir / "jobs"
        return rows + (sorted(str(p) for p in folder.iterdir()) if folder.is_dir() else [])

    def job_ids(self, config: SiteConfig) -> list[str]:
        """The job ids of the job owners in the ledger."""
        with Ledger.for_site(config) as ledger:
            return [o.owner_id.partition(":")[2] for o in ledger.owners()]

    def clean_up(self, config: SiteConfig) -> None:
        """`jobs.cleanup` of every job the ledger has."""
        for job_id in self.job_ids(config):
            jobs.cleanup(config, JobKey(os.getuid(), job_id), connections=self.connections)

    def prepare_job_hook(self, ad: str, **environ: str) -> subprocess.CompletedProcess[bytes]:
        """The real PREPARE_JOB hook process on AD in the sandbox, on this site, reaching the
        root side through the helper command run directly (no sudo); ENVIRON adds to its
        environment (the starter's _CONDOR_* variables)."""
        return subprocess.run(
            [str(HOOKS_DIR / "prepare_job")],
            input=ad.encode(),
            cwd=self.sandbox,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(self.root),
                "SD_BATCH_CONFIG": str(self.config_path),
                "CONDOR_CONFIG": "/dev/null",
                "_CONDOR_SMARTDOMAINS_HELPER": f"{sys.executable} -m sd_batch.batch.privileged",
                **environ,
            },
            capture_output=True,
            timeout=60,
            check=False,
        )

    def domain_xml(self, config: SiteConfig, domain: str) -> ET.Element:
        hv = self.connections(config.default_uri)
        return ET.fromstring(hv._lookup(domain).XMLDesc(0))  # type: ignore[attr-defined]


def held(error: SdError) -> str:
    """The HoldReason's text, as the hook writes it (one line, file:line:col first)."""
    text = error.headline() if isinstance(error, DescriptionError) else str(error)
    assert "\n" not in text
    return text


def wait_until(
    condition: Callable[[], object], what: str, seconds: float = 30.0, every: float = 0.05
) -> None:
    """Poll CONDITION (another process's state: nothing to wait on) until true; fail after
    SECONDS naming WHAT. The bound is only a hang guard: no test asserts on the time taken."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
