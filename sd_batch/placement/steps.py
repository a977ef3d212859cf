"""The deploy order of a resolved description: its `sfConfig` as a tree of `Step`s.

`plan` turns a resolved `sfConfig` into a tree of `Step`s: a `Compound` deploys all its
children, then starts them in order; a `Sequence` deploys and starts each child before the next;
a `Parallel` starts its children at once; a `Pool` is its named VMs plus `count` copies of its
`template`; a `VirtualCluster` is its head, then its workers. A component with a `scheduler`
attribute has its VMs placed by that Scheduler (`placement.plan.schedule` puts each on its host's
URI; until then they carry the URI `plan` was given). The deployment engine carries it out.
Pure. May import: errors, lang, vm, placement.schedulers, the standard library.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import DescriptionError, SpecError
from ..lang import Component, Description
from ..vm.spec import VMSpec, vm_spec
from .schedulers import Scheduled, Scheduling, cluster_apart, demand_of, scheduling_of

VM_CLASS = "sd_batch.VM"
SEQUENCE_CLASS = "sd_batch.Sequence"
PARALLEL_CLASS = "sd_batch.Parallel"
POOL_CLASS = "sd_batch.Pool"
CLUSTER_CLASS = "sd_batch.VirtualCluster"
#: Components that are configuration for others, never deployed themselves.
NOT_DEPLOYED = frozenset({"sd_batch.Scheduler"})
#: The most VMs one plan may hold: `count 100000000` is refused before a single copy is made.
MAX_PLANNED_VMS = 10_000


class Order(enum.Enum):
    """How a step treats its children (SmartFrog's Compound, Sequence and Parallel)."""

    COMPOUND = "compound"  # deploy all, then start in order; terminate in reverse
    SEQUENCE = "sequence"  # deploy and start each before the next
    PARALLEL = "parallel"  # deploy all, start all at once


@dataclass(frozen=True, slots=True)
class VMPlan:
    """One VM to create: its checked spec, its host, and (if scheduled) its placement request."""

    spec: VMSpec
    uri: str
    placement: Scheduled | None = None

    @property
    def domain(self) -> str:
        return self.spec.name

    @property
    def path(self) -> str:
        return self.spec.path


@dataclass(frozen=True, slots=True)
class Step:
    """A node of the lifecycle tree: a VM, or an ordered group of steps."""

    path: str
    order: Order = Order.COMPOUND
    children: tuple[Step, ...] = ()
    vm: VMPlan | None = None

    def vms(self) -> Iterator[VMPlan]:
        """Every VM, in start order."""
        if self.vm is not None:
            yield self.vm
        for child in self.children:
            yield from child.vms()


@dataclass
class _Tally:
    """What every step of one plan shares: the pool, the URI, and the VMs planned so far
    against the most one plan may hold."""

    pool: str
    uri: str
    limit: int
    planned: int = 0

    def check(self, count: int, node: Component, name: str | None = None) -> None:
        """NODE (its attribute NAME: `count`) asks for COUNT more VMs: refused at once past the
        limit (before any copy is made); a VM itself adds itself."""
        if self.planned + count > self.limit:
            path = node.attribute_path(name) if name else node.path
            raise SpecError(
                f"{path}: the plan would hold more than {self.limit} VMs (budget vms)",
                loc=node.location_of(name) if name else node.loc,
                path=path,
                hint="ask for fewer VMs, or split them into several pools",
            )
        if name is None:
            self.planned += count


def plan(description: Description, pool: str, uri: str, *, max_vms: int = MAX_PLANNED_VMS) -> Step:
    """The lifecycle tree of a description's sfConfig, every VM named `POOL-<where it is>`;
    more than MAX_VMS VMs is a SpecError (counted before counted copies are made)."""
    root = description.sfconfig
    if root is None:
        raise DescriptionError(
            "the description has no sfConfig: nothing to start",
            hint="write sfConfig extends Pool { ... } (or Compound, VM, VirtualCluster)",
        )
    step = _plan(root, _Tally(pool, uri, max_vms), (), scheduling_of(root, None))
    names = [vm.domain for vm in step.vms()]
    if not names:
        raise DescriptionError(
            f"sfConfig ({root.loc}) contains no VM" if root.loc else "sfConfig contains no VM",
            hint="a pool needs at least one component that extends VM",
        )
    seen: set[str] = set()
    for vm in step.vms():
        if vm.domain in seen:
            raise SpecError(
                f"{vm.path}: two VMs are both named {vm.domain!r}",
                loc=vm.spec.loc,
                path=vm.path,
                hint="give each VM its own name (or leave name NULL)",
            )
        seen.add(vm.domain)
    return step


def _plan(node: Component, tally: _Tally, where: tuple[str, ...], sched: Scheduling | None) -> Step:
    pool, uri = tally.pool, tally.uri
    sf_class = node.get("sfClass")
    path = node.path
    if sf_class == VM_CLASS:
        tally.check(1, node)
        spec = vm_spec(node, default_name=_vm_name(pool, where))
        placed = None if sched is None else Scheduled(sched.scheduler, demand_of(node, spec, sched))
        return Step(path, vm=VMPlan(spec, uri, placed))
    if sf_class == POOL_CLASS:
        children = list(_child_steps(node, tally, where, sched))
        template = node.get("template")
        count = node.get("count", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise SpecError(
                f"{node.attribute_path('count')}: count must be a whole number >= 0",
                loc=node.location_of("count"),
                path=node.attribute_path("count"),
            )
        if count and not isinstance(template, Component):
            raise SpecError(
                f"{node.attribute_path('template')}: a Pool with count {count} needs a template",
                loc=node.location_of("template"),
                hint="write template extends LAZY VM { ... }",
            )
        tally.check(count, node, "count")
        for index in range(1, count + 1 if isinstance(template, Component) else 1):
            children.append(_copy_step(template, tally, (*where, f"{index}"), sched))
        return Step(path, Order.COMPOUND, tuple(children))
    if sf_class == CLUSTER_CLASS:
        head = node.get("head")
        worker = node.get("worker")
        workers = node.get("workers", 0)
        if not isinstance(head, Component):
            raise SpecError(
                f"{node.attribute_path('head')}: a VirtualCluster needs a head VM",
                loc=node.location_of("head"),
                hint="write head extends VM { ... }",
            )
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise SpecError(
                f"{node.attribute_path('workers')}: workers must be a count >= 0",
                loc=node.location_of("workers"),
            )
        if workers and not isinstance(worker, Component):
            raise SpecError(
                f"{node.attribute_path('worker')}: workers need a worker template",
                loc=node.location_of("worker"),
                hint="worker extends LAZY VM { ... }",
            )
        if sched is not None:  # head and workers apart, as the cluster's `apart` says
            sched = sched.within_cluster(node, cluster_apart(node))
        head_step = _plan(head, tally, (*where, "head"), scheduling_of(head, sched))
        tally.check(workers, node, "workers")
        worker_steps = tuple(
            _copy_step(worker, tally, (*where, f"worker{i}"), sched) for i in range(1, workers + 1)
        )
        return Step(path, Order.SEQUENCE, (head_step, Step(path, Order.PARALLEL, worker_steps)))
    order = {SEQUENCE_CLASS: Order.SEQUENCE, PARALLEL_CLASS: Order.PARALLEL}.get(
        sf_class if isinstance(sf_class, str) else "", Order.COMPOUND
    )
    return Step(path, order, tuple(_child_steps(node, tally, where, sched)))


def _child_steps(
    node: Component, tally: _Tally, where: tuple[str, ...], sched: Scheduling | None
) -> Iterator[Step]:
    for name, child in node.children():
        if child.is_data or child.is_lazy or child.get("sfClass") in NOT_DEPLOYED:
            continue  # data, templates for counted copies, schedulers: not deployed themselves
        if "sfClass" not in child:
            continue
        yield _plan(child, tally, (*where, _short(name)), scheduling_of(child, sched))


def _copy_step(
    template: Component, tally: _Tally, where: tuple[str, ...], sched: Scheduling | None
) -> Step:
    """A counted copy of a LAZY template (Pool, VirtualCluster workers)."""
    return _plan(template, tally, where, scheduling_of(template, sched))


def _short(name: str) -> str:
    return name[2:] if name.startswith("--") else name  # anonymous `--3` -> `3`


def _vm_name(pool: str, where: tuple[str, ...]) -> str:
    return "-".join((pool, *where)) if where else pool
