"""The store: a folder holding ``catalog.duckdb`` and the files around it.

DuckDB allows one writing process or many readers, never both. The :class:`Store`
therefore opens a connection for each operation and closes it right after; writers
keep their transactions short, and a reader that finds the catalog locked retries for
``busy_timeout_s`` seconds before raising :class:`~cytostore.errors.StoreBusyError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import duckdb
import numpy as np
import numpy.typing as npt

from cytostore.errors import (
    EmptySelectionError,
    InvalidWhereError,
    QueryRefusedError,
    QueryTimeoutError,
    ReadOnlyError,
    StoreBusyError,
    StoreNotFoundError,
    UnknownColumnError,
)
from cytostore.store.gate import gate_for
from cytostore.store.migrations import MIGRATIONS
from cytostore.store.paths import resolve_inside
from cytostore.store.sandbox import (
    check_query,
    duckdb_message,
    hardened_config,
    interrupt_after,
    where_query,
)

__all__ = ["Catalog", "QueryResult", "CATALOG_FILE", "CELL_COLUMNS", "safe_identifier"]

logger = logging.getLogger(__name__)

CATALOG_FILE = "catalog.duckdb"
#: Columns of ``cells`` a reader may fill, in table order (``cell_id`` is assigned).
CELL_COLUMNS = (
    "dataset",
    "path",
    "label",
    "patient_id",
    "um_per_px",
    "width",
    "height",
    "sha256",
    "cell_type",
    "reannotation1",
    "reannotation2",
)
_CELL_ARROW_TYPES: dict[str, Any] = {
    c: (
        "float64"
        if c == "um_per_px"
        else "int32"
        if c in ("width", "height")
        else "string"
    )
    for c in CELL_COLUMNS
}
_PATIENT_FIXED = ("dataset", "patient_id", "bag_label", "age", "sex")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LOCK_MARKERS = ("Could not set lock", "Conflicting lock", "database is locked")


@dataclass(frozen=True)
class QueryResult:
    """Rows of a query with their column names.

    Attributes:
        columns: Column names, in order.
        rows: One tuple per row, values as Python objects.
    """

    columns: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    def dicts(self) -> list[dict[str, Any]]:
        """Return the rows as dicts keyed by column name."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        """Return the values of one column.

        Raises:
            KeyError: If ``name`` is not a column of the result.
        """
        i = self.columns.index(name) if name in self.columns else -1
        if i < 0:
            raise KeyError(f"no column {name!r}; columns are {self.columns}")
        return [row[i] for row in self.rows]


def _busy_timeout_s() -> float:
    return float(os.environ.get("CYTOSTORE_BUSY_TIMEOUT_S", "30"))


def _is_lock_error(exc: BaseException) -> bool:
    return any(m in str(exc) for m in _LOCK_MARKERS)


def _names_missing(exc: BaseException) -> bool:
    """Return whether DuckDB's error says a column or table does not exist.

    Such a query is well-formed but names something the catalog lacks (exit 1 in the
    CLI); other binder errors (types, functions) are a malformed query (exit 2).
    """
    text = str(exc)
    if isinstance(exc, duckdb.BinderException):
        return "Referenced column" in text or "Referenced table" in text
    if isinstance(exc, duckdb.CatalogException):
        return text.startswith("Catalog Error: Table with name")
    return False


def safe_identifier(name: str) -> str:
    """Return ``name`` as a column/table name, or raise if it is not a plain identifier.

    Raises:
        InvalidArgumentError: If ``name`` has characters other than letters, digits, _.
    """
    from cytostore.errors import InvalidArgumentError

    if not _IDENT.match(name):
        raise InvalidArgumentError(
            f"{name!r} is not a valid table/column name: use letters, digits and _ "
            "and start with a letter"
        )
    return name


class Catalog:
    """The catalog of a store: connections, transactions, migrations and SQL.

    The low floor of the store: every module of ``cytostore.store`` that reads or
    writes catalog rows works on a :class:`Catalog`; :class:`~cytostore.store.Store`
    builds on it with embedding sets, search, indexes and tags. Use
    :meth:`open` (or :meth:`create`) rather than the constructor.

    Attributes:
        root: The store folder.
        busy_timeout_s: How long an operation waits for a writer to release the catalog.

    Examples:
        >>> import tempfile
        >>> catalog = Catalog.create(tempfile.mkdtemp() + "/s")
        >>> catalog.sql("SELECT count(*) AS n FROM cells").rows
        [(0,)]
    """

    def __init__(self, root: Path, busy_timeout_s: float | None = None) -> None:
        self.root = Path(root)
        self.busy_timeout_s = (
            _busy_timeout_s() if busy_timeout_s is None else busy_timeout_s
        )
        self._local = threading.local()

    # ------------------------------------------------------------------ opening
    @property
    def catalog_path(self) -> Path:
        """Path of ``catalog.duckdb``."""
        return self.root / CATALOG_FILE

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> Self:
        """Open the store at ``path``, creating the folder and catalog if missing.

        Returns:
            The opened store, migrated to the current schema.
        """
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        store = cls(root)
        store._migrate()
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str], create: bool = False) -> Self:
        """Open an existing store (or create one with ``create=True``).

        Returns:
            The opened store, migrated to the current schema.

        Raises:
            StoreNotFoundError: If there is no ``catalog.duckdb`` under ``path``.
            StoreBusyError: If a writer holds the catalog past the busy timeout.
        """
        if create:
            return cls.create(path)
        root = Path(path)
        if not (root / CATALOG_FILE).is_file():
            raise StoreNotFoundError(
                f"no store at {str(root)!r} (no {CATALOG_FILE}): create one with "
                f"'cytostore ingest {root} DATA_PATH'"
            )
        store = cls(root)
        store._migrate()
        return store

    def _applied_migrations(self) -> set[int]:
        with self.connect(read_only=not self._needs_create()) as con:
            has = con.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_name = 'schema_migrations'"
            ).fetchone()
            if not has or has[0] == 0:
                return set()
            return {
                r[0] for r in con.execute("SELECT id FROM schema_migrations").fetchall()
            }

    def _needs_create(self) -> bool:
        return not self.catalog_path.exists()

    def _migrate(self) -> None:
        applied = self._applied_migrations()
        todo = [m for m in MIGRATIONS if m[0] not in applied]
        if not todo:
            return
        with self.transaction() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(id INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)"
            )
            done = {
                r[0] for r in con.execute("SELECT id FROM schema_migrations").fetchall()
            }
            for number, name, sql in todo:
                if number in done:
                    continue
                logger.info("applying migration %s", name)
                con.execute(sql)
                con.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, now())",
                    [number, name],
                )
            self._refresh_views(con)

    # -------------------------------------------------------------- connections
    @property
    def _conn(self) -> duckdb.DuckDBPyConnection | None:
        """This thread's open catalog connection, if any (one per thread)."""
        return getattr(self._local, "conn", None)

    @property
    def _conn_read_only(self) -> bool:
        return bool(getattr(self._local, "read_only", True))

    @contextlib.contextmanager
    def connect(self, read_only: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the catalog for one operation, retrying while another process writes.

        Nested calls in one thread reuse the connection already open (a read inside a
        write sees the write's uncommitted changes). Threads have their own
        connections; within one process, readers share the catalog and a writer has
        it alone. Every connection is hardened (no file, network or extension access
        beyond the catalog: see :mod:`cytostore.store.sandbox`).

        Yields:
            A DuckDB connection, closed when the block ends.

        Raises:
            StoreBusyError: If the catalog stays locked for ``busy_timeout_s``.
        """
        current = self._conn
        if current is not None and (read_only or not self._conn_read_only):
            yield current
            return
        if current is not None:
            raise RuntimeError("cannot open a write connection inside a read one")
        deadline = time.monotonic() + self.busy_timeout_s
        gate = gate_for(self.catalog_path)
        got = gate.acquire_read(deadline) if read_only else gate.acquire_write(deadline)
        if not got:
            raise StoreBusyError(self._busy_message(read_only, in_process=True))
        try:
            con = self._open_connection(read_only, deadline)
            self._local.conn, self._local.read_only = con, read_only
            try:
                yield con
            finally:
                self._local.conn = None
                con.close()
        finally:
            if read_only:
                gate.release_read()
            else:
                gate.release_write()

    def _open_connection(
        self, read_only: bool, deadline: float
    ) -> duckdb.DuckDBPyConnection:
        delay = 0.02
        while True:
            try:
                return duckdb.connect(
                    str(self.catalog_path),
                    read_only=read_only,
                    config=hardened_config(),
                )
            except duckdb.Error as exc:
                if not _is_lock_error(exc):
                    raise
            if time.monotonic() >= deadline:
                raise StoreBusyError(self._busy_message(read_only, in_process=False))
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _busy_message(self, read_only: bool, in_process: bool) -> str:
        where = "a thread of this process" if in_process else "another process"
        if read_only:
            who = f"{where} is writing to it"
        elif in_process:
            holder = gate_for(self.catalog_path).holder()
            who = f"{where} is {'writing to' if holder == 'writer' else 'reading'} it"
        else:
            who = f"{where} is {self._foreign_holder()} it"
        return (
            f"the store {str(self.root)!r} is busy: {who} (waited "
            f"{self.busy_timeout_s:.0f} s); try again when it finishes, or raise "
            "CYTOSTORE_BUSY_TIMEOUT_S"
        )

    def _foreign_holder(self) -> str:
        """Say whether another process reads or writes the catalog we cannot write."""
        try:
            con = duckdb.connect(
                str(self.catalog_path), read_only=True, config=hardened_config()
            )
        except duckdb.Error:
            return "writing to"
        con.close()
        return "reading (e.g. 'cytostore serve' or a notebook holding it open)"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the catalog for writing, in one transaction committed at the end.

        Yields:
            A DuckDB connection inside ``BEGIN``; an exception rolls everything back.
        """
        if self._conn is not None and not self._conn_read_only:
            # Already inside a transaction of this store in this thread: join it.
            yield self._conn
            return
        with self.connect(read_only=False) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def in_write_transaction(self) -> bool:
        """Return whether this thread is inside :meth:`transaction`."""
        return self._conn is not None and not self._conn_read_only

    # -------------------------------------------------------------------- reads
    def sql(
        self,
        query: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> QueryResult:
        """Run one read-only SQL query against the catalog, sandboxed.

        The query runs on a read-only, hardened connection (no access to files
        other than the catalog, no network, no extensions, settings locked), and
        must be exactly one query statement (see :mod:`cytostore.store.sandbox`).
        To write, or to read other files, open ``catalog.duckdb`` with your own
        DuckDB client.

        Args:
            query: One SQL query (SELECT, WITH, VALUES, PIVOT, DESCRIBE, SUMMARIZE,
                SHOW, EXPLAIN).
            params: Values for ``?`` or ``$name`` placeholders.
            timeout_s: Interrupt the query after this many seconds (``None``: never).

        Returns:
            The result's columns and rows.

        Raises:
            QueryRefusedError: If the query is several statements or not a query.
            ReadOnlyError: If the query tries to change the catalog.
            InvalidWhereError: If the query does not parse or fails to bind.
            UnknownColumnError: If it names a column or table the catalog lacks.
            QueryTimeoutError: If it ran past ``timeout_s``.
        """
        statement = check_query(query)
        with (
            self.connect(read_only=True) as con,
            interrupt_after(con, timeout_s) as fired,
        ):
            try:
                cur = (
                    con.execute(statement, params) if params else con.execute(statement)
                )
                if cur.description is None:
                    return QueryResult(columns=[], rows=[])
                columns = [d[0] for d in cur.description]
                rows = cur.fetchall()
            except (duckdb.InterruptException, KeyboardInterrupt, RuntimeError) as exc:
                # Ctrl-C during a query surfaces as DuckDB's "Query interrupted".
                if isinstance(exc, RuntimeError) and "interrupted" not in str(exc):
                    raise
                if fired.is_set():
                    raise QueryTimeoutError(
                        f"the query ran past {timeout_s:g} s and was stopped: narrow "
                        "it (a WHERE, a LIMIT) or raise --timeout"
                    ) from None
                raise KeyboardInterrupt from None
            except duckdb.PermissionException as exc:
                raise QueryRefusedError(
                    f"{duckdb_message(exc)}: cytostore's SQL reads the catalog and "
                    "nothing else; open catalog.duckdb with your own DuckDB client "
                    "to read other files"
                ) from None
            except duckdb.Error as exc:
                if _names_missing(exc):
                    raise UnknownColumnError(
                        f"{duckdb_message(exc)}: list names with 'cytostore sql "
                        'STORE "SHOW TABLES"\' or "DESCRIBE <table>"'
                    ) from None
                if "read-only" in str(exc) or "read only" in str(exc):
                    raise ReadOnlyError(
                        "cytostore sql opens the catalog read-only and cannot change "
                        "it: use a SELECT query (or open catalog.duckdb with any "
                        "DuckDB client to write)"
                    ) from None
                raise InvalidWhereError(duckdb_message(exc)) from None
            return QueryResult(columns=columns, rows=rows)

    def where_ids(
        self, where: str | None = None, empty_ok: bool = False
    ) -> npt.NDArray[np.int64]:
        """Return the sorted cell ids whose ``cell_meta`` row satisfies ``where``.

        ``where`` must parse as exactly one SQL expression; it runs inside a fixed
        clause on a read-only, hardened connection (see
        :func:`cytostore.store.sandbox.where_query`): it cannot end its clause or
        start another statement. Call it before opening a write transaction.

        Args:
            where: A SQL boolean expression over the columns of the view ``cell_meta``
                (e.g. ``"dataset = 'lmu' AND age > 60"``); ``None`` selects all cells.
            empty_ok: Return an empty array instead of raising when nothing matches.

        Returns:
            int64 array of cell ids, ascending.

        Raises:
            InvalidWhereError: If ``where`` does not parse or fails to bind.
            UnknownColumnError: If it names a column the catalog lacks.
            EmptySelectionError: If nothing matches and ``empty_ok`` is false.
            RuntimeError: If called inside a write transaction (a bug: a user's
                filter never runs on a writing connection).
        """
        if where is not None and self.in_write_transaction():
            raise RuntimeError(
                "a --where filter is evaluated before the write transaction opens"
            )
        query = (
            where_query(where)
            if where
            else "SELECT cell_id FROM cell_meta ORDER BY cell_id"
        )
        with self.connect(read_only=True) as con:
            try:
                ids = con.execute(query).fetchnumpy()["cell_id"]
            except duckdb.PermissionException as exc:
                raise InvalidWhereError(
                    f"--where {where!r} was refused: {duckdb_message(exc)} (a filter "
                    "reads the catalog and nothing else)"
                ) from None
            except duckdb.Error as exc:
                error = UnknownColumnError if _names_missing(exc) else InvalidWhereError
                raise error(
                    f"invalid --where {where!r}: {duckdb_message(exc)} (it is "
                    "evaluated against the columns of cell_meta: see 'cytostore sql "
                    'STORE "DESCRIBE cell_meta"\')'
                ) from None
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0 and not empty_ok:
            raise EmptySelectionError(
                f"--where {where!r} selects no cells: loosen the filter "
                "(check values with 'cytostore sql STORE \"SELECT ...\"')"
            )
        return ids

    def cell_meta(
        self, ids: npt.NDArray[np.int64] | Sequence[int], columns: Sequence[str]
    ) -> QueryResult:
        """Return ``columns`` of ``cell_meta`` for ``ids``, in the order of ``ids``.

        Raises:
            UnknownColumnError: If a column does not exist.
        """
        cols = ", ".join(f'"{safe_identifier(c)}"' for c in columns)
        arr = np.asarray(ids, dtype=np.int64)
        with self.connect(read_only=True) as con:
            try:
                res = con.execute(
                    f"SELECT q.i, {cols} FROM (SELECT unnest(?) AS id, "
                    "generate_subscripts(?, 1) AS i) q JOIN cell_meta m "
                    "ON m.cell_id = q.id ORDER BY q.i",
                    [arr.tolist(), arr.tolist()],
                )
                rows = [r[1:] for r in res.fetchall()]
            except duckdb.BinderException as exc:
                raise UnknownColumnError(
                    f"{duckdb_message(exc)}: see 'cytostore sql STORE \"DESCRIBE "
                    "cell_meta\"'"
                ) from None
        return QueryResult(columns=list(columns), rows=rows)

    def columns(self, table: str = "cell_meta") -> list[str]:
        """Return the column names of a catalog table or view."""
        with self.connect(read_only=True) as con:
            return [
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = ? ORDER BY ordinal_position",
                    [table],
                ).fetchall()
            ]

    def require_columns(self, names: list[str], table: str = "cell_meta") -> None:
        """Check that every name is a safe identifier and a column of ``table``.

        Raises:
            InvalidArgumentError: If a name is not a plain identifier.
            UnknownColumnError: If ``table`` has no such column (with close matches).
        """
        have = set(self.columns(table))
        for name in names:
            safe_identifier(name)
            if name not in have:
                raise UnknownColumnError.for_name(
                    "column",
                    name,
                    have,
                    f"name a column of {table} ('cytostore sql STORE \"DESCRIBE "
                    f"{table}\"')",
                )

    def dataset_roots(self) -> dict[str, Path]:
        """Return each dataset's root folder (cell paths are relative to it)."""
        rows = self.sql("SELECT dataset, root FROM datasets").rows
        return {d: Path(r) for d, r in rows}

    def cell_paths(self, ids: npt.NDArray[np.int64] | Sequence[int]) -> list[Path]:
        """Return the absolute image path of each cell, in the order of ``ids``.

        Each path is resolved inside its dataset's root: a catalog row with an
        absolute path, ``..`` or a symlink leading out is refused.

        Raises:
            InvalidArgumentError: If an id is not a catalogued cell.
            StoreCorruptError: If a cell's path leads outside its dataset's root.
        """
        from cytostore.errors import InvalidArgumentError

        arr = np.asarray(ids, dtype=np.int64)
        res = self.cell_meta(arr, ["cell_id", "dataset", "path"])
        if len(res.rows) != arr.size:
            found = {r[0] for r in res.rows}
            missing = [int(i) for i in arr if int(i) not in found][:5]
            raise InvalidArgumentError(
                f"unknown cell ids {missing}: list ids with "
                "'cytostore sql STORE \"SELECT cell_id FROM cells\"'"
            )
        roots = self.dataset_roots()
        return [
            resolve_inside(roots[d], p, what=f"image path of cell {i} ({d})")
            for i, d, p in res.rows
        ]

    def info(self) -> dict[str, Any]:
        """Summarise the store.

        Returns:
            A dict with ``root``, ``datasets`` (one dict per dataset: ``dataset``,
            ``layout``, ``cells``, ``patients``, ``labels``, ``skipped``,
            ``um_per_px``, ``root``), totals ``cells``, ``patients``, ``skipped``,
            and the counts of ``models``, ``embedding_sets`` and ``heads``.
        """
        datasets = self.sql(
            """
            SELECT d.dataset, d.layout,
                   (SELECT count(*) FROM cells c WHERE c.dataset = d.dataset) AS cells,
                   (SELECT count(*) FROM patients p WHERE p.dataset = d.dataset)
                       AS patients,
                   (SELECT count(DISTINCT label) FROM cells c
                        WHERE c.dataset = d.dataset) AS labels,
                   (SELECT count(*) FROM skipped s WHERE s.dataset = d.dataset)
                       AS skipped,
                   d.um_per_px, d.root
            FROM datasets d ORDER BY d.dataset
            """
        ).dicts()
        tables = set(
            self.sql("SELECT table_name FROM information_schema.tables").column(
                "table_name"
            )
        )

        def count(table: str) -> int:
            if table not in tables:
                return 0
            return int(self.sql(f"SELECT count(*) FROM {table}").rows[0][0])

        return {
            "root": str(self.root),
            "datasets": datasets,
            "cells": count("cells"),
            "patients": count("patients"),
            "skipped": count("skipped"),
            "models": count("models"),
            "embedding_sets": count("embedding_sets"),
            "heads": count("heads"),
        }

    # ------------------------------------------------------------------- writes
    def _refresh_views(self, con: duckdb.DuckDBPyConnection) -> None:
        patient_cols = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'patients' ORDER BY ordinal_position"
            ).fetchall()
        ]
        extra = [c for c in patient_cols if c not in ("dataset", "patient_id")]
        select_p = "".join(f', p."{c}"' for c in extra)
        has_tags = bool(
            con.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_name = 'tags'"
            ).fetchall()[0][0]
        )
        tags_col = ", coalesce(t.tags, []::VARCHAR[]) AS tags" if has_tags else ""
        tags_join = (
            "LEFT JOIN (SELECT cell_id, list(tag ORDER BY tag) AS tags FROM tags "
            "GROUP BY cell_id) t ON t.cell_id = c.cell_id"
            if has_tags
            else ""
        )
        # Imported annotation columns (cytostore annotate) join last; a name the
        # view already has from cells or patients is left out (annotate refuses it).
        taken = (
            {
                r[0].lower()
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'cells'"
                ).fetchall()
            }
            | {c.lower() for c in extra}
            | {"layout", "tags"}
        )
        notes = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'annotations' ORDER BY ordinal_position"
            ).fetchall()
            if r[0].lower() not in taken
        ]
        notes_col = "".join(f', a."{c}"' for c in notes)
        notes_join = "LEFT JOIN annotations a ON a.cell_id = c.cell_id" if notes else ""
        con.execute(
            f"""
            CREATE OR REPLACE VIEW cell_meta AS
            SELECT c.*{select_p}, d.layout{tags_col}{notes_col}
            FROM cells c
            LEFT JOIN patients p
              ON p.dataset = c.dataset AND p.patient_id = c.patient_id
            LEFT JOIN datasets d ON d.dataset = c.dataset
            {tags_join}
            {notes_join}
            """
        )

    def upsert_dataset(
        self,
        dataset: str,
        layout: str,
        root: str | os.PathLike[str],
        um_per_px: float | None,
        n_expected: int | None = None,
    ) -> None:
        """Record (or update) one dataset's layout, root folder and pixel size."""
        with self.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?, ?, now())",
                [dataset, layout, str(Path(root).resolve()), um_per_px, n_expected],
            )

    def existing_paths(self, dataset: str) -> dict[str, str | None]:
        """Return ``{path: sha256}`` of the cells already catalogued for ``dataset``."""
        rows = self.sql(
            "SELECT path, sha256 FROM cells WHERE dataset = ?", [dataset]
        ).rows
        return {p: h for p, h in rows}

    def add_cells(self, rows: Sequence[dict[str, Any]]) -> npt.NDArray[np.int64]:
        """Add cells; rows whose (dataset, path) is already catalogued are left alone.

        Args:
            rows: Dicts with keys from :data:`CELL_COLUMNS` (``dataset`` and ``path``
                required). New cells get ids ``max(cell_id) + 1, ...`` in row order.

        Returns:
            int64 ids of the cells, in the order of ``rows`` (existing ids for
            existing cells).
        """
        if not rows:
            return np.zeros(0, dtype=np.int64)
        import pyarrow as pa

        keys = pa.table(
            {
                "dataset": pa.array([r["dataset"] for r in rows], pa.string()),
                "path": pa.array([r["path"] for r in rows], pa.string()),
            }
        )
        with self.transaction() as con:
            # Only the rows' own keys come back, not every cell of their datasets
            # (ingest calls this once per chunk: fetching the whole dataset each
            # time grew quadratically with its size). Columns travel as Arrow
            # tables: list parameters cost microseconds per value.
            con.register("_incoming_keys", keys)
            try:
                existing = dict(
                    con.execute(
                        "SELECT c.dataset || chr(0) || c.path, c.cell_id FROM cells c "
                        "JOIN _incoming_keys q "
                        "ON c.dataset = q.dataset AND c.path = q.path"
                    ).fetchall()
                )
                # Ids are never reused: past the highest id ever given out (a
                # removed patient's ids stay retired), not just past max(cell_id).
                next_id = int(
                    con.execute(
                        "SELECT greatest(coalesce((SELECT max(cell_id) FROM cells), "
                        "0), coalesce((SELECT value FROM id_counters "
                        "WHERE name = 'cell_id'), 0))"
                    ).fetchall()[0][0]
                )
                ids: list[int] = []
                new: list[dict[str, Any]] = []
                new_ids: list[int] = []
                for r in rows:
                    key = f"{r['dataset']}\0{r['path']}"
                    if key in existing:
                        ids.append(existing[key])
                        continue
                    next_id += 1
                    existing[key] = next_id
                    ids.append(next_id)
                    new_ids.append(next_id)
                    new.append(r)
                if new:
                    _insert_cells(con, new_ids, new)
                    con.execute(
                        "INSERT OR REPLACE INTO id_counters VALUES ('cell_id', ?)",
                        [next_id],
                    )
                    if con.execute("SELECT count(*) FROM skipped").fetchall()[0][0]:
                        con.execute(
                            "DELETE FROM skipped s USING _incoming_keys q "
                            "WHERE s.dataset = q.dataset AND s.path = q.path"
                        )
            finally:
                con.unregister("_incoming_keys")
        return np.asarray(ids, dtype=np.int64)

    def add_skipped(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """Record inputs that could not be read, as ``(dataset, path, reason)``."""
        if not rows:
            return
        with self.transaction() as con:
            con.executemany(
                "INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, now())", list(rows)
            )

    def upsert_patients(self, dataset: str, rows: Sequence[dict[str, Any]]) -> None:
        """Add or replace patients of ``dataset`` with all their metadata columns.

        Columns beyond ``patient_id, bag_label, age, sex`` are added to ``patients``
        as DOUBLE when every value is a number (or None), else VARCHAR. A column
        whose name clashes with a ``cells`` column is stored as ``patient_<name>``.

        Raises:
            InvalidArgumentError: If a column name is not a plain identifier, or
                is an imported annotation column's (it would hide it).
        """
        if not rows:
            return
        import pyarrow as pa

        cell_cols = set(CELL_COLUMNS) | {"cell_id", "layout", "tags"}
        renamed: list[dict[str, Any]] = []
        for r in rows:
            out: dict[str, Any] = {}
            for k, v in r.items():
                key = k if k in _PATIENT_FIXED or k not in cell_cols else f"patient_{k}"
                out[key] = v
            renamed.append(out)
        extra: dict[str, str] = {}
        for r in renamed:
            for k, v in r.items():
                if k in _PATIENT_FIXED:
                    continue
                safe_identifier(k)
                numeric = v is None or (
                    isinstance(v, int | float) and not isinstance(v, bool)
                )
                if k not in extra or (extra[k] == "DOUBLE" and not numeric):
                    extra[k] = "DOUBLE" if numeric else "VARCHAR"
        with self.transaction() as con:
            have = {
                r[0]: r[1]
                for r in con.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'patients'"
                ).fetchall()
            }
            # cell_meta keeps a patients column over an annotation of its name.
            notes = {
                r[0].lower(): r[0]
                for r in con.execute("SELECT name FROM annotation_columns").fetchall()
            }
            hides = [(k, notes[k.lower()]) for k in extra if k.lower() in notes]
            if hides:
                from cytostore.errors import InvalidArgumentError

                raise InvalidArgumentError(
                    f"patients column {hides[0][0]!r} would hide the annotation "
                    f"column {hides[0][1]!r} in cell_meta: rename it in the patients "
                    f"table, or drop the annotation ('cytostore annotate STORE --drop "
                    f"{hides[0][1]}') and import it again under another name with "
                    "--as PREFIX"
                )
            for k, typ in extra.items():
                if k not in have:
                    con.execute(f'ALTER TABLE patients ADD COLUMN "{k}" {typ}')
                    have[k] = typ
            columns = list(_PATIENT_FIXED) + list(extra)
            table = pa.table(
                {
                    c: _patient_column(
                        c,
                        [dataset if c == "dataset" else r.get(c) for r in renamed],
                        have.get(c, "VARCHAR"),
                    )
                    for c in columns
                }
            )
            col_sql = ", ".join(f'"{c}"' for c in columns)
            con.register("_incoming_patients", table)
            try:
                con.execute(
                    f"INSERT OR REPLACE INTO patients ({col_sql}) "
                    f"SELECT {col_sql} FROM _incoming_patients"
                )
            finally:
                con.unregister("_incoming_patients")
            self._refresh_views(con)

    def refresh_views(self) -> None:
        """Recreate ``cell_meta`` after a schema change of ``cells`` or ``patients``."""
        with self.transaction() as con:
            self._refresh_views(con)


def _patient_column(name: str, values: list[Any], sql_type: str) -> Any:
    """One patients column as an Arrow array of the column's SQL type.

    Raises:
        InvalidArgumentError: If a number column meets a value that is not one.
    """
    import pyarrow as pa

    from cytostore.errors import InvalidArgumentError

    if sql_type == "VARCHAR":
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    numeric = {"DOUBLE": float, "FLOAT": float, "REAL": float, "INTEGER": int}
    numeric.update(BIGINT=int, SMALLINT=int, TINYINT=int)
    cast = numeric.get(sql_type)
    if cast is None:
        return pa.array(values)
    out = []
    for v in values:
        try:
            out.append(None if v is None or v == "" else cast(v))
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"patients column {name!r} holds numbers, but one value is {v!r}: "
                "correct it in the metadata table, or leave it empty"
            ) from None
    return pa.array(out, pa.float64() if cast is float else pa.int64())


def _insert_cells(
    con: duckdb.DuckDBPyConnection, ids: Sequence[int], new: Sequence[dict[str, Any]]
) -> None:
    """Bulk-insert rows of :data:`CELL_COLUMNS` under the given cell ids.

    The rows travel as one Arrow table (``executemany`` runs one statement per row,
    ~3 ms each; list parameters cost microseconds per value).
    """
    import pyarrow as pa

    table = pa.table(
        {
            "cell_id": pa.array(ids, pa.int64()),
            **{
                c: pa.array([r.get(c) for r in new], _CELL_ARROW_TYPES[c])
                for c in CELL_COLUMNS
            },
        }
    )
    con.register("_new_cells", table)
    try:
        names = ", ".join(("cell_id", *CELL_COLUMNS))
        con.execute(f"INSERT INTO cells ({names}) SELECT {names} FROM _new_cells")
    finally:
        con.unregister("_new_cells")
