"""Composition root: config -> store, origins, catalog, fills, reader, HTTP app; start, reload
(SIGHUP) and stop.

Nothing else constructs these parts; tests start a Service with a config of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import signal
from collections.abc import Callable

from aiohttp import web

from isocache.admin.api import AdminApi
from isocache.admin.attach_api import AttachmentApi
from isocache.admin.prewarm import PrewarmManager
from isocache.attachments import PIN_PREFIX as ATTACHMENT_PINS
from isocache.attachments import Attachments
from isocache.catalog import IMAGES_LABEL, Catalog
from isocache.cluster import Cluster
from isocache.config import Config, ConfigError
from isocache.errors import BadRequest
from isocache.fill import Filler
from isocache.front.app import build_app
from isocache.front.images import FrontSettings, ImageHandlers
from isocache.front.peer import PeerHandlers
from isocache.image import ImageRef
from isocache.metrics import Metrics
from isocache.origins.base import FetchLimits, Origin
from isocache.origins.peer import PeerClient
from isocache.origins.registry import Backends
from isocache.reader import Reader
from isocache.resolver import Resolver
from isocache.state import ServiceState
from isocache.store import ChunkStore, StoreDirError
from isocache.verify import Verifier

log = logging.getLogger(__name__)

# Longest a graceful stop waits for responses in progress (SIGTERM must end within 10 s).
_SHUTDOWN_TIMEOUT = 5.0


class StartupError(Exception):
    """The service could not start (its port in use, ...): str() is one line for the user."""


# What a reload applies; everything else keeps its running value until a restart.
RELOADED = ("origins", "images", "admin")


class Service:
    """One isocache instance. `start()` and `stop()` on the event loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        cache = config.cache
        self.store = ChunkStore(
            cache.dir,
            size_limit=cache.size_limit,
            chunk_size=cache.chunk_size,
            on_evict=self.metrics.evictions.inc,
        )
        self.state = ServiceState(self.store)  # jobs, run-time images, origin metadata
        self._backends: Backends | None = None
        # Backends of origins a reload removed or changed: a response or a prewarm that
        # started before may still read through them, so they are closed at stop.
        self._retired: list[Origin] = []
        self.catalog: Catalog | None = None
        self.filler: Filler | None = None
        self.prewarm: PrewarmManager | None = None
        self.verifier = Verifier(self.store, self.state)
        self._runner: web.AppRunner | None = None
        self._peer_client: PeerClient | None = None
        self.host = config.server.host
        self.port = config.server.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        config = self.config
        _raise_open_files_limit()
        for warning in config.warnings:
            log.warning("%s", warning)
        try:
            await self.store.open()
        except StoreDirError as exc:
            raise ConfigError(config.source, "cache.dir", str(exc)) from None
        await self.state.open()
        self.metrics.start(
            [*config.origins, IMAGES_LABEL],
            lambda: float(self.store.bytes_used),
            size_limit=config.cache.size_limit,
        )
        self._backends = Backends(config, self._is_allowed)
        self.catalog = Catalog(config, self._backends)
        self.resolver = resolver = Resolver(
            self.store, self.metrics, state=self.state, revalidate=config.cache.revalidate
        )
        self.cluster: Cluster | None = None
        if config.cluster.enabled:
            assert config.cluster.advertise is not None
            fetch = config.fetch
            limits = FetchLimits(
                fetch.connect_timeout, fetch.read_timeout, fetch.retries, fetch.max_connections
            )
            self._peer_client = PeerClient(
                token=config.cluster.token, limits=limits, advertise=config.cluster.advertise
            )
            self.cluster = Cluster(
                config.cluster,
                self._peer_client,
                self.metrics,
                chunk_size=config.cache.chunk_size,
            )
        self.filler = Filler(
            self.store,
            self.metrics,
            max_connections=config.fetch.max_connections,
            max_per_image=config.fetch.max_connections_per_image,
            on_stored=self.verifier.chunk_stored,
            cluster=self.cluster,
        )
        self.reader = reader = Reader(
            self.store,
            self.filler,
            self.metrics,
            readahead=config.fetch.readahead,
            max_per_image=config.fetch.max_connections_per_image,
        )
        self.prewarm = PrewarmManager(
            lookup=self._lookup,
            resolver=resolver,
            store=self.store,
            state=self.state,
            filler=self.filler,
            verifier=self.verifier,
            parallel=config.fetch.max_connections_per_image,
        )
        self.admin = AdminApi(
            token=config.admin.token,
            catalog=self.catalog,
            resolver=resolver,
            store=self.store,
            state=self.state,
            verifier=self.verifier,
            prewarm=self.prewarm,
            origins=config.origins,
        )
        self.attachments = Attachments(
            catalog=self.catalog, resolver=resolver, store=self.store, state=self.state
        )
        self.admin.attachments = self.attachments
        self.prewarm.attachment_version = lambda attachment_id: self.attachments.version(
            self.attachments.get(attachment_id)
        )
        attach_api = AttachmentApi(
            attachments=self.attachments,
            store=self.store,
            prewarm=self.prewarm,
            authorise=self.admin.authorise,
            lookup=self._lookup,
            image_pinned_sizes=self.admin.pinned_sizes,
        )
        await self.verifier.restore()
        # Every pin is known before anything can evict: run-time images, attachments, config.
        await self.admin.restore()
        await self.attachments.restore()
        await self._restore_pins(resolver)
        await self.store.enforce_limit()
        await self.prewarm.resume()
        await attach_api.resume()
        settings = FrontSettings(keepalive=config.server.keepalive, sendfile=config.server.sendfile)
        images = ImageHandlers(
            self.catalog, resolver, reader, self.metrics, settings, self.verifier, self.attachments
        )
        peer_routes: list[web.RouteDef] = []
        if self.cluster is not None:
            peer_routes = PeerHandlers(
                token=config.cluster.token,
                catalog=self.catalog,
                resolver=resolver,
                images=images,
                metrics=self.metrics,
            ).routes()
        levels = {"debug": logging.DEBUG, "info": logging.INFO, "off": None}
        app = build_app(
            images,
            self.admin,
            self.metrics,
            self.prewarm,
            levels[config.server.access_log],
            extra_routes=[*attach_api.routes(), *peer_routes],
        )
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, config.server.host, config.server.port)
        try:
            await site.start()
        except OSError as exc:
            where = f"{config.server.host}:{config.server.port}"
            # asyncio words the bind error itself; the errno's own text is the short one.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StartupError(f"cannot listen on {where}: {reason}") from None
        # aiohttp exposes the bound port (port 0 in tests) only through the server's sockets.
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("listening on %s", self.url)

    async def _restore_pins(self, resolver: Resolver) -> None:
        """Bring the store's saved pins in line with the catalog before anything can evict:
        `pin = true` in the config is applied at every start, a pin whose image is gone is
        released, and a pin whose version was not yet known gets the last known one."""
        assert self.catalog is not None
        images = self.catalog.images()
        for owner in self.store.pins():
            if owner not in images and not owner.startswith(ATTACHMENT_PINS):
                log.info("pin-released image=%s reason=image no longer defined", owner)
                await self.store.unpin(owner)
        for name, ref in images.items():
            if ref.pinned or self.store.pins().get(name, "") is None:
                version = await resolver.persisted(ref)
                if version is not None:
                    await self.store.pin(name, version.identity)
                elif not self.store.is_pinned(name):
                    await self.store.pin(name, None)

    def _is_allowed(self, url: str) -> bool:
        return self.catalog is not None and self.catalog.is_allowed(url)

    async def reload(self, config: Config) -> None:
        """Apply a new config's origins, images and admin token in place: the store, the
        responses in progress and the client connections stay. Backends of unchanged origins
        are kept (with their pools); keys a reload cannot change (server, cache, fetch, cluster) are
        logged and keep their running values. Raises ConfigError, having changed nothing,
        when a new origin cannot be set up."""
        assert self.catalog is not None and self._backends is not None
        old = self.config
        for key in _changed_keys(old, config):
            log.warning(
                "reload-needs-restart file=%s key=%s: keeps its running value until a restart",
                config.source,
                key,
            )
        config = dataclasses.replace(
            config, server=old.server, cache=old.cache, fetch=old.fetch, cluster=old.cluster
        )
        previous = self._backends
        backends = Backends(config, self._is_allowed, previous)  # the only step that can fail
        self._retired += backends.retired(previous)
        self._backends = backends
        for name in self.catalog.reload(config, backends):
            log.warning(
                "reload-image-dropped image=%s reason=now configured, or no longer under an origin",
                name,
            )
        self.admin.set_token(config.admin.token)
        self.metrics.add_origins(config.origins)
        self.config = config
        for warning in config.warnings:
            log.warning("%s", warning)
        await self._restore_pins(self.resolver)
        log.info(
            "reloaded file=%s origins=%d images=%d",
            config.source,
            len(config.origins),
            len(self.catalog.images()),
        )

    def _lookup(self, target: dict[str, str]) -> ImageRef:
        """A prewarm target: {"image": NAME} or {"path": "/origins/NAME/<path>"}."""
        assert self.catalog is not None
        if "image" in target:
            return self.catalog.image(target["image"])
        path = target.get("path", "")
        if not path.startswith("/origins/"):
            raise BadRequest('path must look like "/origins/NAME/<path>"')
        origin, _, rest = path[len("/origins/") :].partition("/")
        return self.catalog.origin_file(origin, rest)

    async def stop(self) -> None:
        started = self._runner is not None  # else a failed start: nothing to say "stopped" of
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.prewarm is not None:
            await self.prewarm.close()
        if self.filler is not None:
            await self.filler.close()
        await self.verifier.close()
        if self._backends is not None:
            await self._backends.close()
        if self._peer_client is not None:
            await self._peer_client.close()
        for backend in self._retired:
            await backend.close()
        await self.state.close()
        await self.store.close()
        if started:
            log.info("stopped")


def _raise_open_files_limit() -> None:
    """Chunk files kept open and client connections both take descriptors; systemd's
    default soft limit (1024) is lower than the hard one (524288) for that reason."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < min(wanted, 65536):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 65536), hard))


def _changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys outside origins, images and admin whose value differs."""
    keys = []
    for table in ("server", "cache", "fetch", "cluster"):
        before, after = getattr(old, table), getattr(new, table)
        for item in dataclasses.fields(before):
            if getattr(before, item.name) != getattr(after, item.name):
                keys.append(f"{table}.{item.name}")
    return keys


async def run(config: Config, reload: Callable[[], Config] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly. SIGHUP reloads origins, images and
    the admin token from `reload()` (the config file read again); a bad new config is logged
    in one line naming the file and the key, and the running one kept.

    Raises ConfigError or StartupError (one line each) when the service cannot start."""
    service = Service(config)
    try:
        await service.start()
    except BaseException as exc:
        await service.stop()
        if isinstance(exc, ConfigError | StartupError) or not isinstance(exc, Exception):
            raise
        log.debug("start-up failed", exc_info=True)
        raise StartupError(f"start-up failed: {type(exc).__name__}: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloading = asyncio.Lock()
    tasks: set[asyncio.Task[None]] = set()

    async def reload_now() -> None:
        async with reloading:  # one at a time, in the order the signals came
            if reload is None:
                log.warning("reload-skipped reason=started without --config: nothing to read")
                return
            try:
                await service.reload(reload())
            except ConfigError as exc:
                log.error(
                    "reload-failed file=%s key=%s error=%s; the running config is kept",
                    exc.file,
                    exc.key,
                    exc.message,
                )
            except Exception as exc:
                log.exception("reload-failed error=%s; the running config is kept", exc)

    def on_hup() -> None:
        task = loop.create_task(reload_now(), name="reload")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        for task in list(tasks):
            await task
        await service.stop()
