"""The clip table's query plan returns what the SQL means: k rows from IVF indexes, collations,
joins, conditions the table cannot apply before the k cut, and bad MATCH/k arguments.

Every result is checked against an oracle: an ordinary SQLite table holding the same rows (for
which rows a WHERE clause selects) and an exact numpy brute force over the vectors the test
inserted (never vectors read back through the extension)."""
import random
import re
import sqlite3

import numpy as np
import pytest

from conftest import connect

CUT_ERROR = "cannot be applied before the k nearest rows are chosen"


def blob(v):
    return np.asarray(v, dtype=np.float32).tobytes()


def unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class Oracle:
    """The rows a clip table holds: vectors by rowid, and a mirror table for WHERE clauses."""

    def __init__(self, db, mirror_columns="", table="v"):
        self.db, self.table = db, table
        self.vectors = {}
        db.execute(f"CREATE TABLE mirror(rowid_ INTEGER PRIMARY KEY{mirror_columns})")

    def insert(self, rowid, vector, **columns):
        names = ", ".join(["rowid", "embedding", *columns])
        marks = ", ".join("?" * (2 + len(columns)))
        self.db.execute(f"INSERT INTO {self.table}({names}) VALUES({marks})",
                        (rowid, blob(vector), *columns.values()))
        mnames = ", ".join(["rowid_", *columns])
        self.db.execute(f"INSERT INTO mirror({mnames}) VALUES({marks[3:]})",
                        (rowid, *columns.values()))
        self.vectors[rowid] = np.asarray(vector, dtype=np.float64)

    def delete(self, where):
        self.db.execute(f"DELETE FROM {self.table} WHERE {where}")
        ids = [r[0] for r in self.db.execute(f"SELECT rowid_ FROM mirror WHERE "
                                             f"{where.replace('rowid', 'rowid_')}")]
        self.db.execute(f"DELETE FROM mirror WHERE {where.replace('rowid', 'rowid_')}")
        for i in ids:
            del self.vectors[i]

    def rows(self, where="1"):
        """Rowids the mirror selects (`rowid` in where names the mirror's key)."""
        return {r[0] for r in self.db.execute(
            f"SELECT rowid_ FROM mirror WHERE {where.replace('rowid', 'rowid_')}")}

    def nearest(self, query, k, allowed=None):
        """The k nearest allowed rowids, best first, with distances (1 - cosine)."""
        ids = sorted(self.vectors if allowed is None else allowed)
        if not ids:
            return []
        sims = unit([self.vectors[i] for i in ids]) @ unit([query])[0]
        order = np.argsort(-sims, kind="stable")[:k]
        return [(ids[j], 1.0 - sims[j]) for j in order]


def knn(db, sql, query, *params):
    return [tuple(r) for r in db.execute(sql, (blob(query), *params))]


def assert_same_hits(got, expected):
    """Same rows, nearest first, same distances; rows whose distances tie within float32
    rounding may come in either order."""
    assert len(got) == len(expected), (got, expected)
    assert len({r[0] for r in got}) == len(got)
    for (_, d), (_, e) in zip(got, expected):
        assert d == pytest.approx(e, abs=1e-5)
    for (gid, d), (eid, e) in zip(got, expected):
        if gid != eid:  # only a tie may swap rows
            assert gid in {i for i, x in expected if abs(x - d) < 1e-5}, (got, expected)


@pytest.fixture
def db(ext_path, tmp_path):
    d = connect(str(tmp_path / "plan.db"), ext_path)
    yield d
    d.close()


# ---- k rows from IVF indexes ----

def ivf_table(db, n, index="IVF4,Flat", extra="nprobe=1, autotrain=off", seed=0):
    db.execute(f"CREATE VIRTUAL TABLE v USING clip(dims=4, index='{index}', {extra})")
    oracle = Oracle(db)
    rng = np.random.default_rng(seed)
    db.execute("BEGIN")
    for i, vec in enumerate(rng.standard_normal((n, 4)), start=1):
        oracle.insert(i, vec)
    db.execute("COMMIT")
    return oracle


def index_info(db, table="v"):
    import json
    return json.loads(db.execute("SELECT clip_index_info(?)", (table,)).fetchone()[0])


def test_ivf_without_filter_returns_k_after_deletes(db):
    oracle = ivf_table(db, 400)
    db.execute("INSERT INTO v(v) VALUES('train')")
    oracle.delete("rowid > 5")
    q = [1.0, 0.2, -0.3, 0.1]
    sql = "SELECT rowid, distance FROM v WHERE v MATCH ? AND k = 5"
    assert_same_hits(knn(db, sql, q), oracle.nearest(q, 5))
    db.execute("INSERT INTO v(v) VALUES('optimize')")
    assert_same_hits(knn(db, sql, q), oracle.nearest(q, 5))
    assert_same_hits(knn(db, sql + " AND rowid > 0", q), oracle.nearest(q, 5))
    info = index_info(db)
    assert info["kind"] == "flat" and info["count"] == 5  # too few rows left to train: exact
    db.execute("INSERT INTO v(v) VALUES('integrity-check')")


def test_auto_index_returns_k_beyond_probed_lists(db):
    db.execute("CREATE VIRTUAL TABLE v USING clip(dims=4)")
    oracle = Oracle(db)
    rng = np.random.default_rng(1)
    db.execute("BEGIN")
    for i, vec in enumerate(rng.standard_normal((12000, 4)), start=1):
        oracle.insert(i, vec)
    db.execute("COMMIT")
    info = index_info(db)
    assert info["kind"] == "ivf" and info["nprobe"] < info["nlist"]
    q = [1.0, 0.0, 0.0, 0.0]
    got = knn(db, "SELECT rowid, distance FROM v WHERE v MATCH ? AND k = 5000", q)
    assert len(got) == 5000 and len({r[0] for r in got}) == 5000
    truth = {r[0] for r in oracle.nearest(q, 5000)}
    assert len(truth & {r[0] for r in got}) / 5000 > 0.95

    # Deleting down to 100 rows leaves 256 lists holding a few rows each; 'optimize' rebuilds.
    oracle.delete("rowid % 120 != 1")
    db.execute("INSERT INTO v(v) VALUES('optimize')")
    info = index_info(db)
    assert info["count"] == 100 and info["nprobe"] >= info["nlist"]
    for q in unit(rng.standard_normal((20, 4))):
        got = knn(db, "SELECT rowid, distance FROM v WHERE v MATCH ? AND k = 10", q)
        assert_same_hits(got, oracle.nearest(q, 10))


def test_optimize_retrains_unbalanced_lists(db):
    oracle = ivf_table(db, 1000, index="IVF16,Flat", extra="autotrain=off")
    db.execute("INSERT INTO v(v) VALUES('train')")
    assert index_info(db)["trained_at_count"] == 1000
    rng = np.random.default_rng(7)
    db.execute("BEGIN")
    # Less than the growth that retrains anyway, all in the list nearest [1,1,1,1].
    for i, vec in enumerate([1, 1, 1, 1] + 0.01 * rng.standard_normal((2500, 4)), start=1001):
        oracle.insert(i, vec)
    db.execute("COMMIT")
    db.execute("INSERT INTO v(v) VALUES('optimize')")
    info = index_info(db)
    assert info["trained_at_count"] == 3500 and info["nlist"] == 16
    q = [1.0, 1.0, 1.0, 1.02]
    got = knn(db, "SELECT rowid, distance FROM v WHERE v MATCH ? AND k = 50 AND nprobe = 16", q)
    assert_same_hits(got, oracle.nearest(q, 50))


# ---- collations ----

@pytest.fixture
def collated(db):
    db.execute("CREATE VIRTUAL TABLE v USING clip(dims=2, album TEXT, name TEXT COLLATE NOCASE)")
    oracle = Oracle(db, ", album TEXT, name TEXT COLLATE NOCASE")
    oracle.insert(1, [1.0, 0.0], album="Beach", name="Alice")
    return oracle


@pytest.mark.parametrize("where", [
    "album = 'beach' COLLATE NOCASE", "name = 'alice' COLLATE BINARY",
    "album < 'b' COLLATE NOCASE", "name = 'alice'", "name > 'b'", "album = 'Beach  ' COLLATE RTRIM",
    "album COLLATE NOCASE IN ('beach', 'x')", "name IN ('ALICE')",
    "name COLLATE BINARY IN ('alice')",
])
def test_collations_apply_in_scans_and_knn(db, collated, where):
    expected = collated.rows(where)
    got = {r[0] for r in db.execute(f"SELECT rowid FROM v WHERE {where}")}
    assert got == expected
    hits = knn(db, f"SELECT rowid, distance FROM v WHERE v MATCH ? AND k = 5 AND {where}", [1, 0])
    assert_same_hits(hits, collated.nearest([1, 0], 5, expected))


# ---- joins and k ----

@pytest.fixture
def joined(db):
    db.execute("CREATE VIRTUAL TABLE v USING clip(dims=2, album TEXT)")
    oracle = Oracle(db, ", album TEXT")
    for i in range(1, 41):
        oracle.insert(i, [1.0, 0.1 * i], album=None if i % 3 == 0 else "ab"[i % 3 - 1])
    db.execute("CREATE TABLE meta(id INTEGER PRIMARY KEY, tag TEXT)")
    db.executemany("INSERT INTO meta VALUES(?, ?)", [(i, "ab"[i % 2]) for i in range(1, 41)])
    return oracle


def per_outer_row(db, oracle, meta_where, join, k, q):
    """k nearest per meta row (the values the join hands the clip table)."""
    out = []
    for mid, tag in db.execute(f"SELECT id, tag FROM meta WHERE {meta_where}"):
        allowed = oracle.rows(join.format(id=mid, tag=tag))
        out += [(r[0], mid) for r in oracle.nearest(q, k, allowed)]
    return sorted(out)


@pytest.mark.parametrize("sql", [
    "SELECT v.rowid, m.id FROM v JOIN meta m ON m.id = v.rowid WHERE v MATCH ? AND k = 1 AND {m}",
    "SELECT v.rowid, m.id FROM meta m JOIN v ON m.id = v.rowid WHERE v MATCH ? AND k = 1 AND {m}",
    "SELECT v.rowid, m.id FROM meta m CROSS JOIN v WHERE m.id = v.rowid AND v MATCH ? AND k = 1"
    " AND {m}",
    "SELECT v.rowid, m.id FROM v, meta m WHERE v MATCH ? AND k = 1 AND v.rowid = m.id AND {m}",
])
@pytest.mark.parametrize("meta_where", ["m.id = 4", "m.id IN (3, 4)", "m.id > 36", "m.tag = 'a'"])
def test_join_on_rowid_is_k_per_outer_row_whatever_the_plan(db, joined, sql, meta_where):
    q = [1.0, 0.0]
    got = sorted(db.execute(sql.format(m=meta_where), (blob(q),)).fetchall())
    expected = per_outer_row(db, joined, meta_where.replace("m.", ""), "rowid = {id}", 1, q)
    assert got == expected


def test_join_on_a_text_column_is_k_per_outer_row(db, joined):
    q = [1.0, 0.0]
    for sql in ["SELECT v.rowid, m.id FROM v JOIN meta m ON m.tag = v.album "
                "WHERE v MATCH ? AND k = 2 AND m.id < 5",
                "SELECT v.rowid, m.id FROM meta m CROSS JOIN v ON m.tag = v.album "
                "WHERE v MATCH ? AND k = 2 AND m.id < 5"]:
        got = sorted(db.execute(sql, (blob(q),)).fetchall())
        assert got == per_outer_row(db, joined, "id < 5", "album = '{tag}'", 2, q)


def test_in_on_rowid_from_another_table_is_a_prefilter(db, joined):
    q = [1.0, 0.0]
    for sub in ["SELECT id FROM meta WHERE id IN (3, 4)", "3, 4"]:
        got = knn(db, f"SELECT rowid, distance FROM v WHERE v MATCH ? AND k = 1 "
                      f"AND rowid IN ({sub})", q)
        assert_same_hits(got, joined.nearest(q, 1, {3, 4}))


def test_or_the_table_cannot_apply_is_refused_not_post_filtered(db, joined):
    q = [1.0, 0.0]
    where = "(album = 'a' OR album IS NULL)"
    with pytest.raises(sqlite3.OperationalError, match=CUT_ERROR):
        db.execute(f"SELECT rowid FROM v WHERE v MATCH ? AND {where} AND k = 3", (blob(q),))
    expected = joined.nearest(q, 3, joined.rows(where))
    rewritten = f"rowid IN (SELECT rowid FROM v WHERE {where})"
    assert_same_hits(knn(db, f"SELECT rowid, distance FROM v WHERE v MATCH ? AND {rewritten} "
                             "AND k = 3", q), expected)
    # Without k the search grows while SQLite applies the OR: the same rows.
    assert_same_hits(knn(db, f"SELECT rowid, distance FROM v WHERE v MATCH ? AND {where} "
                             "ORDER BY distance LIMIT 3", q), expected)
    # An OR of equalities on one column reaches the table as IN.
    for where in ["(album = 'a' OR album = 'b')", "(rowid = 5 OR rowid = 9)"]:
        got = knn(db, f"SELECT rowid, distance FROM v WHERE v MATCH ? AND {where} AND k = 3", q)
        assert_same_hits(got, joined.nearest(q, 3, joined.rows(where)))


def test_many_constraints_all_apply(db, joined):
    """More constraints than any fixed-size plan buffer: every one narrows the candidates."""
    q = [1.0, 0.0]
    where = " AND ".join(f"rowid != {i}" for i in range(1, 140))
    got = knn(db, f"SELECT rowid, distance FROM v WHERE v MATCH ? AND k = 5 AND {where}", q)
    assert_same_hits(got, joined.nearest(q, 5, joined.rows(where)))
    assert {r[0] for r in db.execute(f"SELECT rowid FROM v WHERE {where}")} == joined.rows(where)


# ---- bad MATCH and k arguments ----

@pytest.mark.parametrize("cond", ["k > 3", "k IN (3, 5)", "k >= 1", "nprobe IN (1, 2)"])
def test_k_other_than_equality_is_refused(db, joined, cond):
    with pytest.raises(sqlite3.OperationalError, match=r"must be given as (k|nprobe) = N"):
        db.execute(f"SELECT rowid FROM v WHERE v MATCH ? AND {cond}", (blob([1, 0]),)).fetchall()


def test_distance_test_after_the_cut_is_refused(db, joined):
    with pytest.raises(sqlite3.OperationalError, match=CUT_ERROR):
        db.execute("SELECT rowid FROM v WHERE v MATCH ? AND k = 3 AND distance > 0.001",
                   (blob([1, 0]),)).fetchall()


def test_match_blob_of_wrong_size_names_both_sizes(conn):
    conn.execute("CREATE VIRTUAL TABLE t USING clip()")
    conn.execute("INSERT INTO t(text) VALUES('a red circle')")
    dims = len(conn.execute("SELECT embedding FROM t").fetchone()[0]) // 4
    for size in (4, 40, 4 * dims + 4):
        with pytest.raises(sqlite3.OperationalError,
                           match=rf"BLOB of {size} bytes .*{4 * dims} bytes"):
            conn.execute("SELECT rowid FROM t WHERE t MATCH zeroblob(?) AND k = 1", (size,))


def test_blank_match_text_is_refused_like_empty(conn):
    conn.execute("CREATE VIRTUAL TABLE t USING clip()")
    conn.execute("INSERT INTO t(text) VALUES('a red circle')")
    messages = []
    for text in ["", "   ", "\t\n "]:
        with pytest.raises(sqlite3.OperationalError) as e:
            conn.execute("SELECT rowid FROM t WHERE t MATCH ? AND k = 1", (text,))
        messages.append(str(e.value))
    assert len(set(messages)) == 1 and "empty" in messages[0]


# ---- randomized WHERE clauses against the mirror ----

VALUES = ["'a'", "'A'", "'b'", "'a '", "'ab'", "'Ab'", "'B'", "''", "NULL", "1", "2", "'1'",
          "'2'", "2.5", "'x'", "-1"]
COLUMNS = ["album", "name", "n", "x", "rowid"]
COLLATIONS = ["", " COLLATE NOCASE", " COLLATE BINARY", " COLLATE RTRIM"]


def compare(col, op, value, coll, rng):
    """col op value with the collation on either side. SQLite hands a virtual table no != or
    IS NOT whose column carries COLLATE (documented): those get it on the value's side."""
    if op in ("!=", "IS NOT") or rng.random() < 0.5:
        return f"{col} {op} {value}{coll}"
    return f"{col}{coll} {op} {value}"


def random_atom(rng):
    col = rng.choice(COLUMNS)
    kind = rng.randrange(6)
    coll = rng.choice(COLLATIONS) if col != "rowid" else ""
    if kind == 0:
        op = rng.choice(["=", "<", ">", "<=", ">=", "!=", "IS", "IS NOT"])
        return compare(col, op, rng.choice(VALUES), coll, rng)
    if kind == 1:
        items = ", ".join(rng.choice(VALUES) for _ in range(rng.randrange(1, 4)))
        return f"{col}{coll} IN ({items})"
    if kind == 2:
        pattern = rng.choice(["a%", "A*", "_b", "%", "a*", "x", "[aA]*"])
        return f"{col} {rng.choice(['LIKE', 'GLOB'])} '{pattern}'"
    if kind == 3:
        return f"{col} {rng.choice(['IS NULL', 'IS NOT NULL'])}"
    if kind == 4:
        return f"{col}{coll} BETWEEN {rng.choice(VALUES)} AND {rng.choice(VALUES)}"
    return f"rowid {rng.choice(['<', '>', '='])} {rng.randrange(0, 60)}"


def random_where(rng):
    """(the whole WHERE clause, its atoms that are not ORs)"""
    atoms, plain = [], []
    for _ in range(rng.randrange(1, 4)):
        atom = random_atom(rng)
        if rng.random() < 0.25:
            atom = f"({atom} OR {random_atom(rng)})"
        else:
            plain.append(atom)
        atoms.append(atom)
    return " AND ".join(atoms), " AND ".join(plain) or "1"


def check_hits(got, expected, sql):
    try:
        assert_same_hits(got, expected)
    except AssertionError as e:
        raise AssertionError(f"{sql}: {e}") from None


@pytest.fixture
def mixed(db):
    cols = "album TEXT, name TEXT COLLATE NOCASE, n INTEGER, x"
    db.execute(f"CREATE VIRTUAL TABLE v USING clip(dims=3, {cols})")
    oracle = Oracle(db, ", " + cols)
    rng = random.Random(11)
    pool = ["a", "A", "b", "B", "a ", "ab", "Ab", "", None, "1", 1, 2, 2.5, "x", -1]
    vecs = np.random.default_rng(11).standard_normal((50, 3))
    for i in range(1, 51):
        oracle.insert(i, vecs[i - 1], album=rng.choice(pool), name=rng.choice(pool),
                      n=rng.choice(pool), x=rng.choice(pool))
    return oracle


def may_be_refused(where):
    """An OR, or != / IS NOT on `name` (declared COLLATE NOCASE: for those SQLite does not
    tell a virtual table which collation applies)."""
    return " OR " in where or re.search(r"name (!=|IS NOT) ", where) is not None


def test_random_where_clauses_match_the_mirror(db, mixed):
    """Scans and LIMIT searches return exactly what the mirror selects. A search with k returns
    the k nearest of those, except with an OR: SQLite plans most ORs one disjunct at a time (the
    table then refuses the query) or as IN (exact), but hands an OR with a disjunct it cannot
    index (rowid IS NULL, ...) to no virtual table: such an OR filters the k rows afterwards
    (documented), so there the k nearest under the other conditions, then the OR, is allowed."""
    rng = random.Random(12345)
    queries = np.random.default_rng(5).standard_normal((400, 3))
    outcomes = {"exact": 0, "refused": 0, "after the cut": 0}
    for i in range(400):
        where, plain = random_where(rng)
        expected = mixed.rows(where)
        got = {r[0] for r in db.execute(f"SELECT rowid FROM v WHERE {where}")}
        assert got == expected, where
        q = queries[i]
        for k in (len(mixed.vectors), 3):
            sql = f"SELECT rowid, distance FROM v WHERE v MATCH ? AND k = {k} AND {where}"
            try:
                hits = knn(db, sql, q)
            except sqlite3.OperationalError as e:
                assert CUT_ERROR in str(e) and may_be_refused(where), (sql, str(e))
                outcomes["refused"] += 1
                continue
            exact = mixed.nearest(q, k, expected)
            if where != plain and [h[0] for h in hits] != [h[0] for h in exact]:
                cut = [h for h in mixed.nearest(q, k, mixed.rows(plain)) if h[0] in expected]
                check_hits(hits, cut, sql)
                outcomes["after the cut"] += 1
                continue
            check_hits(hits, exact, sql)
            outcomes["exact"] += 1
        # Without k every condition applies before the LIMIT.
        hits = knn(db, f"SELECT rowid, distance FROM v WHERE v MATCH ? AND {where} "
                       "ORDER BY distance LIMIT 4", q)
        check_hits(hits, mixed.nearest(q, 4, expected), where)
    assert outcomes["exact"] > 400 and outcomes["refused"] > 0, outcomes
