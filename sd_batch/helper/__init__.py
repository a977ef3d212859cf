"""Both ends of the privileged helper, the door between a slot user and libvirt: the root
daemon (`service`, `python -m sd_batch.helper.service`), and the slot user's side: the job
hooks HTCondor runs (`hooks`, `python -m sd_batch.helper.hooks`, called by condor_hooks/*) and
how they reach the root side (`client`: the service's socket, else `sudo` and the helper
command). The hooks live here, not in `batch`, because they are a face: they run as the slot
user and reach `batch.privileged` only through the client.

Layer: face. A hook is a fresh Python each time: keep this file empty of imports.
May import: everything below (errors, lang, condor, config, guest, staging, hypervisor, deploy,
batch), the standard library.
"""
