"""Stored Responses API objects (`store: true`, `previous_response_id`, GET/DELETE `/v1/responses/{id}`,
`/v1/responses/{id}/input_items`) in an embedded SQLite database, bounded in count and in bytes, oldest evicted first.

What is stored is the user's data: no log line and no exception message carries any of it, only ids and sizes; a
DELETE removes the row itself. The texts are opaque here: this module stores and returns JSON text, never parses it.

Every query runs on one dedicated thread that owns the one connection (`ThreadPoolExecutor(max_workers=1)`), rather
than `asyncio.to_thread` and a lock: a write can wait up to the busy timeout on another replica's write lock, and that
wait must hold one thread of our own, not several of the default pool that the routes' planning shares. One thread
also serialises the queries without a lock, and keeps sqlite3's `check_same_thread` guard on.

Several replicas on one host may share the file (the compose scale profile): WAL lets readers run beside one writer,
and `busy_timeout` makes a writer wait for the lock instead of failing. WAL needs shared memory, so one host only,
never a network filesystem. Each write is a `BEGIN IMMEDIATE` transaction: it takes the write lock before reading, so
the eviction's sums see every replica's rows, and it never meets WAL's lock upgrade that fails at once with
SQLITE_BUSY whatever the timeout.
"""

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, TypeVarTuple

from tokserve.errors import StartupError

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

SCHEMA_VERSION = 1  # PRAGMA user_version; a file of another version is refused at startup, never migrated silently
_BUSY_TIMEOUT_S = 5.0
_FILE_NAME = "responses.sqlite3"
# `seq` is the rowid: larger than every row present when a row is inserted, so it orders rows of equal created_at by
# insertion. `bytes` comes before the texts and the age index covers it, so sums and eviction never read the texts.
_SCHEMA = """
CREATE TABLE responses (
    seq INTEGER PRIMARY KEY,
    response_id TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    conversation TEXT NOT NULL
);
CREATE INDEX responses_by_age ON responses (created_at, seq, bytes);
"""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One stored response; the three texts are JSON, valid UTF-8, opaque to the store."""

    response_id: str
    response: str  # the Response object, as GET returns it
    input_items: str  # this request's input items, ids included, as input_items lists them
    conversation: str  # everything the server needs to continue the chain after this response
    created_at: int

    @property
    def size(self) -> int:
        """The bytes it counts against the store's bound: its texts' UTF-8 lengths."""
        return sum(len(text.encode()) for text in (self.response, self.input_items, self.conversation))


class ResponseStore:
    """Responses by id in one SQLite file (or ":memory:"), at most `max_responses` of them in `max_bytes`.

    Construct it at startup, off the event loop (`await asyncio.to_thread(ResponseStore, ...)`): it opens the file.
    """

    def __init__(self, path: str, max_responses: int, max_bytes: int) -> None:
        if max_responses < 1 or max_bytes < 1:
            raise ValueError("max_responses and max_bytes must be at least 1")
        self.max_responses = max_responses
        self.max_bytes = max_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokserve-responses")
        self._connection: sqlite3.Connection | None = None
        try:
            self._executor.submit(self._open, path).result()
        except BaseException:
            self._executor.submit(self._close).result()
            self._executor.shutdown()
            raise

    async def put(self, stored: StoredResponse) -> None:
        """Insert, or replace the same id (a stream's final state replaces its first), then evict the oldest."""
        await self._run(self._put, stored)

    async def get(self, response_id: str) -> StoredResponse | None:
        """The stored response, or None if it was never stored, was deleted or was evicted."""
        return await self._run(self._get, response_id)

    async def delete(self, response_id: str) -> bool:
        """Remove it; True if it existed."""
        return await self._run(self._delete, response_id)

    async def count(self) -> int:
        """How many responses are stored, by every process sharing the file."""
        return await self._run(self._count)

    async def close(self) -> None:
        """Close the connection and stop the thread; a second call does nothing."""
        if self._connection is None:
            return
        await self._run(self._close)
        self._executor.shutdown()

    async def _run(self, query: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        # Shielded: a query runs even if the request awaiting it is cancelled (a client gone after its DELETE), since
        # cancelling an executor future that has not started yet would drop it.
        return await asyncio.shield(asyncio.get_running_loop().run_in_executor(self._executor, query, *args))

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError("the response store is closed")
        return self._connection

    def _open(self, path: str) -> None:
        try:
            if path != ":memory:":
                _create_private_file(Path(path))
            # isolation_level=None: sqlite3 opens no transactions of its own; ours are explicit, and IMMEDIATE.
            self._connection = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across crashes, not power loss
            with self._transaction():
                self._check_schema(path)
        except (OSError, sqlite3.Error) as error:
            raise StartupError(f"Cannot open the response store {path}: {error}") from error

    def _check_schema(self, path: str) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version != 0 or tables:
            raise StartupError(
                f"The response store {path} has schema version {version}, not {SCHEMA_VERSION}: "
                "move it aside or point the server at another file."
            )
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:  # SQLite has already rolled back after some errors (SQLITE_FULL, IOERR)
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _put(self, stored: StoredResponse) -> None:
        size = stored.size
        with self._transaction():
            if size > self.max_bytes:
                # An earlier state of the same id (a stream's first) would now be stale: it goes too.
                self._db.execute("DELETE FROM responses WHERE response_id = ?", (stored.response_id,))
                logger.warning(
                    "Response %s not stored: %d bytes, over the store's %d", stored.response_id, size, self.max_bytes
                )
                return
            self._db.execute(
                "INSERT INTO responses (response_id, created_at, bytes, response, input_items, conversation)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (response_id) DO UPDATE SET created_at = excluded.created_at,"
                " bytes = excluded.bytes, response = excluded.response, input_items = excluded.input_items,"
                " conversation = excluded.conversation",
                (stored.response_id, stored.created_at, size, stored.response, stored.input_items, stored.conversation),
            )
            self._evict()

    def _evict(self) -> None:
        count, total = self._db.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM responses").fetchone()
        if count <= self.max_responses and total <= self.max_bytes:
            return
        evicted = 0
        last = (0, 0)
        oldest_first = self._db.execute("SELECT created_at, seq, bytes FROM responses ORDER BY created_at, seq")
        for created_at, seq, size in oldest_first:
            if count <= self.max_responses and total <= self.max_bytes:
                break
            count, total, evicted, last = count - 1, total - size, evicted + 1, (created_at, seq)
        oldest_first.close()  # not read to its end: finish the statement before the DELETE
        self._db.execute("DELETE FROM responses WHERE (created_at, seq) <= (?, ?)", last)
        logger.debug("Evicted %d stored responses", evicted)

    def _get(self, response_id: str) -> StoredResponse | None:
        row = self._db.execute(
            "SELECT response, input_items, conversation, created_at FROM responses WHERE response_id = ?",
            (response_id,),
        ).fetchone()
        return None if row is None else StoredResponse(response_id, *row)

    def _delete(self, response_id: str) -> bool:
        return self._db.execute("DELETE FROM responses WHERE response_id = ?", (response_id,)).rowcount > 0

    def _count(self) -> int:
        count: int = self._db.execute("SELECT count(*) FROM responses").fetchone()[0]
        return count

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _create_private_file(path: Path) -> None:
    """Create the directories (0700) and the file (0600) if absent; SQLite gives its -wal and -shm the file's mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
