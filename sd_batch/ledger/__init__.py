"""The state ledger: an sqlite record of everything sd-batch creates, so that a crash is cleaned
up later. `store` is the ledger itself, `schema` its tables and migrations, `types` its values
that carry no process (pure).

Layer: edge (sqlite3, the state folder).
May import: errors, vm (owner kinds of the domain XML), config, the standard library.
"""
