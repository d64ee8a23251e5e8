"""The Model Context Protocol over Streamable HTTP, stateless. Imports nothing from the rest of the app."""

from chalicelib.mcp.errors import (
    Forbidden,
    InsufficientScope,
    InvalidArguments,
    JsonRpcError,
    NotFound,
    ToolError,
    Unavailable,
)
from chalicelib.mcp.http import HttpRequest, HttpResponse
from chalicelib.mcp.registry import PromptFamily, Registry, ResourceFamily, Tool, ToolCall, ToolResult
from chalicelib.mcp.server import SUPPORTED_VERSIONS, McpServer, ServerInfo

__all__ = [
    "SUPPORTED_VERSIONS",
    "Forbidden",
    "HttpRequest",
    "HttpResponse",
    "InsufficientScope",
    "InvalidArguments",
    "JsonRpcError",
    "McpServer",
    "NotFound",
    "PromptFamily",
    "Registry",
    "ResourceFamily",
    "ServerInfo",
    "Tool",
    "ToolCall",
    "ToolError",
    "ToolResult",
    "Unavailable",
]
