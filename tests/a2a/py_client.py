"""An A2A client built on the official Python SDK (a2a-sdk 1.3.0), run by the Rust e2e tests
against Weft's A2A server, and against echo_server.py beside this file.

    python py_client.py --url URL [--token T] [--check NAME]... [--message TEXT]
                        [--expect REGEX] [--slow TEXT] [--approval TEXT [--approval-expect REGEX]]

URL is the agent's base URL: its card is at URL/.well-known/agent-card.json, and the SDK's
client factory picks the JSON-RPC interface (protocol 1.0) the card lists. With --token every
request carries `Authorization: Bearer T`. --check selects checks (repeatable; default all, in
the order of CHECKS below; `unauthorized` only runs with --token, `approval` only with
--approval). --message is what the
send/stream checks send, and --expect a regular expression its reply must match (searched, not
anchored); --slow is a message the agent takes some seconds to answer, for the checks that
cancel or subscribe to a running task.

Prints one JSON object on stdout:
    {"checks": {NAME: {"ok": bool, "detail": ...}}, "context_ids": {...}}
and exits 0 only if every selected check is ok. context_ids holds the context ids the checks
used (`memory`: the one both messages of the memory check went to), so the harness can look
at what the agent remembers of them. Each check has a 30 s timeout; a check that raised
records the exception in its detail.
"""

import argparse
import asyncio
import json
import re
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from a2a.client import A2ACardResolver, A2AClientError, Client, ClientConfig, create_client
from a2a.types.a2a_pb2 import (
    AgentCard,
    AgentInterface,
    Artifact,
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
    TaskState,
)
from a2a.utils.constants import PROTOCOL_VERSION_1_0, VERSION_HEADER, TransportProtocol
from a2a.utils.errors import JSON_RPC_ERROR_CODE_MAP, A2AError, TaskNotCancelableError, TaskNotFoundError
from google.protobuf.json_format import MessageToDict

CHECK_TIMEOUT_S = 30  # no check may hang the test
HTTP_TIMEOUT_S = 60
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
TERMINAL_STATES = {
    TaskState.TASK_STATE_COMPLETED,
    TaskState.TASK_STATE_CANCELED,
    TaskState.TASK_STATE_FAILED,
    TaskState.TASK_STATE_REJECTED,
}


def dump(message: Any) -> Any:
    """A protobuf SDK object as the JSON the server sent (camelCase keys)."""
    return MessageToDict(message)


def state_name(state: int) -> str:
    return TaskState.Name(state)


def describe(error: BaseException) -> str:
    """An exception as text: an A2A error with its JSON-RPC code, and what caused it."""
    if isinstance(error, (TimeoutError, asyncio.TimeoutError)):  # distinct before Python 3.11
        return f"timed out after {CHECK_TIMEOUT_S} s"
    text = f"{type(error).__name__}: {error}"
    code = JSON_RPC_ERROR_CODE_MAP.get(type(error))
    if code is not None:
        text = f"{type(error).__name__} ({code}): {error}"
    cause = error.__cause__
    if cause is not None and str(cause) not in str(error):
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text


def a2a_error(error: A2AError) -> dict[str, Any]:
    return {
        "type": type(error).__name__,
        "code": JSON_RPC_ERROR_CODE_MAP.get(type(error)),
        "message": error.message,
    }


def parts_text(parts: Any) -> str:
    """The text parts of a message or an artifact, concatenated (chunks are not lines)."""
    return "".join(part.text for part in parts if part.WhichOneof("content") == "text")


def artifacts_text(artifacts: Any) -> str:
    return "".join(parts_text(artifact.parts) for artifact in artifacts)


def status_text(task: Task) -> str | None:
    return parts_text(task.status.message.parts) if task.status.HasField("message") else None


def task_summary(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "contextId": task.context_id,
        "state": state_name(task.status.state),
        "artifactText": artifacts_text(task.artifacts),
        "statusText": status_text(task),
        "history": len(task.history),
    }


def user_message(text: str, context_id: str | None = None, task_id: str | None = None) -> Message:
    return Message(
        role=Role.ROLE_USER,
        message_id=str(uuid.uuid4()),
        context_id=context_id or "",
        task_id=task_id or "",
        parts=[Part(text=text)],
    )


def is_v1(interface: AgentInterface) -> bool:
    """A JSON-RPC interface at protocol 1.0 (a patch number, as in 1.0.0, does not matter)."""
    return interface.protocol_binding == TransportProtocol.JSONRPC and (
        interface.protocol_version.split(".")[:2] == PROTOCOL_VERSION_1_0.split(".")
    )


class Session:
    """The agent under test: its card, SDK clients for it, and what the checks pass on."""

    def __init__(self, args: argparse.Namespace, http: httpx.AsyncClient) -> None:
        self.args = args
        self.http = http
        self.expect = re.compile(args.expect)
        self._card: AgentCard | None = None
        self._clients: dict[bool, Client] = {}
        self.sent_task: Task | None = None  # the send check's task, for later checks
        self.context_ids: dict[str, str] = {}

    async def card(self) -> AgentCard:
        if self._card is None:
            self._card = await A2ACardResolver(self.http, self.args.url).get_agent_card()
        return self._card

    async def client(self, *, streaming: bool) -> Client:
        """The SDK's client for the card, streaming (SSE) or not; one of each, reused."""
        if streaming not in self._clients:
            config = ClientConfig(streaming=streaming, httpx_client=self.http)
            self._clients[streaming] = await create_client(await self.card(), config)
        return self._clients[streaming]

    async def send(
        self,
        text: str,
        *,
        context_id: str | None = None,
        task_id: str | None = None,
        return_immediately: bool = False,
    ) -> Task:
        """SendMessage (not streaming), whose answer must be a task."""
        request = SendMessageRequest(
            message=user_message(text, context_id, task_id),
            configuration=SendMessageConfiguration(return_immediately=return_immediately),
        )
        client = await self.client(streaming=False)
        responses = [response async for response in client.send_message(request)]
        if len(responses) != 1 or not responses[0].HasField("task"):
            raise AssertionError(f"SendMessage answered {[dump(r) for r in responses]}, not one task")
        return responses[0].task

    async def sent(self) -> Task:
        """The send check's completed task; a blocking send of --message if it did not run."""
        if self.sent_task is None:
            self.sent_task = await self.send(self.args.message)
            self.context_ids["send"] = self.sent_task.context_id
        return self.sent_task

    async def get_task(self, task_id: str, history_length: int | None = None) -> Task:
        client = await self.client(streaming=False)
        return await client.get_task(GetTaskRequest(id=task_id, history_length=history_length))

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


async def check_card(session: Session) -> tuple[bool, Any]:
    """The card parses, streams, has a skill and a JSON-RPC interface at protocol 1.0."""
    card = await session.card()
    interfaces = [dump(interface) for interface in card.supported_interfaces]
    ok = (
        card.capabilities.streaming
        and len(card.skills) > 0
        and any(is_v1(interface) for interface in card.supported_interfaces)
    )
    return ok, {"name": card.name, "skills": [skill.id for skill in card.skills], "interfaces": interfaces}


async def check_send(session: Session) -> tuple[bool, Any]:
    """A blocking SendMessage of --message: a COMPLETED task whose artifact and status match."""
    task = await session.send(session.args.message)
    session.sent_task = task
    session.context_ids["send"] = task.context_id
    status = status_text(task)
    ok = (
        task.status.state == TaskState.TASK_STATE_COMPLETED
        and bool(session.expect.search(artifacts_text(task.artifacts)))
        and status is not None
        and bool(session.expect.search(status))
    )
    detail: dict[str, Any] = task_summary(task)
    if not ok:
        detail["raw"] = dump(task)
    return ok, detail


def apply_artifact_update(artifacts: dict[str, Artifact], response: StreamResponse) -> None:
    """What a client rebuilds from artifact updates: append adds parts, else it replaces."""
    update = response.artifact_update
    artifact_id = update.artifact.artifact_id
    if update.append and artifact_id in artifacts:
        artifacts[artifact_id].parts.extend(update.artifact.parts)
    else:
        artifacts[artifact_id] = Artifact()
        artifacts[artifact_id].CopyFrom(update.artifact)


def final_state(response: StreamResponse) -> int | None:
    if response.HasField("status_update"):
        return response.status_update.status.state
    if response.HasField("task"):
        return response.task.status.state
    return None


async def collect(stream: AsyncIterator[StreamResponse]) -> list[StreamResponse]:
    return [response async for response in stream]


async def check_stream(session: Session) -> tuple[bool, Any]:
    """SendStreamingMessage of --message: artifact updates, then a final COMPLETED status."""
    client = await session.client(streaming=True)
    request = SendMessageRequest(message=user_message(session.args.message))
    events = await collect(client.send_message(request))
    kinds = [event.WhichOneof("payload") for event in events]
    artifacts: dict[str, Artifact] = {}
    for event in events:
        if event.HasField("artifact_update"):
            apply_artifact_update(artifacts, event)
        elif event.HasField("task") and event.task.artifacts:
            artifacts = {artifact.artifact_id: artifact for artifact in event.task.artifacts}
    reply = artifacts_text(artifacts.values())
    last_state = final_state(events[-1]) if events else None
    ok = (
        "artifact_update" in kinds
        and last_state == TaskState.TASK_STATE_COMPLETED
        and bool(session.expect.search(reply))
    )
    detail: dict[str, Any] = {"events": kinds, "reply": reply}
    if events and events[0].HasField("task"):
        session.context_ids["stream"] = events[0].task.context_id
    if not ok:
        detail["raw"] = [dump(event) for event in events]
    return ok, detail


async def check_get(session: Session) -> tuple[bool, Any]:
    """GetTask of the send check's task with historyLength 1: COMPLETED, at most 1 message."""
    task = await session.get_task((await session.sent()).id, history_length=1)
    ok = task.status.state == TaskState.TASK_STATE_COMPLETED and len(task.history) <= 1
    return ok, task_summary(task)


async def check_list(session: Session) -> tuple[bool, Any]:
    """ListTasks in the send check's context includes its task."""
    sent = await session.sent()
    client = await session.client(streaming=False)
    response = await client.list_tasks(ListTasksRequest(context_id=sent.context_id))
    ids = [task.id for task in response.tasks]
    return sent.id in ids, {"contextId": sent.context_id, "taskIds": ids}


async def check_cancel_running(session: Session) -> tuple[bool, Any]:
    """--slow with returnImmediately gives a running task; CancelTask makes it CANCELED."""
    started = await session.send(session.args.slow, return_immediately=True)
    client = await session.client(streaming=False)
    cancelled = await client.cancel_task(CancelTaskRequest(id=started.id))
    after = await session.get_task(started.id)
    ok = (
        started.status.state not in TERMINAL_STATES
        and cancelled.status.state == TaskState.TASK_STATE_CANCELED
        and after.status.state == TaskState.TASK_STATE_CANCELED
    )
    return ok, {
        "started": state_name(started.status.state),
        "cancelled": state_name(cancelled.status.state),
        "afterwards": state_name(after.status.state),
        "taskId": started.id,
    }


async def check_cancel_finished(session: Session) -> tuple[bool, Any]:
    """CancelTask of the send check's completed task is TaskNotCancelableError (-32002)."""
    client = await session.client(streaming=False)
    try:
        task = await client.cancel_task(CancelTaskRequest(id=(await session.sent()).id))
    except A2AError as error:
        return isinstance(error, TaskNotCancelableError), a2a_error(error)
    return False, {"unexpected_result": dump(task)}


async def check_subscribe(session: Session) -> tuple[bool, Any]:
    """--slow with returnImmediately, then SubscribeToTask: the events end COMPLETED."""
    started = await session.send(session.args.slow, return_immediately=True)
    client = await session.client(streaming=True)
    events = await collect(client.subscribe(SubscribeToTaskRequest(id=started.id)))
    kinds = [event.WhichOneof("payload") for event in events]
    last_state = final_state(events[-1]) if events else None
    ok = last_state == TaskState.TASK_STATE_COMPLETED
    detail: dict[str, Any] = {
        "started": state_name(started.status.state),
        "events": kinds,
        "last": state_name(last_state) if last_state is not None else None,
    }
    if not ok:
        detail["raw"] = [dump(event) for event in events]
    return ok, detail


async def check_memory(session: Session) -> tuple[bool, Any]:
    """Two blocking sends in one new context: both COMPLETED, both in that context."""
    context_id = str(uuid.uuid4())
    session.context_ids["memory"] = context_id
    first = await session.send(session.args.message, context_id=context_id)
    second = await session.send(session.args.message, context_id=context_id)
    ok = all(
        task.status.state == TaskState.TASK_STATE_COMPLETED and task.context_id == context_id
        for task in (first, second)
    )
    return ok, {"contextId": context_id, "tasks": [task_summary(first), task_summary(second)]}


async def check_approval(session: Session) -> tuple[bool, Any]:
    """--approval is a message whose run needs a person's approval: the task is INPUT_REQUIRED,
    saying how to approve; the next message of the task, "yes", resumes it: the same task ends
    COMPLETED with a reply matching --approval-expect."""
    first = await session.send(session.args.approval)
    asked = status_text(first) or ""
    second = await session.send("yes", context_id=first.context_id, task_id=first.id)
    answered = status_text(second) or ""
    ok = (
        first.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        and "approve" in asked
        and second.id == first.id
        and second.status.state == TaskState.TASK_STATE_COMPLETED
        and bool(re.search(session.args.approval_expect, answered))
    )
    return ok, {"asked": task_summary(first), "answered": task_summary(second)}


async def check_unknown_task(session: Session) -> tuple[bool, Any]:
    """GetTask of an id that does not exist is TaskNotFoundError (-32001)."""
    try:
        task = await session.get_task("no-such-task")
    except A2AError as error:
        return isinstance(error, TaskNotFoundError), a2a_error(error)
    return False, {"unexpected_result": dump(task)}


async def check_bad_params(session: Session) -> tuple[bool, Any]:
    """Raw JSON-RPC: a message without parts is -32602, an unknown method -32601."""
    card = await session.card()
    interface = next((i for i in card.supported_interfaces if is_v1(i)), None)
    if interface is None:
        return False, {"error": "the card lists no JSON-RPC 1.0 interface"}
    headers = {VERSION_HEADER: PROTOCOL_VERSION_1_0}
    requests = {
        "emptyParts": (
            INVALID_PARAMS,
            {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "SendMessage",
                "params": {"message": {"role": "ROLE_USER", "messageId": "m1", "parts": []}},
            },
        ),
        "unknownMethod": (
            METHOD_NOT_FOUND,
            {"jsonrpc": "2.0", "id": 8, "method": "NoSuchMethod", "params": {}},
        ),
    }
    detail: dict[str, Any] = {"url": interface.url}
    ok = True
    for name, (want, body) in requests.items():
        response = await session.http.post(interface.url, json=body, headers=headers)
        try:
            answer = response.json()
        except json.JSONDecodeError:
            answer = response.text
        error = answer.get("error") if isinstance(answer, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        detail[name] = {"http": response.status_code, "code": code}
        if code != want or answer.get("id") != body["id"]:
            detail[name]["answer"] = answer
            ok = False
    return ok, detail


def http_status(error: BaseException | None) -> int | None:
    """The HTTP status behind an SDK error (it raises A2AClientError from httpx's error)."""
    while error is not None:
        if isinstance(error, httpx.HTTPStatusError):
            return error.response.status_code
        error = error.__cause__
    return None


async def check_unauthorized(session: Session) -> tuple[bool, Any]:
    """A request with a wrong bearer token fails with HTTP 401."""
    async with httpx.AsyncClient(
        timeout=HTTP_TIMEOUT_S, headers={"Authorization": f"Bearer wrong-{session.args.token}"}
    ) as http:
        # The card the right token fetched: only the request under test uses the wrong one.
        client = await create_client(await session.card(), ClientConfig(streaming=False, httpx_client=http))
        try:
            task = await client.get_task(GetTaskRequest(id="no-such-task"))
        except A2AClientError as error:
            status = http_status(error)
            return status == 401, {"status": status, "exception": describe(error)}
        finally:
            await client.close()
    return False, {"unexpected_result": dump(task)}


CHECKS: dict[str, Callable[[Session], Awaitable[tuple[bool, Any]]]] = {
    "card": check_card,
    "send": check_send,
    "stream": check_stream,
    "get": check_get,
    "list": check_list,
    "cancel_running": check_cancel_running,
    "cancel_finished": check_cancel_finished,
    "subscribe": check_subscribe,
    "memory": check_memory,
    "unknown_task": check_unknown_task,
    "bad_params": check_bad_params,
    "unauthorized": check_unauthorized,
    "approval": check_approval,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", required=True, help="the agent's base URL (its card is at URL/.well-known/agent-card.json)"
    )
    parser.add_argument("--token", help="bearer token for every request")
    parser.add_argument("--check", action="append", choices=list(CHECKS), help="check to run (repeatable)")
    parser.add_argument(
        "--message", default="How many tickets are open?", help="what send/stream/memory send"
    )
    parser.add_argument("--expect", default="(?i)open ticket", help="regex the reply to --message must match")
    parser.add_argument(
        "--slow",
        default="draft a first reply to ticket T-none",
        help="a message the agent takes ~5 s to answer",
    )
    parser.add_argument("--approval", help="a message whose run waits for a person's approval")
    parser.add_argument(
        "--approval-expect", default=".", help="regex the reply after approving --approval must match"
    )
    args = parser.parse_args(argv)
    if args.check and "unauthorized" in args.check and not args.token:
        parser.error("the unauthorized check needs --token")
    if args.check and "approval" in args.check and not args.approval:
        parser.error("the approval check needs --approval")
    optional = {"unauthorized": args.token, "approval": args.approval}
    args.check = args.check or [name for name in CHECKS if optional.get(name, True)]
    try:
        re.compile(args.expect)
    except re.error as error:
        parser.error(f"--expect is not a regular expression: {error}")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"checks": {}, "context_ids": {}}
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, headers=headers) as http:
        session = Session(args, http)
        try:
            for name in args.check:
                try:
                    ok, detail = await asyncio.wait_for(CHECKS[name](session), CHECK_TIMEOUT_S)
                except Exception as error:  # a check that raised has failed; the others still run
                    ok, detail = False, {"exception": describe(error)}
                report["checks"][name] = {"ok": bool(ok), "detail": detail}
        finally:
            await session.close()
        report["context_ids"] = session.context_ids
    return report


def main() -> int:
    args = parse_args(sys.argv[1:])
    report = asyncio.run(run(args))
    print(json.dumps(report))
    return 0 if all(check["ok"] for check in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
