"""A batch job's VM on the privileged (root) side: the job's `key` and limits, its `description`
(resolved from the job's own input and checked against site policy), its VM's life in `jobs`
(prepare, run, clean up) and `privileged`, the one entry to them that the helper service and the
sudo helper command share (`python -m sd_batch.batch.privileged`).

Layer: orchestration.
May import: errors, lang, vm, placement, condor, config, guest, staging, hypervisor, ledger,
deploy, the standard library.
"""
