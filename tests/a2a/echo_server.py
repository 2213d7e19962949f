"""An A2A echo agent built on the official Python SDK's server (a2a-sdk 1.3.0), run by the
Rust e2e tests as a remote agent (and as a reference server for py_client.py).

    python echo_server.py [--port 0] [--token T] [--name echo]

Serves JSON-RPC (protocol 1.0, with the SDK's 0.3 compatibility on the same endpoint) at
http://127.0.0.1:PORT/ and the agent card at /.well-known/agent-card.json, under uvicorn.
--port 0 picks a free port. Once it listens it prints exactly one line on stdout,
    READY http://127.0.0.1:PORT
and logs only to stderr from then on. With --token every request but the card's must carry
`Authorization: Bearer T` (401 otherwise), and the card lists a bearer security scheme.

Behaviour: a user message with text X in context C makes a task that ends COMPLETED, whose
artifact "reply" holds `echo: X (turn N)`, N counting the messages this server has seen in
context C (1 for the first). The artifact goes out in two chunks (the second appended) before
the final COMPLETED status, whose message carries the full reply too. A message whose text
starts with `slow` waits 5 s first; cancelling it ends the task CANCELED.
"""

import argparse
import asyncio
import logging
import socket
import sys
from collections import Counter
from typing import Any

import uvicorn
from a2a.helpers import get_message_text, new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    Part,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from a2a.utils.constants import (
    AGENT_CARD_WELL_KNOWN_PATH,
    PROTOCOL_VERSION_0_3,
    PROTOCOL_VERSION_1_0,
    TransportProtocol,
)
from starlette.applications import Starlette
from starlette.responses import JSONResponse

RPC_PATH = "/"
SLOW_PREFIX = "slow"
SLOW_DELAY_S = 5
BEARER_SCHEME = "bearer"
SHUTDOWN_GRACE_S = 2  # open SSE streams do not hold up a SIGTERM longer

log = logging.getLogger("echo_server")


class EchoExecutor(AgentExecutor):
    """Answers every user message with a task whose artifact echoes its text."""

    def __init__(self) -> None:
        self.turns: Counter[str] = Counter()  # messages seen, by context id

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message = context.message
        if message is None:  # the handler always passes the request's message
            raise ValueError("no message to answer")
        text = get_message_text(message)
        task = context.current_task
        if task is None:
            task = new_task_from_user_message(message)
            await event_queue.enqueue_event(task)
        self.turns[task.context_id] += 1
        reply = f"echo: {text} (turn {self.turns[task.context_id]})"
        log.info("task %s in context %s: %r -> %r", task.id, task.context_id, text, reply)

        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        if text.startswith(SLOW_PREFIX):
            await asyncio.sleep(SLOW_DELAY_S)  # cancel() interrupts this
        # The reply in two chunks of one artifact: the second is appended to the first.
        split = len(reply) // 2
        artifact_id = f"{task.id}-reply"
        await updater.add_artifact(
            [Part(text=reply[:split])], artifact_id=artifact_id, name="reply", append=False, last_chunk=False
        )
        await updater.add_artifact(
            [Part(text=reply[split:])], artifact_id=artifact_id, name="reply", append=True, last_chunk=True
        )
        await updater.complete(updater.new_agent_message([Part(text=reply)]))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        # The handler cancels the running execute() right after this returns.
        log.info("cancelling task %s", context.task_id)
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await updater.cancel()


def build_card(name: str, url: str, token: str | None) -> AgentCard:
    card = AgentCard(
        name=name,
        description=f"Echo test agent: answers `echo: TEXT (turn N)`; `slow...` waits {SLOW_DELAY_S} s",
        version="1.0.0",
        # One JSON-RPC endpoint speaks both versions: 1.0 (the SDK's current) and 0.3 (its
        # compatibility layer). The 0.3 interface makes the SDK add the 0.3 card fields
        # (url, preferredTransport, protocolVersion) when it serves the card.
        supported_interfaces=[
            AgentInterface(
                url=url, protocol_binding=TransportProtocol.JSONRPC, protocol_version=PROTOCOL_VERSION_1_0
            ),
            AgentInterface(
                url=url, protocol_binding=TransportProtocol.JSONRPC, protocol_version=PROTOCOL_VERSION_0_3
            ),
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id="echo",
                name="Echo",
                description="Repeats the message text with the turn number of its context",
                tags=["echo", "test"],
                examples=["hello", "slow one"],
            )
        ],
    )
    if token:
        card.security_schemes[BEARER_SCHEME].CopyFrom(
            SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="Bearer", description="the --token value"
                )
            )
        )
        card.security_requirements.append(SecurityRequirement(schemes={BEARER_SCHEME: StringList()}))
    return card


class BearerAuth:
    """ASGI middleware: every HTTP request but the card's needs `Authorization: Bearer TOKEN`."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != AGENT_CARD_WELL_KNOWN_PATH:
            if dict(scope["headers"]).get(b"authorization") != self.expected:
                response = JSONResponse(
                    {"error": "missing or wrong bearer token"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--token", help="bearer token every request but the card's must carry")
    parser.add_argument("--name", default="echo", help="the agent's name on its card")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    # Bind first, so the card can name the port that --port 0 picked.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    card = build_card(args.name, base_url + RPC_PATH, args.token)
    handler = DefaultRequestHandler(
        agent_executor=EchoExecutor(), task_store=InMemoryTaskStore(), agent_card=card
    )
    routes = [
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, RPC_PATH, enable_v0_3_compat=True),
    ]
    app: Any = Starlette(routes=routes)
    if args.token:
        app = BearerAuth(app, args.token)

    # log_config=None: uvicorn leaves logging to basicConfig (stderr); its access log would
    # otherwise go to stdout.
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, lifespan="off", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            await serving  # startup failed: raise its error
            return
        await asyncio.sleep(0.02)
    print(f"READY {base_url}", flush=True)
    try:
        await serving
    finally:
        await handler.aclose()


def main() -> int:
    args = parse_args(sys.argv[1:])
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
