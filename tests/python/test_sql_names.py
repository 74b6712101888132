"""Table names, declarations and write paths of the clip extension that used to go silently wrong.

- Names given to clip_index_info / clip_search resolve exactly as SQLite resolves a table name in
  a statement (the oracle: `SELECT count(*) FROM <name>` and ordinary tables holding the same
  vectors, searched by brute force).
- Names that would collide with the table's own columns are refused at CREATE and RENAME.
- CREATE refuses column constraints and repeated options; a command row sets nothing else.
- UPDATE of text keeps a supplied embedding; loading the extension twice keeps clip_model();
  a damaged model (NaN weights) gives errors, never NaN vectors.
- Triggers and views stored in a database cannot make the table read a path or fetch a URL
  (a loopback HTTP server must see no request).
"""
import http.server
import json
import os
import shutil
import sqlite3
import struct
import threading

import numpy as np
import pytest

from conftest import connect


def vec(*xs):
    return np.asarray(xs, dtype=np.float32).tobytes()


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def brute_force(vectors, query, k):
    """rowids of the k nearest (cosine) of {rowid: vector}, exact."""
    q = unit(query)
    scored = sorted(vectors, key=lambda r: (-float(np.dot(unit(vectors[r]), q)), r))
    return scored[:k]


def index_count(db, name):
    return json.loads(db.execute("SELECT clip_index_info(?)", (name,)).fetchone()[0])["count"]


def search(db, name, query, k=10):
    rows = db.execute("SELECT rowid, metadata FROM clip_search(?, ?, ?)", (name, query, k))
    return [(r, json.loads(m)) for r, m in rows]


# ---- names resolve like SQLite's ----

def fill(db, schema, col, vectors):
    """A clip table `photos` and an ordinary table `plain` holding the same vectors."""
    db.execute(f"CREATE VIRTUAL TABLE {schema}.photos USING clip(dims=3, {col} TEXT)")
    db.execute(f"CREATE TABLE {schema}.plain(id INTEGER PRIMARY KEY, v BLOB)")
    for rowid, v in vectors.items():
        db.execute(f"INSERT INTO {schema}.photos(rowid, embedding, {col}) VALUES (?, ?, ?)",
                   (rowid, vec(*v), schema))
        db.execute(f"INSERT INTO {schema}.plain VALUES (?, ?)", (rowid, vec(*v)))


def plain_vectors(db, schema):
    return {r: np.frombuffer(v, np.float32) for r, v in
            db.execute(f"SELECT id, v FROM {schema}.plain")}


def check_resolves_like_sqlite(db, name, schema, col):
    """clip_* functions given `name` use the table a statement naming it uses (in `schema`)."""
    assert index_count(db, name) == db.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    assert index_count(db, name) == db.execute(f"SELECT count(*) FROM {schema}.plain").fetchone()[0]
    query = vec(1, 0.5, 0.25)
    got = search(db, name, query, 10)
    want = brute_force(plain_vectors(db, schema), [1, 0.5, 0.25], 10)
    assert [r for r, _ in got] == want
    assert all(meta == {col: schema} for _, meta in got)


def test_same_name_in_main_attached_and_temp(ext_path, tmp_path):
    db = connect(tmp_path / "main.db", ext_path)
    fill(db, "main", "mcol", {1: [1, 0, 0]})
    db.execute("ATTACH ? AS aux", (str(tmp_path / "aux.db"),))
    fill(db, "aux", "acol", {10: [0, 1, 0], 11: [1, 1, 0], 12: [0, 0, 1]})
    check_resolves_like_sqlite(db, "photos", "main", "mcol")
    check_resolves_like_sqlite(db, "aux.photos", "aux", "acol")
    check_resolves_like_sqlite(db, "main.photos", "main", "mcol")
    check_resolves_like_sqlite(db, "AUX.Photos", "aux", "acol")
    # A temp table of the same name comes first, as in SQL.
    fill(db, "temp", "tcol", {20: [1, 1, 1], 21: [1, 0, 1]})
    check_resolves_like_sqlite(db, "photos", "temp", "tcol")
    check_resolves_like_sqlite(db, "main.photos", "main", "mcol")
    db.execute("DROP TABLE temp.photos")
    db.execute("DETACH aux")
    check_resolves_like_sqlite(db, "photos", "main", "mcol")
    with pytest.raises(sqlite3.OperationalError, match="no clip table"):
        db.execute("SELECT clip_index_info('aux.photos')").fetchone()
    # Another file attached under the same schema name: its own table, not a stale one.
    db.execute("ATTACH ? AS aux", (str(tmp_path / "aux2.db"),))
    fill(db, "aux", "other", {30: [0, 1, 1]})
    check_resolves_like_sqlite(db, "aux.photos", "aux", "other")
    db.close()


def test_unqualified_name_only_in_attached_schemas_takes_the_first(ext_path, tmp_path):
    db = connect(tmp_path / "main.db", ext_path)
    for schema, rows in [("one", {1: [1, 0, 0], 2: [0, 1, 0]}), ("two", {3: [0, 0, 1]})]:
        db.execute(f"ATTACH ? AS {schema}", (str(tmp_path / f"{schema}.db"),))
        fill(db, schema, "c", rows)
    check_resolves_like_sqlite(db, "photos", "one", "c")
    check_resolves_like_sqlite(db, "two.photos", "two", "c")
    db.execute("DETACH one")
    check_resolves_like_sqlite(db, "photos", "two", "c")
    db.close()


def test_schema_name_with_a_dot(ext_path, tmp_path):
    db = connect(tmp_path / "main.db", ext_path)
    fill(db, "main", "c", {1: [1, 0, 0]})
    db.execute('ATTACH ? AS "x.y"', (str(tmp_path / "xy.db"),))
    fill(db, '"x.y"', "c", {5: [0, 1, 0], 6: [0, 0, 1]})
    assert index_count(db, "x.y.photos") == 2
    assert [r for r, _ in search(db, "x.y.photos", vec(0, 0, 1), 2)] == [6, 5]
    check_resolves_like_sqlite(db, "photos", "main", "c")
    db.close()


def test_name_of_an_ordinary_table_is_not_a_clip_table(ext_path, tmp_path):
    """temp.photos (ordinary) hides main.photos (clip) from an unqualified name, as in SQL."""
    db = connect(tmp_path / "main.db", ext_path)
    fill(db, "main", "mcol", {1: [1, 0, 0]})
    db.execute("CREATE TEMP TABLE photos(x)")
    with pytest.raises(sqlite3.OperationalError, match="not a clip table"):
        db.execute("SELECT * FROM clip_search('photos', ?)", (vec(1, 0, 0),)).fetchall()
    check_resolves_like_sqlite(db, "main.photos", "main", "mcol")
    db.close()


# ---- names that collide with the table's columns ----

RESERVED = ["image", "text", "embedding", "distance", "k", "nprobe", "K", "Image"]


@pytest.mark.parametrize("to", RESERVED + ["album"])
def test_rename_to_a_column_name_is_refused(ext_path, tmp_path, to):
    db = connect(tmp_path / "t.db", ext_path)
    db.execute("CREATE VIRTUAL TABLE t USING clip(dims=2, album TEXT)")
    db.execute("CREATE TABLE plain(id INTEGER PRIMARY KEY, album TEXT)")
    for i in range(1, 4):
        db.execute("INSERT INTO t(rowid, embedding, album) VALUES (?, ?, 'a')", (i, vec(1, i)))
        db.execute("INSERT INTO plain VALUES (?, 'a')", (i,))
    with pytest.raises(sqlite3.OperationalError, match=f'cannot be named "{to}"'):
        db.execute(f'ALTER TABLE t RENAME TO "{to}"')
    # The table is intact and can still be renamed and dropped.
    assert db.execute("SELECT rowid, album FROM t ORDER BY rowid").fetchall() == \
        db.execute("SELECT id, album FROM plain ORDER BY id").fetchall()
    db.execute("ALTER TABLE t RENAME TO t2")
    assert db.execute("SELECT count(*) FROM t2").fetchone() == (3,)
    db.execute("DROP TABLE t2")
    db.close()


@pytest.mark.parametrize("name", RESERVED)
def test_create_with_a_column_name_is_a_clear_error(ext_path, tmp_path, name):
    db = connect(tmp_path / "t.db", ext_path)
    with pytest.raises(sqlite3.OperationalError, match=f'cannot be named "{name}"'):
        db.execute(f'CREATE VIRTUAL TABLE "{name}" USING clip(dims=2)')
    with pytest.raises(sqlite3.OperationalError, match='"Album" is reserved'):
        db.execute('CREATE VIRTUAL TABLE album USING clip(dims=2, Album TEXT)')
    assert db.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    db.close()


# ---- declarations and commands ----

@pytest.mark.parametrize("column", ["a TEXT NOT NULL", "a INTEGER DEFAULT 5", "a TEXT UNIQUE",
                                    "a INT PRIMARY KEY", "a CHECK(a)", "a TEXT HIDDEN",
                                    "a TEXT COLLATE NOCASE NOT NULL"])
def test_column_constraints_are_refused(ext_path, tmp_path, column):
    db = connect(tmp_path / "t.db", ext_path)
    with pytest.raises(sqlite3.OperationalError, match="column constraints are not supported"):
        db.execute(f"CREATE VIRTUAL TABLE t USING clip(dims=2, {column})")
    assert db.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    db.close()


def test_type_names_and_collate_are_accepted(ext_path, tmp_path):
    db = connect(tmp_path / "t.db", ext_path)
    db.execute("CREATE VIRTUAL TABLE t USING clip(dims=2, a VARCHAR(10), b TEXT COLLATE NOCASE, "
               "c UNSIGNED BIG INT)")
    db.execute("INSERT INTO t(embedding, a, b, c) VALUES (?, 'x', 'y', 3)", (vec(1, 0),))
    assert db.execute("SELECT a, b, c FROM t").fetchall() == [("x", "y", 3)]
    db.close()


@pytest.mark.parametrize("options", ["dims=4, dims=8", "dims=4, DIMS=4",
                                     "dims=4, nlist=2, nlist=3", "dims=4, nprobe=1, nprobe=1",
                                     "dims=4, autotrain=on, autotrain=off",
                                     "dims=4, index=flat, index=auto"])
def test_option_given_twice_is_refused(ext_path, tmp_path, options):
    db = connect(tmp_path / "t.db", ext_path)
    with pytest.raises(sqlite3.OperationalError, match="given more than once"):
        db.execute(f"CREATE VIRTUAL TABLE t USING clip({options})")
    db.close()


@pytest.mark.parametrize("columns,values", [("t, text", "'optimize', 'x'"),
                                            ("t, a", "'optimize', 'x'"),
                                            ("t, rowid", "'optimize', 5"),
                                            ("t, embedding", "'rebuild', x'0000803f00000000'")])
def test_command_with_other_columns_is_refused(ext_path, tmp_path, columns, values):
    db = connect(tmp_path / "t.db", ext_path)
    db.execute("CREATE VIRTUAL TABLE t USING clip(dims=2, a TEXT)")
    with pytest.raises(sqlite3.OperationalError, match="sets no other column"):
        db.execute(f"INSERT INTO t({columns}) VALUES ({values})")
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
    db.execute("INSERT INTO t(t) VALUES ('optimize')")
    db.close()


# ---- UPDATE of text and a supplied embedding ----

def test_update_text_keeps_a_supplied_embedding(conn):
    conn.execute("CREATE VIRTUAL TABLE t USING clip()")
    dims = len(conn.execute("SELECT clip_embed_text('x')").fetchone()[0]) // 4
    mine = np.zeros(dims, np.float32)
    mine[0] = 1
    conn.execute("INSERT INTO t(rowid, text, embedding) VALUES (1, 'red circle', ?)",
                 (mine.tobytes(),))
    conn.execute("INSERT INTO t(rowid, embedding) VALUES (2, ?)", (mine.tobytes(),))
    conn.execute("INSERT INTO t(rowid, text) VALUES (3, 'red circle')")
    conn.execute("INSERT INTO t(rowid, text) VALUES (4, 'red circle')")
    conn.execute("UPDATE t SET text = 'blue square' WHERE rowid IN (1, 2, 3)")
    conn.execute("UPDATE t SET text = 'green star', embedding = ? WHERE rowid = 4",
                 (mine.tobytes(),))
    got = {r: e for r, e in conn.execute("SELECT rowid, embedding FROM t")}
    blue, = conn.execute("SELECT clip_embed_text('blue square')").fetchone()
    assert got[1] == mine.tobytes() and got[2] == mine.tobytes()  # supplied: kept
    assert np.allclose(np.frombuffer(got[3], np.float32), np.frombuffer(blue, np.float32),
                       atol=1e-5)  # from its text: re-embedded
    assert got[4] == mine.tobytes()  # embedding set too: it wins
    assert conn.execute("SELECT rowid, text FROM t ORDER BY rowid").fetchall() == \
        [(1, "blue square"), (2, "blue square"), (3, "blue square"), (4, "green star")]


def test_update_text_of_a_vectors_only_table(ext_path, tmp_path):
    db = connect(tmp_path / "t.db", ext_path)
    db.execute("CREATE VIRTUAL TABLE t USING clip(dims=2)")
    db.execute("INSERT INTO t(rowid, embedding) VALUES (1, ?)", (vec(1, 0),))
    db.execute("UPDATE t SET text = 'caption' WHERE rowid = 1")
    assert db.execute("SELECT text, embedding FROM t").fetchall() == [("caption", vec(1, 0))]
    db.close()


# ---- loading twice, damaged models ----

def test_loading_twice_keeps_registered_models(ext_path, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDB_MODEL", str(tmp_path / "no-such-model"))
    db = connect(tmp_path / "t.db", ext_path)
    db.execute("SELECT clip_model('default', ?)", (model_dir,))
    db.execute("SELECT clip_model('mine', ?)", (model_dir,))
    before, = db.execute("SELECT clip_embed_text('a red circle')").fetchone()
    db.execute("CREATE VIRTUAL TABLE t USING clip()")
    db.execute("INSERT INTO t(rowid, text) VALUES (1, 'a red circle')")
    db.load_extension(ext_path)
    assert db.execute("SELECT clip_embed_text('a red circle')").fetchone() == (before,)
    assert db.execute("SELECT clip_embed_text('a red circle', 'mine')").fetchone() == (before,)
    db.execute("INSERT INTO t(rowid, text) VALUES (2, 'a red circle')")
    assert db.execute("SELECT embedding FROM t ORDER BY rowid").fetchall() == [(before,)] * 2
    db.load_extension(ext_path)
    db.close()


def damaged_model(model_dir, dest, value=float("nan")):
    """A copy of the model whose projection weights (float16) are all `value`."""
    shutil.copytree(model_dir, dest)
    path = dest / "model.safetensors"
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    for name in ("text_projection.weight", "visual_projection.weight"):
        t = header[name]
        assert t["dtype"] == "F16"
        lo, hi = t["data_offsets"]
        fill = np.full((hi - lo) // 2, value, dtype=np.float16).tobytes()
        data[8 + n + lo:8 + n + hi] = fill
    path.write_bytes(bytes(data))
    return str(dest)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_damaged_model_gives_errors_not_nan_vectors(ext_path, model_dir, demo_dir, tmp_path,
                                                   value):
    bad = damaged_model(model_dir, tmp_path / "bad-model", value)
    image = str(sorted(demo_dir.glob("*.jpg"))[0])
    db = connect(tmp_path / "t.db", ext_path)
    db.execute("SELECT clip_model('bad', ?)", (bad,))
    for sql, args in [("SELECT clip_embed_text('a red circle', 'bad')", ()),
                      ("SELECT clip_embed_image(?, 'bad')", (image,)),
                      ("SELECT clip_classify_templates(?, '[\"{}\"]', 'x')", (vec(*[1] * 64),))]:
        if "classify" in sql:
            db.execute("SELECT clip_model('default', ?)", (bad,))
        with pytest.raises(sqlite3.OperationalError, match="non-finite"):
            db.execute(sql, args).fetchone()
    db.execute("CREATE VIRTUAL TABLE t USING clip(model='bad')")
    for column, value_ in [("text", "a red circle"), ("image", image)]:
        with pytest.raises(sqlite3.OperationalError, match="non-finite"):
            db.execute(f"INSERT INTO t({column}) VALUES (?)", (value_,))
    with pytest.raises(sqlite3.OperationalError, match="non-finite"):
        db.execute("SELECT rowid FROM t WHERE t MATCH 'a red circle' AND k = 1").fetchall()
    assert db.execute("SELECT count(*) FROM t_vectors").fetchone() == (0,)
    db.close()


# ---- paths and URLs from triggers and views ----

class LoggingServer:
    """An HTTP server on 127.0.0.1 that serves one image and logs every request."""

    def __init__(self, body):
        log = self.log = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                log.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def server(demo_dir, monkeypatch):
    for k in [k for k in os.environ if "proxy" in k.lower()]:
        monkeypatch.delenv(k)
    s = LoggingServer(sorted(demo_dir.glob("*.jpg"))[0].read_bytes())
    yield s
    s.close()


def hostile_db(path, ext_path, model_dir, options=""):
    """A database as someone else could ship it: a clip table, and triggers and a view that
    write whatever `notes` receive into its image column."""
    db = connect(path, ext_path)
    db.execute("SELECT clip_model('default', ?)", (model_dir,))
    db.execute(f"CREATE VIRTUAL TABLE photos USING clip({options})")
    db.execute("CREATE TABLE notes(body)")
    db.execute("CREATE TRIGGER leak AFTER INSERT ON notes "
               "BEGIN INSERT INTO photos(image) VALUES (new.body); END")
    db.execute("CREATE VIEW inbox AS SELECT image FROM photos")
    db.execute("CREATE TRIGGER inbox_insert INSTEAD OF INSERT ON inbox "
               "BEGIN INSERT INTO photos(image) VALUES (new.image); END")
    db.close()


def test_triggers_and_views_cannot_fetch_urls_or_read_paths(ext_path, model_dir, demo_dir,
                                                            tmp_path, monkeypatch, server):
    monkeypatch.setenv("CLIPDB_MODEL", model_dir)
    hostile_db(tmp_path / "shipped.db", ext_path, model_dir)
    db = connect(tmp_path / "shipped.db", ext_path)
    image = sorted(demo_dir.glob("*.jpg"))[0]
    for source in [f"{server.url}/leak?secret=1", str(image)]:
        with pytest.raises(sqlite3.OperationalError, match="unsafe use of virtual table"):
            db.execute("INSERT INTO notes VALUES (?)", (source,))
        with pytest.raises(sqlite3.OperationalError, match="unsafe use of virtual table"):
            db.execute("INSERT INTO inbox(image) VALUES (?)", (source,))
    with pytest.raises(sqlite3.OperationalError, match="unsafe use of virtual table"):
        db.execute("SELECT count(*) FROM inbox").fetchone()
    assert server.log == []
    assert db.execute("SELECT count(*) FROM photos").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    # The application's own statements still may, and the server sees exactly its request.
    db.execute("INSERT INTO photos(image) VALUES (?)", (f"{server.url}/mine.jpg",))
    db.execute("INSERT INTO photos(image) VALUES (?)", (str(image),))
    db.execute("INSERT INTO photos(image) VALUES (?)", (image.read_bytes(),))
    assert server.log == ["/mine.jpg"]
    embeddings = [e for e, in db.execute("SELECT embedding FROM photos ORDER BY rowid")]
    assert embeddings[0] == embeddings[1] == embeddings[2]
    # A TEMP view is the application's own: it may read the table.
    db.execute("CREATE TEMP VIEW mine AS SELECT rowid FROM photos")
    assert db.execute("SELECT count(*) FROM mine").fetchone() == (3,)
    db.close()


def test_image_paths_off_tables_take_bytes_from_triggers_and_never_paths(
        ext_path, model_dir, demo_dir, tmp_path, monkeypatch, server):
    """image_paths=off: the table is usable from triggers and views, and refuses every TEXT
    image, wherever it comes from (a shipped database may set the option, never lift it)."""
    monkeypatch.setenv("CLIPDB_MODEL", model_dir)
    hostile_db(tmp_path / "shipped.db", ext_path, model_dir, "image_paths=off")
    db = connect(tmp_path / "shipped.db", ext_path)
    image = sorted(demo_dir.glob("*.jpg"))[0]
    for source in [f"{server.url}/leak?secret=1", str(image)]:
        with pytest.raises(sqlite3.OperationalError, match="image_paths=off"):
            db.execute("INSERT INTO notes VALUES (?)", (source,))
        with pytest.raises(sqlite3.OperationalError, match="image_paths=off"):
            db.execute("INSERT INTO inbox(image) VALUES (?)", (source,))
        with pytest.raises(sqlite3.OperationalError, match="image_paths=off"):
            db.execute("INSERT INTO photos(image) VALUES (?)", (source,))
    assert server.log == []
    db.execute("INSERT INTO notes VALUES (?)", (image.read_bytes(),))
    db.execute("INSERT INTO inbox(image) VALUES (?)", (image.read_bytes(),))
    assert db.execute("SELECT count(*) FROM inbox").fetchone() == (2,)
    assert db.execute("SELECT count(*) FROM notes").fetchone() == (1,)
    direct = np.frombuffer(db.execute("SELECT clip_embed_image(?)", (str(image),)).fetchone()[0],
                           "<f4")
    for (e,) in db.execute("SELECT embedding FROM photos"):
        assert float(np.frombuffer(e, "<f4") @ direct) > 1 - 1e-6
    with pytest.raises(sqlite3.OperationalError, match="image_paths=yes: expected on or off"):
        db.execute("CREATE VIRTUAL TABLE other USING clip(image_paths=yes)")
    db.close()
