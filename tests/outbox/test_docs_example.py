"""docs/outbox.md's service example runs as written (its URLs pointed at the test's database)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from eventyard.memory import MemoryBroker, MemoryMessageConfigurer
from eventyard.outbox import OutboxRelay

from .conftest import Database

DOC = Path(__file__).parents[2] / "docs" / "outbox.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


async def test_the_service_and_the_idempotent_handler_of_the_docs_run(
        database: Database, engine: AsyncEngine) -> None:
    service = next(b for b in python_blocks() if "async def place_order" in b)
    inbox = next(b for b in python_blocks() if "@idempotent" in b)
    service = service.replace("postgresql+asyncpg://app@127.0.0.1:5432/shop", database.async_url)
    names: dict[str, Any] = {}
    exec(compile(service, str(DOC), "exec"), names)  # our own documentation
    exec(compile(inbox, str(DOC), "exec"), names)
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE orders (id int PRIMARY KEY)"))
        await connection.execute(text("CREATE TABLE charges (order_id int)"))
    try:
        await names["apply_schema_async"](names["engine"])
        await names["place_order"](1)
        async with MemoryBroker() as broker:
            await asyncio.to_thread(MemoryMessageConfigurer(broker, "acme", "shop").configure)
            assert await OutboxRelay(names["engine"], broker.publisher_transport).relay_once() == 1
            [message] = broker.messages("store")
        assert message.type == "order.placed"
        event = names["OrderPlaced"](order_id=1)
        for _ in range(2):  # the second copy is acked without running
            assert await names["charge_order"](event) is None
        async with engine.connect() as connection:
            charges = await connection.scalar(text("SELECT count(*) FROM charges"))
        assert charges == 1
        assert [s.handlers()[0][0] for s in names["subscribers"]] == ["charge_order"]
    finally:
        await names["engine"].dispose()


async def test_the_sqlite_example_of_the_docs_runs() -> None:
    block = next(b for b in python_blocks() if "SqliteOutboxStore()" in b)
    names: dict[str, Any] = {}
    exec(compile(block, str(DOC), "exec"), names)  # our own documentation
    await names["test_a_committed_order_is_charged_once"]()
