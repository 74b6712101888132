"""Batched embedding in the `clip` virtual table: rows inserted inside one transaction are
embedded in batches (one encoder call per 32 images / 64 texts) instead of one call per row.

References are independent of the batching code: clip_embed_image / clip_embed_text of each
source (one encoder call per item), the same rows inserted one per transaction, a second
connection, and the rows' own counts. The counters embed_batches / embedded_rows of
clip_index_info() prove that batching happened (or, after a rollback, that nothing was
embedded)."""
import json
import sqlite3

import numpy as np
import pytest

from conftest import connect

IMAGE_BATCH = 32
TEXT_BATCH = 64


@pytest.fixture
def db(ext_path, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDB_MODEL", model_dir)
    d = connect(str(tmp_path / "b.db"), ext_path)
    yield d
    d.close()


@pytest.fixture(scope="module")
def images(demo_dir):
    files = sorted(p for p in demo_dir.iterdir() if p.suffix in (".jpg", ".png", ".webp", ".gif"))
    assert len(files) > IMAGE_BATCH + 8
    return [str(p) for p in files[:IMAGE_BATCH + 8]]  # two batches: 32 + 8


TEXTS = [f"a {c} {s} on {b}" for c in ("red", "green", "blue", "black", "white")
         for s in ("circle", "square", "star", "cross", "triangle")
         for b in ("white", "black", "orange")][:TEXT_BATCH + 6]  # two batches: 64 + 6


def vec(b):
    return np.frombuffer(b, dtype="<f4")


def info(db, table="t"):
    return json.loads(db.execute("SELECT clip_index_info(?)", (table,)).fetchone()[0])


def embeddings(db, table="t"):
    return {r: vec(e) for r, e in db.execute(f"SELECT rowid, embedding FROM {table}")}


def ref_image(db, path):
    return vec(db.execute("SELECT clip_embed_image(?)", (path,)).fetchone()[0])


def ref_text(db, text):
    return vec(db.execute("SELECT clip_embed_text(?)", (text,)).fetchone()[0])


def assert_close(a, b):
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)) <= 1e-5, np.max(np.abs(a - b))


def integrity(db, table="t"):
    db.execute(f"INSERT INTO {table}({table}) VALUES('integrity-check')")


def test_bulk_images_match_single_rows_and_direct_embedding(db, images):
    db.execute("CREATE VIRTUAL TABLE t USING clip(src TEXT)")
    db.execute("CREATE VIRTUAL TABLE single USING clip(src TEXT)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO t(image, src) VALUES (?, ?)", [(p, p) for p in images])
    db.execute("COMMIT")
    for p in images:  # autocommit: one transaction, one encoder call per row
        db.execute("INSERT INTO single(image, src) VALUES (?, ?)", (p, p))
    n = len(images)
    batched = info(db, "t")
    assert batched["embedded_rows"] == n and batched["count"] == n
    assert batched["embed_batches"] == -(-n // IMAGE_BATCH) < n
    assert info(db, "single")["embed_batches"] == n
    bulk = dict(db.execute("SELECT src, embedding FROM t"))
    one = dict(db.execute("SELECT src, embedding FROM single"))
    for p in images:
        want = ref_image(db, p)
        assert_close(vec(bulk[p]), want)
        assert_close(vec(one[p]), want)
    integrity(db)


def test_bulk_texts_and_insert_select(db, images):
    db.execute("CREATE VIRTUAL TABLE t USING clip()")
    db.execute("CREATE TABLE src(path TEXT, bytes BLOB)")
    db.executemany("INSERT INTO src VALUES (?, ?)",
                   [(p, open(p, "rb").read()) for p in images])
    db.execute("BEGIN")
    db.executemany("INSERT INTO t(text) VALUES (?)", [(s,) for s in TEXTS])
    db.execute("COMMIT")
    assert info(db)["embed_batches"] == -(-len(TEXTS) // TEXT_BATCH)
    for rowid, s in enumerate(TEXTS, start=1):
        got = db.execute("SELECT embedding FROM t WHERE rowid = ?", (rowid,)).fetchone()[0]
        assert_close(vec(got), ref_text(db, s))
    # one multi-row statement, in autocommit mode and inside a transaction, paths and bytes
    before = info(db)
    db.execute("INSERT INTO t(image) SELECT path FROM src ORDER BY rowid")
    db.execute("BEGIN")
    db.execute("INSERT INTO t(image) SELECT bytes FROM src ORDER BY rowid")
    db.execute("COMMIT")
    after = info(db)
    n = len(images)
    assert after["embedded_rows"] - before["embedded_rows"] == 2 * n
    assert after["embed_batches"] - before["embed_batches"] == 2 * -(-n // IMAGE_BATCH)
    rows = db.execute("SELECT rowid, embedding FROM t WHERE rowid > ? ORDER BY rowid",
                      (len(TEXTS),)).fetchall()
    assert len(rows) == 2 * n
    for i, (_, e) in enumerate(rows):
        assert_close(vec(e), ref_image(db, images[i % n]))
    integrity(db)


def test_pending_rows_are_visible_inside_the_transaction(db, images):
    db.execute("CREATE VIRTUAL TABLE t USING clip()")
    db.execute("BEGIN")
    db.executemany("INSERT INTO t(image) VALUES (?)", [(p,) for p in images[:10]])
    # queued, not embedded yet: the shadow table has no vectors so far
    assert db.execute("SELECT count(*) FROM t_vectors").fetchone()[0] == 0
    q = db.execute("SELECT clip_embed_image(?)", (images[3],)).fetchone()[0]
    top = db.execute("SELECT rowid, distance FROM t WHERE t MATCH ? AND k = 1", (q,)).fetchall()
    assert top[0][0] == 4 and top[0][1] < 1e-5
    assert db.execute("SELECT count(*) FROM t_vectors").fetchone()[0] == 10
    db.executemany("INSERT INTO t(text) VALUES (?)", [(s,) for s in TEXTS[:5]])
    got = db.execute("SELECT embedding FROM t WHERE rowid = 12").fetchone()[0]
    assert_close(vec(got), ref_text(db, TEXTS[1]))
    db.execute("INSERT INTO t(image) VALUES (?)", (images[20],))
    res = db.execute("SELECT rowid FROM clip_search('t', ?, 1)",
                     (db.execute("SELECT clip_embed_image(?)", (images[20],)).fetchone()[0],))
    assert res.fetchall() == [(16,)]
    db.execute("COMMIT")
    assert info(db)["count"] == 16
    integrity(db)


def test_rollback_leaves_no_trace(db, images):
    db.execute("CREATE VIRTUAL TABLE t USING clip()")
    db.executemany("INSERT INTO t(image) VALUES (?)", [(p,) for p in images[:5]])
    q = db.execute("SELECT clip_embed_text('a red star')").fetchone()[0]
    knn = "SELECT rowid, distance FROM t WHERE t MATCH ? AND k = 20"
    before_knn = db.execute(knn, (q,)).fetchall()
    before = info(db)
    db.execute("BEGIN")
    db.executemany("INSERT INTO t(image) VALUES (?)", [(p,) for p in images[5:25]])
    db.executemany("INSERT INTO t(text) VALUES (?)", [(s,) for s in TEXTS[:7]])
    db.execute("ROLLBACK")
    assert info(db)["embedded_rows"] == before["embedded_rows"]  # nothing was embedded
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 5
    assert db.execute(knn, (q,)).fetchall() == before_knn
    integrity(db)
    assert info(db)["count"] == 5


def test_rollback_to_savepoint_and_release(db, images):
    db.execute("CREATE VIRTUAL TABLE t USING clip(tag TEXT)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO t(image, tag) VALUES (?, 'kept')", [(p,) for p in images[:3]])
    db.execute("SAVEPOINT a")
    db.executemany("INSERT INTO t(image, tag) VALUES (?, 'gone')", [(p,) for p in images[3:9]])
    db.executemany("INSERT INTO t(text, tag) VALUES (?, 'gone')", [(s,) for s in TEXTS[:4]])
    db.execute("DELETE FROM t WHERE rowid = 1")  # a change to an older row, undone as well
    db.execute("ROLLBACK TO a")
    db.execute("RELEASE a")
    db.execute("SAVEPOINT b")
    db.executemany("INSERT INTO t(image, tag) VALUES (?, 'released')", [(p,) for p in images[9:12]])
    db.execute("RELEASE b")
    db.execute("COMMIT")
    tags = db.execute("SELECT tag, count(*) FROM t GROUP BY tag ORDER BY tag").fetchall()
    assert tags == [("kept", 3), ("released", 3)]
    integrity(db)
    assert info(db)["count"] == 6
    got = embeddings(db)
    for rowid, e in got.items():
        path = db.execute("SELECT image FROM t WHERE rowid = ?", (rowid,)).fetchone()[0]
        assert_close(e, ref_image(db, path))
    # a rolled-back image is not found; each kept one finds itself
    for p in images[3:12]:
        q = db.execute("SELECT clip_embed_image(?)", (p,)).fetchone()[0]
        top = db.execute("SELECT image, distance FROM t WHERE t MATCH ? AND k = 1",
                         (q,)).fetchone()
        assert (top[0] == p) == (p in images[9:12])


def test_failing_row_in_multi_row_insert_rolls_back_the_statement(db, images, bad_dir):
    db.execute("CREATE VIRTUAL TABLE t USING clip()")
    db.execute("CREATE TABLE src(i INTEGER PRIMARY KEY, path TEXT)")
    paths = images[:5] + [str(bad_dir / "truncated.jpg")] + images[5:8]
    db.executemany("INSERT INTO src(path) VALUES (?)", [(p,) for p in paths])
    db.execute("BEGIN")
    db.executemany("INSERT INTO t(image) VALUES (?)", [(p,) for p in images[10:13]])
    with pytest.raises(sqlite3.Error):
        db.execute("INSERT INTO t(image) SELECT path FROM src ORDER BY i")
    db.execute("COMMIT")
    assert [r[0] for r in db.execute("SELECT image FROM t ORDER BY rowid")] == images[10:13]
    integrity(db)
    assert info(db)["count"] == 3


def test_bad_image_in_executemany(db, images, bad_dir):
    db.execute("CREATE VIRTUAL TABLE t USING clip()")
    rows = images[:20] + [str(bad_dir / "not-an-image.jpg")] + images[20:30]
    db.execute("BEGIN")
    with pytest.raises(sqlite3.Error, match="clip: t:"):
        db.executemany("INSERT INTO t(image) VALUES (?)", [(p,) for p in rows])
    with pytest.raises(sqlite3.Error, match="text is not valid UTF-8|UTF-8"):
        db.execute("INSERT INTO t(text) VALUES (CAST(x'ff41' AS TEXT))")
    db.execute("COMMIT")
    got = db.execute("SELECT image, embedding FROM t ORDER BY rowid").fetchall()
    assert [g[0] for g in got] == images[:20]
    for p, e in got:
        assert_close(vec(e), ref_image(db, p))
    integrity(db)


def test_second_connection_sees_committed_rows(db, images, ext_path, tmp_path):
    db.execute("CREATE VIRTUAL TABLE t USING clip()")
    other = connect(str(tmp_path / "b.db"), ext_path)
    try:
        assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        db.execute("BEGIN")
        db.executemany("INSERT INTO t(image) VALUES (?)", [(p,) for p in images[:12]])
        assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        db.execute("COMMIT")
        assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 12
        mine = embeddings(db)
        theirs = embeddings(other)
        assert mine.keys() == theirs.keys()
        for r in mine:
            assert np.array_equal(mine[r], theirs[r])
        q = other.execute("SELECT clip_embed_image(?)", (images[7],)).fetchone()[0]
        assert other.execute("SELECT rowid FROM t WHERE t MATCH ? AND k = 1",
                             (q,)).fetchall() == [(8,)]
    finally:
        other.close()


def test_update_and_delete_of_pending_rows(db, images):
    db.execute("CREATE VIRTUAL TABLE t USING clip(tag TEXT)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO t(image, tag) VALUES (?, ?)",
                   [(p, str(i)) for i, p in enumerate(images[:6], start=1)])
    db.execute("INSERT INTO t(text, tag) VALUES ('a blue square', 't')")  # rowid 7
    db.execute("DELETE FROM t WHERE rowid = 3")  # still queued: dropped without embedding
    assert db.execute("SELECT count(*) FROM t_vectors").fetchone()[0] == 0
    db.execute("INSERT OR REPLACE INTO t(rowid, image, tag) VALUES (2, ?, 'replaced')",
               (images[31],))
    db.execute("UPDATE t SET image = ? WHERE rowid = 6", (images[30],))
    db.execute("UPDATE t SET rowid = 100 WHERE rowid = 4")
    db.execute("UPDATE t SET tag = 'five' WHERE rowid = 5")
    db.execute("UPDATE t SET text = 'a green star' WHERE rowid = 7")
    db.execute("COMMIT")
    got = {r: (img, txt, tag, vec(e)) for r, img, txt, tag, e in
           db.execute("SELECT rowid, image, text, tag, embedding FROM t")}
    assert sorted(got) == [1, 2, 5, 6, 7, 100]
    want = {1: images[0], 2: images[31], 5: images[4], 6: images[30], 100: images[3]}
    for r, p in want.items():
        assert got[r][0] == p
        assert_close(got[r][3], ref_image(db, p))
    assert got[5][2] == "five" and got[2][2] == "replaced"
    assert_close(got[7][3], ref_text(db, "a green star"))
    integrity(db)
    assert info(db)["count"] == 6


def test_bulk_update_is_batched(db, images):
    db.execute("CREATE VIRTUAL TABLE t USING clip()")
    db.executemany("INSERT INTO t(text) VALUES (?)", [(s,) for s in TEXTS[:20]])
    before = info(db)
    db.execute("BEGIN")
    db.executemany("UPDATE t SET image = ? WHERE rowid = ?",
                   [(images[i], i + 1) for i in range(20)])
    db.execute("COMMIT")
    after = info(db)
    assert after["embedded_rows"] - before["embedded_rows"] == 20
    assert after["embed_batches"] - before["embed_batches"] == 1
    for rowid, e in embeddings(db).items():
        assert_close(e, ref_image(db, images[rowid - 1]))
    integrity(db)


def test_commands_and_rebuild_flush_first(db, images):
    db.execute("CREATE VIRTUAL TABLE t USING clip()")
    db.execute("BEGIN")
    db.executemany("INSERT INTO t(image) VALUES (?)", [(p,) for p in images[:8]])
    integrity(db)  # sees the queued rows' vectors
    db.executemany("INSERT INTO t(image) VALUES (?)", [(p,) for p in images[8:12]])
    db.execute("INSERT INTO t(t) VALUES('rebuild')")
    db.execute("COMMIT")
    assert info(db)["count"] == 12
    integrity(db)


def test_rebuild_embeds_rows_whose_vector_was_deleted(db, images, tmp_path):
    """Vectors deleted from the shadow table behind the table's back: integrity-check reports
    them, 'rebuild' embeds those rows again from their stored image / text (reference:
    clip_embed_image / clip_embed_text of the same sources) and KNN finds them again."""
    db.execute("CREATE VIRTUAL TABLE t USING clip()")
    db.execute("BEGIN")
    db.executemany("INSERT INTO t(image) VALUES (?)", [(p,) for p in images[:6]])
    db.executemany("INSERT INTO t(text) VALUES (?)", [(s,) for s in TEXTS[:4]])
    db.execute("COMMIT")
    rows = dict(db.execute("SELECT rowid, coalesce(image, text) FROM t"))
    lost_image, lost_text = min(rows), max(rows)
    db.execute("DELETE FROM t_vectors WHERE rowid IN (?, ?)", (lost_image, lost_text))
    with pytest.raises(sqlite3.DatabaseError, match="2 rows without a vector"):
        integrity(db)
    before = info(db)["embedded_rows"]
    db.execute("INSERT INTO t(t) VALUES('rebuild')")
    integrity(db)
    assert info(db)["embedded_rows"] == before + 2
    got = embeddings(db)
    assert_close(got[lost_image], ref_image(db, rows[lost_image]))
    assert_close(got[lost_text], ref_text(db, rows[lost_text]))
    for rowid in (lost_image, lost_text):
        hit = db.execute("SELECT rowid FROM t WHERE t MATCH ? AND k = 1",
                         (got[rowid].tobytes(),)).fetchone()[0]
        assert hit == rowid


def test_rebuild_refuses_a_row_it_cannot_embed_again(db, images, tmp_path):
    """Two lost vectors, one of a row whose image file is gone: 'rebuild' (inside a
    transaction, where no statement journal undoes a failed command) names that row and
    writes nothing, not even the vector it could have recomputed."""
    db.execute("CREATE VIRTUAL TABLE t USING clip()")
    copied = tmp_path / "copy.png"
    copied.write_bytes(open(images[0], "rb").read())
    db.execute("INSERT INTO t(text) VALUES ('a red star')")
    db.execute("INSERT INTO t(image) VALUES (?)", (images[1],))
    db.execute("INSERT INTO t(image) VALUES (?)", (str(copied),))
    gone = db.execute("SELECT max(rowid) FROM t").fetchone()[0]
    copied.unlink()
    db.execute("DELETE FROM t_vectors WHERE rowid IN (1, ?)", (gone,))
    db.execute("BEGIN")
    with pytest.raises(sqlite3.OperationalError, match=f"row {gone} has no vector"):
        db.execute("INSERT INTO t(t) VALUES('rebuild')")
    db.execute("COMMIT")
    with pytest.raises(sqlite3.DatabaseError, match="2 rows without a vector"):
        integrity(db)
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 3
    assert db.execute("SELECT count(*) FROM t_vectors").fetchone()[0] == 1
