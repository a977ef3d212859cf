"""The Starlette application of `sd web`: pages, the JSON status endpoint, the access rules.

Routes: `/` (the templates), `/templates/NAME` (its form; POST: check, then the preview),
`/templates/NAME/start` (POST: start the pool), `/templates/NAME/files/{my.sf,job.sub}`
(downloads), `/pools` and `/pools/NAME` (the user's pools, each VM's host and state),
`/api/pools/NAME` (the same as JSON, polled by the status page), `/pools/NAME/terminate`
(POST). Every POST needs the form's CSRF token; another user's pool is "not found".
May import: config, errors, pools, templates, web.access, web.forms, starlette, jinja2.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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

from ..config import SiteConfig
from ..errors import SdError
from ..pools import SHARED_CONNECTIONS, Connections, plan_pool, start_pool, status, terminate_pool
from ..templates import describe_templates
from .access import Access, Owners
from .forms import GENERAL, POOL_FIELD, USER_FILE, TemplateForm, build_form, check, submit_file

HERE = Path(__file__).resolve().parent
Handler = Callable[[Request, str], Awaitable[Response]]


@dataclass(frozen=True)
class WebSite:
    """What the pages need: the site, how users are known, and the hypervisor connections."""

    config: SiteConfig
    access: Access = field(default_factory=Access)
    connections: Connections = SHARED_CONNECTIONS
    grace_seconds: float = 10.0

    @property
    def owners(self) -> Owners:
        return Owners(self.config.state_dir)


def create_app(site: WebSite) -> Starlette:
    pages = Jinja2Templates(directory=str(HERE / "templates"))

    def render(request: Request, user: str, name: str, status_code: int = 200,
               **context: Any) -> Response:  # fmt: skip
        context.update(user=user, csrf=site.access.csrf_token(user))
        return pages.TemplateResponse(request, name, context, status_code=status_code)

    def page(handler: Handler, *, post: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """HANDLER for an authenticated user; a POST also needs the form's CSRF token."""

        async def endpoint(request: Request) -> Response:
            user = site.access.user(request.headers)
            if user is None:
                return PlainTextResponse(
                    "log in to use sd web",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="sd web"'},
                )
            if post:
                form = await request.form()
                token = form.get("csrf")
                if not isinstance(token, str) or not site.access.csrf_ok(user, token):
                    return PlainTextResponse(
                        "this form is out of date or was not sent by sd web (CSRF token "
                        "missing or wrong): reload the page and send it again",
                        status_code=403,
                    )
            try:
                return await handler(request, user)
            except SdError as exc:
                return render(request, user, "error.html", 404 if _missing(exc) else 400,
                              message=str(exc))  # fmt: skip

        return endpoint

    async def index(request: Request, user: str) -> Response:
        infos = await run_in_threadpool(describe_templates, site.config)
        forms: list[tuple[Any, TemplateForm | None]] = []
        for info in infos:
            form = None if info.error else await run_in_threadpool(build_form, info.name,
                                                                    site.config)  # fmt: skip
            forms.append((info, form))
        return render(request, user, "index.html", templates=forms)

    async def form_page(request: Request, user: str) -> Response:
        form = await run_in_threadpool(build_form, request.path_params["name"], site.config)
        values = {f.path: f.default for f in form.fields}
        values[POOL_FIELD] = form.name
        return render(request, user, "form.html", form=form, values=values, errors={})

    async def preview(request: Request, user: str) -> Response:
        form = await run_in_threadpool(build_form, request.path_params["name"], site.config)
        values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        checked = await run_in_threadpool(check, form, values, site.config)
        if not checked.ok:
            return render(request, user, "form.html", 400, form=form, values=checked.values,
                          errors=checked.errors)  # fmt: skip
        placement: list[str] = []
        if form.result == "pool":
            placement = await run_in_threadpool(_plan_lines, site, form, checked.sf_text,
                                                checked.values[POOL_FIELD])  # fmt: skip
        query = "&".join(f"{_q(k)}={_q(v)}" for k, v in checked.values.items())
        return render(request, user, "preview.html", form=form, checked=checked,
                      submit=submit_file(form), placement=placement, query=query)  # fmt: skip

    async def download(request: Request, user: str) -> Response:
        form = await run_in_threadpool(build_form, request.path_params["name"], site.config)
        checked = await run_in_threadpool(check, form, dict(request.query_params), site.config)
        if not checked.ok:
            return PlainTextResponse(
                "\n".join(f"{k or 'form'}: {v}" for k, v in checked.errors.items()), status_code=400
            )
        file = request.path_params["file"]
        text = {USER_FILE: checked.sf_text, "job.sub": submit_file(form)}.get(file)
        if text is None:
            return PlainTextResponse(f"no file {file}: {USER_FILE} or job.sub", status_code=404)
        return PlainTextResponse(
            text, headers={"Content-Disposition": f'attachment; filename="{file}"'}
        )

    async def start(request: Request, user: str) -> Response:
        form = await run_in_threadpool(build_form, request.path_params["name"], site.config)
        values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        checked = await run_in_threadpool(check, form, values, site.config)
        if form.result != "pool":
            return render(
                request,
                user,
                "error.html",
                400,
                message=f"{form.name} is a job "
                "template: download its submit file and condor_submit it",
            )
        if not checked.ok:
            return render(request, user, "form.html", 400, form=form, values=checked.values,
                          errors=checked.errors)  # fmt: skip
        name = checked.values[POOL_FIELD]
        file = _user_file(site, user, name, checked.sf_text)
        try:
            await run_in_threadpool(lambda: start_pool(
                site.config, "localhost", name, file, include_dirs=[form.path.parent],
                connections=site.connections))  # fmt: skip
        except SdError as exc:
            errors = {GENERAL: str(exc)}
            if "already exists" in exc.message:  # never say whose, nor from which file
                mine = site.owners.owner(site.config.default_uri, name) == user
                errors = {
                    POOL_FIELD: f"you already have a pool named {name} (see /pools/{name})"
                    if mine
                    else f"the pool name {name} is taken: choose another"
                }
            return render(request, user, "form.html", 400, form=form, values=checked.values,
                          errors=errors)  # fmt: skip
        site.owners.record(site.config.default_uri, name, user)
        return RedirectResponse(f"/pools/{name}", status_code=303)

    async def pool_list(request: Request, user: str) -> Response:
        mine = [n for uri, n in site.owners.pools_of(user) if uri == site.config.default_uri]
        return render(request, user, "pools.html", pools=mine)

    async def pool_page(request: Request, user: str) -> Response:
        report = await run_in_threadpool(_report, site, user, request.path_params["name"])
        return render(request, user, "pool.html", pool=report)

    async def pool_json(request: Request, user: str) -> Response:
        try:
            report = await run_in_threadpool(_report, site, user, request.path_params["name"])
        except SdError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(report)

    async def terminate(request: Request, user: str) -> Response:
        name = request.path_params["name"]
        await run_in_threadpool(_report, site, user, name)  # 404 unless it is the user's
        await run_in_threadpool(lambda: terminate_pool(
            site.config, "localhost", name, grace_seconds=site.grace_seconds,
            connections=site.connections))  # fmt: skip
        site.owners.forget(site.config.default_uri, name)
        return RedirectResponse("/pools", status_code=303)

    routes = [
        Route("/", page(index)),
        Route("/templates/{name}", page(form_page), methods=["GET"]),
        Route("/templates/{name}", page(preview, post=True), methods=["POST"]),
        Route("/templates/{name}/start", page(start, post=True), methods=["POST"]),
        Route("/templates/{name}/files/{file}", page(download)),
        Route("/pools", page(pool_list)),
        Route("/pools/{name}", page(pool_page)),
        Route("/api/pools/{name}", page(pool_json)),
        Route("/pools/{name}/terminate", page(terminate, post=True), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes)


class PoolNotFound(SdError):
    """A pool the user did not start here (or that is gone): the same answer for both."""


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

    from ..commands.plan import _lines

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / USER_FILE
        path.write_text(sf_text, encoding="utf-8")
        try:
            result = plan_pool(site.config, path, name=name, include_dirs=[form.path.parent],
                               connections=site.connections)  # fmt: skip
        except SdError as exc:
            return [f"cannot plan: {exc}"]
    return _lines(result, all_hosts=True)


def _report(site: WebSite, user: str, name: str) -> dict[str, Any]:
    """Pool NAME as the status page shows it, if USER started it here; else PoolNotFound."""
    uri = site.config.default_uri
    if site.owners.owner(uri, name) != user:
        raise PoolNotFound(f"you have no pool named {name}", hint="your pools are under /pools")
    reports = [r for r in status(site.config, connections=site.connections)
               if r.kind == "pool" and r.name == name and r.uri == uri]  # fmt: skip
    if not reports:
        site.owners.forget(uri, name)
        raise PoolNotFound(f"pool {name} is gone (terminated)", hint="your pools are under /pools")
    hosts = {u: h for h, u in site.config.hosts.items()}
    report = reports[0].as_dict()
    for vm in report["vms"]:
        vm["host"] = "localhost" if vm["uri"] == uri else hosts.get(vm["uri"], vm["uri"])
    return report
