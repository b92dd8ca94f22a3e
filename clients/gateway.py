"""An OpenAI-compatible HTTP gateway: ``/v1/chat/completions`` (streaming over SSE, and not)
and ``/v1/models``, as a client of the scheduler's gRPC API.

    ponder gateway --server localhost:50051 --port 8000      (or: ponder serve --http 8000)

- The last user message is the question. ponder's options ride in extra body fields with the
  names of ``SolveConfig`` (``strategy``, ``generations``, ``budget_mode``, ``beam_width``,
  ``selection``, …); the OpenAI fields ``temperature``, ``top_p``, ``seed`` and ``max_tokens``
  (ponder's token budget) map onto the same names. An unknown field is a 400 naming it.
- Streamed, each reasoning step arrives as a ``reasoning_content`` delta (its tree position and
  PRM score in the extension field ``ponder``), the final answer as ``content``, and the last
  chunk carries ``usage`` with ponder's counts (tokens, generations, FLOPs).
- It is a client of Solve, so deadlines, cancellation and auth behave as over gRPC: the
  ``Authorization: Bearer`` header is passed on as the gRPC token, a client that disconnects
  mid-stream cancels its job, and gRPC statuses become HTTP ones (400, 401, 404, 429 with
  ``Retry-After``, 503, 504).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import grpc
from aiohttp import web

from ponder.clients.client import Tls, build_request
from ponder.proto import pb, pb_grpc
from ponder.proto.config import SolveConfig, option_fields
from ponder.proto.errors import InvalidArgument

log = logging.getLogger(__name__)

# SolveConfig fields a request may set (the service fills in the rest)
OPTION_FIELDS = {f.name for f in option_fields()}
OPENAI_FIELDS = {"model", "messages", "stream", "stream_options", "temperature", "top_p", "seed", "max_tokens",
                 "max_completion_tokens", "n", "user", "metadata"}
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}


class HttpError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.code, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status, headers=self.headers)


def question_of(messages: Any) -> str:
    """The last user message's text (a string, or the text parts of a content list)."""
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "messages: must be a non-empty list", "messages")
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            raise HttpError(400, "messages: a user message's content must be a string or a list of parts", "messages")
    raise HttpError(400, "messages: no user message", "messages")


def config_of(body: dict[str, Any]) -> SolveConfig:
    """The SolveConfig a chat completion request asks for (the scheduler validates values)."""
    unknown = sorted(set(body) - OPTION_FIELDS - OPENAI_FIELDS)
    if unknown:
        raise HttpError(400, f"{unknown[0]}: unknown field (ponder's options are SolveConfig's: "
                             f"{', '.join(sorted(OPTION_FIELDS))})", unknown[0])
    if body.get("n", 1) != 1:
        raise HttpError(400, "n: ponder returns one answer per request (its search spends `generations`)", "n")
    options = {k: v for k, v in body.items() if k in OPTION_FIELDS and k != "model"}
    for name in ("temperature", "top_p", "seed"):
        if body.get(name) is not None:
            options[name] = body[name]
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is not None:
        options["max_tokens"] = tokens
    model = body.get("model")
    if model and model != "ponder":  # "ponder": whatever model the workers serve
        options["model"] = model
    try:
        return SolveConfig(question=question_of(body.get("messages")), **options)
    except TypeError as exc:
        raise HttpError(400, f"request: {exc}") from None


def _usage(final: Any) -> dict[str, Any]:
    u = final.usage
    completion = int(u.decode_tokens)
    prompt = int(u.prompt_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "ponder": {"generations": int(u.generations), "prm_tokens": int(u.prm_tokens), "flops": u.flops,
                       "tokens_saved": int(u.tokens_saved)}}


def _step_delta(step: Any) -> dict[str, Any]:
    ext: dict[str, Any] = {"node_id": step.node_id, "parent_id": step.parent_id, "depth": step.depth,
                           "finished": step.finished}
    if step.HasField("score"):
        ext["score"] = step.score
    return {"reasoning_content": step.text.rstrip() + "\n", "ponder": ext}


class Gateway:
    def __init__(self, target: str, tls: Tls | None = None) -> None:
        self.target = target
        creds = tls.credentials() if tls is not None else None
        self.channel = grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
        self.stub = pb_grpc.ReasonerStub(self.channel)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/view", self.view)  # the live view of a job's search (live_view.py)
        app.router.add_post("/v1/jobs", self.submit)
        app.router.add_get("/v1/jobs/{job_id}/events", self.events)
        return app

    async def view(self, request: web.Request) -> web.Response:
        from ponder.clients.live_view import PAGE

        return web.Response(text=PAGE, content_type="text/html")

    async def submit(self, request: web.Request) -> web.Response:
        """``POST /v1/jobs`` {question, ...SolveConfig fields} → {job_id} (for the live view)."""
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise HttpError(400, "request: the body must be a JSON object")
            unknown = sorted(set(body) - OPTION_FIELDS - {"question"})
            if unknown:
                raise HttpError(400, f"{unknown[0]}: unknown field", unknown[0])
            solve = build_request(SolveConfig(**body))
        except HttpError as exc:
            return exc.response()
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as exc:
            return HttpError(400, f"request: {exc}").response()
        try:
            resp = await self.stub.Submit(solve, metadata=self._metadata(request), timeout=30)
        except grpc.RpcError as exc:
            return self._http_error(exc).response()
        return web.json_response({"job_id": resp.job_id, "created": resp.created})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/jobs/{id}/events``: the job's ponder events as server-sent events (JSON)."""
        from google.protobuf.json_format import MessageToDict

        job_id = request.match_info["job_id"]
        after = request.headers.get("Last-Event-ID") or request.query.get("after", "")
        call = self.stub.Watch(pb.WatchRequest(job_id=job_id, after_event_id=after), metadata=self._metadata(request))
        opened = await self._open_sse(request, call)
        if isinstance(opened, web.Response):
            return opened
        events, event, resp = opened
        try:
            while True:
                data = json.dumps(MessageToDict(event, preserving_proto_field_name=True))
                await resp.write(f"id: {event.event_id}\ndata: {data}\n\n".encode())
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    break
        except grpc.RpcError as exc:
            err = self._http_error(exc, job_id)
            await resp.write(f"data: {json.dumps({'error': {'code': err.code, 'message': err.message}})}\n\n".encode())
        finally:
            if not call.done():
                call.cancel()  # a watcher leaving cancels its Watch, never the job
        await resp.write_eof()
        return resp

    def _metadata(self, request: web.Request) -> tuple[tuple[str, str], ...]:
        """The caller's own bearer token, passed on; never the gateway's (a request without
        one is anonymous, and an authenticating scheduler answers 401)."""
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer ") and header[7:].strip():
            return (("authorization", f"Bearer {header[7:].strip()}"),)
        return ()

    @staticmethod
    def _http_error(exc: grpc.RpcError, job_id: str = "") -> HttpError:
        code = exc.code().name if exc.code() else "UNKNOWN"
        message = exc.details() or code
        if job_id:
            message = f"{message} [job {job_id}]"
        param = message.partition(": ")[0] if code == "INVALID_ARGUMENT" else None
        headers = {}
        for key, value in exc.trailing_metadata() or ():
            if key == "retry-after-s":
                headers["Retry-After"] = str(int(float(value) + 0.999))
        return HttpError(HTTP_STATUS.get(code, 500), message, param, code.lower(), headers)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def models(self, request: web.Request) -> web.Response:
        try:
            info = await self.stub.ServerInfo(pb.ServerInfoRequest(), metadata=self._metadata(request), timeout=10)
        except grpc.RpcError as exc:
            return self._http_error(exc).response()
        now = int(time.time())
        data = [{"id": m, "object": "model", "created": now, "owned_by": "ponder"} for m in ["ponder", *info.models]]
        return web.json_response({"object": "list", "data": data})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return HttpError(400, "request: the body is not JSON").response()
        if not isinstance(body, dict):
            return HttpError(400, "request: the body must be a JSON object").response()
        try:
            cfg = config_of(body)
        except HttpError as exc:
            return exc.response()
        except InvalidArgument as exc:
            return HttpError(400, exc.message, exc.field).response()
        try:
            solve = build_request(cfg)
        except (TypeError, ValueError) as exc:  # a value of the wrong type ("generations": "8")
            return HttpError(400, f"request: a field has a value of the wrong type ({exc})").response()
        call = self.stub.Solve(solve, metadata=self._metadata(request))
        if body.get("stream"):
            return await self._stream(request, call, body)
        return await self._complete(call, body)

    async def _complete(self, call: Any, body: dict[str, Any]) -> web.Response:
        job_id, final, error = "", None, None
        try:
            async for event in call:
                job_id = event.job_id
                kind = event.WhichOneof("kind")
                if kind == "final":
                    final = event.final
                elif kind == "error":
                    error = event.error
        except grpc.RpcError as exc:
            return self._http_error(exc, job_id).response()
        if final is None:
            code = error.code if error is not None else "INTERNAL"
            msg = (error.message if error is not None else "the job ended without an answer") + f" [job {job_id}]"
            return HttpError(HTTP_STATUS.get(code, 500), msg, None, code.lower()).response()
        message = {"role": "assistant", "content": final.answer, "reasoning_content": final.solution}
        return web.json_response({
            "id": f"chatcmpl-{job_id}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or "ponder",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            "usage": _usage(final),
            "ponder": {"job_id": job_id, "strategy": final.strategy, "stop_reason": final.stop_reason,
                       "votes": [{"answer": v.answer, "count": v.count, "score": v.score} for v in final.votes]},
        })

    async def _open_sse(self, request: web.Request, call: Any) -> tuple[Any, Any, web.StreamResponse] | web.Response:
        """Wait for the call's first event (or its immediate error, which decides the HTTP status
        before any header goes out), then start the event stream: (events, first, response),
        or an error response."""
        events = call.__aiter__()
        try:
            first = await events.__anext__()
        except grpc.RpcError as exc:
            return self._http_error(exc).response()
        except StopAsyncIteration:
            return HttpError(500, "the stream ended before its first event").response()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        return events, first, resp

    async def _stream(self, request: web.Request, call: Any, body: dict[str, Any]) -> web.StreamResponse:
        opened = await self._open_sse(request, call)
        if isinstance(opened, web.Response):
            return opened
        events, first, resp = opened
        job_id = first.job_id
        created, model = int(time.time()), body.get("model") or "ponder"

        async def send(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> None:
            chunk: dict[str, Any] = {"id": f"chatcmpl-{job_id}", "object": "chat.completion.chunk", "created": created,
                                     "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage is not None:
                chunk["usage"] = usage
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())

        try:
            await send({"role": "assistant", "content": "", "ponder": {"job_id": job_id}})
            event: Any = first
            while True:
                kind = event.WhichOneof("kind")
                if kind == "step":
                    await send(_step_delta(event.step))
                elif kind == "started" and event.started.restart_reason:
                    await send({"reasoning_content": "", "ponder": {"restart": event.started.restart_reason}})
                elif kind == "final":
                    await send({"content": event.final.answer})
                    await send({}, "stop", _usage(event.final))
                    break
                elif kind == "error":
                    failure = {"message": f"{event.error.message} [job {job_id}]", "type": event.error.code.lower(),
                               "code": event.error.code.lower()}
                    await resp.write(f"data: {json.dumps({'error': failure})}\n\n".encode())
                    break
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    break
            await resp.write(b"data: [DONE]\n\n")
        except grpc.RpcError as exc:
            err = self._http_error(exc, job_id)
            await resp.write(f"data: {json.dumps({'error': {'message': err.message, 'type': err.code}})}\n\n".encode())
        except (ConnectionResetError, ConnectionError):
            # the client went away: cancelling the gRPC call cancels its job (as over gRPC)
            call.cancel()
            log.info("client of job %s disconnected; job cancelled", job_id)
            return resp
        finally:
            if not call.done():
                call.cancel()
        await resp.write_eof()
        return resp

    async def close(self) -> None:
        await self.channel.close()


async def run_gateway(gateway: Gateway, host: str, port: int) -> web.AppRunner:
    """Start serving ``gateway`` on host:port (0: a free port); returns the runner (stop it
    with ``await runner.cleanup()``). Handlers are cancelled when their client disconnects."""
    # shutdown_timeout: how long a stop waits for open connections (an SDK's idle keep-alive
    # connection would otherwise hold it for aiohttp's default 60 s)
    runner = web.AppRunner(gateway.app(), handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise RuntimeError("the gateway is not listening")


async def main(args: Any) -> int:
    """``ponder gateway``: serve until SIGTERM or SIGINT."""
    import signal

    import anyio

    tls = Tls(args.tls_ca, args.tls_cert, args.tls_key) if (args.tls or args.tls_ca or args.tls_cert) else None
    gateway = Gateway(args.server, tls)
    runner = await run_gateway(gateway, args.host, args.port)
    log.info("OpenAI-compatible gateway on http://%s:%d/v1 → %s", args.host, bound_port(runner), args.server)
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
    finally:
        await runner.cleanup()
        await gateway.close()
    return 0
