"""The ``serve`` application: the model on its backend behind an OpenAI-compatible HTTP
server, its requests decoded together by one :class:`plugstack.engine.Engine`.

uvicorn runs in-process on a socket bound here first (so a port in use is a one-line
error before the model loads). Once it accepts connections, one line goes to stdout:
``plugstack serve: http://HOST:PORT``. SIGINT/SIGTERM stop it gracefully: new requests
get 503, running ones have ``app.shutdown_timeout`` seconds to finish and are then
cancelled (a stream ends with an error event and ``[DONE]``), and the run ends as any
interrupted run does (exit 130/143, ``run.json`` written).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from typing import Any

import uvicorn

from plugstack.app import App, RunContext
from plugstack.engine import Engine
from plugstack.errors import ConfigError

from .api import ServeOptions, create_api

__all__ = ["ServeApp"]

SHUTTING_DOWN = "the server is shutting down"


class ServeApp(App):
    """Serve ``ctx.model`` through ``ctx.runner`` until the process is told to stop."""

    def run(self, ctx: RunContext) -> int:
        cfg = self.cfg
        _check(cfg)
        sock = _bind(cfg.host, cfg.port)  # a port in use fails before the (slow) model load
        try:
            tokenizer = ctx.model.tokenizer
            if tokenizer is None:
                raise ConfigError(f"Model {ctx.model.name!r} has no tokenizer, so it cannot be served: "
                                  f"choose a text model.")
            engine = Engine(ctx.runner, tokenizer, max_batch=cfg.max_batch, max_queue=cfg.max_queue,
                            max_tokens_limit=cfg.max_tokens_limit)
            options = ServeOptions(model_name=cfg.model_name or ctx.model.name, api_key=_api_key(cfg),
                                   max_body_bytes=cfg.max_body_bytes, system_prompt=cfg.system_prompt,
                                   backend=ctx.backend.runs_as() or str(ctx.cfg.backend.name))
            if options.api_key is None and not _loopback(cfg.host):
                ctx.log.warning("serve.open", host=cfg.host, hint="anyone who can reach this address can use the "
                                "model: set app.api_key or PLUGSTACK_API_KEY")
            config = uvicorn.Config(create_api(engine, tokenizer, options, ctx.log), log_config=None,
                                    access_log=False, lifespan="off", server_header=False,
                                    timeout_graceful_shutdown=int(cfg.shutdown_timeout) + 5)
            server = _Server(config, engine, cfg.shutdown_timeout, lambda: _announce(ctx, sock, options))
            engine.start()
            try:
                server.run(sockets=[sock])  # returns, or re-raises the SIGINT/SIGTERM that stopped it
            finally:
                engine.stop("the server stopped")
                ctx.log.info("serve.stopped", **engine.counts())
        finally:
            sock.close()
        return 0


class _Server(uvicorn.Server):
    """uvicorn's server, announcing its URL once it accepts connections and draining the
    engine on shutdown (no new requests; running ones cancelled after the grace period)."""

    def __init__(self, config: uvicorn.Config, engine: Engine, grace: float, announce: Any) -> None:
        super().__init__(config)
        self.engine, self.grace, self.announce = engine, grace, announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.announce()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.engine.close_intake(SHUTTING_DOWN)
        timer = asyncio.get_running_loop().call_later(self.grace, self.engine.cancel_all, SHUTTING_DOWN)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


def _check(cfg: Any) -> None:
    """Refuse option values that cannot work, naming the option."""
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"app.port={cfg.port} is invalid: expected 0..65535 (0 picks a free port).")
    for name in ("max_batch", "max_queue", "max_tokens_limit", "max_body_bytes"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"app.{name}={getattr(cfg, name)} is invalid: expected an integer >= 1.")
    if cfg.shutdown_timeout < 0:
        raise ConfigError(f"app.shutdown_timeout={cfg.shutdown_timeout} is invalid: expected seconds >= 0.")
    if not cfg.host:
        raise ConfigError("app.host is empty: give an address to listen on, e.g. app.host=127.0.0.1.")


def _api_key(cfg: Any) -> str | None:
    return cfg.api_key or os.environ.get("PLUGSTACK_API_KEY") or None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (uvicorn listens on it)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"app.host={host!r} cannot be used: {exc}. Give an address of this machine, "
                          f"e.g. app.host=127.0.0.1.") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Choose another port "
                          f"(app.port=0 picks a free one) or address (app.host).") from None
    return sock


def _announce(ctx: RunContext, sock: socket.socket, options: ServeOptions) -> None:
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    ctx.log.info("serve.ready", url=url, model_id=options.model_name, api_key=options.api_key is not None)
    ctx.stdout.write(f"plugstack serve: {url}\n")
    ctx.stdout.flush()
