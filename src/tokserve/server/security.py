"""What every response needs on a public port or a laptop: a Host check against DNS rebinding, and `nosniff`.

DNS rebinding: a web page whose name is made to resolve to 127.0.0.1 can call a server on the visitor's own machine
from the visitor's browser, and read the answers, as if it were the same origin; only the Host header still names
the attacker's domain. So a server bound to a loopback address answers only loopback names (and `--allowed-host`);
one bound to any other address answers every Host unless `--allowed-host` is given, because load balancers and
Kubernetes probes send upstream names and pod addresses.
"""

import ipaddress

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokserve.config import Settings
from tokserve.errors import HostNotAllowed
from tokserve.server.errors import error_json

# Health has nothing to steal, and probes of an orchestrator send whatever address they reached.
_UNCHECKED_PATHS = ("/health",)


class SecurityMiddleware:
    """Pure ASGI: a Host the settings do not allow gets a 400 envelope; every response gets X-Content-Type-Options.

    Allowed: loopback names and addresses if the server is bound to a loopback address, and the `--allowed-host`
    names (`*.example.com` takes any subdomain, `*` any Host); bound elsewhere without `--allowed-host`, any Host.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self._loopback = _is_loopback(settings.host)
        self._names = [name.lower().rstrip(".") for name in settings.allowed_hosts]
        self._any = "*" in self._names or not (self._loopback or self._names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Content-Type-Options"] = "nosniff"
            await send(message)

        if scope["path"] not in _UNCHECKED_PATHS and not self._allows(dict(scope["headers"]).get(b"host")):
            error = HostNotAllowed(
                "This server does not answer requests for this Host; start it with --allowed-host NAME to allow it."
            )
            await error_json(Request(scope), error)(scope, receive, send_with_nosniff)
            return
        await self.app(scope, receive, send_with_nosniff)

    def _allows(self, host_header: bytes | None) -> bool:
        if self._any:
            return True
        name = _host_name(host_header.decode("latin-1") if host_header else "")
        if self._loopback and _is_loopback(name):
            return True
        return bool(name) and any(
            name == allowed or (allowed.startswith("*.") and name.endswith(allowed[1:])) for allowed in self._names
        )


def _host_name(host: str) -> str:
    """The name of a Host header, without its port: `[::1]:8000` -> `::1`, `Example.COM.:80` -> `example.com`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0].rstrip(".") if host.count(":") <= 1 else ""


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
