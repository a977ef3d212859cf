"""`sd images push`'s checks made on this machine, before any host is asked, and what makes a
URI a host of its own (whose files sd-batch reaches only through its libvirt). The copies
themselves run on real hosts: tests/test_hosts_real.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from sd_batch.cli.main import Environment, main
from sd_batch.hypervisor.types import is_remote

from conftest import write_site_toml


@pytest.mark.parametrize(
    ("uri", "remote"),
    [
        ("qemu+tcp://10.211.1.2/system", True),
        ("qemu+ssh://root@node01/system", True),
        ("xen+ssh://node01", True),
        ("qemu:///system", False),
        ("qemu:///embed?root=/x", False),
        ("test:///tmp/host1.xml", False),
        ("test:///default", False),
        ("not a uri", False),
    ],
)
def test_a_uri_with_a_host_name_is_a_host_of_its_own(uri: str, remote: bool) -> None:
    assert is_remote(uri) is remote


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("../etc/passwd", "is not inside the site image folder"),
        ("/", "is not inside the site image folder"),
        ("missing.qcow2", "no image missing.qcow2 in the site image folder"),
        ("empty", "no image empty in the site image folder"),
    ],
)
def test_push_refuses_names_outside_or_missing_from_the_image_folder_before_connecting(
    tmp_path: Path,
    name: str,
    said: str,
) -> None:
    (tmp_path / "images" / "empty").mkdir(parents=True)
    write_site_toml(tmp_path, None, hosts={"node1": "qemu+tcp://192.0.2.250/system"}, flavour=None)
    out, err = io.StringIO(), io.StringIO()
    environ = {"SD_BATCH_CONFIG": str(tmp_path / "site.toml")}
    code = main(
        ["images", "push", "node1", name], Environment(stdout=out, stderr=err, environ=environ)
    )
    assert code != 0 and said in err.getvalue(), err.getvalue()
    assert "cannot connect" not in err.getvalue()  # no host was asked (192.0.2.250 is TEST-NET)
