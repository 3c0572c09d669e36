"""Each option is declared once (``connectorsync/options.py``): the docs' options table, the
Logger's attributes and keywords, :class:`~connectorsync.options.Options` and the step that
applies a change are all built from, or checked against, its one record."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import docutils.core
import docutils.nodes
import pytest

from connectorsync import ConfigurationError, Logger
from connectorsync.cache import Cache
from connectorsync.options import OPTIONS, Configurable, Options, Stored, Target
from connectorsync.targets import ACTIONS

from .conftest import dump

DOCS = Path(__file__).resolve().parent.parent / "docs"


def documented_options() -> dict[str, str]:
    """The docs' options table (``docs/logging.rst``): option name -> default, as written."""
    doctree = docutils.core.publish_doctree(
        (DOCS / "logging.rst").read_text(),
        settings_overrides={"report_level": 5, "halt_level": 5},  # Sphinx's roles: unknown here
    )
    for table in doctree.findall(docutils.nodes.table):
        rows = [
            [entry.astext() for entry in row.findall(docutils.nodes.entry)]
            for row in table.findall(docutils.nodes.row)
        ]
        if rows and rows[0][:2] == ["option", "default"]:
            return {name: default for name, default, *_ in rows[1:]}
    raise AssertionError("docs/logging.rst has no options table (option, default, meaning)")


def test_the_docs_table_lists_every_option_with_its_default_and_nothing_else() -> None:
    documented = documented_options()
    assert sorted(documented) == sorted(OPTIONS), "options.py and docs/logging.rst differ"
    for name, written in documented.items():
        default = OPTIONS[name].default
        assert ast.literal_eval(written) == default, f"{name}: docs say {written}, not {default!r}"
        assert type(ast.literal_eval(written)) in (type(default), int), name


def test_every_target_an_option_names_has_an_action() -> None:
    assert set(ACTIONS) == set(Target)
    named = {target for option in OPTIONS.values() for target in option.acts}
    assert named == set(Target), "a target no option acts on"


def test_a_new_logger_holds_every_default_of_the_table(cache_path: str) -> None:
    with Logger(cache_path) as lg:
        for name, option in OPTIONS.items():
            assert getattr(lg, name) == option.default, name
    assert Options().as_dict() == {name: o.default for name, o in OPTIONS.items()}


def test_every_option_is_a_keyword_an_attribute_and_kept_where_its_record_says(
    tmp_path: Path,
) -> None:
    """A value other than the default, given as a keyword, is read back as an attribute, and
    the next open of the file has it unless the record says this process only."""
    values: dict[str, Any] = {
        "apikey": "key",
        "serverurl": "http://127.0.0.1:1",
        "syncperiod": 61.0,
        "lastsynctime": 12.5,
        "data": {"site": 3},
        "durability": "normal",
        "commit_interval": 0.5,
        "batch_size": 7,
        "max_batch_bytes": 70_000,
        "sync_threshold": 9,
        "sync_jitter": 1.5,
        "http_timeout": 3.0,
        "live_first": False,
        "max_rate": 10.0,
        "max_cached": 1000,
        "max_cache_bytes": 10_000_000,
        "min_free_disk": 1,
        "on_full": "drop_oldest",
        "max_age": 3600.0,
        "ntp_server": "127.0.0.1",
        "hold_unsynced": True,
        "max_hold": 60.0,
        "archive_dir": str(tmp_path / "archive"),
        "archive_format": "csv",
        "metrics_port": 0,
        # Read once when the cache opens, never kept (a key would seal it: test_seal.py).
        "key": None,
        "key_file": None,
    }
    assert sorted(values) == sorted(OPTIONS), "a new option: give it a value here"
    path = str(tmp_path / "c.db")
    with Logger(path, **values) as lg:
        assert {name: getattr(lg, name) for name in OPTIONS} == values
    with Logger(path) as lg:
        for name, option in OPTIONS.items():
            kept = option.stored is not Stored.PROCESS
            assert getattr(lg, name) == (values[name] if kept else option.default), name


def test_an_unknown_keyword_is_refused_naming_every_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown option") as raised:
        Logger(str(tmp_path / "c.db"), batchsize=5)
    for name in OPTIONS:
        assert name in str(raised.value), name
    assert not (tmp_path / "c.db").exists()


def test_a_refused_value_changes_nothing(cache_path: str) -> None:
    """The check runs before the store and the action: a refused value, as an attribute or
    as a keyword, leaves the file and the value as they were."""
    with Logger(cache_path, durability="batched") as lg:
        before = dump(lg.path)
        with pytest.raises(ConfigurationError):
            lg.durability = "sometimes"
        with pytest.raises(ConfigurationError):
            lg.commit_interval = -1
        assert (lg.durability, lg.commit_interval) == ("batched", 0.2)
        assert dump(lg.path) == before
    with pytest.raises(ConfigurationError):
        Logger(cache_path, durability="normal", commit_interval=0)
    with Logger(cache_path) as lg:
        assert (lg.durability, lg.commit_interval) == ("batched", 0.2)


def test_the_attributes_say_their_default_and_where_they_are_kept() -> None:
    for name, option in OPTIONS.items():
        doc = getattr(Configurable, name).__doc__
        assert f"(default {option.default!r})" in doc, name
        assert ("not stored" in doc) == (option.stored is Stored.PROCESS), name


def test_the_cache_has_no_commit_interval_of_its_own(cache_path: str) -> None:
    """``commit_interval``'s default is written once, in its record: the cache is told it."""
    Logger(cache_path).close()
    cache = Cache.connect(cache_path, "full")
    try:
        with pytest.raises(ConfigurationError, match="commit_interval"):
            cache.set_durability("batched")
        cache.set_commit_interval(Configurable.commit_interval.default)
        cache.set_durability("batched")
    finally:
        cache.close()
