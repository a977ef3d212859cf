"""HTCondor's side of things as values: job ClassAds (`jobad`, the one importer of the HTCondor
bindings) and HTCondor's own argument and environment syntaxes (`syntax`, pure).

Layer: edge (the HTCondor bindings). Hooks import it: keep this file empty of imports.
May import: errors, vm (sizing.Resources), the standard library, htcondor2/classad2 (in
`jobad` only).
"""
