"""The state of a migration (issue 16, engine/migrations.py): the record and its JSON, the phases' state machine,
malformed records skipped (never raised), the view's answers for writes (targets) and reads before, during and after
a switch and after a rollback. No Kafka: app/migration_state.py meets the real broker in
tests/integration/test_migration_state_kafka.py."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.migration_state import TOPIC_CONFIGS, topic_config_problems
from core.versioning import ModelIdentity
from engine.migrations import (
    MAX_STATE_BYTES,
    PHASES,
    TRANSITIONS,
    Backfill,
    Collection,
    IllegalTransition,
    MigrationState,
    MigrationStateError,
    MigrationView,
    advance,
    decode_record,
)

A = ModelIdentity("org/model-a", "a" * 64, 4, normalize=True, pooling="mean", family="sentence-transformers")
B = ModelIdentity("org/model-b", "b" * 64, 8, normalize=None, pooling="cls", family="transformers")
LIVE_A = Collection("docs__model_a_aaaaaaaa", A)
SHADOW_B = Collection("docs__model_b_bbbbbbbb", B)
WHERE = "vectorization-migrations[0]@7"


def bound(now: float = 100.0) -> MigrationState:
    return MigrationState.bound("docs", LIVE_A, owner="worker-1", now=now)


def run_to(phase: str) -> MigrationState:
    """The state of alias docs after a migration from A to B went as far as ``phase``."""
    path = {
        "bound": [],
        "shadow_created": ["shadow_created"],
        "dual_write": ["shadow_created", "dual_write"],
        "backfill": ["shadow_created", "dual_write", "backfill"],
        "verify": ["shadow_created", "dual_write", "backfill", "verify"],
        "switched": ["shadow_created", "dual_write", "backfill", "verify", "switched"],
        "rolled_back": ["shadow_created", "dual_write", "backfill", "verify", "switched", "rolled_back"],
        "aborted": ["shadow_created", "dual_write", "aborted"],
        "cleaned": ["shadow_created", "dual_write", "backfill", "verify", "switched", "cleaned"],
    }[phase]
    state = bound()
    for i, step in enumerate(path, start=1):
        extra = {"shadow": SHADOW_B} if step == "shadow_created" else {}
        if step == "switched":
            extra["switched"] = ["qdrant", "weaviate"]
        state = advance(state, step, now=100.0 + i, **extra)
    return state


def physicals(state_or_view: MigrationState | MigrationView, alias: str = "docs") -> list[tuple[str, str]]:
    targets = state_or_view.targets(alias) if isinstance(state_or_view, MigrationView) else state_or_view.targets()
    return [(t.role, t.physical) for t in targets]


# -- the record and its JSON --------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", PHASES)
def test_every_phase_round_trips_through_json(phase: str) -> None:
    state = run_to(phase)
    data = state.to_json()
    assert json.loads(data) == state.to_dict() and b" " not in data
    assert list(json.loads(data)) == sorted(json.loads(data))  # keys sorted: the same state, the same bytes
    assert MigrationState.from_json(data) == state
    assert MigrationState.from_json(data.decode()) == state
    assert MigrationState.from_dict(state.to_dict()).to_json() == data


def test_the_record_holds_the_documented_fields() -> None:
    state = advance(
        run_to("dual_write"), "backfill", backfill={"store": "qdrant", "cursor": "c-1", "produced": 10}, now=7
    )
    assert state.to_dict() == {
        "alias": "docs",
        "epoch": 3,
        "phase": "backfill",
        "live": {"physical": LIVE_A.physical, "identity": A.to_dict()},
        "shadow": {"physical": SHADOW_B.physical, "identity": B.to_dict()},
        "old": None,
        "backfill": {"store": "qdrant", "cursor": "c-1", "produced": 10},
        "switched": [],
        "owner": "worker-1",
        "updated_at": 7.0,
    }


def test_a_state_over_the_size_limit_is_refused_when_written_and_when_read() -> None:
    big = advance(run_to("backfill"), "backfill", owner="x" * 255, backfill=Backfill("qdrant", "c" * 1024, 1))
    assert len(big.to_json()) < MAX_STATE_BYTES  # the largest fields fit
    padded = big.to_json() + b" " * MAX_STATE_BYTES
    with pytest.raises(MigrationStateError, match=f"over the limit of {MAX_STATE_BYTES}"):
        MigrationState.from_json(padded)
    with pytest.raises(MigrationStateError, match="at most 1024 characters"):
        Backfill.from_dict({"store": "qdrant", "cursor": "c" * 1025, "produced": 1})


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d.pop("epoch"), "lacks epoch"),
        (lambda d: d.update(extra=1), "unknown keys ['extra']"),
        (lambda d: d.update(phase="switching"), "unknown phase 'switching'"),
        (lambda d: d.update(epoch=-1), "epoch must be an integer >= 0"),
        (lambda d: d.update(epoch=True), "epoch must be an integer >= 0"),
        (lambda d: d.update(alias=""), "alias must be a non-empty string"),
        (lambda d: d.update(alias="x" * 256), "alias must be a non-empty string of at most 255"),
        (lambda d: d["live"].pop("identity"), "live.identity: a model identity must be a JSON object"),
        (lambda d: d["live"]["identity"].update(dim=0), "live.identity: invalid model identity: dim must be"),
        (lambda d: d["live"].update(physical=3), "live.physical must be a non-empty string"),
        (lambda d: d.update(live="docs"), "live must be an object"),
        (lambda d: d.update(shadow=None), "in phase 'backfill': it needs a shadow collection"),
        (lambda d: d.update(old=d["live"]), "only a switched alias keeps an old collection"),
        (lambda d: d.update(shadow=d["live"]), "cannot be live and shadow/old at once"),
        (lambda d: d.update(switched=["qdrant"]), "no store is switched before verify"),
        (lambda d: d.update(switched="qdrant"), "switched must be a list"),
        (lambda d: d.update(updated_at="yesterday"), "updated_at must be a Unix time"),
        (lambda d: d.update(updated_at=float("nan")), "updated_at must be a Unix time"),
        (lambda d: d.update(owner=5), "owner must be a string"),
        (lambda d: d["backfill"].update(produced=-3), "backfill.produced must be an integer >= 0"),
        (lambda d: d["backfill"].update(cursor=[1]), "backfill.cursor must be null, an integer or a string"),
        (lambda d: d["backfill"].update(page=2), "backfill has unknown keys"),
    ],
)
def test_a_malformed_state_names_its_bad_field(mutate, problem: str) -> None:  # type: ignore[no-untyped-def]
    data = run_to("backfill").to_dict()
    mutate(data)
    with pytest.raises(MigrationStateError) as info:
        MigrationState.from_dict(data)
    assert problem in str(info.value)


def test_switched_needs_its_old_collection_and_no_shadow() -> None:
    data = run_to("switched").to_dict()
    data["old"] = None
    with pytest.raises(MigrationStateError, match="needs the old collection"):
        MigrationState.from_dict(data)
    data = run_to("switched").to_dict()
    data["shadow"] = SHADOW_B.to_dict() | {"physical": "docs__other"}
    with pytest.raises(MigrationStateError, match="has no shadow collection, yet shadow is 'docs__other'"):
        MigrationState.from_dict(data)


# -- the phases ---------------------------------------------------------------------------------------------------
def test_a_migration_moves_through_its_phases_and_the_roles_flip_at_the_switch() -> None:
    state = bound()
    assert (state.phase, state.epoch, state.shadow, state.old) == ("bound", 0, None, None)
    state = advance(state, "shadow_created", shadow=SHADOW_B, owner="migrate@host:1", now=101)
    assert (state.phase, state.epoch, state.live, state.shadow, state.owner) == (
        "shadow_created",
        1,
        LIVE_A,
        SHADOW_B,
        "migrate@host:1",
    )
    state = advance(state, "dual_write", now=102)
    state = advance(state, "backfill", backfill=Backfill("qdrant", None, 0), now=103)
    assert state.epoch == 3
    # progress inside a phase keeps the epoch (workers have nothing new to apply)
    state = advance(state, "backfill", backfill={"store": "qdrant", "cursor": 1000, "produced": 1000}, now=104)
    assert (state.epoch, state.backfill, state.updated_at) == (3, Backfill("qdrant", 1000, 1000), 104.0)
    state = advance(state, "verify", now=105)
    state = advance(state, "verify", switched=["weaviate"], now=106)  # switched store by store
    assert (state.epoch, state.switched) == (4, ("weaviate",))
    state = advance(state, "switched", switched=["weaviate", "qdrant"], now=107)
    assert (state.epoch, state.live, state.old, state.shadow) == (5, SHADOW_B, LIVE_A, None)
    assert state.backfill == Backfill("qdrant", 1000, 1000)  # kept for the record
    cleaned = advance(state, "cleaned", now=108)
    assert (cleaned.epoch, cleaned.live, cleaned.old, cleaned.shadow, cleaned.switched) == (6, SHADOW_B, None, None, ())
    # a cleaned alias can migrate again (back to A, say)
    again = advance(cleaned, "shadow_created", shadow=Collection("docs__model_a_aaaaaaaa", A), now=109)
    assert (again.epoch, again.live, again.backfill) == (7, SHADOW_B, Backfill())


def test_a_rollback_brings_the_old_collection_back_and_keeps_the_new_one_for_cleanup() -> None:
    switched = run_to("switched")
    rolled = advance(switched, "rolled_back", now=200)
    assert (rolled.phase, rolled.live, rolled.shadow, rolled.old, rolled.switched) == (
        "rolled_back",
        LIVE_A,
        SHADOW_B,
        None,
        (),
    )
    assert rolled.epoch == switched.epoch + 1
    cleaned = advance(rolled, "cleaned", now=201)
    assert (cleaned.live, cleaned.shadow, cleaned.old) == (LIVE_A, None, None)


def test_an_abort_keeps_the_live_collection_and_names_the_shadow_to_drop() -> None:
    aborted = advance(run_to("backfill"), "aborted", now=300)
    assert (aborted.live, aborted.shadow) == (LIVE_A, SHADOW_B)
    assert physicals(aborted) == [("live", LIVE_A.physical)]
    assert advance(aborted, "cleaned").shadow is None


@pytest.mark.parametrize(
    ("start", "to", "says"),
    [
        ("backfill", "switched", "the switch comes after verify"),
        ("dual_write", "switched", "from 'dual_write' it can go to aborted, backfill"),
        ("bound", "switched", "the switch comes after verify"),
        ("backfill", "rolled_back", "only a switched alias has an old collection to roll back to"),
        ("bound", "rolled_back", "before the switch, abort instead"),
        ("switched", "aborted", "after it, roll back"),
        ("backfill", "shadow_created", "finish or abort the running one first"),
        ("bound", "dual_write", "once the shadow collection exists"),
        ("shadow_created", "backfill", "once every worker writes to both collections"),
        ("dual_write", "verify", "verify follows the backfill"),
        ("bound", "cleaned", "clean up after a switch, an abort or a rollback"),
        ("rolled_back", "switched", "from 'rolled_back' it can go to cleaned"),
        ("cleaned", "bound", "from 'cleaned' it can go to shadow_created"),
    ],
)
def test_an_illegal_step_says_what_is_allowed_instead(start: str, to: str, says: str) -> None:
    state = run_to(start)
    with pytest.raises(IllegalTransition) as info:
        advance(state, to, shadow=SHADOW_B) if to == "shadow_created" else advance(state, to)
    message = str(info.value)
    assert says in message.lower() or says in message, message
    assert f"alias 'docs' from phase {start!r}" in message and f"epoch {state.epoch}" in message


def test_the_transition_table_is_the_one_advance_obeys() -> None:
    for here in PHASES:
        for to in PHASES:
            state = run_to(here)
            other = SHADOW_B if state.live.identity == A else LIVE_A  # the model the alias is not bound to
            kwargs: dict[str, object] = {"shadow": other} if to == "shadow_created" else {}
            if to == "switched":
                kwargs["switched"] = ["weaviate"]  # a switch names the stores it pointed at the new model
            if to in TRANSITIONS[here]:
                assert advance(state, to, **kwargs).phase == to
            else:
                with pytest.raises(IllegalTransition):
                    advance(state, to, **kwargs)


def test_advance_refuses_changes_the_phases_own() -> None:
    with pytest.raises(IllegalTransition, match="no such phase"):
        advance(bound(), "migrating")
    with pytest.raises(IllegalTransition, match=r"cannot set \['epoch', 'old'\]"):
        advance(run_to("backfill"), "verify", old=LIVE_A, epoch=9)
    with pytest.raises(IllegalTransition, match="set when it is created"):
        advance(run_to("dual_write"), "backfill", shadow=Collection("docs__c", B))
    with pytest.raises(IllegalTransition, match="changes only by a switch or a rollback"):
        advance(run_to("backfill"), "backfill", live=Collection("docs__c", A))
    with pytest.raises(IllegalTransition, match="needs shadow=Collection"):
        advance(bound(), "shadow_created")
    with pytest.raises(IllegalTransition, match="already bound to model org/model-a"):
        advance(bound(), "shadow_created", shadow=Collection("docs__again", A))
    with pytest.raises(MigrationStateError, match="cannot be live and shadow/old at once"):
        advance(bound(), "shadow_created", shadow=Collection(LIVE_A.physical, B))
    with pytest.raises(MigrationStateError, match="names a store twice"):
        advance(run_to("verify"), "verify", switched=["qdrant", "qdrant"])


def test_an_abort_after_some_stores_switched_is_refused() -> None:
    half = advance(run_to("verify"), "verify", switched=["weaviate"])
    with pytest.raises(IllegalTransition, match=r"the stores \['weaviate'\] already read the new model"):
        advance(half, "aborted")
    assert advance(advance(half, "verify", switched=[]), "aborted").phase == "aborted"


def test_a_bound_alias_is_rebound_with_a_new_epoch() -> None:
    rebound = advance(bound(), "bound", live=Collection("docs", A))
    assert (rebound.epoch, rebound.live.physical) == (1, "docs")
    assert advance(rebound, "bound", owner="w2").epoch == 1  # nothing the workers apply changed


# -- malformed records ---------------------------------------------------------------------------------------------
GOOD = run_to("backfill")


@pytest.mark.parametrize(
    ("key", "value", "logged"),
    [
        (b"docs", b"{not json", "not UTF-8 JSON"),
        (b"docs", b"\xff\xfe\x00", "not UTF-8 JSON"),
        (b"docs", b"[1, 2]", "must be a JSON object, not list"),
        (b"docs", b"null", "must be a JSON object, not null"),
        (b"docs", json.dumps({**GOOD.to_dict(), "phase": "warp"}).encode(), "unknown phase 'warp'"),
        (b"docs", json.dumps({**GOOD.to_dict(), "epoch": "3"}).encode(), "epoch must be an integer"),
        (b"docs", GOOD.to_json() + b" " * MAX_STATE_BYTES, "over the limit"),
        (b"docs", b"[" * 60_000, "nests too deeply"),  # under the size limit, deeper than the parser goes
        (b"other", GOOD.to_json(), "its key 'other' is not the alias it holds ('docs')"),
        (None, GOOD.to_json(), "its key None is not an alias"),
        (b"\xff\xfe", GOOD.to_json(), "is not an alias"),
        (b"x" * 2000, GOOD.to_json(), "is not an alias"),
        (None, None, "its key None is not an alias"),
    ],
)
def test_a_malformed_record_is_skipped_with_a_line_naming_where_it_is(
    key: bytes | None, value: bytes | None, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    view = MigrationView()
    earlier = run_to("dual_write")
    assert view.apply_record(b"docs", earlier.to_json(), "vectorization-migrations[0]@6")
    with caplog.at_level(logging.WARNING, logger="worker.migrations"):
        assert view.apply_record(key, value, WHERE) is False
    assert view.get("docs") == earlier and view.skipped == 1  # the alias keeps its previous state
    assert f"Skipped the record at {WHERE}" in caplog.text and logged in caplog.text, caplog.text
    assert decode_record(key, value, WHERE) is None


@settings(max_examples=300, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=40), st.just(b"docs")),
    value=st.one_of(
        st.none(),
        st.binary(max_size=200),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
            lambda inner: st.one_of(
                st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(sorted(GOOD.to_dict())), inner)
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
@example(  # found by hypothesis: a phase that is not even hashable
    key=b"docs",
    value=b'{"backfill":null,"epoch":[],"updated_at":{},"phase":{},"alias":"0","live":null,"old":null}',
)
def test_no_record_makes_the_view_raise(key: bytes | None, value: bytes | None) -> None:
    view = MigrationView()
    view.apply_record(key, value, WHERE)  # returns, whatever the bytes
    assert set(view.states()) <= {"docs"}


def test_a_tombstone_forgets_the_alias() -> None:
    view = MigrationView()
    view.apply_record(b"docs", run_to("switched").to_json(), WHERE)
    assert view.apply_record(b"docs", None, WHERE) is True
    assert view.get("docs") is None and physicals(view) == [("live", "docs")]
    assert view.apply_record(b"docs", None, WHERE) is False and view.skipped == 0  # nothing to forget


def test_a_stale_or_racing_writer_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    view = MigrationView()
    backfill = run_to("backfill")
    assert view.apply(backfill)
    with caplog.at_level(logging.WARNING, logger="worker.migrations"):
        assert view.apply(run_to("dual_write"), WHERE) is False  # epoch 2 < 3
        raced = advance(run_to("dual_write"), "aborted")  # epoch 3 as well, another phase
        assert view.apply(raced, WHERE) is False
    assert view.get("docs") == backfill and view.skipped == 2
    assert f"Ignored the migration state of alias 'docs' at {WHERE}: epoch 2 (dual_write)" in caplog.text
    progress = advance(backfill, "backfill", backfill=Backfill("qdrant", "next", 500))
    assert view.apply(progress) and view.get("docs") == progress  # same epoch, same phase: progress
    # after a tombstone, any epoch starts the alias again
    view.forget("docs")
    assert view.apply(bound())


def test_listeners_hear_every_change_and_a_failing_one_stops_nothing(caplog: pytest.LogCaptureFixture) -> None:
    view = MigrationView()
    heard: list[tuple[str, str | None]] = []
    view.subscribe(lambda alias, state: heard.append((alias, state.phase if state else None)))

    def broken(alias: str, state: MigrationState | None) -> None:
        raise RuntimeError("listener bug")

    view.subscribe(broken)
    with caplog.at_level(logging.ERROR, logger="worker.migrations"):
        view.apply(run_to("dual_write"))
        view.apply(run_to("backfill"))
        view.forget("docs")
    assert heard == [("docs", "dual_write"), ("docs", "backfill"), ("docs", None)]
    assert "A migration state listener failed on alias 'docs'" in caplog.text


# -- where writes go and what reads see ------------------------------------------------------------------------------
A_PHYS, B_PHYS = LIVE_A.physical, SHADOW_B.physical


@pytest.mark.parametrize(
    ("phase", "writes", "reads"),
    [
        ("bound", [("live", A_PHYS)], A_PHYS),
        ("shadow_created", [("live", A_PHYS)], A_PHYS),  # workers start twins only at dual_write
        ("dual_write", [("live", A_PHYS), ("shadow", B_PHYS)], A_PHYS),
        ("backfill", [("live", A_PHYS), ("shadow", B_PHYS)], A_PHYS),
        ("verify", [("live", A_PHYS), ("shadow", B_PHYS)], A_PHYS),
        ("switched", [("live", B_PHYS), ("old", A_PHYS)], B_PHYS),  # flipped: a rollback loses nothing
        ("rolled_back", [("live", A_PHYS)], A_PHYS),
        ("aborted", [("live", A_PHYS)], A_PHYS),
        ("cleaned", [("live", B_PHYS)], B_PHYS),
    ],
)
def test_targets_and_reads_before_during_and_after_a_switch(
    phase: str, writes: list[tuple[str, str]], reads: str
) -> None:
    view = MigrationView()
    view.apply(run_to(phase))
    assert physicals(view) == writes
    assert view.physical_for_reads("docs") == reads
    identities = {t.role: t.identity for t in view.targets("docs")}
    if phase in ("dual_write", "backfill", "verify"):
        assert identities == {"live": A, "shadow": B}
    if phase == "switched":
        assert identities == {"live": B, "old": A}
    assert view.migrating() == (["docs"] if len(writes) > 1 else [])


def test_an_alias_without_a_state_is_its_own_collection() -> None:
    view = MigrationView()
    assert [(t.role, t.physical, t.identity) for t in view.targets("legacy")] == [("live", "legacy", None)]
    assert view.physical_for_reads("legacy") == "legacy" and view.physical_for_reads("legacy", "qdrant") == "legacy"


def test_reads_follow_each_store_while_the_stores_are_switched_one_by_one() -> None:
    view = MigrationView()
    view.apply(advance(run_to("verify"), "verify", switched=["weaviate"]))
    assert view.physical_for_reads("docs", "weaviate") == B_PHYS  # its alias already points at B
    assert view.physical_for_reads("docs", "qdrant") == A_PHYS
    assert view.physical_for_reads("docs") == A_PHYS
    switched = run_to("switched")  # switched=["qdrant", "weaviate"]
    view.apply(switched)
    assert view.physical_for_reads("docs", "weaviate") == B_PHYS == view.physical_for_reads("docs", "qdrant")
    # a rollback points the stores back one by one, then records rolled_back
    view.apply(advance(switched, "switched", switched=["qdrant"]))
    assert view.physical_for_reads("docs", "weaviate") == A_PHYS
    assert view.physical_for_reads("docs", "qdrant") == B_PHYS
    assert physicals(view) == [("live", B_PHYS), ("old", A_PHYS)]  # writes still go to both


def test_a_switch_names_its_stores_and_verify_goes_back_only_with_none_switched() -> None:
    verify = run_to("verify")
    with pytest.raises(IllegalTransition, match="with no store switched"):
        advance(verify, "switched")
    partly = advance(verify, "verify", switched=["weaviate"])
    if "backfill" in TRANSITIONS["verify"]:
        with pytest.raises(IllegalTransition, match="already read the new model"):
            advance(partly, "backfill")
    assert advance(partly, "switched", switched=["weaviate", "qdrant"]).phase == "switched"


def test_within_an_epoch_the_first_writer_wins_and_progress_never_goes_back() -> None:
    view = MigrationView()
    backfill = run_to("backfill")
    assert view.apply(advance(backfill, "backfill", backfill=Backfill("weaviate", 2000, 2000)))
    # the same epoch: an older cursor, or another writer's collections, are not taken
    assert not view.apply(advance(backfill, "backfill", backfill=Backfill("weaviate", 1000, 1000)))
    assert view.get("docs").backfill.produced == 2000  # type: ignore[union-attr]
    # two commands racing from one state to the same phase write the same epoch: the first one written wins
    racing = MigrationView()
    bound = run_to("bound")
    first = advance(bound, "shadow_created", shadow=SHADOW_B)
    second = advance(bound, "shadow_created", shadow=Collection("docs__model_c_cccccccc", B))
    assert first.epoch == second.epoch
    assert racing.apply(bound) and racing.apply(first) and not racing.apply(second)
    assert racing.get("docs").shadow == SHADOW_B  # type: ignore[union-attr]
    assert view.skipped == 1 and racing.skipped == 1


def test_the_view_reports_the_epoch_of_every_alias() -> None:
    view = MigrationView()
    view.apply(run_to("backfill"))
    view.apply(MigrationState.bound("other", Collection("other", B), now=1))
    assert view.epochs() == {"docs": 3, "other": 0}
    assert view.applied == 2 and set(view.states()) == {"docs", "other"}
    assert "docs: backfill (re-embedding" in view.get("docs").describe()  # type: ignore[union-attr]


# -- the topic's settings (app/migration_state.py) -------------------------------------------------------------------
def test_only_a_compacted_topic_may_hold_the_states() -> None:
    assert topic_config_problems("t", TOPIC_CONFIGS) == []
    assert topic_config_problems("t", {"cleanup.policy": "compact"}) == []
    (delete,) = topic_config_problems("t", {"cleanup.policy": "delete", "max.message.bytes": "1048588"})
    assert "topic t has cleanup.policy=delete but must be compact" in delete and "--add-config cleanup.policy" in delete
    assert topic_config_problems("t", {"cleanup.policy": "compact,delete"})
    (small,) = topic_config_problems("t", {"cleanup.policy": "compact", "max.message.bytes": "1000"})
    assert "max.message.bytes=1000, below one state record" in small
