"""Tags: Store.tag / add_tags / remove_tags, cell_meta.tags, and `cytostore tag`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cytostore.cli import main
from cytostore.errors import InvalidArgumentError
from cytostore.store import Store


@pytest.fixture
def five_cells(tmp_store: Store) -> Store:
    labels = ["BLA", "BLA", "EOS", "LYT", "BLA"]
    rows = [
        {"dataset": "d", "path": f"{i}.png", "label": lab}
        for i, lab in enumerate(labels)
    ]
    tmp_store.add_cells(rows)
    return tmp_store


def _tags(store: Store) -> dict[int, list[str]]:
    return dict(store.sql("SELECT cell_id, tags FROM cell_meta ORDER BY cell_id").rows)


def test_tag__add_then_again_is_a_no_op_and_lists_are_sorted(five_cells: Store) -> None:
    assert five_cells.tag("label = 'BLA'", add=["review", "a"]) == {
        "cells": 3,
        "added": 6,
        "removed": 0,
    }
    assert five_cells.tag("label = 'BLA'", add=["review"])["added"] == 0
    assert _tags(five_cells) == {
        1: ["a", "review"],
        2: ["a", "review"],
        3: [],
        4: [],
        5: ["a", "review"],
    }
    hits = five_cells.where_ids("list_contains(tags, 'review')").tolist()
    assert hits == [1, 2, 5]


def test_tag__remove_and_add_in_one_call(five_cells: Store) -> None:
    five_cells.add_tags("label = 'BLA'", ["review"])
    report = five_cells.tag("cell_id <= 2", add=["ok"], remove=["review"])
    assert report == {"cells": 2, "added": 2, "removed": 2}
    assert _tags(five_cells)[1] == ["ok"] and _tags(five_cells)[5] == ["review"]
    # A tag both added and removed is removed.
    assert five_cells.tag("cell_id = 1", add=["ok"], remove=["ok"])["removed"] == 1
    assert five_cells.remove_tags("cell_id = 1", ["ok"]) == 0


def test_tag__ids_alone_and_intersected_with_where(five_cells: Store) -> None:
    assert five_cells.add_tags(None, ["x"], ids=[4, 2, 2]) == 2
    assert five_cells.add_tags("label = 'BLA'", ["y"], ids=[1, 3, 4]) == 1
    assert _tags(five_cells) == {1: ["y"], 2: ["x"], 3: [], 4: ["x"], 5: []}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"where": None, "add": ["x"]}, "say which cells"),
        ({"where": "1=1", "add": []}, "give a tag"),
        ({"where": "1=1", "add": ["  "]}, "not usable"),
        ({"where": "1=1", "add": ["x" * 65]}, "not usable"),
        ({"where": "1=1", "add": ["a\nb"]}, "not usable"),
        ({"where": None, "add": ["x"], "ids": [1, 99]}, r"unknown cell ids \[99\]"),
    ],
)
def test_tag__bad_input_changes_nothing(
    five_cells: Store, kwargs: dict, match: str
) -> None:
    where = kwargs.pop("where")
    with pytest.raises(InvalidArgumentError, match=match):
        five_cells.tag(where, **kwargs)
    assert five_cells.sql("SELECT count(*) FROM tags").rows == [(0,)]


def test_tag_cli__adds_removes_and_reports(five_cells: Store) -> None:
    store = str(five_cells.root)
    result = CliRunner().invoke(
        main,
        [
            "tag",
            store,
            "--where",
            "label = 'BLA'",
            "--add",
            "review",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"cells": 3, "added": 3, "removed": 0}
    assert result.stderr.strip() == "3 cells selected: 3 tags added, 0 removed"
    result = CliRunner().invoke(
        main, ["tag", store, "--where", "cell_id = 5", "--remove", "review"]
    )
    assert result.exit_code == 0, result.output
    assert Store.open(Path(store)).where_ids(
        "list_contains(tags, 'review')"
    ).tolist() == [1, 2]


def test_tag_cli__no_tag_is_a_usage_error(five_cells: Store) -> None:
    result = CliRunner().invoke(
        main, ["tag", str(five_cells.root), "--where", "1=1"], prog_name="cytostore"
    )
    assert result.exit_code == 2
    assert "Usage: cytostore tag" in result.stderr
    assert "give a tag to add" in result.stderr
