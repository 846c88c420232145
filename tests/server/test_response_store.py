"""ResponseStore on its own: no server, no model. Bounds and eviction order, a restart, two replicas on one file, a
file of another schema refused, and nothing of the stored contents in the log."""

import asyncio
import logging
import sqlite3
import stat
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tokserve.config import default_responses_db
from tokserve.errors import StartupError
from tokserve.server.response_store import ResponseStore, StoredResponse

SECRET = "the user's secret: 4111 1111 1111 1111"


def stored(response_id: str, created_at: int = 0, text: str = "x") -> StoredResponse:
    return StoredResponse(
        response_id=response_id,
        response=f'{{"id": "{response_id}", "output_text": "{text}"}}',
        input_items=f'[{{"id": "msg_{response_id}", "content": "{text}"}}]',
        conversation=f'[{{"role": "user", "content": "{text}"}}]',
        created_at=created_at,
    )


def run_with(store_args: tuple[str, int, int], body: Callable[[ResponseStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = ResponseStore(*store_args)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


async def kept(store: ResponseStore, *ids: str) -> list[str]:
    return [response_id for response_id in ids if await store.get(response_id) is not None]


def test_put_get_delete() -> None:
    async def body(store: ResponseStore) -> None:
        first = stored("resp_1", 100, "héllo")
        await store.put(first)
        assert await store.get("resp_1") == first
        assert await store.get("resp_2") is None
        assert await store.count() == 1
        assert await store.delete("resp_1") is True
        assert await store.delete("resp_1") is False
        assert await store.get("resp_1") is None
        assert await store.count() == 0

    run_with((":memory:", 10, 10_000), body)


def test_a_put_of_the_same_id_replaces_it() -> None:
    async def body(store: ResponseStore) -> None:
        await store.put(stored("resp_1", 100, "in progress"))
        final = stored("resp_1", 100, "completed")
        await store.put(final)
        assert await store.get("resp_1") == final
        assert await store.count() == 1

    run_with((":memory:", 10, 10_000), body)


def test_eviction_by_count_oldest_first() -> None:
    async def body(store: ResponseStore) -> None:
        for n, created_at in enumerate([5, 1, 5, 3, 5]):
            await store.put(stored(f"resp_{n}", created_at))
        assert await store.count() == 3
        # By created_at first (resp_1, then resp_3), then by insertion among equals (resp_0 before resp_2, resp_4).
        assert await kept(store, *(f"resp_{n}" for n in range(5))) == ["resp_0", "resp_2", "resp_4"]
        await store.put(stored("resp_5", 5))
        assert await kept(store, *(f"resp_{n}" for n in range(6))) == ["resp_2", "resp_4", "resp_5"]

    run_with((":memory:", 3, 1_000_000), body)


def test_a_replaced_response_keeps_its_place_in_the_order() -> None:
    async def body(store: ResponseStore) -> None:
        await store.put(stored("resp_a", 7))
        await store.put(stored("resp_b", 7))
        await store.put(stored("resp_a", 7, "final"))  # a stream's final state: still older than resp_b
        await store.put(stored("resp_c", 7))
        assert await kept(store, "resp_a", "resp_b", "resp_c") == ["resp_b", "resp_c"]

    run_with((":memory:", 2, 1_000_000), body)


def test_eviction_by_bytes_oldest_first() -> None:
    one = stored("resp_0", 0, "é" * 100)
    assert one.size == len(one.response.encode()) + len(one.input_items.encode()) + len(one.conversation.encode())
    assert one.size > len(one.response) + len(one.input_items) + len(one.conversation)  # UTF-8 bytes, not characters

    async def body(store: ResponseStore) -> None:
        for n in range(4):
            await store.put(stored(f"resp_{n}", n, "é" * 100))
        assert await kept(store, "resp_0", "resp_1", "resp_2", "resp_3") == ["resp_2", "resp_3"]
        # One larger response pushes out as many of the oldest as it takes.
        await store.put(stored("resp_big", 9, "é" * 250))
        assert await kept(store, "resp_2", "resp_3", "resp_big") == ["resp_big"]

    # Room for two of the small ones, not three; the big one alone fits.
    run_with((":memory:", 100, 2 * one.size + one.size // 2), body)


def test_a_response_over_max_bytes_is_not_stored(caplog: pytest.LogCaptureFixture) -> None:
    small = stored("resp_s", 1, "small")
    big = stored("resp_s", 2, SECRET * 100)

    async def body(store: ResponseStore) -> None:
        await store.put(stored("resp_other", 0))
        await store.put(small)
        with caplog.at_level(logging.WARNING, logger="tokserve.server.response_store"):
            await store.put(big)
        # Its earlier, smaller state would now be stale: it is gone too; the others stay.
        assert await store.get("resp_s") is None
        assert await kept(store, "resp_other") == ["resp_other"]
        assert await store.count() == 1

    run_with((":memory:", 10, 1_000), body)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "resp_s" in record.getMessage()
    assert str(big.size) in record.getMessage()


def test_a_restart_keeps_the_responses(tmp_path: Path) -> None:
    path = tmp_path / "data" / "tokserve" / "responses.sqlite3"

    async def write(store: ResponseStore) -> None:
        await store.put(stored("resp_1", 1, "kept"))
        await store.put(stored("resp_2", 2, "deleted"))
        await store.delete("resp_2")

    async def read(store: ResponseStore) -> None:
        assert await store.get("resp_1") == stored("resp_1", 1, "kept")
        assert await store.get("resp_2") is None
        assert await store.count() == 1

    run_with((str(path), 10, 10_000), write)
    with sqlite3.connect(path) as db:  # WAL stays set in the file, for the replicas that open it next
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0  # the user's data: not readable by others
    run_with((str(path), 10, 10_000), read)


def test_two_replicas_share_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "responses.sqlite3")

    async def main() -> None:
        one, two = ResponseStore(path, 2, 10_000), ResponseStore(path, 2, 10_000)
        try:
            await one.put(stored("resp_1", 1))
            assert await two.get("resp_1") == stored("resp_1", 1)
            await two.put(stored("resp_2", 2))
            assert await one.count() == 2
            await one.put(stored("resp_3", 3))  # one's eviction counts two's rows
            assert await kept(two, "resp_1", "resp_2", "resp_3") == ["resp_2", "resp_3"]
            assert await two.delete("resp_2") is True
            assert await one.get("resp_2") is None
            await asyncio.gather(*(store.put(stored(f"resp_{n}", n)) for n in range(4, 20) for store in (one, two)))
            assert await one.count() == await two.count() == 2
        finally:
            await one.close()
            await two.close()

    asyncio.run(main())


def test_a_cancelled_put_still_completes() -> None:
    async def body(store: ResponseStore) -> None:
        busy = threading.Event()
        store._executor.submit(busy.wait)  # the store's one thread is busy: the put waits in its queue
        task = asyncio.create_task(store.put(stored("resp_1", 1)))
        await asyncio.sleep(0)  # the put is queued
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        busy.set()
        assert await store.count() == 1  # queued behind the put, on the same thread

    run_with((":memory:", 10, 10_000), body)


@pytest.mark.parametrize(
    "prepare",
    [
        pytest.param(lambda db: db.execute("PRAGMA user_version = 2"), id="another-version"),
        pytest.param(lambda db: db.execute("CREATE TABLE notes (body TEXT)"), id="another-application"),
    ],
)
def test_another_schema_is_refused(tmp_path: Path, prepare: Callable[[sqlite3.Connection], object]) -> None:
    path = tmp_path / "responses.sqlite3"
    with sqlite3.connect(path) as db:
        prepare(db)
    db.close()
    with pytest.raises(StartupError, match="schema version"):
        ResponseStore(str(path), 10, 10_000)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    path.write_bytes(b"not a database at all, " * 100)
    with pytest.raises(StartupError, match="Cannot open the response store"):
        ResponseStore(str(path), 10, 10_000)


def test_nothing_of_the_contents_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def body(store: ResponseStore) -> None:
        for n in range(5):
            await store.put(stored(f"resp_{n}", n, SECRET))
        await store.put(stored("resp_4", 4, SECRET + " again"))
        await store.put(stored("resp_big", 9, SECRET * 50))
        await store.get("resp_4")
        await store.delete("resp_4")

    with caplog.at_level(logging.DEBUG):
        run_with((":memory:", 2, 1_000), body)
    assert caplog.records  # the too-large one's warning, the evictions
    for record in caplog.records:
        assert "secret" not in record.getMessage()
        assert "secret" not in repr(record.args)
        assert record.exc_text is None or "secret" not in record.exc_text


def test_closing_twice_is_harmless() -> None:
    async def main() -> None:
        store = ResponseStore(":memory:", 1, 1_000)
        await store.close()
        await store.close()

    asyncio.run(main())


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    assert default_responses_db({"HOME": "/home/u", "XDG_DATA_HOME": "/data"}) == "/data/tokserve/responses.sqlite3"
    expected = "/home/u/.local/share/tokserve/responses.sqlite3"
    assert default_responses_db({"HOME": "/home/u"}) == expected
    assert default_responses_db({"HOME": "/home/u", "XDG_DATA_HOME": "relative"}) == expected  # the spec: ignored
