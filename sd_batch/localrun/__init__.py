"""`sd run`: a job through our hooks as condor_starter runs it, without any HTCondor daemon.
`harness` plays the shadow and the starter for each proc, `starter` runs the hooks as the slot
user, `files` does HTCondor's file transfer, `outcome` says how a proc ended.

Layer: orchestration (it runs the hooks as programs; it imports none of them).
May import: errors, condor, the standard library.
"""
