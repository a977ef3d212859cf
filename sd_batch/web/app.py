"""The Starlette application of `sd web`: pages, the JSON status endpoint, the access rules.

Routes: `/` (the templates), `/templates/NAME` (its form; POST: check, then the preview),
`/templates/NAME/start` (POST: check, then start the pool in the background and go to its
page), `/templates/NAME/files/{my.sf,job.sub}` (downloads), `/pools` and `/pools/NAME` (the
user's pools: "starting", then each VM's host and state, or why the start failed),
`/api/pools/NAME` (the same as JSON, polled by the status page), `/pools/NAME/terminate` and
`/pools/NAME/dismiss` (POST: a failed start's notice). Every request must name this server in
its Host header (else 421), every POST also in its Origin (or Referer) header (else 403) and
carry the form's CSRF token; too many failed logins answer 429; another user's pool is "not
found". On shutdown the server waits for the starts in progress.
May import: config, errors, deploy, hypervisor.connections, vm, web.access, web.forms, web.starts,
starlette, jinja2.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config.site import SiteConfig
from ..config.templates import describe_templates
from ..deploy.pools import plan_pool, start_pool, status, terminate_pool
from ..errors import PoolNotFound, SdError
from ..hypervisor.connections import SHARED_CONNECTIONS, Connections
from ..vm.spec import VMSpec
from .access import Access, Owners, Served
from .forms import POOL_FIELD, USER_FILE, Checked, TemplateForm, build_form, check, submit_file
from .starts import FAILED, LOG, STARTING, Start, Starts

HERE = Path(__file__).resolve().parent
Handler = Callable[[Request, str], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class WebSite:
    """What the pages need: the site, how users are known, the hypervisor connections, the
    starts in progress, and what starts a pool (`pools.start_pool`; a test may wrap it)."""

    config: SiteConfig
    access: Access = field(default_factory=Access)
    connections: Connections = SHARED_CONNECTIONS
    grace_seconds: float = 10.0
    starts: Starts = field(default_factory=Starts, compare=False)
    start_pool: Callable[..., object] = start_pool

    @property
    def owners(self) -> Owners:
        return Owners(self.config.state_dir)


def create_app(site: WebSite) -> SameServer:
    pages = _Pages(site)
    routes = [
        Route("/", pages.page(pages.index)),
        Route("/templates/{name}", pages.page(pages.form_page), methods=["GET"]),
        Route("/templates/{name}", pages.page(pages.preview, post=True), methods=["POST"]),
        Route("/templates/{name}/start", pages.page(pages.start, post=True), methods=["POST"]),
        Route("/templates/{name}/files/{file}", pages.page(pages.download)),
        Route("/pools", pages.page(pages.pool_list)),
        Route("/pools/{name}", pages.page(pages.pool_page)),
        Route("/api/pools/{name}", pages.page(pages.pool_json)),
        Route("/pools/{name}/terminate", pages.page(pages.terminate, post=True), methods=["POST"]),
        Route("/pools/{name}/dismiss", pages.page(pages.dismiss, post=True), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return SameServer(Starlette(routes=routes, lifespan=pages.lifespan), site.access.served)


class _Pages:
    """The pages of one `sd web` site: each handler takes the request and the logged-in user."""

    def __init__(self, site: WebSite) -> None:
        self.site = site
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    def render(
        self, request: Request, user: str, name: str, status_code: int = 200, **context: Any
    ) -> Response:
        context.update(user=user, csrf=self.site.access.csrf_token(user))
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def page(self, handler: Handler, *, post: bool = False) -> Endpoint:
        """HANDLER for an authenticated user; a POST also needs the form's CSRF token."""

        async def endpoint(request: Request) -> Response:
            user = await self._user(request)
            if isinstance(user, Response):
                return user
            if post and not await self._csrf_ok(request, user):
                return PlainTextResponse(
                    "this form is out of date or was not sent by sd web (CSRF token "
                    "missing or wrong): reload the page and send it again",
                    status_code=403,
                )
            try:
                return await handler(request, user)
            except SdError as exc:
                return self.render(
                    request, user, "error.html", 404 if _missing(exc) else 400, message=str(exc)
                )

        return endpoint

    async def _user(self, request: Request) -> str | Response:
        """The logged-in user, or the answer for one who is not (429 after failed logins, 401)."""
        client = request.client.host if request.client is not None else ""
        login = await run_in_threadpool(self.site.access.login, request.headers, client)
        if login.retry_after > 0:
            wait = math.ceil(login.retry_after)
            return PlainTextResponse(
                f"too many failed logins: try again in {wait} s",
                status_code=429,
                headers={"Retry-After": str(wait)},
            )
        if login.user is None:
            return PlainTextResponse(
                "log in to use sd web",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="sd web"'},
            )
        return login.user

    async def _csrf_ok(self, request: Request, user: str) -> bool:
        """Whether the POSTed form carries USER's CSRF token."""
        token = (await request.form()).get("csrf")
        return isinstance(token, str) and self.site.access.csrf_ok(user, token)

    async def _form(self, request: Request) -> TemplateForm:
        """The form of the site template the path names."""
        return await run_in_threadpool(build_form, request.path_params["name"], self.site.config)

    async def _checked(self, form: TemplateForm, values: Mapping[str, str]) -> Checked:
        """VALUES checked against FORM: resolved and held to site policy, as the hooks do."""
        return await run_in_threadpool(check, form, values, self.site.config)

    async def _posted(self, request: Request) -> tuple[TemplateForm, Checked]:
        """The template's form and the values POSTed to it, checked."""
        form = await self._form(request)
        values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        return form, await self._checked(form, values)

    def _form_again(
        self,
        request: Request,
        user: str,
        form: TemplateForm,
        checked: Checked,
        errors: Mapping[str, str],
    ) -> Response:
        """FORM once more (400), filled with the user's values, ERRORS beside their fields."""
        return self.render(
            request, user, "form.html", 400, form=form, values=checked.values, errors=errors
        )

    async def index(self, request: Request, user: str) -> Response:
        infos = await run_in_threadpool(describe_templates, self.site.config)
        forms: list[tuple[Any, TemplateForm | None]] = []
        for info in infos:
            form = (
                None
                if info.error
                else await run_in_threadpool(build_form, info.name, self.site.config)
            )
            forms.append((info, form))
        return self.render(request, user, "index.html", templates=forms)

    async def form_page(self, request: Request, user: str) -> Response:
        form = await self._form(request)
        values = {f.path: f.default for f in form.fields}
        values[POOL_FIELD] = form.name
        return self.render(request, user, "form.html", form=form, values=values, errors={})

    async def preview(self, request: Request, user: str) -> Response:
        form, checked = await self._posted(request)
        if not checked.ok:
            return self._form_again(request, user, form, checked, checked.errors)
        placement: list[str] = []
        if form.result == "pool":
            placement = await run_in_threadpool(
                _plan_lines, self.site, form, checked.sf_text, checked.values[POOL_FIELD]
            )
        query = "&".join(f"{_q(k)}={_q(v)}" for k, v in checked.values.items())
        disk = await run_in_threadpool(_disk_kib, self.site, checked.vm)
        return self.render(
            request,
            user,
            "preview.html",
            form=form,
            checked=checked,
            submit=submit_file(form, checked.vm, disk),
            placement=placement,
            query=query,
        )

    async def download(self, request: Request, user: str) -> Response:
        form = await self._form(request)
        checked = await self._checked(form, dict(request.query_params))
        if not checked.ok:
            return PlainTextResponse(
                "\n".join(f"{k or 'form'}: {v}" for k, v in checked.errors.items()), status_code=400
            )
        file = request.path_params["file"]
        disk = await run_in_threadpool(_disk_kib, self.site, checked.vm)
        files = {USER_FILE: checked.sf_text, "job.sub": submit_file(form, checked.vm, disk)}
        text = files.get(file)
        if text is None:
            return PlainTextResponse(f"no file {file}: {USER_FILE} or job.sub", status_code=404)
        return PlainTextResponse(
            text, headers={"Content-Disposition": f'attachment; filename="{file}"'}
        )

    async def start(self, request: Request, user: str) -> Response:
        form, checked = await self._posted(request)
        if form.result != "pool":
            return self.render(
                request,
                user,
                "error.html",
                400,
                message=f"{form.name} is a job "
                "template: download its submit file and condor_submit it",
            )
        if not checked.ok:
            return self._form_again(request, user, form, checked, checked.errors)
        name, uri = checked.values[POOL_FIELD], self.site.config.default_uri

        def taken(mine: bool) -> Response:  # never say whose, nor from which file
            error = (
                f"you already have a pool named {name} (see /pools/{name})"
                if mine
                else f"the pool name {name} is taken: choose another"
            )
            return self._form_again(request, user, form, checked, {POOL_FIELD: error})

        claim = self.site.starts.claim(uri, name, user, form.name)
        if claim is None:  # being started here right now
            busy = self.site.starts.get(uri, name)
            return taken(busy is not None and busy.user == user)
        if not await self._launch(claim, form, checked.sf_text):
            return taken(self.site.owners.owner(uri, name) == user)
        return RedirectResponse(f"/pools/{name}", status_code=303)

    async def _launch(self, claim: Start, form: TemplateForm, sf_text: str) -> bool:
        """Start CLAIM's pool of FORM in the background; False (and CLAIM let go) when a pool of
        that name exists already."""
        site, name, uri, user = self.site, claim.name, claim.uri, claim.user
        running = False
        try:
            if await run_in_threadpool(_exists, site, name):
                return False
            file = _user_file(site, user, name, sf_text)
            site.owners.record(uri, name, user)
            site.starts.run(
                claim,
                lambda: site.start_pool(
                    site.config,
                    "localhost",
                    name,
                    file,
                    include_dirs=[form.path.parent],
                    connections=site.connections,
                ),
                lambda exc: _explain(exc, name),
                lambda done: site.owners.forget(uri, name, user=done.user),
            )
            running = True
        finally:
            if not running:
                site.starts.release(claim)
        return True

    async def pool_list(self, request: Request, user: str) -> Response:
        uri = self.site.config.default_uri
        mine = {n: "" for u, n in self.site.owners.pools_of(user) if u == uri}
        mine.update({s.name: s.state for s in self.site.starts.of(user) if s.uri == uri})
        return self.render(request, user, "pools.html", pools=sorted(mine.items()))

    async def pool_page(self, request: Request, user: str) -> Response:
        report = await run_in_threadpool(_report, self.site, user, request.path_params["name"])
        return self.render(request, user, "pool.html", pool=report)

    async def pool_json(self, request: Request, user: str) -> Response:
        try:
            report = await run_in_threadpool(_report, self.site, user, request.path_params["name"])
        except SdError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(report)

    async def terminate(self, request: Request, user: str) -> Response:
        name = request.path_params["name"]
        busy = self.site.starts.get(self.site.config.default_uri, name)
        if busy is not None and busy.user == user and busy.state == STARTING:
            return self.render(
                request,
                user,
                "error.html",
                409,
                message=f"pool {name} is still starting: terminate it once it "
                f"is up (its page, /pools/{name}, shows when)",
            )
        if self.site.starts.dismiss(self.site.config.default_uri, name, user):
            return RedirectResponse("/pools", status_code=303)  # it failed: nothing is left
        await run_in_threadpool(_report, self.site, user, name)  # 404 unless it is the user's
        await run_in_threadpool(
            lambda: terminate_pool(
                self.site.config,
                "localhost",
                name,
                grace_seconds=self.site.grace_seconds,
                connections=self.site.connections,
            )
        )
        self.site.owners.forget(self.site.config.default_uri, name)
        return RedirectResponse("/pools", status_code=303)

    async def dismiss(self, request: Request, user: str) -> Response:
        name = request.path_params["name"]
        if not self.site.starts.dismiss(self.site.config.default_uri, name, user):
            raise PoolNotFound(
                f"you have no failed start of a pool named {name}",
                hint="your pools are under /pools",
            )
        return RedirectResponse("/pools", status_code=303)

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        yield
        busy = self.site.starts.in_progress()
        if busy:  # each either starts or rolls back: no VM is left behind by the shutdown
            LOG.warning("waiting for the pool starts in progress: %s", ", ".join(busy))
            await run_in_threadpool(self.site.starts.wait)


class SameServer:
    """Requests must name this server: Host on every request (421 Misdirected Request),
    Origin or Referer on every state-changing one (403). Starlette's TrustedHostMiddleware
    drops the port and checks no Origin, hence this."""

    SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp, served: Served) -> None:
        self.app, self.served = app, served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            refusal: Response | None = None
            if not self.served.host_ok(headers.get("host", "")):
                refusal = PlainTextResponse(
                    "this server does not answer to that name (Host header): open it by the "
                    "address sd web serves, or have the admin add the name with --server-name",
                    status_code=421,
                )
            elif scope["method"] not in self.SAFE and not self.served.origin_ok(
                headers.get("origin"), headers.get("referer")
            ):
                refusal = PlainTextResponse(
                    "this form was not sent from a page of this server (Origin/Referer "
                    "header): open the form here and send it again",
                    status_code=403,
                )
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _missing(exc: SdError) -> bool:
    return isinstance(exc, PoolNotFound) or exc.message.startswith("no site template")


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _user_file(site: WebSite, user: str, pool: str, text: str) -> Path:
    """The user's `.sf`, kept under the state dir as the file the pool was started from."""
    import hashlib

    folder = site.config.state_dir / "web" / hashlib.sha256(user.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{pool}.sf"
    path.write_text(text, encoding="utf-8")
    return path


def _plan_lines(site: WebSite, form: TemplateForm, sf_text: str, name: str) -> list[str]:
    """`sd plan`'s lines for the user's description (written to a scratch file first)."""
    import tempfile

    from ..deploy.plan_text import plan_lines

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / USER_FILE
        path.write_text(sf_text, encoding="utf-8")
        try:
            result = plan_pool(
                site.config,
                path,
                name=name,
                include_dirs=[form.path.parent],
                connections=site.connections,
            )
        except SdError as exc:
            return [f"cannot plan: {exc}"]
    return plan_lines(result, all_hosts=True)


def _disk_kib(site: WebSite, vm: VMSpec | None) -> int | None:
    """What a job VM's disks can write (KiB), as PREPARE_JOB counts it against request_disk;
    None when it cannot be told here (no VM, or the hypervisor cannot read a base image)."""
    from ..deploy.engine import disk_growth

    if vm is None:
        return None
    try:
        hv = site.connections(site.config.default_uri)
        growth = disk_growth(vm, site.config.policy.output_disk_bytes, site.config.image_dir, hv)
    except SdError:
        return None
    return -(-growth.total // 1024)


def _exists(site: WebSite, name: str) -> bool:
    """Whether the ledger has pool NAME on the default host (a leftover of a dead run aside:
    `start_pool` cleans that up first)."""
    uri = site.config.default_uri
    return any(
        r.kind == "pool" and r.name == name and r.uri == uri and not r.interrupted
        for r in status(site.config, connections=site.connections)
    )


def _explain(exc: SdError, name: str) -> str:
    """A failed start's error as its user reads it."""
    if exc.message.startswith(f"pool {name} already exists"):  # never say whose, nor which file
        return f"the pool name {name} was taken elsewhere while yours was starting: choose another"
    return str(exc)


def _report(site: WebSite, user: str, name: str) -> dict[str, Any]:
    """Pool NAME as the status page shows it, if USER started it here; else PoolNotFound.
    While its start runs its status is "starting" (with the VMs made so far); a failed start
    has status "failed", its error, and no VMs."""
    uri = site.config.default_uri
    start = site.starts.get(uri, name)
    if start is not None and start.user == user and start.state == FAILED:
        return _failed(start)
    starting = start is not None and start.state == STARTING
    owner = start.user if start is not None and starting else site.owners.owner(uri, name)
    if owner != user:
        raise PoolNotFound(f"you have no pool named {name}", hint="your pools are under /pools")
    reports = [
        r
        for r in status(site.config, connections=site.connections)
        if r.kind == "pool" and r.name == name and r.uri == uri
    ]
    if not reports and not starting:
        site.owners.forget(uri, name)
        raise PoolNotFound(f"pool {name} is gone (terminated)", hint="your pools are under /pools")
    hosts = {u: h for h, u in site.config.hosts.items()}
    report: dict[str, Any] = {"kind": "pool", "name": name, "uri": uri, "vms": []}
    if reports:  # while it starts: once start_pool has recorded it, with the VMs made so far
        report = reports[0].as_dict()
    if starting:  # (a leftover of a dead run it replaces is not "interrupted": it is on it)
        report.update(status=STARTING, interrupted=False)
    for vm in report["vms"]:
        vm["host"] = "localhost" if vm["uri"] == uri else hosts.get(vm["uri"], vm["uri"])
    return report


def _failed(start: Start) -> dict[str, Any]:
    return {
        "kind": "pool",
        "name": start.name,
        "uri": start.uri,
        "status": FAILED,
        "error": start.error,
        "left_behind": start.left_behind,
        "template": start.template,
        "vms": [],
    }
