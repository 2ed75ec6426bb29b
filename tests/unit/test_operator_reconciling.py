"""The comparison and patch logic that keeps re-runs from rewriting what is already right."""

from __future__ import annotations

from earshot_operator import reconciling


def test_server_defaults_do_not_count_as_differences() -> None:
    wanted = {"spec": {"replicas": 1, "template": {"containers": [{"name": "gateway"}]}}}
    actual = {
        "metadata": {"resourceVersion": "7"},
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 10,
            "template": {"containers": [{"name": "gateway", "imagePullPolicy": "IfNotPresent"}]},
        },
    }
    assert reconciling.contains(actual, wanted)


def test_a_changed_value_is_a_difference() -> None:
    assert not reconciling.contains({"data": {"codec": "alaw"}}, {"data": {"codec": "ulaw"}})


def test_an_extra_list_item_is_a_difference() -> None:
    wanted = {"env": [{"name": "A"}]}
    assert not reconciling.contains({"env": [{"name": "A"}, {"name": "B"}]}, wanted)


def test_merge_patch_drops_configmap_keys_no_longer_wanted() -> None:
    actual = {"data": {"EARSHOT_A": "1", "EARSHOT_OLD": "x"}}
    wanted = {"kind": "ConfigMap", "data": {"EARSHOT_A": "2"}}
    assert reconciling.merge_patch(actual, wanted) == {
        "kind": "ConfigMap",
        "data": {"EARSHOT_A": "2", "EARSHOT_OLD": None},
    }
