"""The recording engine: runs the real Phoenix program under Pulumi's mock runtime.

No Proxmox, no Pulumi CLI, no credentials. Every registered resource is recorded with its
type, name, parent, dependencies, inputs and which of them are secret. pulumi-tls and
pulumi-random resources get real values (real keys and certificates honouring the inputs),
so the generated PKI can be exercised by real servers. The offline plan and the unit
tests both use this engine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as pmocks
from pulumi.runtime import rpc, settings
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.stack import Stack, run_pulumi_func
from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

from phoenix.collector import batch_gc
from phoenix.plan import fakes
from phoenix.resource_types import GUEST_TYPES
from phoenix.stackfile import StackConfig

SECRET_SIG = rpc._special_sig_key
SECRET_VALUE = rpc._special_secret_sig


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_VALUE


def reveal(value: Any) -> Any:
    """Inputs with every secret wrapper removed (for computing fake outputs)."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


@dataclass
class Recorded:
    urn: str
    type: str
    name: str
    parent: str
    custom: bool
    inputs: dict
    outputs: dict
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]
    secret_outputs: list[str]
    replace_on_changes: list[str]
    ignore_changes: list[str]
    protect: bool
    provider: str
    delete_before_replace: bool
    #: URNs this resource is replaced with (``replace_with``), and lifecycle options the diff reads.
    replace_with: list[str] = field(default_factory=list)
    retain_on_delete: bool = False
    deleted_with: str = ""
    #: outputs the provider computes at create time (a guest's MAC address), by input path:
    #: what a replacement changes for whatever reads them (``phoenix.diff`` follows them).
    computed: dict = field(default_factory=dict)
    #: the ``replacement_trigger`` option's value: the resource is replaced whenever it changes.
    replacement_trigger: Any = None

    def secret_paths(self) -> list[str]:
        """Input keys (top level) whose value is secret."""
        return sorted(k for k, v in self.inputs.items() if _contains_secret(v))

    def value(self, key: str) -> Any:
        return reveal(self.inputs.get(key))


def _contains_secret(value: Any) -> bool:
    if is_secret(value):
        return True
    if isinstance(value, dict):
        return any(_contains_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_secret(v) for v in value)
    return False


class PhoenixMocks(pmocks.Mocks):
    def __init__(self, facts: dict[str, str] | None = None):
        self.facts = {**fakes.DEFAULT_FACTS, **(facts or {})}

    def new_resource(self, args: pmocks.MockResourceArgs) -> tuple[str, dict]:
        inputs = reveal(args.inputs)
        state = fakes.outputs_for(args.typ, args.name, inputs, self.facts, pulumi.get_stack())
        return f"{args.name}-id", {**inputs, **state}

    def call(self, args: pmocks.MockCallArgs):
        return fakes.invoke(args.token, reveal(args.args), self.facts), []


class RecordingMonitor(pmocks.MockMonitor):
    """A MockMonitor that keeps what the plain one drops: parents, dependencies, secrecy."""
    mocks: PhoenixMocks

    def __init__(self, mocks: PhoenixMocks, on_record: Callable[[Recorded], None] | None = None):
        super().__init__(mocks)
        self.recorded: dict[str, Recorded] = {}
        self.order: list[str] = []
        #: called with every resource recorded, in ``order`` (registrations run on worker threads)
        self.on_record = on_record
        self._order_lock = threading.Lock()
        self.stack_outputs: dict = {}
        self.stack_urn = ""

    def RegisterResource(self, request):
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type == "pulumi:pulumi:Stack":
            self.stack_urn = urn
            return resource_pb2.RegisterResourceResponse(urn=urn)
        _ensure_event_loop()
        inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
        args = pmocks.MockResourceArgs(typ=request.type, name=request.name, inputs=inputs,
                                       provider=request.provider, resource_id=request.importId,
                                       custom=request.custom or False)
        if request.custom:
            id_, state = self.mocks.new_resource(args)
        else:
            id_, state = "", {}
        secret_outputs = list(request.additionalSecretOutputs)
        # Secrecy the real engine would add: declared secret outputs, and outputs echoing secret inputs.
        shown = {k: ({SECRET_SIG: SECRET_VALUE, "value": v}
                     if k in secret_outputs or _contains_secret(inputs.get(k)) else v)
                 for k, v in state.items()}
        obj = _sync_await(rpc.serialize_properties(shown, {}))
        self.resources[urn] = pmocks.MockMonitor.ResourceRegistration(urn, id_, state)
        self.recorded[urn] = Recorded(
            urn=urn, type=request.type, name=request.name, parent=request.parent,
            custom=bool(request.custom), inputs=inputs, outputs=state,
            dependencies=sorted(set(request.dependencies)),
            property_dependencies={k: sorted(v.urns) for k, v in request.propertyDependencies.items()},
            secret_outputs=secret_outputs, replace_on_changes=list(request.replaceOnChanges),
            ignore_changes=list(request.ignoreChanges), protect=bool(request.protect),
            provider=request.provider, delete_before_replace=bool(request.deleteBeforeReplace),
            replace_with=sorted(request.replace_with), retain_on_delete=bool(request.retainOnDelete),
            deleted_with=request.deletedWith, computed=fakes.computed_outputs(request.type, state),
            replacement_trigger=_trigger(request))
        with self._order_lock:
            self.order.append(urn)
            if self.on_record is not None:
                self.on_record(self.recorded[urn])
        return resource_pb2.RegisterResourceResponse(urn=urn, id=id_, object=obj)

    def RegisterResourceOutputs(self, request):
        if request.urn == self.stack_urn:
            self.stack_outputs = rpc.deserialize_properties(request.outputs, keep_unknowns=True)
        return super().RegisterResourceOutputs(request)


def _trigger(request) -> Any:
    """The ``replacement_trigger`` option's value (a protobuf Value), or None when not set."""
    if not request.HasField("replacement_trigger"):
        return None
    from google.protobuf import json_format
    return json_format.MessageToDict(request.replacement_trigger)


@dataclass
class Run:
    """What one program run registered, in registration order."""
    stack: str
    resources: list[Recorded]
    outputs: dict
    monitor: RecordingMonitor = field(repr=False)

    def by_type(self, type_: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_]

    def named(self, name: str, type_: str | None = None) -> Recorded:
        found = [r for r in self.resources if r.name == name and (type_ is None or r.type == type_)
                 and (type_ is not None or r.custom)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} resources named {name!r}")
        return found[0]

    def guest(self, name: str) -> Recorded:
        """The ContainerLegacy or VmLegacy of a guest."""
        return next(r for r in self.resources if r.name == name and r.type in GUEST_TYPES)

    def urn_of(self, name: str) -> str:
        return self.named(name).urn


def _clear_root_resource() -> None:
    """No root stack resource: the next ``Stack()`` becomes the root, as at a program's start."""
    # pulumi annotates the argument `root: Resource`, yet its context variable holds
    # Optional[Resource] and starts as None, which is what this restores.
    settings.set_root_resource(None)  # type: ignore[arg-type]


def run_program(stack: StackConfig, program: Callable[[], None] | None = None,
                facts: dict[str, str] | None = None,
                on_record: Callable[[Recorded], None] | None = None) -> Run:
    """Run ``program`` for ``stack`` under the recording engine. By default it is what ``pulumi up``
    runs: Phoenix's ``main``, with the project directory where the stack file is. ``on_record``:
    called with each resource as it is recorded."""
    if program is None:
        from phoenix.program import main

        def program() -> None:
            main(stack.root)
    mocks = PhoenixMocks(facts)
    monitor = RecordingMonitor(mocks, on_record)
    settings.SETTINGS.rpc_manager.clear()
    settings.SETTINGS.outputs.clear()
    _clear_root_resource()  # a fresh root stack for every run
    pmocks.set_mocks(mocks, project="phoenix", stack=stack.name, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(stack.as_engine_config(), list(stack.secret_keys))
    # set_mocks finishes its root stack at once; exports need one that is still open.
    _clear_root_resource()
    root = Stack()
    try:
        with batch_gc():
            _sync_await(run_pulumi_func(program))
            outputs = _sync_await(_resolve_all(root.outputs))
    except BaseException as err:
        # What got registered before the failure (tests check bad input registers nothing).
        err.phoenix_registered = list(monitor.order)  # type: ignore[attr-defined]
        raise
    finally:
        _clear_root_resource()
    return Run(stack.name, [monitor.recorded[u] for u in monitor.order], outputs, monitor)


async def _resolve_all(outputs: dict[str, Any]) -> dict[str, Any]:
    """The stack outputs' values, each wrapped as a secret where Pulumi would show [secret]: all
    awaited on one pass of the event loop."""
    async def one(value: Any) -> Any:
        out = pulumi.Output.from_input(value)
        plain = await out.future()
        return {SECRET_SIG: SECRET_VALUE, "value": plain} if await out.is_secret() else plain
    values = await asyncio.gather(*(one(v) for v in outputs.values()))
    return dict(zip(outputs, values, strict=True))
