"""A stdio MCP server for the `weft mcp attach` e2e tests (see README.md beside this file).

Written with the low-level `Server` of the official Python SDK (mcp 2.3.0) so every tool's
schemas and results are spelled out exactly as the tests expect them:

    echo          {text: string}          -> text content `text`, structuredContent {text}
    add           {a: number, b: number}  -> structuredContent {sum}
    fail          {}                      -> isError result, text "fixture failure"
    math.mul      {a: number, b: number}  -> structuredContent {product}  (a name with a dot)
    enable_extra  {}                      -> registers tool `extra` (returns "extra tool") and
                                             announces the change (tools/list_changed)

`add` and `math.mul` also give their structured content as JSON text in content[0]; `echo`'s
text content is the text itself.
Only protocol goes to stdout (the SDK's stdio transport owns it); logging goes to stderr.

The SDK serves both protocol eras on one connection, decided by the client's first request:
the initialize handshake (2025-11-25 and older), where the change is announced with a
notifications/tools/list_changed notification, and 2026-07-28 (server/discover, no
initialize), where it is delivered on the client's subscriptions/listen streams.

Run: python fixture_server.py   (needs the venv that scripts/install-mcp-clients makes)
"""

import json
import logging
import sys
from typing import Any

import anyio
from mcp import types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

log = logging.getLogger("fixture_server")

NUMBER_PAIR = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
}
NO_ARGUMENTS = {"type": "object", "properties": {}}


def object_schema(field: str, field_type: str) -> dict[str, Any]:
    return {"type": "object", "properties": {field: {"type": field_type}}, "required": [field]}


BASE_TOOLS = [
    types.Tool(
        name="echo",
        description="Returns the text it is given.",
        input_schema=object_schema("text", "string"),
        output_schema=object_schema("text", "string"),
    ),
    types.Tool(
        name="add",
        description="Adds two numbers.",
        input_schema=NUMBER_PAIR,
        output_schema=object_schema("sum", "number"),
    ),
    types.Tool(
        name="fail",
        description="Always fails with an isError result.",
        input_schema=NO_ARGUMENTS,
    ),
    types.Tool(
        name="math.mul",
        description="Multiplies two numbers.",
        input_schema=NUMBER_PAIR,
        output_schema=object_schema("product", "number"),
    ),
    types.Tool(
        name="enable_extra",
        description="Registers the tool `extra` and announces that the tool list changed.",
        input_schema=NO_ARGUMENTS,
    ),
]
EXTRA_TOOL = types.Tool(name="extra", description="Exists once enable_extra was called.", input_schema=NO_ARGUMENTS)


# The JSON Schema types the tools' arguments use, as Python types (bool is no number here).
JSON_TYPES: dict[str, type | tuple[type, ...]] = {"string": str, "number": (int, float)}


def check_arguments(tool: types.Tool, args: dict[str, Any]) -> None:
    """Rejects arguments that miss a required field or have a field of the wrong type."""
    schema = tool.input_schema
    missing = [field for field in schema.get("required", []) if field not in args]
    mistyped = [
        field
        for field, spec in schema.get("properties", {}).items()
        if field in args and (isinstance(args[field], bool) or not isinstance(args[field], JSON_TYPES[spec["type"]]))
    ]
    if missing or mistyped:
        raise MCPError(
            types.INVALID_PARAMS,
            f"Invalid arguments for {tool.name}: missing {missing}, wrong type {mistyped}",
        )


def text_result(text: str, *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=is_error)


def structured_result(value: dict[str, Any]) -> types.CallToolResult:
    """A result whose structured content is also given as JSON text, as the spec advises."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(value))],
        structured_content=value,
    )


class Fixture:
    """The server's state: whether `extra` is registered, and the bus that feeds listen streams."""

    def __init__(self) -> None:
        self.extra_enabled = False
        self.bus = InMemorySubscriptionBus()

    def tools(self) -> list[types.Tool]:
        return BASE_TOOLS + ([EXTRA_TOOL] if self.extra_enabled else [])

    async def list_tools(
        self, ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools())

    async def call_tool(self, ctx: ServerRequestContext, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = next((tool for tool in self.tools() if tool.name == params.name), None)
        if tool is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        args = params.arguments or {}
        check_arguments(tool, args)
        log.info("tools/call %s %s", params.name, args)
        match params.name:
            case "echo":
                return types.CallToolResult(
                    content=[types.TextContent(type="text", text=args["text"])],
                    structured_content={"text": args["text"]},
                )
            case "add":
                return structured_result({"sum": args["a"] + args["b"]})
            case "fail":
                return text_result("fixture failure", is_error=True)
            case "math.mul":
                return structured_result({"product": args["a"] * args["b"]})
            case "enable_extra":
                self.extra_enabled = True
                await self.announce_tools_changed(ctx)
                return text_result("extra enabled")
            case "extra":
                return text_result("extra tool")
        raise AssertionError(f"listed tool {params.name} has no implementation")

    async def announce_tools_changed(self, ctx: ServerRequestContext) -> None:
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            await self.bus.publish(ToolsListChanged())
        else:
            await ctx.session.send_tool_list_changed()
        log.info("announced tools/list_changed (protocol %s)", ctx.protocol_version)


async def main() -> None:
    fixture = Fixture()
    server = Server(
        "weft-fixture",
        version="1.0.0",
        on_list_tools=fixture.list_tools,
        on_call_tool=fixture.call_tool,
        on_subscriptions_listen=ListenHandler(fixture.bus),
    )
    # listChanged is only advertised in the handshake era when asked for.
    options = server.create_initialization_options(NotificationOptions(tools_changed=True))
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, options)


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="fixture_server: %(message)s")
    anyio.run(main)
