"""Deploying descriptions on hypervisors: the `engine` (SmartFrog's lifecycle, rollback), `pools`
(`sd start`/`terminate`/`status`), `watch` (high availability), the `reaper` (what crashed runs
left) and `plan_text` (a dry run of placement as text, shared by the CLI and the web app).

Layer: orchestration.
May import: errors, lang, vm, placement, config, hypervisor, ledger, the standard library.
"""
