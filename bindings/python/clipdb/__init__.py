"""clipdb: multimodal (CLIP) vector search in SQLite, used from Python's standard sqlite3 module.

The clipdb SQLite extension embeds images and texts with a CLIP model when rows are inserted and
answers text->image, image->text and image->image queries in SQL. This package finds the
extension, loads it into a ``sqlite3.Connection`` and converts vectors (little-endian float32
BLOBs) to and from numpy arrays (or ``array('f')`` without numpy).

Example: index a folder of images, search it by text, show the results::

    import pathlib
    import clipdb

    db = clipdb.connect("shapes.db", model="openai/clip-vit-base-patch32")
    db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS shapes USING clip()")
    with db:  # one transaction for the whole folder
        for path in sorted(pathlib.Path("examples/shapes").iterdir()):
            db.execute("INSERT INTO shapes(image) VALUES (?)", (str(path),))

    query = "a red circle"
    for rowid, image, distance in db.execute(
            "SELECT rowid, image, distance FROM shapes WHERE shapes MATCH ? AND k = 5", (query,)):
        print(f"{distance:.3f}  {image}")

    vector = clipdb.deserialize(db.execute("SELECT clip_embed_text(?)", (query,)).fetchone()[0])
    print(vector.shape)  # (512,) for ViT-B/32

The model is a directory in Hugging Face layout or a hub name pulled into the cache with
``clipdb model pull ORG/NAME``. Connections are not shared between threads (sqlite3's rule);
open one per thread: the extension loads each model once per process and shares it.
"""
import array
import ctypes
import math
import os
import pathlib
import sqlite3
import sys
import sysconfig

__all__ = ["connect", "load", "loadable_path", "serialize", "deserialize", "ClipdbError",
           "ExtensionNotFound", "ExtensionLoadingUnavailable"]
__version__ = "0.1.0"

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
_SUFFIX = ".dylib" if sys.platform == "darwin" else ".so"
_FILE = "clipdb" + _SUFFIX

try:
    import numpy as _np
except ImportError:  # numpy is optional
    _np = None


class ClipdbError(RuntimeError):
    """Base class of this package's errors."""


class ExtensionNotFound(ClipdbError, FileNotFoundError):
    """The compiled extension was not found in any of the places searched."""


class ExtensionLoadingUnavailable(ClipdbError):
    """This interpreter's sqlite3 module cannot load SQLite extensions."""


def _search_path():
    """(description, path) pairs in the order loadable_path() tries them."""
    places = []
    build_dir = os.environ.get("CLIPDB_BUILD_DIR")
    if build_dir:
        places.append(("$CLIPDB_BUILD_DIR", pathlib.Path(build_dir) / "sqlite-ext" / _FILE))
    # The source checkout this package lives in: bindings/python/clipdb -> <repo>/build.
    places.append(("build tree", _PACKAGE_DIR.parent.parent.parent / "build" / "sqlite-ext" / _FILE))
    places.append(("package", _PACKAGE_DIR / _FILE))
    system_dirs = [pathlib.Path(sys.prefix) / "lib", pathlib.Path("/usr/local/lib"),
                   pathlib.Path("/usr/lib")]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        system_dirs[2:2] = [pathlib.Path("/usr/local/lib") / multiarch,
                            pathlib.Path("/usr/lib") / multiarch]
    for d in dict.fromkeys(system_dirs):
        places.append(("system", d / _FILE))
    return places


def loadable_path():
    """Path of the clipdb extension library (a str usable with ``conn.load_extension``).

    Looks, in order, at $CLIPDB_EXTENSION (which must exist when set), the build tree of the
    source checkout (``$CLIPDB_BUILD_DIR/sqlite-ext`` when set, then ``build/sqlite-ext``), a copy
    installed inside this package, then system library folders. Raises ExtensionNotFound
    listing every place tried."""
    explicit = os.environ.get("CLIPDB_EXTENSION")
    if explicit:
        path = pathlib.Path(explicit)
        for candidate in (path, path.with_name(path.name + _SUFFIX)):
            if candidate.is_file():
                return str(candidate.resolve())
        raise ExtensionNotFound(f"CLIPDB_EXTENSION={explicit}: no such file")
    tried = []
    for what, path in _search_path():
        if path.is_file():
            return str(path.resolve())
        tried.append(f"  {path} ({what})")
    raise ExtensionNotFound(
        "the clipdb SQLite extension (" + _FILE + ") was not found; looked in:\n"
        + "\n".join(tried)
        + "\nbuild it (meson setup build && ninja -C build) or set CLIPDB_EXTENSION to its path")


_NO_LOADING_HELP = (
    "this Python's sqlite3 module cannot load SQLite extensions (it was built without "
    "--enable-loadable-sqlite-extensions, as some macOS, pyenv and python.org builds are). "
    "Use an interpreter whose sqlite3 can, e.g. Debian/Ubuntu's /usr/bin/python3 or Homebrew's "
    "python, rebuild Python with --enable-loadable-sqlite-extensions (pyenv: "
    "PYTHON_CONFIGURE_OPTS=--enable-loadable-sqlite-extensions pyenv install VERSION), or install "
    "pysqlite3 and pass its connection to clipdb.load()")


def load(conn, path=None):
    """Loads the clipdb extension into an open ``sqlite3.Connection`` (or a compatible one, such
    as pysqlite3's). path defaults to loadable_path(). Extension loading is switched on only for
    the duration of the call. Returns conn."""
    enable = getattr(conn, "enable_load_extension", None)
    if enable is None or not hasattr(conn, "load_extension"):
        raise ExtensionLoadingUnavailable(_NO_LOADING_HELP)
    ext = str(path) if path is not None else loadable_path()
    try:
        enable(True)
    except (AttributeError, sqlite3.NotSupportedError) as e:
        raise ExtensionLoadingUnavailable(f"{_NO_LOADING_HELP} ({e})") from e
    try:
        conn.load_extension(ext)
    except sqlite3.OperationalError as e:
        raise ClipdbError(f"loading {ext}: {e}") from e
    finally:
        enable(False)
    _pin(ext)
    return conn


_pinned = {}


def _pin(ext):
    """Keeps the extension mapped for the life of the process. SQLite unloads an extension when
    the last connection that loaded it closes, but the library's worker threads (and models
    shared across connections) outlive connections; one extra dlopen reference prevents the
    unload. Harmless when the library is linked with -z nodelete."""
    if ext not in _pinned:
        try:
            _pinned[ext] = ctypes.CDLL(ext)
        except OSError:  # e.g. a path without the suffix: sqlite3 found it, ctypes did not
            try:
                _pinned[ext] = ctypes.CDLL(ext + _SUFFIX)
            except OSError:
                pass


def connect(database, model=None, **kwargs):
    """Opens a SQLite database (like ``sqlite3.connect``; keyword arguments are passed on) with
    clipdb loaded. model, a model directory or a cached hub name ("ORG/NAME"), becomes this
    connection's default model (``SELECT clip_model('default', model)``); without it the default
    is $CLIPDB_MODEL, else openai/clip-vit-base-patch32. A model that cannot be loaded raises
    ClipdbError and the connection is closed."""
    conn = sqlite3.connect(database, **kwargs)
    try:
        load(conn)
        if model is not None:
            conn.execute("SELECT clip_model('default', ?)", (os.fspath(model),)).fetchone()
    except sqlite3.Error as e:
        conn.close()
        raise ClipdbError(f"model {model!r}: {e}") from e
    except BaseException:
        conn.close()
        raise
    return conn


def serialize(vector):
    """A vector (numpy array, array('f'), or any sequence of numbers) as the extension's BLOB
    format: little-endian float32. Raises ValueError for an empty vector and for values that are
    not finite float32 numbers (NaN, infinities, or beyond float32's range, about 3.4e38), which
    would otherwise be stored as inf or NaN."""
    if _np is not None and isinstance(vector, _np.ndarray):
        if vector.ndim != 1:
            raise ValueError(f"serialize: expected a 1-D vector, got shape {vector.shape}")
        with _np.errstate(over="ignore", invalid="ignore"):
            values = vector.astype("<f4", copy=False)
        if values.size == 0 or not _np.isfinite(values).all():
            _check_finite(values.tolist(), vector)
        return values.tobytes()
    try:
        values = vector if isinstance(vector, array.array) and vector.typecode == "f" \
            else array.array("f", vector)
    except OverflowError as e:  # an int too large for a double
        raise ValueError(f"serialize: {e}") from None
    _check_finite(values, vector)
    if sys.byteorder == "big":
        values = array.array("f", values)
        values.byteswap()
    return values.tobytes()


def _check_finite(values, given):
    """values: the float32 values made from the sequence given."""
    if len(values) == 0:
        raise ValueError("serialize: the vector is empty")
    for i, x in enumerate(values):
        if not math.isfinite(x):
            try:
                x = given[i]
            except Exception:  # an iterator, already consumed
                pass
            raise ValueError(f"serialize: value {i} ({x!r}) is not a finite float32 number")


def deserialize(blob, numpy=None):
    """A float32 BLOB (as the extension returns) as a vector: a numpy float32 array when numpy is
    installed (numpy=False forces ``array('f')``), else ``array('f')``. Raises TypeError when
    blob is not bytes-like (an int, a str, None) and ValueError when it is empty or its length
    is not a multiple of 4."""
    try:
        data = memoryview(blob).tobytes()  # bytes(8) would be eight zero bytes
    except TypeError:
        raise TypeError("deserialize: expected a BLOB (bytes-like), got "
                        f"{type(blob).__name__}") from None
    if not data:
        raise ValueError("deserialize: the BLOB is empty (no vector)")
    if len(data) % 4:
        raise ValueError(f"deserialize: {len(data)} bytes is not a whole number of float32 values")
    if numpy is None:
        numpy = _np is not None
    if numpy:
        if _np is None:
            raise ClipdbError("deserialize: numpy is not installed")
        return _np.frombuffer(data, dtype="<f4").astype(_np.float32)
    values = array.array("f")
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return values
