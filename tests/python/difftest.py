"""Differential tester of the `clip` virtual table against an oracle.

Seeded random sequences of SQL operations run against a clip table and, step by step, against an
oracle: an ordinary SQLite table in a separate database file holding the same vectors and user
columns, searched by exact brute force in numpy. Every query result is compared. IVF tables use
nprobe = nlist ('IVF2,Flat', nprobe=2), so results must match brute force exactly (distances
within a tolerance; rowids at equal distance compared as sets). A failing sequence is minimised
(delta debugging: drop operations while the same check still fails) and printed as a short
runnable Python repro.

Semantics the oracle assumes (the SQL reference in sqlite-ext/extension.c):
  - constraints on the clip table's own columns (rowid, image, text, user columns, with their
    declared or explicit collations, IN, OR, IS NULL, ...) select the candidates before the
    top-k cut:
    k rows come back whenever k candidates exist; `distance < d` drops farther rows;
  - constraints on another table of a join filter the k rows afterwards (the join filters used
    are on columns that SQLite cannot transfer to the clip table);
  - clip_search('v' | 'aux.v', ...) and clip_index_info(...) resolve names as SQLite does;
  - everything in a transaction is visible to its connection at once; a second connection sees
    the committed state; ROLLBACK / ROLLBACK TO undo everything, including 'train';
  - 'train' may refuse a table with fewer than 39 rows per list; any other command error, and
    any error on one side only, is a finding; at the end integrity-check passes, the stored
    vectors are the oracle's normalised, and a fresh connection finds every row.

Operation areas (each can be switched off, e.g. to exclude a known bug): see AREAS below or
--list-areas.

CLI (run with Debian's interpreter, from the repository root):
  /usr/bin/python3 tests/python/difftest.py --seeds 0..999            # a range of seeds
  /usr/bin/python3 tests/python/difftest.py --seconds 600             # random seeds for 10 min
  /usr/bin/python3 tests/python/difftest.py --seeds 17 --minimize     # minimise, print a repro
  ... --exclude cache_damage,join --only-areas ... --kind model       # areas; model sequences
Environment: CLIPDB_BUILD_DIR (default build/). Exit status 1 when a sequence failed.
Files go to /dev/shm when writable (fsync is free there), else to the temporary directory.
"""
import argparse
import json
import os
import pathlib
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("CLIPDB_BUILD_DIR", ROOT / "build")).resolve()
EXT = str(BUILD / "sqlite-ext" / "clipdb")
MODEL_DIR = ROOT / "tests" / "data" / "clip-tiny-shapes"
DEMO_DIR = ROOT / "examples" / "shapes"

DIMS = 4
MODEL_DIMS = 64  # the tiny model of tests/data
os.environ.setdefault("CLIPDB_MODEL", str(MODEL_DIR))  # the default model of model sequences
NLIST = 2
ENCODING = os.environ.get("DIFFTEST_ENCODING", "Flat")  # --encoding SQ8: codes re-ranked exactly
TRAIN_MIN = 39 * NLIST  # rows 'train' needs (index/ivf.h policy); fewer: an error, not a finding
TOL = 1e-4
ALBUMS = ["a", "A", "b", "Beach", "beach", None]
NAMES = ["alice", "Alice", "bob", "BOB", None]
TAGS = ["x", "y", None]
TEXTS = ["a red circle", "a blue square", "a green triangle", "a yellow cross", "red", "circle"]

# Every area an operation or a query belongs to. An operation runs only when all its areas are on.
AREAS = {
    "dml": "INSERT / UPDATE / DELETE of rows with precomputed vectors and user columns",
    "bulk": "multi-row INSERT statements",
    "upsert": "INSERT OR REPLACE",
    "move": "UPDATE ... SET rowid = (moving a row)",
    "txn": "BEGIN / COMMIT / ROLLBACK",
    "savepoint": "SAVEPOINT / ROLLBACK TO / RELEASE",
    "cmd_in_txn": "'train' / 'optimize' / 'rebuild' / 'integrity-check' inside a transaction",
    "train": "the 'train' command",
    "optimize": "the 'optimize' command",
    "rebuild": "the 'rebuild' command",
    "reopen": "close and reopen the connection",
    "cache_delete": "the <db>-clip-<table>.idx cache file deleted between opens",
    "cache_damage": "the cache file damaged (a flipped byte, a truncation) between opens",
    "reader": "a second connection reading the committed state",
    "attach": "ATTACH of a second database with a same-named clip table (SQL on aux.v)",
    "attach_fn": "clip_index_info / clip_search while a same-named table is attached",
    "collate": "filters with declared or explicit collations",
    "in": "IN filters",
    "or": "OR filters",
    "join": "joins against an ordinary table (filters on the ordinary table)",
    "join_outer": "CROSS JOIN with the ordinary table as the outer loop",
    "limit": "ORDER BY distance LIMIT n without k",
    "distance": "distance bounds (with k, and range searches without k)",
    "filter": "plain filters on rowid and user columns",
    "is_null": "IS NULL / IS NOT NULL filters",
    "schema_names": "schema-qualified names ('main.v') in clip_index_info / clip_search",
    "few_rows": "k queries after deleting most rows of a trained index",
    "low_nprobe": "k queries with nprobe = 1 < nlist: k rows must still come back (not exact)",
    "auto_rowid": "INSERT without a rowid (the oracle takes last_insert_rowid())",
    "search_fn": "clip_search(table, query, k, nprobe)",
    "info_fn": "clip_index_info(table) count",
    "text": "rows with texts embedded by the model",
    "image": "rows with demo images embedded by the model",
}


class Failure(Exception):
    """A difference between the clip table and the oracle, at one check."""

    def __init__(self, check, message):
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message


def sql_str(s):
    return "NULL" if s is None else "'" + s.replace("'", "''") + "'"


def sql_vec(v):
    return "clip_vec_from_json('[%s]')" % ",".join(str(x) for x in v)


def connect(path):
    db = sqlite3.connect(path, isolation_level=None, timeout=5)
    db.enable_load_extension(True)
    db.load_extension(EXT)
    return db


# ---- generation: a sequence is a list of plain tuples, replayable on any subset ----

class Generator:
    def __init__(self, seed, areas, kind, length):
        self.rng = random.Random(seed)
        self.areas = areas
        self.kind = kind
        self.length = length
        self.pool = [self.rand_vec() for _ in range(10)]
        self.max_rowid = 100

    def on(self, *areas):
        return all(a in self.areas for a in areas)

    def rand_vec(self):
        while True:
            v = tuple(self.rng.randint(-9, 9) for _ in range(DIMS))
            if any(v):
                return v

    def vec(self):
        return self.rng.choice(self.pool) if self.rng.random() < 0.4 else self.rand_vec()

    def rowid(self):
        return self.rng.randint(1, self.max_rowid)

    def row_values(self):
        r = self.rng
        if self.kind == "model":
            if self.on("image") and r.random() < 0.4:
                src = ("image", r.choice(sorted(p.name for p in DEMO_DIR.iterdir())))
            else:
                src = ("text", r.choice(TEXTS))
        else:
            src = ("vec", self.vec())
        return src, r.choice(ALBUMS), r.choice(NAMES)

    def filt(self):
        """A constraint on the clip table's own columns (SQL text, valid on the oracle too)."""
        r = self.rng
        choices = []
        if self.on("filter"):
            choices += [f"rowid > {self.rowid()}", f"rowid BETWEEN {self.rowid()} AND "
                        f"{self.rowid() + 20}", f"album = {sql_str(r.choice(ALBUMS[:-1]))}",
                        f"album != {sql_str(r.choice(ALBUMS[:-1]))}",
                        "name LIKE 'a%'", f"rowid = {self.rowid()}"]
        if self.on("collate"):
            choices += [f"album = {sql_str(r.choice(ALBUMS[:-1]))} COLLATE NOCASE",
                        f"name = {sql_str(r.choice(NAMES[:-1]))}",
                        f"name = {sql_str(r.choice(NAMES[:-1]))} COLLATE BINARY",
                        "album < 'b' COLLATE NOCASE", "name > 'B'"]
        if self.on("is_null"):
            choices += ["album IS NULL", "name IS NOT NULL"]
        if self.on("in"):
            ids = ",".join(str(self.rowid()) for _ in range(r.randint(1, 6)))
            choices += [f"rowid IN ({ids})",
                        f"album IN ({sql_str(r.choice(ALBUMS[:-1]))}, "
                        f"{sql_str(r.choice(ALBUMS[:-1]))})"]
        if self.on("or"):
            choices += [f"(album = {sql_str(r.choice(ALBUMS[:-1]))} OR album IS NULL)",
                        f"(rowid < {self.rowid()} OR name = 'bob')"]
        if not choices or r.random() < 0.3:
            return None
        return r.choice(choices)

    def query(self):
        r = self.rng
        q = ("vec", self.vec()) if self.kind == "vec" else r.choice(
            [("text", r.choice(TEXTS)), ("vec", self.rand_vec())])
        if self.kind == "model" and q[0] == "vec":
            q = ("vecn", tuple(self.rng.gauss(0, 1) for _ in range(MODEL_DIMS)))
        forms = [("knn",)]
        if self.on("limit"):
            forms.append(("limit",))
        if self.on("low_nprobe"):
            forms.append(("knn_np1",))
        if self.on("distance"):
            forms += [("knn_dist",), ("range",)]
        if self.on("join"):
            forms.append(("join", r.choice(["inner", "cross_v", "left"])))
        if self.on("join", "join_outer"):
            forms.append(("join", "cross_m"))
        if self.on("search_fn"):
            forms.append(("search_fn",))
        form = r.choice(forms)
        schema = "aux" if self.on("attach") and r.random() < 0.3 else "main"
        k = r.choice([1, 2, 3, 5, 10, 50])
        dist = round(r.uniform(0.05, 1.5), 3)
        tag = r.choice(TAGS)
        return ("query", form, schema, q, k, self.filt(), dist, tag)

    def op(self):
        r = self.rng
        ops = []  # (weight, builder)
        if self.on("dml"):
            ops += [(10, lambda: ("insert", self.rowid()) + self.row_values()),
                    (4, lambda: ("update", self.rowid()) + self.row_values()),
                    (2, lambda: ("update_cols", self.rowid(), r.choice(ALBUMS), r.choice(NAMES))),
                    (4, lambda: ("delete", self.rowid())),
                    (1, lambda: ("delete_where", self.filt() or "rowid % 3 = 0"))]
        if self.on("dml", "auto_rowid"):
            ops.append((2, lambda: ("insert_auto",) + self.row_values()))
        if self.on("dml", "bulk"):
            ops.append((4, lambda: ("bulk", [(self.rowid() + 100 * r.randint(0, 2),)
                                             + self.row_values()
                                             for _ in range(r.randint(4, 40))])))
        if self.on("dml", "upsert"):
            ops.append((3, lambda: ("upsert", self.rowid()) + self.row_values()))
        if self.on("dml", "move"):
            ops.append((2, lambda: ("move", self.rowid(), self.rowid() + r.choice([0, 70]))))
        if self.on("txn"):
            ops += [(5, lambda: ("begin",)), (3, lambda: ("commit",)), (3, lambda: ("rollback",))]
        if self.on("txn", "savepoint"):
            ops += [(2, lambda: ("savepoint", r.choice("pq"))),
                    (2, lambda: ("rollback_to", r.choice("pq"))),
                    (1, lambda: ("release", r.choice("pq")))]
        for cmd, w in (("train", 4), ("optimize", 2), ("rebuild", 1)):
            if self.on(cmd):
                ops.append((w, lambda cmd=cmd: ("command", cmd)))
        ops.append((2, lambda: ("command", "integrity-check")))
        if self.on("few_rows", "train"):
            ops.append((2, lambda: ("few_rows", r.randint(1, 6), r.choice(["optimize", "none"]),
                                    self.rand_vec() if self.kind == "vec" else None)))
        if self.on("reopen"):
            damages = ["none"]
            if self.on("cache_delete"):
                damages.append("delete")
            if self.on("cache_damage"):
                damages += ["flip", "flip", "truncate"]
            # where: a fraction of the file, or bytes before its end (the last list's data)
            ops.append((2 + 2 * self.on("cache_damage"), lambda: (
                "reopen", r.choice(damages), r.random() if r.random() < 0.5 else -r.randint(1, 64))))
        if self.on("reader"):
            ops.append((4, lambda: ("reader",) + self.query()[1:]))
        if self.on("attach"):
            ops += [(1, lambda: ("attach",)), (1, lambda: ("detach",)),
                    (3, lambda: ("aux_insert", self.rowid()) + self.row_values())]
        if self.on("info_fn"):
            names = ["v"] + (["main.v"] if self.on("schema_names") else [])
            names += ["aux.v"] if self.on("attach", "attach_fn") else []
            ops.append((1 + 2 * self.on("attach_fn"), lambda: ("info", r.choice(names))))
        ops += [(10, self.query), (1, lambda: ("scan", self.filt()))]
        total = sum(w for w, _ in ops)
        x = r.uniform(0, total)
        for w, build in ops:
            x -= w
            if x <= 0:
                return build()
        return ops[-1][1]()

    def sequence(self):
        seq = [("journal", self.rng.choice(["delete", "wal"]))]
        if self.on("dml", "bulk"):  # enough rows to train early
            seq.append(("fill", TRAIN_MIN + 20, self.rng.randint(0, 99)))
        while len(seq) < self.length:
            if self.on("txn", "dml") and self.rng.random() < 0.3:
                seq += self.txn_block()
            elif self.on("reopen", "cache_damage") and self.rng.random() < 0.1:
                seq += self.restart_with_damage()
            elif self.on("attach", "attach_fn") and self.rng.random() < 0.1:
                seq += [("attach",), ("aux_insert", self.rowid()) + self.row_values(),
                        ("info", self.rng.choice(["v", "aux.v"])), self.query()]
            else:
                seq.append(self.op())
        return seq

    def restart_with_damage(self):
        """Reopen and query (the snapshot is loaded and the cache file written), then reopen
        with the cache file damaged."""
        r = self.rng
        where = r.random() if r.random() < 0.5 else -r.randint(1, 64)
        return [("reopen", "none", 0), self.query(),
                ("reopen", r.choice(["flip", "flip", "truncate"]), where)]

    def txn_block(self):
        """A short transaction: a few writes, maybe a command and a query, COMMIT or ROLLBACK.
        Half of the rolled-back ones are retried at once with other values and committed, as
        applications do (the retry then repeats the change-log positions of the rolled-back
        one)."""
        r = self.rng
        n_updates = r.randint(0, 2)
        train = self.on("cmd_in_txn", "train") and r.random() < 0.6
        check = r.random() < 0.7
        block = self.block_ops(n_updates, train, check, r.choice(["commit", "rollback"]))
        if block[-1] == ("rollback",) and r.random() < 0.5:
            block += self.block_ops(n_updates, train, check, "commit")
        return block

    def block_ops(self, n_updates, train, check, end):
        r = self.rng
        block = [("begin",)]
        block += [("update", r.randint(1, 5)) + self.row_values() for _ in range(n_updates)]
        if train:
            block.append(("command", "train"))
        if self.on("txn", "savepoint") and r.random() < 0.3:
            block += [("savepoint", "p"), ("update", r.randint(1, 5)) + self.row_values(),
                      self.query(), ("rollback_to", "p")]
        if check:
            block.append(self.query() if r.random() < 0.5 else ("command", "integrity-check"))
        block.append((end,))
        return block


# ---- execution on the clip table and the oracle ----

class Runner:
    """Runs a sequence; self.log holds the steps as Python source lines of a repro."""

    def __init__(self, workdir, kind):
        self.dir = pathlib.Path(workdir)
        self.kind = kind
        self.path = str(self.dir / "t.db")
        self.aux_path = str(self.dir / "aux.db")
        self.log = []
        self.db = self.db2 = None
        self.oracle = connect(":memory:")
        self.oracle.execute(f"ATTACH {sql_str(str(self.dir / 'oracle-main.db'))} AS o")
        self.oracle.execute(f"ATTACH {sql_str(str(self.dir / 'oracle-aux.db'))} AS oaux")
        self.oracle2 = None
        self.areas = set(AREAS)
        self.in_txn = False
        self.savepoints = []
        self.attached = False
        self.aux_created = False
        self.journal = "delete"

    # the repro log
    def note(self, line):
        self.log.append(line)

    def clip_exec(self, sql, db="db"):
        self.note(f"run({db}, {sql!r})")
        conn = self.db if db == "db" else self.db2
        return conn.execute(sql).fetchall()

    def table_sql(self, name):
        cols = "album TEXT, name TEXT COLLATE NOCASE"
        if self.kind == "model":
            return (f"CREATE VIRTUAL TABLE {name} USING clip(index='IVF{NLIST},{ENCODING}', "
                    f"nprobe={NLIST}, autotrain=off, {cols})")
        return (f"CREATE VIRTUAL TABLE {name} USING clip(dims={DIMS}, index='IVF{NLIST},{ENCODING}', "
                f"nprobe={NLIST}, autotrain=off, {cols})")

    def setup(self):
        self.open()
        self.clip_exec(self.table_sql("v"))
        self.clip_exec("CREATE TABLE meta(id INTEGER PRIMARY KEY, tag TEXT)")
        rows = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
                "INSERT INTO meta SELECT i, CASE i % 3 WHEN 0 THEN 'x' WHEN 1 THEN 'y' END FROM n")
        self.clip_exec(rows)
        for schema in ("o", "oaux"):
            self.oracle.execute(f"CREATE TABLE {schema}.v(rowid INTEGER PRIMARY KEY, "
                                "embedding BLOB, album TEXT, name TEXT COLLATE NOCASE, "
                                "text TEXT, image TEXT)")
        self.oracle.execute("CREATE TABLE o.meta(id INTEGER PRIMARY KEY, tag TEXT)")
        self.oracle.execute(rows.replace("INTO meta", "INTO o.meta"))

    def op_journal(self, mode):
        if not self.in_txn:
            self.journal = mode
            self.clip_exec(f"PRAGMA journal_mode={mode}")

    def open(self):
        self.db = connect(self.path)
        self.note(f"db = connect({self.path!r})")
        if self.journal == "wal":
            self.clip_exec("PRAGMA journal_mode=wal")

    def close(self):
        for c in (self.db, self.db2):
            if c is not None:
                c.close()
        self.db = self.db2 = None
        if self.oracle2 is not None:
            self.oracle2.close()
            self.oracle2 = None
        self.oracle.close()

    # values
    def embedding_sql(self, src):
        """(SQL for the clip table's columns, SQL for the oracle's embedding column)."""
        kind, val = src
        if kind == "vec":
            return {"embedding": sql_vec(val)}, sql_vec(val)
        if kind == "text":
            return {"text": sql_str(val)}, f"clip_embed_text({sql_str(val)})"
        path = str(DEMO_DIR / val)
        return {"image": sql_str(path)}, f"clip_embed_image({sql_str(path)})"

    def row_sqls(self, rowid, src, album, name):
        cols, emb = self.embedding_sql(src)
        cols = dict(cols, album=sql_str(album), name=sql_str(name))
        ocols = {"embedding": emb, "album": sql_str(album), "name": sql_str(name)}
        if "text" in cols:
            ocols["text"] = cols["text"]
        if "image" in cols:
            ocols["image"] = cols["image"]
        if rowid is not None:
            cols = dict(rowid=str(rowid), **cols)
            ocols = dict(rowid=str(rowid), **ocols)
        return cols, ocols

    def both(self, clip_sql, oracle_sql, check):
        """Runs a write on both; both must fail or both succeed."""
        clip_err = oracle_err = None
        try:
            self.clip_exec(clip_sql)
        except sqlite3.Error as e:
            clip_err = str(e)
        try:
            self.oracle.execute(oracle_sql)
        except sqlite3.Error as e:
            oracle_err = str(e)
        if (clip_err is None) != (oracle_err is None):
            raise Failure(check, f"clip: {clip_err or 'ok'}; oracle: {oracle_err or 'ok'}")
        return clip_err

    @staticmethod
    def insert_sql(verb, table, cols):
        return f"{verb} INTO {table}({', '.join(cols)}) VALUES({', '.join(cols.values())})"

    # operations
    def run_op(self, op):
        getattr(self, "op_" + op[0])(*op[1:])

    def op_insert(self, rowid, src, album, name, verb="INSERT", schema="main"):
        cols, ocols = self.row_sqls(rowid, src, album, name)
        osch = "o" if schema == "main" else "oaux"
        self.both(self.insert_sql(verb, f"{schema}.v", cols),
                  self.insert_sql(verb, f"{osch}.v", ocols), verb.lower())

    def op_insert_auto(self, src, album, name):
        cols, ocols = self.row_sqls(None, src, album, name)
        self.both(self.insert_sql("INSERT", "v", cols), "SELECT 1", "insert_auto")
        rowid = self.db.execute("SELECT last_insert_rowid()").fetchone()[0]
        ocols = dict(rowid=str(rowid), **ocols)
        self.oracle.execute(self.insert_sql("INSERT", "o.v", ocols))

    def op_upsert(self, rowid, src, album, name):
        self.op_insert(rowid, src, album, name, verb="INSERT OR REPLACE")

    def op_aux_insert(self, rowid, src, album, name):
        if self.attached:
            self.op_insert(rowid, src, album, name, schema="aux")

    def op_bulk(self, rows):
        sqls = [self.row_sqls(*row) for row in rows]
        keys = set().union(*[set(c) for c, _ in sqls])
        okeys = set().union(*[set(o) for _, o in sqls])
        order = [k for k in ("rowid", "image", "text", "embedding", "album", "name") if k in keys]
        oorder = [k for k in ("rowid", "image", "text", "embedding", "album", "name") if k in okeys]
        vals = ", ".join("(" + ", ".join(c.get(k, "NULL") for k in order) + ")" for c, _ in sqls)
        ovals = ", ".join("(" + ", ".join(o.get(k, "NULL") for k in oorder) + ")" for _, o in sqls)
        self.both(f"INSERT OR REPLACE INTO v({', '.join(order)}) VALUES {vals}",
                  f"INSERT OR REPLACE INTO o.v({', '.join(oorder)}) VALUES {ovals}", "bulk")

    def op_fill(self, n, s):
        """Rows 1..n from one INSERT ... SELECT (vectors, or texts of model tables)."""
        head = f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) "
        album = f"CASE (i + {s}) % 4 WHEN 0 THEN 'a' WHEN 1 THEN 'Beach' WHEN 2 THEN 'b' END"
        name = f"CASE (i * 7 + {s}) % 5 WHEN 0 THEN 'alice' WHEN 1 THEN 'Alice' " \
               "WHEN 2 THEN 'bob' " \
               "WHEN 3 THEN 'BOB' END"
        if self.kind == "model":
            text = "CASE i % 6 " + " ".join(f"WHEN {j} THEN {sql_str(t)}"
                                          for j, t in enumerate(TEXTS)) + " END"
            clip = f"INSERT INTO v(rowid, text, album, name) SELECT i, {text}, {album}, {name}"
            oracle = (f"INSERT INTO o.v(rowid, text, embedding, album, name) SELECT i, {text}, "
                      f"clip_embed_text({text}), {album}, {name}")
        else:
            vec = (f"clip_vec_from_json(json_array((i * 37 + {s}) % 101 - 50, (i * 53) % 97 - 48, "
                   f"(i * 71 + {s}) % 89 - 44, (i * 13) % 83 - 40.5))")
            clip = f"INSERT INTO v(rowid, embedding, album, name) SELECT i, {vec}, {album}, {name}"
            oracle = clip.replace("INTO v(", "INTO o.v(")
        self.both(head + clip + " FROM n", head + oracle + " FROM n", "fill")

    def op_update(self, rowid, src, album, name):
        cols, ocols = self.row_sqls(None, src, album, name)
        if self.kind == "model":  # a model row's embedding always follows its text / image
            ocols.setdefault("text", "NULL")
            ocols.setdefault("image", "NULL")
            cols.setdefault("text", "NULL")
            cols.setdefault("image", "NULL")
            if "image" in cols and cols["image"] != "NULL":
                cols.pop("text")
                cols["text"] = "NULL"
        sets = ", ".join(f"{k} = {v}" for k, v in cols.items())
        osets = ", ".join(f"{k} = {v}" for k, v in ocols.items())
        self.both(f"UPDATE v SET {sets} WHERE rowid = {rowid}",
                  f"UPDATE o.v SET {osets} WHERE rowid = {rowid}", "update")

    def op_update_cols(self, rowid, album, name):
        sets = f"album = {sql_str(album)}, name = {sql_str(name)}"
        self.both(f"UPDATE v SET {sets} WHERE rowid = {rowid}",
                  f"UPDATE o.v SET {sets} WHERE rowid = {rowid}", "update_cols")

    def op_delete(self, rowid):
        self.both(f"DELETE FROM v WHERE rowid = {rowid}",
                  f"DELETE FROM o.v WHERE rowid = {rowid}", "delete")

    def op_delete_where(self, filt):
        self.both(f"DELETE FROM v WHERE {filt}", f"DELETE FROM o.v WHERE {filt}", "delete_where")

    def op_move(self, old, new):
        self.both(f"UPDATE v SET rowid = {new} WHERE rowid = {old}",
                  f"UPDATE o.v SET rowid = {new} WHERE rowid = {old}", "move")

    def op_begin(self):
        if not self.in_txn:
            self.both("BEGIN", "BEGIN", "begin")
            self.in_txn = True

    def op_commit(self):
        if self.in_txn:
            self.both("COMMIT", "COMMIT", "commit")
            self.in_txn = False
            self.savepoints = []

    def op_rollback(self):
        if self.in_txn:
            self.both("ROLLBACK", "ROLLBACK", "rollback")
            self.in_txn = False
            self.savepoints = []

    def op_savepoint(self, name):
        if self.in_txn:
            self.both(f"SAVEPOINT {name}", f"SAVEPOINT {name}", "savepoint")
            self.savepoints.append(name)

    def op_rollback_to(self, name):
        if name in self.savepoints:
            self.both(f"ROLLBACK TO {name}", f"ROLLBACK TO {name}", "rollback_to")
            del self.savepoints[len(self.savepoints) - self.savepoints[::-1].index(name):]

    def op_release(self, name):
        if name in self.savepoints:
            self.both(f"RELEASE {name}", f"RELEASE {name}", "release")
            del self.savepoints[len(self.savepoints) - 1 - self.savepoints[::-1].index(name):]

    def op_command(self, cmd, schema="main"):
        if self.in_txn and "cmd_in_txn" not in self.areas:
            return
        count = self.oracle.execute("SELECT count(*) FROM o.v").fetchone()[0]
        try:
            self.run_command(cmd, schema)
        except sqlite3.Error as e:
            # training needs at least nlist rows; any other failure is a finding
            if not (cmd == "train" and count < TRAIN_MIN and "too few" in str(e)):
                raise Failure(cmd, f"failed: {e} ({count} rows)")

    def run_command(self, cmd, schema="main"):
        """A command; integrity-check may report a cache file this tester damaged (once: the
        report removes the file, so the check right after it must pass)."""
        sql = f"INSERT INTO {schema}.v(v) VALUES('{cmd}')"
        try:
            self.clip_exec(sql)
        except sqlite3.Error as e:
            damaged = getattr(self, "cache_damaged", False) and schema == "main"
            if cmd != "integrity-check" or not damaged or "cache file" not in str(e):
                raise
            self.note(f"# integrity-check reported the damaged cache file: {e}")
            self.clip_exec(sql)
        if cmd == "integrity-check" and schema == "main" and not self.in_txn:
            self.cache_damaged = False  # (inside a transaction the file is not the snapshot's)

    def op_few_rows(self, keep, then, qvec=None):
        """Trains on the current rows, deletes all but `keep`, optionally optimizes; then a
        query with k = keep (also with nprobe = 1 when that area is on)."""
        if self.in_txn:
            return
        self.op_command("train")
        ids = [r[0] for r in self.oracle.execute("SELECT rowid FROM o.v ORDER BY rowid")]
        for rowid in ids[keep:]:
            self.op_delete(rowid)
        if then == "optimize":
            self.op_command("optimize")
        forms = [("knn",)] + ([("knn_np1",)] if "low_nprobe" in self.areas else [])
        if self.kind == "model":
            q = ("text", TEXTS[0])
        else:
            q = ("vec", qvec or (1, 0, 0, 0))
        for form in forms:
            self.op_query(form, "main", q, keep, None, 1.0, None)

    def cache_file(self):
        return pathlib.Path(self.path + "-clip-v.idx")

    def op_reopen(self, damage, where):
        if self.in_txn:
            return
        self.db.close()
        if self.db2 is not None:
            self.db2.close()
            self.db2 = None
            self.note("db2.close()")
        self.note("db.close()")
        self.attached = False
        cache = self.cache_file()
        if damage in ("flip", "truncate") and cache.exists():
            self.cache_damaged = True
        if damage != "none" and cache.exists():
            size = cache.stat().st_size
            if damage == "delete":
                cache.unlink()
                self.note(f"os.unlink({str(cache)!r})")
            elif damage == "truncate":
                n = max(0, int(size * where) if where >= 0 else size + int(where))
                os.truncate(cache, n)
                self.note(f"os.truncate({str(cache)!r}, {n})")
            else:  # where: a fraction of the size, or (negative) bytes before the end
                pos = max(0, min(size - 1, int(size * where) if where >= 0 else size + int(where)))
                with open(cache, "r+b") as f:
                    f.seek(pos)
                    b = f.read(1)
                    f.seek(pos)
                    f.write(bytes([b[0] ^ 0x10]))
                self.note(f"flip_byte({str(cache)!r}, {pos})")
        self.open()

    def op_attach(self):
        if self.attached or self.in_txn:
            return
        self.clip_exec(f"ATTACH {sql_str(self.aux_path)} AS aux")
        self.attached = True
        if not self.aux_created:
            self.clip_exec(self.table_sql("aux.v"))
            self.aux_created = True

    def op_detach(self):
        if self.attached and not self.in_txn:
            self.clip_exec("DETACH aux")
            self.attached = False

    def op_info(self, name):
        if self.attached and "attach_fn" not in self.areas:
            return
        schema = "aux" if name == "aux.v" else "main"
        if schema == "aux" and not self.attached:
            return
        osch = "oaux" if schema == "aux" else "o"
        want = self.oracle.execute(f"SELECT count(*) FROM {osch}.v").fetchone()[0]
        try:
            got = json.loads(self.clip_exec(f"SELECT clip_index_info({sql_str(name)})")[0][0])
        except sqlite3.Error as e:
            raise Failure("info", f"clip_index_info({name!r}) failed: {e}")
        self.note(f"# expected count {want}")
        if got.get("count") != want:
            raise Failure("info", f"clip_index_info({name!r}) count {got.get('count')}, "
                          f"expected {want}")

    def op_scan(self, filt):
        where = f" WHERE {filt}" if filt else ""
        cols = "rowid, album, name"
        got = self.clip_exec(f"SELECT {cols} FROM v{where} ORDER BY rowid")
        want = self.oracle.execute(f"SELECT {cols} FROM o.v{where} ORDER BY rowid").fetchall()
        if got != want:
            self.note(f"# expected {want}")
            extra = sorted(set(got) - set(want))
            missing = sorted(set(want) - set(got))
            raise Failure("scan", f"SELECT{where}: extra rows {extra}, missing rows {missing}")

    # queries
    def query_operand(self, q):
        kind, val = q
        if kind == "text":
            emb = self.oracle.execute("SELECT clip_embed_text(?)", (val,)).fetchone()[0]
            return sql_str(val), emb
        if kind == "vecn":
            val = tuple(round(x, 3) for x in val)
        return sql_vec(val), np.array(val, dtype=np.float64).astype(np.float32).tobytes()

    def oracle_candidates(self, osch, filt, conn=None):
        conn = conn or self.oracle
        where = f" WHERE {filt}" if filt else ""
        return conn.execute(f"SELECT rowid, embedding FROM {osch}.v{where}").fetchall()

    @staticmethod
    def brute_force(qblob, rows):
        """[(distance, rowid)] sorted, distance = 1 - cosine as the extension defines it."""
        if not rows:
            return []
        q = np.frombuffer(qblob, dtype=np.float32).astype(np.float64)
        q /= np.linalg.norm(q)
        m = np.frombuffer(b"".join(e for _, e in rows), dtype=np.float32).reshape(len(rows), -1)
        m = m.astype(np.float64)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        d = 1.0 - m @ q
        return sorted(zip(d.tolist(), [r for r, _ in rows]))

    def op_query(self, form, schema, q, k, filt, dist, tag, reader=False):
        if schema == "aux" and not self.attached:
            schema = "main"
        if reader and schema == "aux":
            return
        osch = "o" if schema == "main" else "oaux"
        operand, qblob = self.query_operand(q)
        oconn = self.oracle
        db = "db"
        if reader:
            db = "db2"
            if self.db2 is None:
                self.db2 = connect(self.path)
                self.note(f"db2 = connect({self.path!r})")
            if self.oracle2 is None:
                self.oracle2 = connect(str(self.dir / "oracle-main.db"))
                self.oracle2.execute("ATTACH ':memory:' AS o2")
            oconn = self.oracle2
            osch = "main"
        cands = self.brute_force(qblob, self.oracle_candidates(osch, filt, oconn))
        name = f"{schema}.v" if schema == "aux" else "v"
        fand = f" AND {filt}" if filt else ""
        kind = form[0]
        if kind == "knn":
            sql = f"SELECT rowid, distance FROM {name} WHERE v MATCH {operand} AND k = {k}{fand}"
            want = cands[:k]
        elif kind == "knn_np1":  # fewer lists probed: not exact, but k rows when k exist
            sql = (f"SELECT rowid, distance FROM {name} WHERE v MATCH {operand} AND k = {k} "
                   f"AND nprobe = 1{fand}")
            got = self.exec_or_rewrite(sql, db)
            self.note(f"# expected {min(k, len(cands))} rows")
            if len(got) != min(k, len(cands)):
                raise Failure("low_nprobe", f"{sql}: {len(got)} rows, expected "
                              f"{min(k, len(cands))} (of {len(cands)} candidates)")
            self.compare_rows(sql, got, [(d, r) for r, d in got], cands, "low_nprobe", True)
            return
        elif kind == "knn_dist":
            sql = (f"SELECT rowid, distance FROM {name} WHERE v MATCH {operand} AND k = {k} "
                   f"AND distance < {dist}{fand}")
            want = [c for c in cands[:k] if c[0] < dist]
        elif kind == "range":
            sql = (f"SELECT rowid, distance FROM {name} WHERE v MATCH {operand} "
                   f"AND distance < {dist}{fand}")
            want = [c for c in cands if c[0] < dist]
        elif kind == "limit":
            sql = (f"SELECT rowid, distance FROM {name} WHERE v MATCH {operand}{fand} "
                   f"ORDER BY distance LIMIT {k}")
            want = cands[:k]
        elif kind == "search_fn":
            if self.attached and "attach_fn" not in self.areas:
                return
            if filt:
                cands = self.brute_force(qblob, self.oracle_candidates(osch, None, oconn))
            sql = (f"SELECT rowid, distance FROM clip_search({sql_str(name)}, {operand}, {k}, "
                   f"{NLIST})")
            want = cands[:k]
        else:
            return self.join_query(form[1], name, operand, k, filt, tag, cands, db)
        self.compare(sql, db, want, cands, exact_len=True)

    def join_query(self, jform, name, operand, k, filt, tag, cands, db):
        if name != "v":
            return
        meta = dict(self.oracle.execute("SELECT id, tag FROM o.meta").fetchall())
        tcond = " AND m.tag = " + sql_str(tag) if tag else ""
        fand = " AND " + re.sub(r"\b(rowid|album|name)\b", r"v.\1", filt) if filt else ""
        knn = f"v MATCH {operand} AND k = {k}{fand}"
        cols = "v.rowid, v.distance, m.tag"
        if jform == "inner":
            sql = f"SELECT {cols} FROM v JOIN meta m ON m.id = v.rowid WHERE {knn}{tcond}"
        elif jform == "cross_v":
            sql = f"SELECT {cols} FROM v CROSS JOIN meta m WHERE {knn} AND m.id = v.rowid{tcond}"
        elif jform == "cross_m":
            sql = f"SELECT {cols} FROM meta m CROSS JOIN v WHERE {knn} AND m.id = v.rowid{tcond}"
        else:
            sql = f"SELECT {cols} FROM v LEFT JOIN meta m ON m.id = v.rowid WHERE {knn}"
            tag = None
        try:
            got = self.clip_exec(sql, db)
        except sqlite3.Error as e:
            if not (filt and " OR " in filt and "cannot be applied before the k" in str(e)):
                raise Failure("join_" + jform, f"{sql}: {e}")
            rewrite = sql.replace(fand, f" AND v.rowid IN (SELECT rowid FROM v WHERE {filt})")
            self.note(f"# refused as documented; the rewrite it names: {rewrite}")
            try:
                got = self.clip_exec(rewrite, db)
            except sqlite3.Error as e2:
                raise Failure("join_" + jform, f"{rewrite}: {e2}")
            sql = rewrite
        if jform in ("inner", "cross_m"):
            self.check_join_per_row(sql, got, cands, meta, tag)
        else:
            self.check_join(sql, got, cands, k, meta, tag, jform == "left")

    def check_join_per_row(self, sql, got, cands, meta, tag):
        """The clip table as the inner loop takes rowid = m.id from each outer row, so its k
        nearest are chosen per row of meta (SQL reference: what k means in a join): every meta
        row passing its filter whose clip row passes the clip filters comes back once."""
        want = sorted((r, d) for d, r in cands if r in meta and (tag is None or meta[r] == tag))
        have = sorted((r, d) for r, d, _ in got)
        self.note(f"# expected {[(r, round(d, 4)) for r, d in want]}")
        if [r for r, _ in have] != [r for r, _ in want] or \
                any(abs(a - b) > TOL for (_, a), (_, b) in zip(have, want)):
            raise Failure("join", f"{sql}\n  got {have}\n  expected {want}")

    def check_join(self, sql, got, cands, k, meta, tag, left):
        """The k nearest (ties at the cut: any of them), then the join and its filter."""
        def passes(r):
            return (meta.get(r) == tag or (tag is None and r in meta)) if r in meta else left

        check = "join"
        cut = cands[k - 1][0] if len(cands) >= k else float("inf")
        dist_of = {r: d for d, r in cands}
        sure = {r for d, r in cands[:k] if d < cut - TOL and passes(r)}
        ties = [r for d, r in cands if abs(d - cut) <= TOL]
        slots = k - sum(1 for d, _ in cands[:k] if d < cut - TOL)
        shown = f"{sql}\n  got {[(r, round(d, 4), t) for r, d, t in got]}\n  expected " \
                f"{[(r, round(d, 4), meta.get(r)) for d, r in cands[:k] if passes(r)]}"
        self.note(f"# expected {[(r, round(d, 4)) for d, r in cands[:k] if passes(r)]}")
        rows = [r for r, _, _ in got]
        if len(set(rows)) != len(rows):
            raise Failure(check, f"duplicate rowids: {shown}")
        for r, d, t in got:
            if r not in dist_of or abs(dist_of[r] - d) > TOL or not passes(r) or \
                    t != meta.get(r) or (r not in sure and r not in ties):
                raise Failure(check, f"row {r} should not be there: {shown}")
        if sure - set(rows):
            raise Failure(check, f"missing rows {sorted(sure - set(rows))}: {shown}")
        n_ties = sum(1 for r in rows if r in ties and r not in sure)
        failing = sum(1 for r in ties if not passes(r))
        if cut != float("inf") and not max(0, slots - failing) <= n_ties <= slots:
            raise Failure(check, f"{len(rows)} rows: more or fewer than the top {k}: {shown}")

    def op_reader(self, form, schema, q, k, filt, dist, tag):
        if form[0] == "join":
            form = ("knn",)
        self.op_query(form, schema, q, k, filt, dist, tag, reader=True)

    def compare(self, sql, db, want, cands, exact_len):
        try:
            got = self.exec_or_rewrite(sql, db)
        except sqlite3.Error as e:
            raise Failure("query", f"{sql}: {e}")
        self.compare_rows(sql, got, want, cands, "query", exact_len)

    def exec_or_rewrite(self, sql, db):
        try:
            return self.clip_exec(sql, db)
        except sqlite3.Error as e:
            rewrite = self.or_rewrite(sql, str(e))
            if not rewrite:
                raise
            self.note(f"# refused as documented; the rewrite it names: {rewrite}")
            return self.clip_exec(rewrite, db)

    @staticmethod
    def or_rewrite(sql, error):
        """A k query whose OR filter the table refuses (it cannot apply it before the cut, the
        SQL reference says so) -> the rewrite the message names, rowid IN (SELECT ...)."""
        m = re.search(r"^(SELECT .* FROM (\S+) WHERE .* AND k = \d+.*?) AND (\(.* OR .*\))$", sql)
        if not m or "cannot be applied before the k nearest rows are chosen" not in error:
            return None
        return f"{m.group(1)} AND rowid IN (SELECT rowid FROM {m.group(2)} WHERE {m.group(3)})"

    def compare_rows(self, sql, got, want, cands, check, exact_len):
        """got: [(rowid, distance)] from the clip table; want: [(distance, rowid)] sorted."""
        dist_of = {r: d for d, r in cands}
        self.note(f"# expected {[(r, round(d, 4)) for d, r in want]}")
        shown = f"{sql}\n  got      {[(r, round(d, 4)) for r, d in got]}\n" \
                f"  expected {[(r, round(d, 4)) for d, r in want]}"
        if exact_len and len(got) != len(want):
            raise Failure(check, f"{len(got)} rows, expected {len(want)}: {shown}")
        if len(set(r for r, _ in got)) != len(got):
            raise Failure(check, f"duplicate rowids: {shown}")
        for r, d in got:
            if r not in dist_of:
                raise Failure(check, f"row {r} is not a candidate: {shown}")
            if abs(dist_of[r] - d) > TOL:
                raise Failure(check, f"row {r} distance {d}, expected {dist_of[r]}: {shown}")
        gd = sorted(d for _, d in got)
        wd = [d for d, _ in want]
        if any(abs(a - b) > TOL for a, b in zip(gd, wd)):
            raise Failure(check, f"distances differ: {shown}")
        if want:  # every row strictly closer than the cut must be there
            cut = want[-1][0]
            must = {r for d, r in want if d < cut - TOL}
            missing = must - {r for r, _ in got}
            if missing:
                raise Failure(check, f"missing rows {sorted(missing)}: {shown}")

    # the final checks
    def check_state(self):
        if self.in_txn:
            self.op_commit()
        try:
            self.run_command("integrity-check")
        except sqlite3.Error as e:
            raise Failure("integrity-check", str(e))
        self.op_scan(None)
        got = self.db.execute("SELECT rowid, embedding FROM v ORDER BY rowid").fetchall()
        want = self.oracle.execute("SELECT rowid, embedding FROM o.v ORDER BY rowid").fetchall()
        for (r1, e1), (r2, e2) in zip(got, want):
            a = np.frombuffer(e1, dtype=np.float32)
            b = np.frombuffer(e2, dtype=np.float32).astype(np.float64)
            b = b / np.linalg.norm(b)
            if r1 != r2 or len(a) != len(b) or np.abs(a - b).max() > TOL:
                raise Failure("embedding", f"row {r1}: stored vector differs from the oracle's")
        # in a fresh connection: sampled rows find themselves at distance 0, and a k covering
        # the table returns every row at its exact distance
        self.op_reopen("none", 0)
        if not want:
            return
        m = np.stack([np.frombuffer(e, dtype=np.float32).astype(np.float64) for _, e in want])
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        ids = [r for r, _ in want]
        for i in range(0, len(want), max(1, len(want) // 25)):
            rowid, emb = want[i]
            at0 = {ids[j] for j in np.nonzero(1.0 - m @ m[i] < TOL)[0]}
            got = self.db.execute("SELECT rowid, distance FROM v WHERE v MATCH ? AND k = 1",
                                  (emb,)).fetchall()
            if len(got) != 1 or got[0][0] not in at0 or got[0][1] > TOL:
                self.note(f"run(db, 'SELECT rowid, distance FROM v WHERE v MATCH "
                          f"(SELECT embedding FROM v WHERE rowid = {rowid}) AND k = 1')")
                raise Failure("self_match", f"row {rowid}'s own vector found {got}")
        dist = dict(zip(ids, (1.0 - m @ m[0]).tolist()))
        sql = f"SELECT rowid, distance FROM v WHERE v MATCH ? AND k = {len(ids)}"
        got = self.db.execute(sql, (want[0][1],)).fetchall()
        self.note(f"run(db, 'SELECT rowid, distance FROM v WHERE v MATCH (SELECT embedding FROM "
                  f"v WHERE rowid = {ids[0]}) AND k = {len(ids)}')")
        if sorted(r for r, _ in got) != ids or any(abs(dist[r] - d) > TOL for r, d in got):
            raise Failure("full_k", f"a k covering the table: {len(got)} rows of {len(ids)}, "
                          "or wrong distances")


def run_sequence(seq, kind="vec", keep=None, areas=None):
    """Runs seq in a fresh directory; returns None or (Failure, repro log, directory)."""
    # tmpfs when there is one: fsync is then free and thousands of sequences fit in CI
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    workdir = tempfile.mkdtemp(prefix="difftest-", dir=shm)
    runner = Runner(workdir, kind)
    runner.areas = areas if areas is not None else set(AREAS)
    try:
        runner.setup()
        for op in seq:
            runner.run_op(op)
        runner.check_state()
        return None
    except Failure as f:
        return f, runner.log, workdir
    finally:
        runner.close()
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


def sequence_for(seed, areas, kind="vec", length=None):
    rng = random.Random(seed * 7 + 1)
    n = length or rng.choice([4, 8, 12, 20, 30])
    return Generator(seed, areas, kind, n).sequence()


def minimize(seq, kind, check, areas=None):
    """Delta debugging: the shortest sublist found that still fails at the same check."""
    def fails(s):
        r = run_sequence(s, kind, areas=areas)
        return r is not None and r[0].check == check

    n = 2
    while len(seq) >= 2:
        chunk = max(1, len(seq) // n)
        reduced = False
        for i in range(0, len(seq), chunk):
            cand = seq[:i] + seq[i + chunk:]
            if fails(cand):
                seq, n, reduced = cand, max(n - 1, 2), True
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(seq), n * 2)
    # fewer rows in fills, then bulk inserts row by row
    for i, op in enumerate(seq):
        while op[0] == "fill" and op[1] > 1:
            cand = seq[:i] + [("fill", op[1] // 2, op[2])] + seq[i + 1:]
            if not fails(cand):
                break
            seq, op = cand, cand[i]
    for i, op in enumerate(seq):
        if op[0] == "bulk":
            rows = list(op[1])
            j = 0
            while j < len(rows) and len(rows) > 1:
                cand = seq[:i] + [("bulk", rows[:j] + rows[j + 1:])] + seq[i + 1:]
                if fails(cand):
                    rows = rows[:j] + rows[j + 1:]
                    seq = cand
                else:
                    j += 1
    return seq


def repro_source(failure, log, workdir):
    """A runnable Python script replaying the log in a fresh directory."""
    fresh = "/tmp/difftest-repro"
    lines = [
        "# difftest repro (failed check: %s)" % failure.check,
        "import os, shutil, sqlite3",
        f"EXT = {EXT!r}",
        f"shutil.rmtree({fresh!r}, ignore_errors=True); os.makedirs({fresh!r})",
        "def connect(p):",
        "    db = sqlite3.connect(p, isolation_level=None); db.enable_load_extension(True)",
        "    db.load_extension(EXT); return db",
        "def run(db, sql):",
        "    rows = db.execute(sql).fetchall(); print(sql[:200], '->', rows); return rows",
        "def flip_byte(p, pos):",
        "    with open(p, 'r+b') as f: f.seek(pos); b = f.read(1); f.seek(pos); "
        "f.write(bytes([b[0] ^ 0x10]))",
    ]
    lines += [line.replace(str(workdir), fresh) for line in log]
    lines.append("# FAILED: " + failure.message.replace("\n", "\n# "))
    return "\n".join(lines)


def parse_seeds(text):
    if ".." in text:
        a, b = text.split("..")
        return range(int(a), int(b) + 1)
    return [int(x) for x in text.split(",")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", help="A..B or a,b,c")
    ap.add_argument("--seconds", type=float, help="run random seeds for this long")
    ap.add_argument("--kind", choices=["vec", "model"], default="vec")
    ap.add_argument("--exclude", default="", help="areas to switch off (comma-separated)")
    ap.add_argument("--only-areas", default="", help="run only these areas")
    ap.add_argument("--length", type=int, help="operations per sequence")
    ap.add_argument("--minimize", action="store_true", help="minimise failures, print repros")
    ap.add_argument("--list-areas", action="store_true")
    ap.add_argument("--encoding", choices=["Flat", "SQ8"], default=ENCODING,
                    help="the IVF tables' encoding (SQ8: 8-bit codes, candidates re-ranked "
                         "exactly; also DIFFTEST_ENCODING)")
    args = ap.parse_args(argv)
    globals()["ENCODING"] = args.encoding
    if args.list_areas:
        for a, d in AREAS.items():
            print(f"{a:14} {d}")
        return 0
    areas = set(args.only_areas.split(",")) if args.only_areas else set(AREAS)
    areas -= set(x for x in args.exclude.split(",") if x)
    if args.seeds:
        seeds = iter(parse_seeds(args.seeds))
    else:
        seeds = iter(random.Random().sample(range(10**6, 10**9), 10**6))
    deadline = time.monotonic() + args.seconds if args.seconds else None
    runs = fails = 0
    by_check = {}
    for seed in seeds:
        if deadline and time.monotonic() > deadline:
            break
        seq = sequence_for(seed, areas, args.kind, args.length)
        runs += 1
        r = run_sequence(seq, args.kind, areas=areas)
        if r is None:
            continue
        fails += 1
        by_check.setdefault(r[0].check, []).append(seed)
        print(f"seed {seed}: FAIL {r[0].check}: {r[0].message.splitlines()[0]}", flush=True)
        if args.minimize:
            small = minimize(seq, args.kind, r[0].check, areas)
            r2 = run_sequence(small, args.kind, areas=areas)
            print(f"--- minimized to {len(small)} ops: {small!r}")
            print(repro_source(*r2) if r2 else "(minimized sequence passed?)")
    print(f"{runs} sequences, {fails} failed; by check: "
          + ", ".join(f"{c}: {s[:8]}" for c, s in sorted(by_check.items())))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
