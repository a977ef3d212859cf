"""Where a description's VMs go, and in which order they are deployed: `place` (hosts and
demands in, an assignment out), the `strategies` that pick among hosts with room, the
`constraints` that decide which hosts have room, the `table` both share, the site's placement
rules (`policy`), the deploy order of a resolved description (`steps`: the tree of `Step`s the
engine walks) and the plan of a description's Schedulers (`plan`).

Layer: pure core: the hosts' state comes in as data from the caller.
May import: errors, lang, vm, the standard library.
"""
