"""The event review page: a Starlette app over a run dir, plain HTML and CSS, no script, nothing from elsewhere.

  /                    events, newest first; filter by camera and start time; pages of PAGE_SIZE
  /events/<id>         one event: clip, start and peak snapshots, score over time against the threshold, boxes
  /cameras             each camera's state (up, frame rate, last score) from the daemon's metrics
  /api/events          JSON: {"events": [...], "next": URL of the next page or null}; same filters, `limit`
  /api/events/<id>     JSON: the event with its records and score trace; 404 {"error": ...} if there is none
  /api/cameras         JSON of /cameras
  /media/<id>/<name>   an event's start.jpg, peak.jpg or clip

Served on loopback unless configured otherwise; with a token (required elsewhere)
every request needs `Authorization: Bearer TOKEN`, or a cookie a browser gets by
opening any page once with `?token=TOKEN`. Requests naming a host the page was not
served for are refused (DNS rebinding), and every response forbids scripts,
framing and loads from elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .cameras import CameraStates
from .plot import score_plot
from .store import MAX_PAGE, EventStore

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 50
REFRESH_SECONDS = 15  # the first page of events, unfiltered, reloads itself
COOKIE = "vad_ui"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}
MEDIA_TYPES = {".jpg": "image/jpeg", ".mp4": "video/mp4", ".webm": "video/webm"}


class FilterError(ValueError):
    pass


def local_time(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _time(value: str, name: str) -> float | None:
    """Seconds since the epoch, or a date and time (ISO 8601; local time unless it says its zone)."""
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            raise FilterError(f"{name}: {value[:40]!r} is neither seconds since the epoch nor a date and time")
    if not math.isfinite(number):
        raise FilterError(f"{name}: must be finite")
    return number


def _int(value: str, name: str, low: int, high: int) -> int | None:
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise FilterError(f"{name}: {value[:40]!r} is not a whole number") from None
    if not low <= number <= high:
        raise FilterError(f"{name}: must be in {low}..{high}")
    return number


def filters(request: Request) -> dict:
    """The list filters of a request's query: camera, since, until, before (cursor), limit."""
    params = request.query_params
    camera = params.get("camera", "")
    if len(camera) > 64:
        raise FilterError("camera: at most 64 characters")
    return {
        "camera": camera or None,
        "since": _time(params.get("since", ""), "since"),
        "until": _time(params.get("until", ""), "until"),
        "before": _int(params.get("before", ""), "before", 0, 2**62),
        "limit": _int(params.get("limit", ""), "limit", 1, MAX_PAGE) or PAGE_SIZE,
    }


def next_url(path: str, request: Request, cursor: int | None) -> str | None:
    if cursor is None:
        return None
    kept = {k: v for k, v in request.query_params.items() if k in ("camera", "since", "until", "limit") and v}
    return f"{path}?{urlencode({**kept, 'before': cursor})}"


class Guard(BaseHTTPMiddleware):
    """Host check, token check, and the security headers on every response."""

    def __init__(self, app, token: str | None, allowed_hosts: set[str] | None):
        super().__init__(app)
        self.token = token
        self.cookie = hashlib.sha256(f"vad-ui-cookie:{token}".encode()).hexdigest() if token else None
        self.allowed_hosts = allowed_hosts

    async def dispatch(self, request: Request, call_next) -> Response:
        response = self._refusal(request)
        if response is None:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def _refusal(self, request: Request) -> Response | None:
        host = request.headers.get("host", "")
        host = host if host.endswith("]") else host.rsplit(":", 1)[0]
        if self.allowed_hosts is not None and host.lower() not in self.allowed_hosts:
            return JSONResponse({"error": f"host {host[:80]!r} is not served here"}, status_code=400)
        if self.token is None:
            return None
        offered = request.query_params.get("token")
        if offered is not None and _same(offered, self.token):  # a browser's first visit: keep a cookie, drop the token
            query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            target = request.url.path + (f"?{query}" if query else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, self.cookie, httponly=True, samesite="strict")
            return response
        bearer = request.headers.get("authorization", "")
        if bearer[:7].lower() == "bearer " and _same(bearer[7:], self.token):
            return None
        if _same(request.cookies.get(COOKIE, ""), self.cookie):
            return None
        message = "a token is required: send 'Authorization: Bearer TOKEN', or open this page with ?token=TOKEN once"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return HTMLResponse(f"<!doctype html><title>Token required</title><p>{message}</p>", status_code=401)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def create_app(
    store: EventStore,
    cameras: CameraStates,
    token: str | None = None,
    allowed_hosts: set[str] | None = None,
    thresholds: dict[str, float] | None = None,
) -> Starlette:
    """The app; `allowed_hosts`: Host header names accepted (None: any); `thresholds`: per camera, else from events."""
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.filters.update(when=local_time, duration=duration)
    templates = Jinja2Templates(env=env)

    def page(request: Request, name: str, status: int = 200, **context) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status)

    def list_context(request: Request, path: str) -> dict:
        found = filters(request)
        events, cursor = store.page(**found)
        return {"events": events, "next": next_url(path, request, cursor), "filters": found}

    async def events_page(request: Request) -> Response:
        params = request.query_params
        form = {k: params.get(k, "") for k in ("camera", "since", "until")}
        choices = sorted(set(store.cameras()) | set(cameras.cameras))
        try:
            context = list_context(request, "/")
        except FilterError as e:
            return page(request, "events.html", 400, events=[], next=None, error=str(e), form=form, cameras=choices)
        live = not any(params.get(k) for k in ("camera", "since", "until", "before"))
        newest = None
        if context["filters"]["before"] is not None:
            kept = {k: v for k, v in form.items() if v}
            newest = "/" + (f"?{urlencode(kept)}" if kept else "")
        return page(
            request,
            "events.html",
            **context,
            form=form,
            cameras=choices,
            newest=newest,
            refresh=REFRESH_SECONDS if live else None,
        )

    async def event_page(request: Request) -> Response:
        event = store.event(request.path_params["event_id"])
        if event is None:
            return page(request, "missing.html", 404)
        summary = event["summary"]
        plot = score_plot(event["trace"], summary.start, summary.end)
        return page(request, "event.html", event=event, summary=summary, plot=plot)

    def camera_rows() -> list[dict]:
        known = {**store.latest_thresholds(), **(thresholds or {})}
        latest = {}
        for camera in cameras.cameras:
            events, _ = store.page(camera=camera, limit=1)
            latest[camera] = events[0] if events else None
        return [
            {**asdict(state), "threshold": known.get(state.camera), "latest_event": latest.get(state.camera)}
            for state in cameras.states()
        ]

    async def cameras_page(request: Request) -> Response:
        return page(request, "cameras.html", rows=camera_rows(), known=cameras.known)

    async def api_events(request: Request) -> Response:
        try:
            context = list_context(request, "/api/events")
        except FilterError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return JSONResponse({"events": [e.to_json() for e in context["events"]], "next": context["next"]})

    async def api_event(request: Request) -> Response:
        event_id = request.path_params["event_id"]
        event = store.event(event_id)
        if event is None:
            return JSONResponse({"error": f"no event {event_id[:64]!r}"}, status_code=404)
        return JSONResponse({**event, "summary": event["summary"].to_json()})

    async def api_cameras(request: Request) -> Response:
        rows = camera_rows()
        for row in rows:
            row["latest_event"] = row["latest_event"].to_json() if row["latest_event"] else None
        return JSONResponse({"cameras": rows, "metrics": cameras.known})

    async def media(request: Request) -> Response:
        path = store.media_file(request.path_params["event_id"], request.path_params["name"])
        if path is None:
            return JSONResponse({"error": "no such media file"}, status_code=404)
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        cameras.start()
        try:
            yield
        finally:
            cameras.stop()

    async def not_found(request: Request, exc) -> Response:
        if request.url.path.startswith(("/api/", "/media/")):
            return JSONResponse({"error": "not found"}, status_code=404)
        return page(request, "missing.html", 404)

    return Starlette(
        routes=[
            Route("/", events_page),
            Route("/events/{event_id}", event_page),
            Route("/cameras", cameras_page),
            Route("/api/events", api_events),
            Route("/api/events/{event_id}", api_event),
            Route("/api/cameras", api_cameras),
            Route("/media/{event_id}/{name}", media),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(Guard, token=token, allowed_hosts=allowed_hosts)],
        exception_handlers={404: not_found},
        lifespan=lifespan,
    )
