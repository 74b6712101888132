"""The differential tester (difftest.py) in CI: the clip table against an SQLite + numpy oracle.

- test_random_sequences: a fixed range of seeds (short sequences of every operation area not in
  KNOWN_BROKEN) on two worker processes, within a time budget;
- test_model_sequences: a few sequences whose rows are texts and demo images embedded by the
  tiny model;
- test_regression: every failure the tester has found, minimised, replayed as is. While its area
  is in KNOWN_BROKEN it must still fail (strict xfail): a fix then shows up as an XPASS, and its
  area comes out of KNOWN_BROKEN.
Long runs on demand (see difftest.py): /usr/bin/python3 tests/python/difftest.py --seconds 600
"""
import concurrent.futures
import multiprocessing
import time

import pytest

import difftest

# Operation areas that fail today, excluded from the random sequences; each entry names the
# symptom. Empty it as the fixes land (test_regression then XPASSes for the area).
KNOWN_BROKEN = {}  # area -> the symptom, while a bug found by difftest is not fixed yet

SEEDS = range(0, 2000)       # vector sequences run in CI
MODEL_SEEDS = range(0, 12)   # model sequences (texts, images)
BUDGET_S = 70.0              # stop early on a slow machine, after at least MIN_SEQUENCES
MIN_SEQUENCES = 400
CI_LENGTHS = [4, 6, 8, 12]   # operations per sequence (after the initial fill)


def areas():
    return set(difftest.AREAS) - set(KNOWN_BROKEN)


def run_seed(seed, kind="vec"):
    """-> None or a one-line failure (in a worker process)."""
    rng_len = CI_LENGTHS[seed % len(CI_LENGTHS)]
    seq = difftest.sequence_for(seed, areas(), kind, rng_len)
    r = difftest.run_sequence(seq, kind, areas=areas())
    return None if r is None else f"seed {seed} ({kind}, length {rng_len}): {r[0]}"


def test_random_sequences():
    deadline = time.monotonic() + BUDGET_S
    failures, done = [], 0
    # spawn, not fork: this pytest process may already run the encoder's threads (other test
    # files loaded the extension), and a forked child would inherit their held locks.
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=spawn) as pool:
        pending = {}
        seeds = iter(SEEDS)
        for seed in seeds:
            pending[pool.submit(run_seed, seed)] = seed
            if len(pending) >= 8:
                break
        while pending:
            finished, _ = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for f in finished:
                pending.pop(f)
                done += 1
                if f.result():
                    failures.append(f.result())
            out_of_time = time.monotonic() > deadline and done >= MIN_SEQUENCES
            if not out_of_time:
                for seed in seeds:
                    pending[pool.submit(run_seed, seed)] = seed
                    break
    print(f"\n{done} sequences ({len(SEEDS)} planned), {len(failures)} failed")
    assert not failures, "difftest found differences (rerun one with difftest.py --seeds N " \
        "--minimize and the areas of this file):\n" + "\n".join(failures[:20])


@pytest.mark.parametrize("seed", MODEL_SEEDS)
def test_model_sequences(seed):
    failure = run_seed(seed, "model")
    assert failure is None, failure


def q(vec, k=1, filt=None, form="knn"):
    """A query operation for the sequences below."""
    return ("query", (form,), "main", ("vec", vec), k, filt, 1.0, None)


# Failures found by the tester, minimised: (name, area it belongs to, kind, operations).
REGRESSIONS = [
    ("rolled_back_train_then_committed_train", "cmd_in_txn", "vec", [
        ("fill", 98, 0), ("begin",), ("update", 1, ("vec", (1, 0, 0, 0)), None, None),
        ("command", "train"), ("command", "integrity-check"), ("rollback",),
        ("begin",), ("update", 1, ("vec", (0, 1, 0, 0)), None, None), ("command", "train"),
        ("commit",), ("reader",) + q((0, 1, 0, 0))[1:]]),
    ("rolled_back_train_two_updates_autocommit", "cmd_in_txn", "vec", [
        ("fill", 98, 7), ("begin",), ("update", 3, ("vec", (-2, -8, -3, 2)), "beach", None),
        ("update", 4, ("vec", (-7, 7, 6, 8)), "beach", "alice"), ("command", "train"),
        ("command", "integrity-check"), ("rollback",),
        ("update", 93, ("vec", (-6, -3, -5, 4)), None, "alice"),
        ("update", 3, ("vec", (8, 5, -3, -9)), "a", "Alice"), ("command", "train")]),
    ("flipped_byte_near_end_of_cache", "cache_damage", "vec", [
        ("fill", 98, 0), ("command", "train"), ("reopen", "none", 0), q((1, 2, 3, 4)),
        ("reopen", "flip", -8)]),
    ("few_rows_after_optimize_low_nprobe", "low_nprobe", "vec", [
        ("fill", 98, 52), ("few_rows", 6, "optimize"), q((9, -7, 2, -6), 5, form="knn_np1")]),
    ("explicit_nocase_range_filter", "collate", "vec", [
        ("insert", 38, ("vec", (0, 7, -3, 4)), "Beach", None),
        q((-1, -5, 1, -8), 10, "album < 'b' COLLATE NOCASE")]),
    ("explicit_nocase_scan", "collate", "vec", [
        ("insert", 1, ("vec", (1, 0, 0, 0)), "Beach", "Alice"),
        ("scan", "album = 'beach' COLLATE NOCASE")]),
    ("explicit_binary_on_nocase_column", "collate", "vec", [
        ("insert", 1, ("vec", (1, 0, 0, 0)), "Beach", "Alice"),
        q((1, 0, 0, 0), 5, "name = 'alice' COLLATE BINARY")]),
    ("or_filter_before_the_cut", "or", "vec", [
        ("insert", 60, ("vec", (-1, 7, 8, 6)), None, "bob"),
        ("insert", 87, ("vec", (-1, -3, -4, 0)), "A", "BOB"),
        ("insert", 46, ("vec", (9, 1, 8, -3)), "b", "alice"),
        q((-1, 9, -2, -6), 2, "(rowid < 46 OR name = 'bob')")]),
    ("is_null_filter_before_the_cut", "is_null", "vec", [
        ("insert", 1, ("vec", (1, 0, 0, 0)), "a", None),
        ("insert", 2, ("vec", (0, 1, 0, 0)), None, None),
        q((1, 0, 0, 0), 1, "album IS NULL")]),
    ("cross_join_ordinary_table_outer", "join_outer", "vec", [
        ("insert", 5, ("vec", (3, 7, -2, -4)), "b", "BOB"),
        ("insert", 57, ("vec", (-1, -3, -4, 0)), "A", "BOB"),
        ("insert", 99, ("vec", (-2, 8, -8, -3)), "A", None),
        ("query", ("join", "cross_m"), "main", ("vec", (3, 7, -2, -4)), 2, None, 0.11, "x")]),
    ("schema_qualified_main", "schema_names", "vec", [("info", "main.v")]),
    ("search_attached_table", "attach_fn", "vec", [
        ("attach",),
        ("query", ("search_fn",), "aux", ("vec", (-7, -8, 0, 9)), 5, None, 1.0, None)]),
    ("info_with_same_named_attached", "attach_fn", "vec", [
        ("attach",), ("insert", 192, ("vec", (-6, -2, -3, 3)), "beach", "Alice"), ("info", "v")]),
    ("last_insert_rowid_of_queued_row", "auto_rowid", "model", [
        ("insert", 64, ("text", "a red circle"), None, "bob"),
        ("insert_auto", ("text", "circle"), "a", "bob")]),
    ("optimize_over_damaged_cache_file", "cache_damage", "vec", [
        ("fill", 98, 34), ("command", "train"), ("reopen", "none", 0),
        q((4, -6, -5, -1), 2, form="knn_np1"), ("reopen", "flip", 0.8260281629585705),
        ("command", "optimize")]),
]


@pytest.mark.parametrize("name,area,kind,seq", REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_regression(name, area, kind, seq):
    r = difftest.run_sequence(seq, kind)
    if area in KNOWN_BROKEN:
        assert r is not None, f"{name} passes now: take {area!r} out of KNOWN_BROKEN"
        pytest.xfail(f"known broken ({area}): {KNOWN_BROKEN[area]}")
    assert r is None, f"{name}: {r[0]}\n" + difftest.repro_source(*r)


def test_known_broken_names_are_areas():
    assert set(KNOWN_BROKEN) <= set(difftest.AREAS)
    assert {area for _, area, _, _ in REGRESSIONS} <= set(difftest.AREAS)

