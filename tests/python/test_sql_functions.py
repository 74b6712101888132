"""Vector helper functions against numpy, and every kind of bad input: each a clear SQL error
that leaves the connection and the data intact."""
import json
import sqlite3

import numpy as np
import pytest


def blob(v):
    return np.asarray(v, dtype="<f4").tobytes()


def vec(b):
    return np.frombuffer(b, dtype="<f4")


def one(db, sql, *params):
    return db.execute(sql, params).fetchone()[0]


def test_vector_helpers_match_numpy(conn):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 32)).astype(np.float32)
    np.testing.assert_allclose(vec(one(conn, "select clip_vec_add(?, ?)", blob(a), blob(b))), a + b,
                               rtol=1e-6)
    np.testing.assert_allclose(vec(one(conn, "select clip_vec_sub(?, ?)", blob(a), blob(b))), a - b,
                               rtol=1e-6)
    np.testing.assert_allclose(vec(one(conn, "select clip_vec_scale(?, 2.5)", blob(a))), a * 2.5,
                               rtol=1e-6)
    np.testing.assert_allclose(vec(one(conn, "select clip_vec_normalize(?)", blob(a))),
                               a / np.linalg.norm(a), rtol=1e-5)
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert abs(one(conn, "select clip_similarity(?, ?)", blob(a), blob(b)) - cos) < 1e-6
    as_json = json.loads(one(conn, "select clip_vec_to_json(?)", blob(a)))
    np.testing.assert_array_equal(np.array(as_json, dtype=np.float32), a)
    back = one(conn, "select clip_vec_from_json(clip_vec_to_json(?))", blob(a))
    assert back == blob(a)


def test_vec_json_round_trip_keeps_negative_zero(conn):
    a = np.array([-0.0, 0.0, -1.5, -0.0], dtype=np.float32)
    back = one(conn, "select clip_vec_from_json(clip_vec_to_json(?))", blob(a))
    assert back == blob(a)  # bit for bit: -0.0 keeps its sign


def test_beach_minus_people(conn):
    q = one(conn, "select clip_vec_normalize(clip_vec_sub(clip_embed_text('a red star'), "
                  "clip_vec_scale(clip_embed_text('a star'), 0.5)))")
    a = vec(one(conn, "select clip_embed_text('a red star')")).astype(np.float64)
    b = vec(one(conn, "select clip_embed_text('a star')")).astype(np.float64)
    want = (a - 0.5 * b) / np.linalg.norm(a - 0.5 * b)
    np.testing.assert_allclose(vec(q), want, rtol=0, atol=1e-6)


def test_direct_only_functions_refused_in_views(conn):
    conn.execute("create view v as select clip_embed_image('/etc/passwd') as e")
    with pytest.raises(sqlite3.OperationalError, match="unsafe use of clip_embed_image"):
        conn.execute("select * from v").fetchall()


BAD_FUNCTION_CALLS = [
    ("select clip_embed_text(NULL)", "must be TEXT"),
    ("select clip_embed_text('')", "empty"),
    ("select clip_embed_text(42)", "must be TEXT"),
    ("select clip_embed_text('x', '/no/such/model')", "no such directory"),
    ("select clip_embed_text('x', 'nobody/nothing')", "not in the cache"),
    ("select clip_embed_text('x', 7)", "model argument must be TEXT"),
    ("select clip_embed_image(NULL)", "NULL"),
    ("select clip_embed_image('')", "empty"),
    ("select clip_embed_image(3.5)", "not a number"),
    ("select clip_embed_image(x'')", "empty"),
    ("select clip_embed_image(x'00010203')", "clip_embed_image"),
    ("select clip_embed_image('/no/such/file.png')", "clip_embed_image"),
    ("select clip_similarity(x'0000803f', x'0000803f00000000')", "differ in size"),
    ("select clip_similarity('text', x'0000803f')", "vector BLOB"),
    ("select clip_similarity(x'000080', x'000080')", "multiple|1 to"),
    ("select clip_similarity(x'0000c07f', x'0000803f')", "not finite"),
    ("select clip_similarity(x'00000000', x'0000803f')", "zero vector"),
    ("select clip_vec_normalize(x'0000000000000000')", "zero"),
    ("select clip_vec_scale(x'0000803f', 'two')", "finite number"),
    ("select clip_vec_scale(x'ffff7f7f', 1e30)", "not finite"),
    ("select clip_vec_add(NULL, x'0000803f')", "NULL"),
    ("select clip_vec_from_json('[1, \"a\"]')", "finite numbers"),
    ("select clip_vec_from_json('[]')", "non-empty"),
    ("select clip_vec_from_json('{nope')", "clip_vec_from_json"),
    ("select clip_vec_to_json(x'0000c07f')", "not finite"),
    ("select clip_classify('x.png')", "at least one label"),
    ("select clip_classify(NULL, 'a')", "NULL"),
    ("select clip_classify(x'0000803f', '')", "label 1 must be non-empty"),
    ("select clip_classify_templates(x'00', 'not json', 'a')", "JSON array"),
    ("select clip_classify_templates(x'00', '[\"no hole\"]', 'a')", "contain {}"),
    ("select clip_model('x', '/no/such/dir')", "no such directory"),
    ("select clip_model('', '/tmp')", "non-empty"),
]


@pytest.mark.parametrize("sql,message", BAD_FUNCTION_CALLS)
def test_bad_function_arguments(conn, sql, message):
    with pytest.raises(sqlite3.Error, match=message):
        conn.execute(sql).fetchall()
    assert conn.execute("select 1").fetchone()[0] == 1


def test_bad_image_files(conn, bad_dir):
    for f in sorted(bad_dir.iterdir()):
        with pytest.raises(sqlite3.OperationalError, match="clip_embed_image"):
            conn.execute("select clip_embed_image(?)", (str(f),)).fetchall()
        with pytest.raises(sqlite3.OperationalError, match="clip_embed_image"):
            conn.execute("select clip_embed_image(?)", (f.read_bytes(),)).fetchall()


@pytest.fixture
def table(conn, model_dir):
    conn.execute(f"create virtual table p using clip(model='{model_dir}', tag TEXT)")
    conn.execute("insert into p(text, tag) values ('a red star', 'ok')")
    conn.commit()
    return conn


BAD_TABLE_STATEMENTS = [
    ("insert into p(tag) values ('nothing')", "needs an image, a text or an embedding"),
    ("insert into p(embedding) values (x'0000803f')", "64 float32 values"),
    ("insert into p(embedding) values ('text')", "64 float32 values"),
    ("insert into p(embedding) values (zeroblob(256))", "zero vector"),
    ("insert into p(embedding) values (cast(replace(hex(zeroblob(64)), '00', '0000C07F') as blob))",
     "64 float32|not finite"),
    ("insert into p(text) values ('')", "empty"),
    ("insert into p(text) values (x'00')", "text must be TEXT"),
    ("insert into p(image) values (12)", "image must be"),
    ("insert into p(image) values (x'89504e470d0a1a0a')", "p:"),
    ("insert into p(image) values ('/no/such.jpg')", "p:"),
    ("insert into p(rowid, text) values ('abc', 'x')", "rowid must be an integer|datatype mismatch"),
    ("select * from p where p match NULL and k = 1", "MATCH query is NULL"),
    ("select * from p where p match 5 and k = 1", "not a number"),
    ("select * from p where p match '' and k = 1", "empty"),
    ("select * from p where p match x'0102' and k = 1", "MATCH query"),
    ("select * from p where p match 'x' and k = 0", "k must be an integer"),
    ("select * from p where p match 'x' and k = 'ten'", "k must be an integer"),
    ("select * from p where p match 'x' and k = 1 and nprobe = -1", "nprobe must be"),
    ("select * from p where p match 'x' and distance < -1", "distance bound"),
    ("select * from p where k = 3", "apply to MATCH"),
    ("insert into p(p) values (1)", "command must be TEXT"),
    ("insert into p(p) values ('drop')", "unknown command"),
    ("create virtual table q using clip(model='/no/such/model')", "no such directory"),
    ("create virtual table q using clip(dims=0)", "dims=0"),
    ("create virtual table q using clip(dims=abc)", "dims=abc"),
    ("create virtual table q using clip(dims=8, index='NotAFactory')", "index=NotAFactory"),
    ("create virtual table q using clip(dims=8, colour=red)", "unknown option"),
    ("create virtual table q using clip(dims=8, autotrain=maybe)", "expected on or off"),
    ("create virtual table q using clip(model='')", "model= is empty"),
    ("create virtual table q using clip(dims=8, text TEXT)", "reserved"),
    ("create virtual table q using clip(dims=8, a TEXT, A INT)", "duplicate"),
    ("create virtual table q using clip(dims=8, a TEXT DEFAULT 'x')", "only a type name"),
    (f"create virtual table q using clip(dims=65, model='{{model}}')", "dims=65"),
]


def shadow_rows(db):
    """Every row of every table in the database file (the clip table's shadow tables)."""
    names = [n for n, in db.execute("select name from sqlite_schema where type = 'table' "
                                    "and sql not like 'CREATE VIRTUAL%' order by name")]
    return {n: db.execute(f'select * from "{n}" order by 1').fetchall() for n in names}


@pytest.mark.parametrize("sql,message", BAD_TABLE_STATEMENTS)
def test_bad_table_input_changes_nothing(table, model_dir, sql, message):
    db = table
    before = db.execute("select rowid, text, tag, embedding from p").fetchall()
    shadow_before = shadow_rows(db)
    with pytest.raises(sqlite3.Error, match=message):
        db.execute(sql.replace("{model}", model_dir)).fetchall()
    # before the ROLLBACK: a failed statement leaves no partial write in the open transaction
    assert db.execute("select rowid, text, tag, embedding from p").fetchall() == before
    assert shadow_rows(db) == shadow_before
    db.rollback()
    assert db.execute("select rowid, text, tag, embedding from p").fetchall() == before
    db.execute("insert into p(p) values ('integrity-check')")
    assert db.execute("select text from p where p match 'a red star' and k = 1").fetchone()[0] \
        == "a red star"


def test_dims_table_refuses_text(conn):
    conn.execute("create virtual table d using clip(dims=4)")
    with pytest.raises(sqlite3.OperationalError, match="precomputed vectors only"):
        conn.execute("insert into d(text) values ('hello')")
    with pytest.raises(sqlite3.OperationalError, match="has 8 bytes"):
        conn.execute("select * from d where d match x'0000803f0000803f' and k = 1").fetchall()


def test_normalize_of_denormal_vectors_is_unit_length(conn):
    """Found by fuzz_vec_blobs: a float reciprocal of a tiny norm lost the unit length."""
    v = np.full(64, 1e-44, dtype="<f4")
    v[3] = 3e-45
    out, = conn.execute("SELECT clip_vec_normalize(?)", (v.tobytes(),)).fetchone()
    assert abs(np.linalg.norm(np.frombuffer(out, dtype="<f4").astype(np.float64)) - 1) < 1e-6
