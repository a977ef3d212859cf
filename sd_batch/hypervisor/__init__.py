"""libvirt: the one package that talks to a hypervisor. `connection` is the only importer of
libvirt (domains, host facts, the translation of libvirt's errors), `storage` its volumes and
pools, `types` the values and the `HypervisorAPI` protocol everyone else programs against (pure),
`connections` the per-process cache of open connections, and `inventory` the hosts placement
sees (an inventory file, or live hypervisors).

Layer: edge.
May import: errors, lang, vm, placement, config, ledger (claims), the standard library,
libvirt and tenacity (in `connection` only).
"""
