"""A model of delivery, searched by hypothesis: nothing lost, nothing counted twice.

A ``RuleBasedStateMachine`` (tests/model/machine.py) drives a real Logger on a real cache
file against a real loopback server of each delivery kind (tests/model/backends.py,
tests/model/mqtt.py), and after every step checks the invariant (tests/model/checks.py).
The variants: ``ordered`` (ConnectorDB test server), ``idempotent`` (influxd behind a fault
proxy), ``at_least_once`` (HTTP receiver), ``mqtt`` (mosquitto behind the MQTT fault proxy,
a real subscriber), ``nats`` (nats-server with JetStream behind the NATS fault proxy,
idempotent by ``Nats-Msg-Id``: tests/model/nats.py), ``postgres`` (PostgreSQL behind its
fault proxy, tests/model/postgres.py), ``sealed`` (ConnectorDB, a cache sealed at rest),
``batched``
(``durability="batched"`` against ConnectorDB) and ``lanes``
(``live_first`` with a ``max_rate``, HTTP receiver). ``priorities`` and
``priorities_at_least_once`` (tests/model/priorities.py) give the streams priorities and thin
flags in a capped cache (``on_full="thin"`` or ``"drop_oldest"``): room is made by thinning
and dropping lower priorities first, every thinned datapoint is counted, and a pass writes
higher priorities first. The whole process runs on a failing-disk
VFS shim (tests/helpers/failing_vfs.py) that the ``failing_commits`` rule arms.

``fanout2`` and ``fanout3`` (tests/model/fanout.py) give one Logger two and three remotes of
different kinds at once, each with faults of its own, a ``give_up_after`` handing over to a
fallback or releasing, and check each remote on its own (tests/model/fanout_checks.py).

``make test`` runs a few derandomized examples per variant; ``make soak`` sets
``CONNECTORSYNC_SOAK=1`` and asserts at least 5,000 steps per variant
(tests/model/settings.py has the knobs).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis.stateful import run_state_machine_as_test

from connectorsync import Logger
from connectorsync.testing.ntp import NTPServer

from .helpers.failing_vfs import FailingVFS
from .model.backends import AtLeastOnceBackend, Backend, IdempotentBackend, OrderedBackend
from .model.fanout import GIVE_UP, FanoutModel
from .model.machine import RUNS, DeliveryModel
from .model.mqtt import MQTTBackend
from .model.nats import NATSBackend
from .model.postgres import PostgresBackend
from .model.priorities import PriorityModel
from .model.settings import SETTINGS, SOAK, SOAK_MIN_STEPS


@pytest.fixture(scope="module")
def vfs() -> Iterator[FailingVFS]:
    shim = FailingVFS("model-failing")
    try:
        yield shim
    finally:
        shim.close()


@pytest.fixture(scope="module")
def ntp() -> Iterator[NTPServer]:
    server = NTPServer().start()
    server.silent = True
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ordered() -> Iterator[Backend]:
    backend = OrderedBackend()
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="module")
def at_least_once() -> Iterator[Backend]:
    backend = AtLeastOnceBackend()
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="module")
def idempotent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    backend = IdempotentBackend(tmp_path_factory.mktemp("influxd"))
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="module")
def mqtt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    backend = MQTTBackend(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    backend = NATSBackend(tmp_path_factory.mktemp("nats"))
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="module")
def postgres_model() -> Iterator[Backend]:
    backend = PostgresBackend()
    try:
        yield backend
    finally:
        backend.close()


def run_model(
    name: str,
    backend: Backend,
    tmp_path: Path,
    ntp: NTPServer,
    vfs: FailingVFS,
    base: type[DeliveryModel] = DeliveryModel,
    **attrs: object,
) -> None:
    machine = type(
        name,
        (base,),
        {"backend": backend, "tmpdir": tmp_path, "ntp": ntp, "vfs": vfs, **attrs},
    )
    runs = RUNS[name]
    try:
        # Soak: rounds of fresh examples until the variant made SOAK_MIN_STEPS steps
        # (hypothesis draws each example's length, so one round's count varies).
        while True:
            run_state_machine_as_test(machine, settings=SETTINGS)  # type: ignore[arg-type]
            if not SOAK or runs["checks"] - runs["examples"] >= SOAK_MIN_STEPS:
                break
    finally:
        steps = runs["checks"] - runs["examples"]
        print(f"\n{name}: {runs['examples']} examples, {steps} steps", file=sys.stderr)
        seen = ", ".join(f"{k} {v}" for k, v in sorted(runs.items()) if ":" in k)
        if seen:
            print(f"{name}: {seen}", file=sys.stderr)


@pytest.mark.slow
def test_model_ordered(ordered: Backend, tmp_path: Path, ntp: NTPServer, vfs, fast_backoff) -> None:
    run_model("OrderedModel", ordered, tmp_path, ntp, vfs)


@pytest.mark.slow
def test_model_idempotent(
    idempotent: Backend, tmp_path: Path, ntp: NTPServer, vfs, fast_backoff
) -> None:
    run_model("IdempotentModel", idempotent, tmp_path, ntp, vfs)


@pytest.mark.slow
def test_model_at_least_once(
    at_least_once: Backend, tmp_path: Path, ntp: NTPServer, vfs, fast_backoff
) -> None:
    run_model("AtLeastOnceModel", at_least_once, tmp_path, ntp, vfs)


@pytest.mark.slow
def test_model_mqtt(mqtt: Backend, tmp_path: Path, ntp: NTPServer, vfs, fast_backoff) -> None:
    run_model("MQTTModel", mqtt, tmp_path, ntp, vfs)


@pytest.mark.slow
def test_model_nats(nats: Backend, tmp_path: Path, ntp: NTPServer, vfs, fast_backoff) -> None:
    run_model("NATSModel", nats, tmp_path, ntp, vfs)


@pytest.mark.slow
def test_model_postgres(
    postgres_model: Backend, tmp_path: Path, ntp: NTPServer, vfs, fast_backoff
) -> None:
    run_model("PostgresModel", postgres_model, tmp_path, ntp, vfs)


@pytest.mark.slow
def test_model_batched(ordered: Backend, tmp_path: Path, ntp: NTPServer, vfs, fast_backoff) -> None:
    run_model("BatchedModel", ordered, tmp_path, ntp, vfs, durability="batched")


@pytest.mark.slow
def test_model_sealed(ordered: Backend, tmp_path: Path, ntp: NTPServer, vfs, fast_backoff) -> None:
    """The ordered variant on a cache sealed at rest (issue 19)."""
    run_model("SealedModel", ordered, tmp_path, ntp, vfs, sealed=True)


@pytest.mark.slow
def test_model_lanes(
    at_least_once: Backend, tmp_path: Path, ntp: NTPServer, vfs, fast_backoff
) -> None:
    run_model("LanesModel", at_least_once, tmp_path, ntp, vfs, lanes=True)


@pytest.mark.slow
def test_model_priorities(
    ordered: Backend, tmp_path: Path, ntp: NTPServer, vfs, fast_backoff
) -> None:
    run_model("PriorityModel", ordered, tmp_path, ntp, vfs, base=PriorityModel)


@pytest.mark.slow
def test_model_priorities_at_least_once(
    at_least_once: Backend, tmp_path: Path, ntp: NTPServer, vfs, fast_backoff
) -> None:
    run_model("PriorityAtLeastOnceModel", at_least_once, tmp_path, ntp, vfs, base=PriorityModel)


def test_the_model_sees_a_lost_datapoint(ordered: Backend, tmp_path: Path) -> None:
    """The invariant is not vacuous: a datapoint that leaves the cache uncounted fails it."""
    ordered.new_example()
    path = str(tmp_path / "probe.db")
    machine = type(
        "Probe", (DeliveryModel,), {"backend": ordered, "tmpdir": tmp_path, "ntp": None}
    )()
    machine.options = {"batch_size": 2}
    machine.lg = ordered.logger(path, **machine.options)
    try:
        machine.insert("a", False)
        machine.every_datapoint_is_in_exactly_one_place()
        # Delete it behind the Logger's back: no counter says where it went.
        other = ordered.logger(path)
        other.cleardata()
        other.close()
        with pytest.raises(AssertionError, match="left every place"):
            machine.every_datapoint_is_in_exactly_one_place()
    finally:
        machine.lg.close()


def test_the_model_sees_a_stored_datapoint_whose_insert_raised(
    ordered: Backend, tmp_path: Path
) -> None:
    """The failing-disk rules are not vacuous: a datapoint stored though its insert raised
    fails the invariant."""
    ordered.new_example()
    path = str(tmp_path / "probe.db")
    machine = type(
        "Probe", (DeliveryModel,), {"backend": ordered, "tmpdir": tmp_path, "ntp": None}
    )()
    machine.options = {"batch_size": 2}
    machine.lg = ordered.logger(path, **machine.options)
    try:
        machine.insert("a", False)
        machine.every_datapoint_is_in_exactly_one_place()
        machine.failed(machine.counter)  # as if that insert had raised
        with pytest.raises(AssertionError, match="insert\\(\\) raised, yet"):
            machine.every_datapoint_is_in_exactly_one_place()
    finally:
        machine.lg.close()


# ----------------------------------------------------------------------------- fan-out


@pytest.fixture(scope="module")
def spare() -> Iterator[Backend]:
    """A second HTTP receiver: the fallback of the fan-out variants' cloud."""
    backend = AtLeastOnceBackend()
    try:
        yield backend
    finally:
        backend.close()


def run_fanout(
    name: str, layout: list[tuple[str, Backend, dict[str, object] | None]], tmp_path: Path
) -> None:
    machine = type(name, (FanoutModel,), {"layout": layout, "tmpdir": tmp_path})
    runs = RUNS[name]
    try:
        while True:
            run_state_machine_as_test(machine, settings=SETTINGS)  # type: ignore[arg-type]
            if not SOAK or runs["checks"] - runs["examples"] >= SOAK_MIN_STEPS:
                break
    finally:
        steps = runs["checks"] - runs["examples"]
        print(f"\n{name}: {runs['examples']} examples, {steps} steps", file=sys.stderr)
        seen = ", ".join(f"{k} {v}" for k, v in sorted(runs.items()) if ":" in k)
        print(f"{name}: {seen}", file=sys.stderr)


def cloud(spare_name: str = "spare") -> dict[str, object]:
    return {"give_up_after": GIVE_UP, "fallback": spare_name}


@pytest.mark.slow
def test_model_fanout2(
    ordered: Backend, at_least_once: Backend, spare: Backend, tmp_path: Path, fast_backoff
) -> None:
    """Two remotes (ordered ConnectorDB, at-least-once HTTP that gives up to a spare)."""
    layout = [
        ("default", ordered, None),
        ("spare", spare, {"streams": []}),
        ("cloud", at_least_once, cloud()),
    ]
    run_fanout("Fanout2Model", layout, tmp_path)


@pytest.mark.slow
def test_model_fanout3(
    ordered: Backend,
    at_least_once: Backend,
    idempotent: Backend,
    spare: Backend,
    tmp_path: Path,
    fast_backoff,
) -> None:
    """Three remotes: and influxd (idempotent), which gives up what is older (released)."""
    layout = [
        ("default", ordered, None),
        ("influx", idempotent, {"give_up_after": GIVE_UP}),
        ("spare", spare, {"streams": []}),
        ("cloud", at_least_once, cloud()),
    ]
    run_fanout("Fanout3Model", layout, tmp_path)


def test_the_fanout_model_sees_a_datapoint_lost_for_one_remote(
    ordered: Backend, at_least_once: Backend, spare: Backend, tmp_path: Path
) -> None:
    """The per-remote invariant is not vacuous: a datapoint that leaves the cache while
    remotes hold it, and no counter says so, fails it (for each remote that held it)."""
    layout = [
        ("default", ordered, None),
        ("spare", spare, {"streams": []}),
        ("cloud", at_least_once, cloud()),
    ]
    machine = type("FanoutProbe", (FanoutModel,), {"layout": layout, "tmpdir": tmp_path})()
    machine.start(cap=None)
    try:
        machine.insert("a", False)
        machine.every_datapoint_is_in_one_place_per_remote()
        # Delete it behind the Logger's back: no counter says where it went.
        other = Logger(machine.path, remotes={"default": ordered.remote()})
        other.cleardata()
        other.close()
        with pytest.raises(AssertionError, match="left it uncounted"):
            machine.every_datapoint_is_in_one_place_per_remote()
    finally:
        machine.teardown()


# ----------------------------------------------------------------------------- priorities


def priority_probe(backend: Backend, tmp_path: Path, ntp: NTPServer) -> PriorityModel:
    """A priority model whose streams are a (priority 0) and b (priority 9), at rest."""
    attrs = {"backend": backend, "tmpdir": tmp_path, "ntp": ntp}
    machine = type("PriorityProbe", (PriorityModel,), attrs)()
    machine.start(priorities=(0, 9), thin=(False, False), on_full="drop_oldest", cap=3)
    return machine


def test_the_priority_model_sees_a_higher_priority_dropped_first(
    ordered: Backend, tmp_path: Path, ntp: NTPServer
) -> None:
    """The room-by-priority check is not vacuous: a model that holds a for the higher
    priority sees the Logger drop a's datapoint while b's (lower, to the model) stay."""
    machine = priority_probe(ordered, tmp_path, ntp)
    try:
        machine.priority = {"a": 9, "b": 0}  # the Logger has them the other way round
        machine.insert("a", False)
        machine.every_datapoint_is_in_exactly_one_place()
        with pytest.raises(AssertionError, match="made room by removing"):
            machine.fill("b", 3)
    finally:
        machine.teardown()


def test_the_priority_model_sees_a_pass_out_of_priority_order(
    ordered: Backend, tmp_path: Path, ntp: NTPServer
) -> None:
    """The pass-order check is not vacuous: whatever order the Logger wrote the streams in,
    a model that holds the stream written last for the higher priority fails the pass."""
    machine = priority_probe(ordered, tmp_path, ntp)
    try:
        machine.insert("a", False)
        machine.insert("b", False)
        written = len(ordered.write_streams())
        machine.priority = {"a": 0, "b": 0}  # any order: see which the Logger takes
        machine.pass_()
        order = ordered.write_streams()[written:]
        assert sorted(order) == ["a", "b"], order
        machine.insert("a", False)
        machine.insert("b", False)
        machine.priority = {order[0]: 0, order[1]: 9}
        with pytest.raises(AssertionError, match="a pass without faults wrote stream"):
            machine.pass_()
    finally:
        machine.teardown()


def test_the_priority_model_sees_a_thinned_count_without_a_datapoint_gone(
    ordered: Backend, tmp_path: Path, ntp: NTPServer
) -> None:
    """The thinned count is checked: a model that saw one more thinned than went fails."""
    machine = priority_probe(ordered, tmp_path, ntp)
    try:
        machine.insert("a", False)
        machine.every_datapoint_is_in_exactly_one_place()
        machine.thinned -= 1  # as if status().thinned had gone up by one
        machine.thinned_per["a"] = machine.thinned_per.get("a", 0) - 1
        with pytest.raises(AssertionError, match="were counted"):
            machine.every_datapoint_is_in_exactly_one_place()
    finally:
        machine.teardown()


def test_the_priority_model_sees_a_cached_datapoint_altered(
    ordered: Backend, tmp_path: Path, ntp: NTPServer
) -> None:
    """Kept datapoints are checked as inserted: a value or a t that changed fails."""
    machine = priority_probe(ordered, tmp_path, ntp)
    try:
        machine.insert("a", False)
        machine.every_datapoint_is_in_exactly_one_place()
        n = machine.counter
        machine.t_of[n] -= 1.0  # as if the cache had re-timed it
        with pytest.raises(AssertionError, match="re-timed"):
            machine.every_datapoint_is_in_exactly_one_place()
        machine.t_of.pop(n)
        machine.value_of[n] = n + 0.5  # as if the cache had averaged it
        with pytest.raises(AssertionError, match="altered"):
            machine.every_datapoint_is_in_exactly_one_place()
    finally:
        machine.teardown()
