"""An MCP client built on the official Python SDK (mcp 2.3.0), run by the Rust e2e tests
against Weft's MCP server (see README.md beside this file).

    python py_client.py --url URL [--token T] [--check NAME]... [--mode auto|legacy]
    python py_client.py --stdio [--check NAME]... [--mode auto|legacy] -- CMD ARGS...

--url talks Streamable HTTP to URL (with `Authorization: Bearer T` when --token is given);
--stdio launches CMD ARGS... and talks to it over its stdin/stdout (it inherits this
process's environment; its stderr goes to ours). --check selects checks (repeatable;
default all, in the order of CHECKS below). --mode is the SDK's connect mode: "auto" (its
default) probes server/discover and adopts 2026-07-28 when the server offers it, falling
back to the initialize handshake; "legacy" always does the handshake.

Prints one JSON object on stdout:
    {"protocolVersion": ..., "checks": {NAME: {"ok": bool, "detail": ...}}}
and exits 0 only if every selected check is ok. The list_changed check prints the line
`READY list_changed` on stderr once it listens, and then waits for the harness to register
service `late`.
"""

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx2  # the SDK's HTTP client: Streamable HTTP takes one to set request headers
from mcp import Client, StdioServerParameters, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

INVALID_PARAMS = -32602
CLASSIFY_ARGS = {"title": "Cannot log in", "body": "password reset fails"}
CHECK_TIMEOUT_S = 30  # no check may hang the test
LIST_CHANGED_WAIT_S = 10
GET_STREAM_WAIT_S = 5
CANCEL_AFTER_S = 0.5


def dump(model: Any) -> Any:
    """A pydantic SDK object as the JSON the server sent (camelCase keys)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def rpc_error(error: MCPError) -> dict[str, Any]:
    return {"code": error.code, "message": error.message}


def describe(error: BaseException) -> str:
    """An exception as text; for the SDK's task-group errors, the exceptions inside them."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in error.exceptions)
    if isinstance(error, MCPError):
        return f"MCPError {error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"


def first_text(result: types.CallToolResult) -> str | None:
    block = result.content[0] if result.content else None
    return block.text if isinstance(block, types.TextContent) else None


class Session:
    """A connected client plus what the checks observe outside of request/response."""

    def __init__(self, *, over_http: bool) -> None:
        self.client: Client
        self.over_http = over_http
        self.tools_changed = anyio.Event()
        # Streamable HTTP in the handshake era: list_changed comes on the GET stream, which
        # the SDK opens in the background after initialize. Set when its response arrives.
        self.get_stream_status: int | None = None
        self.get_stream_answered = anyio.Event()

    async def on_message(self, message: types.ServerNotification | Exception) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.tools_changed.set()

    async def on_http_response(self, response: httpx2.Response) -> None:
        if response.request.method == "GET" and not self.get_stream_answered.is_set():
            self.get_stream_status = response.status_code
            self.get_stream_answered.set()

    @property
    def modern(self) -> bool:
        return self.client.protocol_version in MODERN_PROTOCOL_VERSIONS


async def expect_invalid_params(session: Session, name: str, arguments: dict[str, Any]) -> tuple[bool, Any]:
    try:
        result = await session.client.call_tool(name, arguments)
    except MCPError as error:
        return error.code == INVALID_PARAMS, rpc_error(error)
    return False, {"unexpected_result": dump(result)}


async def check_list_tools(session: Session) -> tuple[bool, Any]:
    """tools/list has tickets_classify: an object inputSchema with a string body, title required."""
    tools = {tool.name: tool for tool in (await session.client.list_tools()).tools}
    classify = tools.get("tickets_classify")
    if classify is None:
        return False, {"error": "no tool tickets_classify", "tools": sorted(tools)}
    schema = classify.input_schema
    required = schema.get("required", [])
    body = schema.get("properties", {}).get("body", {})
    ok = schema.get("type") == "object" and "title" in required and body.get("type") == "string"
    return ok, {"tools": sorted(tools), "inputSchema": schema}


async def check_call(session: Session) -> tuple[bool, Any]:
    """tickets_classify answers with structuredContent {category, priority}, also as JSON text."""
    result = await session.client.call_tool("tickets_classify", CLASSIFY_ARGS)
    structured = result.structured_content
    text = first_text(result)
    try:
        parsed = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        parsed = None
    ok = (
        not result.is_error
        and isinstance(structured, dict)
        and {"category", "priority"} <= structured.keys()
        and parsed == structured
    )
    return ok, dump(result)


async def check_schema_violation(session: Session) -> tuple[bool, Any]:
    """tickets_classify with {"title": 5} is a JSON-RPC error -32602."""
    # An unknown tool is -32602 too: make sure this one is known, so the error is the schema's.
    if "tickets_classify" not in {tool.name for tool in (await session.client.list_tools()).tools}:
        return False, {"error": "no tool tickets_classify"}
    return await expect_invalid_params(session, "tickets_classify", {"title": 5})


async def check_unknown_tool(session: Session) -> tuple[bool, Any]:
    """Calling no_such_tool is a JSON-RPC error -32602."""
    return await expect_invalid_params(session, "no_such_tool", {})


async def check_bus_error(session: Session) -> tuple[bool, Any]:
    """tickets_get of a missing id is an isError result whose text is JSON {code, message}."""
    result = await session.client.call_tool("tickets_get", {"id": "does-not-exist"})
    try:
        error = json.loads(first_text(result) or "")
    except json.JSONDecodeError:
        error = None
    ok = (
        result.is_error is True
        and isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    )
    return ok, dump(result)


async def check_list_changed(session: Session) -> tuple[bool, Any]:
    """After READY, a tools/list_changed notification comes and the new list has a late_ tool."""
    client = session.client
    detail: dict[str, Any] = {"notifications": 0, "tools": None}

    async def await_late_tool() -> None:
        """After READY, relist on every change notification until a `late_` tool shows up."""
        session.tools_changed = anyio.Event()  # only changes from now on count
        print("READY list_changed", file=sys.stderr, flush=True)
        with anyio.move_on_after(LIST_CHANGED_WAIT_S):
            while True:
                await session.tools_changed.wait()
                session.tools_changed = anyio.Event()
                detail["notifications"] += 1
                detail["tools"] = sorted(tool.name for tool in (await client.list_tools()).tools)
                if any(name.startswith("late_") for name in detail["tools"]):
                    return

    if session.modern:
        # 2026-07-28 delivers change notifications only on subscriptions/listen streams;
        # entering waits for the server's acknowledgement.
        detail["via"] = "subscriptions/listen"
        async with client.listen(tools_list_changed=True):
            await await_late_tool()
    else:
        detail["via"] = "notification"
        if session.over_http:
            # The notification comes on the GET stream: wait until it is open (or refused).
            with anyio.move_on_after(GET_STREAM_WAIT_S):
                await session.get_stream_answered.wait()
            detail["getStreamStatus"] = session.get_stream_status
        await await_late_tool()
    ok = detail["notifications"] > 0 and any(name.startswith("late_") for name in detail["tools"] or [])
    return ok, detail


async def check_progress(session: Session) -> tuple[bool, Any]:
    """test_stream, called with a progress token, sends progress notifications and succeeds."""
    updates: list[dict[str, Any]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append({"progress": progress, "total": total, "message": message})

    result = await session.client.call_tool("test_stream", {}, progress_callback=on_progress)
    ok = len(updates) >= 1 and not result.is_error
    return ok, {"progress": updates, "result": dump(result)}


async def check_cancel(session: Session) -> tuple[bool, Any]:
    """test_slow, which runs until cancelled, is cancelled from the client after 0.5 s."""
    # Leaving the scope cancels the call: the SDK then sends notifications/cancelled (over
    # stdio, and over HTTP in the handshake era) or aborts the request's POST (HTTP at
    # 2026-07-28, where closing the response stream is the cancellation).
    result = None
    with anyio.move_on_after(CANCEL_AFTER_S) as scope:
        result = await session.client.call_tool("test_slow", {})
    detail: dict[str, Any] = {"cancelled": scope.cancelled_caught, "afterS": CANCEL_AFTER_S}
    if result is not None:
        detail["unexpected_result"] = dump(result)
    # A request after the cancel shows the connection survived it (and, as writes are in
    # order, that the cancellation went out before it).
    detail["toolsAfterCancel"] = len((await session.client.list_tools()).tools)
    return scope.cancelled_caught, detail


CHECKS: dict[str, Callable[[Session], Awaitable[tuple[bool, Any]]]] = {
    "list_tools": check_list_tools,
    "call": check_call,
    "schema_violation": check_schema_violation,
    "unknown_tool": check_unknown_tool,
    "bus_error": check_bus_error,
    "list_changed": check_list_changed,
    "progress": check_progress,
    "cancel": check_cancel,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="Streamable HTTP endpoint")
    target.add_argument("--stdio", action="store_true", help="launch the command after -- and talk over stdio")
    parser.add_argument("--token", help="bearer token for --url")
    parser.add_argument("--check", action="append", choices=list(CHECKS), help="check to run (repeatable)")
    parser.add_argument("--mode", choices=["auto", "legacy"], default="auto", help="SDK connect mode")
    args = parser.parse_args(argv)
    if args.stdio and not command:
        parser.error("--stdio needs a command after --")
    if args.url and command:
        parser.error("a command after -- is only for --stdio")
    if args.token and not args.url:
        parser.error("--token is only for --url")
    args.command = command
    args.check = args.check or list(CHECKS)
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    session = Session(over_http=args.url is not None)
    report: dict[str, Any] = {"protocolVersion": None, "checks": {}}
    try:
        async with AsyncExitStack() as stack:
            if args.stdio:
                target: Any = StdioServerParameters(
                    command=args.command[0], args=args.command[1:], env=dict(os.environ)
                )
            else:
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(
                        headers={"Authorization": f"Bearer {args.token}"} if args.token else None,
                        # The SDK's own defaults: a long read timeout, as response streams stay open.
                        timeout=httpx2.Timeout(30, read=300),
                        event_hooks={"response": [session.on_http_response]},
                    )
                )
                target = streamable_http_client(args.url, http_client=http)
            client = Client(
                target,
                mode=args.mode,
                client_info=types.Implementation(name="weft-test-py-client", version="1.0.0"),
                message_handler=session.on_message,
                cache=None,  # every listing must reach the server under test
            )
            session.client = await stack.enter_async_context(client)
            report["protocolVersion"] = client.protocol_version
            for name in args.check:
                try:
                    with anyio.fail_after(CHECK_TIMEOUT_S):
                        ok, detail = await CHECKS[name](session)
                except Exception as error:  # a check that raised has failed; the others still run
                    ok, detail = False, {"exception": describe(error)}
                report["checks"][name] = {"ok": ok, "detail": detail}
    except Exception as error:  # could not connect, or the connection broke down
        report["error"] = describe(error)
    for name in args.check:
        report["checks"].setdefault(name, {"ok": False, "detail": "not run: no connection"})
    return report


def main() -> int:
    args = parse_args(sys.argv[1:])
    report = anyio.run(run, args)
    print(json.dumps(report))
    return 0 if all(check["ok"] for check in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
