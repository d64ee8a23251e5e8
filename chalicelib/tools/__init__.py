"""The tools, one module per family. `build_registry` is the only entry point."""

from __future__ import annotations

import functools
from typing import Any

from chalicelib.db import Database, DatabaseUnavailable
from chalicelib.mcp import Registry, ToolCall, ToolResult, Unavailable
from chalicelib.mcp.registry import ToolHandler
from chalicelib.tools import analytics, chat, configs, keys, limits, sessions, templates


def _database_errors_as_results(handler: ToolHandler) -> ToolHandler:
    @functools.wraps(handler)
    def run(call: ToolCall) -> ToolResult | dict[str, Any]:
        try:
            return handler(call)
        except DatabaseUnavailable as error:
            raise Unavailable(str(error)) from None

    return run


def build_registry(db: Database) -> Registry:
    """Every tool of the server, bound to a database."""
    registry = Registry()
    chat.register(registry, db)
    sessions.register(registry, db)
    keys.register(registry, db)
    limits.register(registry, db)
    analytics.register(registry, db)
    configs.register(registry, db)
    templates.register(registry, db)
    for tool in registry.tools.values():
        tool.handler = _database_errors_as_results(tool.handler)
    return registry
