"""The tools, one module per family. `build_registry` is the only entry point."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from chalicelib import apps
from chalicelib.db import Database, DatabaseUnavailable
from chalicelib.mcp import JsonRpcError, Registry, ToolCall, ToolResult, Unavailable
from chalicelib.mcp.errors import UNAVAILABLE
from chalicelib.mcp.registry import ToolHandler
from chalicelib.tools import analytics, chat, configs, jobs, keys, limits, oauth, sessions, templates


def _database_errors_as_results(handler: ToolHandler) -> ToolHandler:
    @functools.wraps(handler)
    def run(call: ToolCall) -> ToolResult | dict[str, Any]:
        try:
            return handler(call)
        except DatabaseUnavailable as error:
            raise Unavailable(str(error)) from None

    return run


F = TypeVar("F", bound=Callable[..., Any])


def _database_errors_as_503(function: F) -> F:
    """For resources and prompts, which have no isError result: a JSON-RPC error, HTTP 503."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except DatabaseUnavailable as error:
            raise JsonRpcError(UNAVAILABLE, str(error), http_status=503) from None

    return run  # type: ignore[return-value]


def build_registry(db: Database) -> Registry:
    """Every tool of the server, bound to a database."""
    registry = Registry()
    chat.register(registry, db)
    jobs.register(registry, db)
    oauth.register(registry, db)
    sessions.register(registry, db)
    keys.register(registry, db)
    limits.register(registry, db)
    analytics.register(registry, db)
    configs.register(registry, db)
    templates.register(registry, db)
    apps.register(registry)
    for tool in registry.tools.values():
        tool.handler = _database_errors_as_results(tool.handler)
    for resources in registry.resources:
        resources.list_for = _database_errors_as_503(resources.list_for)
        resources.read_for = _database_errors_as_503(resources.read_for)
    for prompts in registry.prompts:
        prompts.list_for = _database_errors_as_503(prompts.list_for)
        prompts.get_for = _database_errors_as_503(prompts.get_for)
    return registry
