"""Whether a job may take a warm VM: the domain XML it would get, against a warm VM's.

A warm VM is a site template's VM, started paused before any job asks for it (the helper
service keeps one per `[jobs] warm` entry); a job whose own domain XML equals it takes it,
gets its input and output disks hot-plugged, and its runner only resumes it. Equal means
equal but for what differs per VM by construction: the name (and a UUID libvirt adds), the
owner metadata, the job's two disks (they are plugged in at the claim), and the VM's own files
(overlays, console log), which live in its folder and are named after its domain. Everything
else (memory, vCPUs, kernel, command line, images, devices, flavour) must be the same, so a job
whose description, size or flavour differs takes the cold path.

Pure: XML text in, text out. May import: vm.domain_xml, the standard library.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable

from .domain_xml import SD_NAMESPACE

#: Where a VM's own folder and its domain name stood, in the comparable form.
FOLDER_MARK = "@folder@"
NAME_MARK = "@domain@"


def comparable(xml: str, folder: str, domain: str, job_disks: Iterable[str] = ()) -> str:
    """XML (a domain as we build it) with what differs per VM taken out: its name, UUID and
    owner metadata, the disks whose source is one of JOB_DISKS, and in every remaining file
    path FOLDER (the VM's folder) and DOMAIN (its name) replaced by fixed marks."""
    root = ET.fromstring(xml)
    skip = {str(path) for path in job_disks}
    for tag in ("name", "uuid"):
        for element in root.findall(tag):
            root.remove(element)
    for metadata in root.findall("metadata"):
        for entry in list(metadata):
            if entry.tag == f"{{{SD_NAMESPACE}}}owner" or entry.tag.endswith(":owner"):
                metadata.remove(entry)
    devices = root.find("devices")
    if devices is not None:
        for disk in devices.findall("disk"):
            source = disk.find("source")
            if source is not None and source.get("file") in skip:
                devices.remove(disk)
    prefix = folder.rstrip("/") + "/"
    for element in root.iter():
        for attribute, value in element.attrib.items():
            if value.startswith(prefix):
                rest = value[len(prefix) :].replace(domain, NAME_MARK)
                element.set(attribute, FOLDER_MARK + "/" + rest)
    for element in root.iter():  # a stable text: attributes in one order, no indent noise
        element.attrib = dict(sorted(element.attrib.items()))
        if element.text is not None and not element.text.strip():
            element.text = None
        if element.tail is not None and not element.tail.strip():
            element.tail = None
    return ET.tostring(root, encoding="unicode")


def job_disk_targets(xml: str, job_disks: Iterable[str]) -> tuple[str, ...]:
    """The `<disk>` elements of XML whose source is one of JOB_DISKS, as XML text in their
    order: what is hot-plugged into the warm VM a job takes, exactly as a cold define has it."""
    root = ET.fromstring(xml)
    wanted = {str(path) for path in job_disks}
    found = []
    for disk in root.iterfind("./devices/disk"):
        source = disk.find("source")
        if source is not None and source.get("file") in wanted:
            disk.tail = None
            found.append(ET.tostring(disk, encoding="unicode"))
    return tuple(found)
