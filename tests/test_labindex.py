"""Lab host indexes per pytest-xdist worker (tests/labindex.py): disjoint ranges, bounds, wrapping that
skips indexes still in use. Pure functions; the e2e modules run under `-n 2` prove the rest."""
import pytest

from labindex import Allocator, LabIndexError, worker_range


def test_each_worker_gets_its_own_range_from_the_base():
    env = {"FABDEPLOY_LAB_INDEX": "20", "FABDEPLOY_LAB_SPAN": "60"}
    assert worker_range(env, "") == range(20, 80)  # plain pytest: worker 0
    assert worker_range(env, "gw0") == range(20, 80)
    assert worker_range(env, "gw1") == range(80, 140)
    assert not set(worker_range(env, "gw0")) & set(worker_range(env, "gw1"))
    assert worker_range({}, "gw1") == range(80, 140)  # the defaults


def test_a_small_trial_range_splits_in_two():
    env = {"FABDEPLOY_LAB_INDEX": "100", "FABDEPLOY_LAB_SPAN": "20"}
    assert (worker_range(env, "gw0"), worker_range(env, "gw1")) == (range(100, 120), range(120, 140))


def test_a_range_past_250_is_one_clear_line():
    with pytest.raises(LabIndexError, match=r"^lab indexes 200\.\.259 \(FABDEPLOY_LAB_INDEX=20, "
                                            r"FABDEPLOY_LAB_SPAN=60, worker 3\) are outside 1\.\.250"):
        worker_range({}, "gw3")
    with pytest.raises(LabIndexError, match="whole numbers"):
        worker_range({"FABDEPLOY_LAB_SPAN": "x"}, "gw0")


def test_the_counter_wraps_and_skips_indexes_in_use():
    alloc = Allocator(range(10, 13))
    busy = {11}
    got = [alloc.next(busy.__contains__) for _ in range(4)]
    assert got == [10, 12, 10, 12]
    with pytest.raises(LabIndexError, match=r"^every lab index 10\.\.12 is in use"):
        Allocator(range(10, 13)).next(lambda i: True)

