"""ChittyOS ChatGPT MCP server: everything that is not a route."""

__version__ = "0.1.0"
