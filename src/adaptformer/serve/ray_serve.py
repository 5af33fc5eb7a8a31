"""Scale-out on Ray Serve: the same FastAPI app (``app.py``) on N replicas, one frozen backbone each.

    adaptformer serve --task-dir tasks/ --ray --replicas 2           # a local Ray instance, or --ray-address
    serve run adaptformer.serve.ray_serve:build task_dir=tasks/ replicas=2 model=vit_base_patch16_224

Each replica opens its own :class:`~adaptformer.bank.TaskBank` over the shared task directory (tasks load on
first use, through that replica's LRU) and runs the whole app -- admission, decoding pool, cross-task batcher --
through ``@serve.ingress``. The task name travels in the request (``/predict/{task}``, ``tasks=``), so every
replica still forms batches across tasks; Ray's model multiplexing, which would split batches by model id, is
deliberately not used. Ray's proxy spreads requests over the replicas; autoscaling replaces ``num_replicas``
with ``autoscaling_config`` (see ``build``).

Ray's HTTP proxy, not uvicorn, holds the connections here: ``--max-connections`` and the header timeout are
uvicorn settings and do not apply; the API key, Host check, body limits, CORS and the rest live in the app and do.
"""

from __future__ import annotations

import time
from typing import Any

from ..bank import ResidencyLimits, TaskBank
from ..errors import AdaptFormerError
from ..runtime.allocator import tune_allocator
from .app import create_app
from .settings import ServeSettings


def _import_serve():
    try:
        from ray import serve
    except ImportError:
        raise AdaptFormerError("--ray needs Ray Serve: pip install 'adaptformer[ray]'") from None
    return serve


def open_bank(options: dict[str, Any]) -> TaskBank:
    limits = ResidencyLimits(options.pop("max_resident", None), options.pop("max_resident_mb", None))
    return TaskBank.open(limits=limits, **options)


def deployment(
    bank_options: dict[str, Any],
    settings: ServeSettings,
    replicas: int = 1,
    autoscaling: dict[str, Any] | None = None,
    cpus_per_replica: float = 1.0,
):
    """The bound Ray Serve application: ``replicas`` copies (or ``autoscaling``: min/max replicas, target
    ongoing requests) of the app over their own bank."""
    serve = _import_serve()

    @serve.ingress()
    class AdaptformerReplica:
        def __init__(self, options: dict[str, Any], settings: ServeSettings):
            tune_allocator()  # a replica is its own process: the command line's setting did not reach it
            self.options, self.settings = dict(options), settings
            self.bank = open_bank(dict(options))

        def __serve_build_asgi_app__(self):
            return create_app(self.bank, self.options.get("task_dir"), self.settings)

    scaling = {"autoscaling_config": autoscaling} if autoscaling else {"num_replicas": replicas}
    return serve.deployment(
        AdaptformerReplica,
        name="adaptformer",
        max_ongoing_requests=settings.max_queue,
        ray_actor_options={"num_cpus": cpus_per_replica},
        **scaling,
    ).bind(bank_options, settings)


def start(bank_options, settings: ServeSettings, replicas: int, address: str | None = None, **kwargs):
    """Start (or join) Ray, Serve's proxy on ``settings.host:port`` and the app; returns once replicas answer."""
    import ray

    serve = _import_serve()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(deployment(bank_options, settings, replicas, **kwargs), name="adaptformer", route_prefix="/")


def run_on_ray(bank_options, task_dir, settings: ServeSettings, replicas: int, address: str | None) -> int:
    """``adaptformer serve --ray``: serve until interrupted, then shut Serve down."""
    import ray

    serve = _import_serve()
    start({**bank_options, "task_dir": task_dir}, settings, replicas, address)
    print(f"serving on http://{settings.host}:{settings.port} with {replicas} Ray Serve replica(s); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def build(args: dict[str, str]):
    """The builder for ``serve run adaptformer.serve.ray_serve:build key=value ...``: keys ``task_dir``, ``task``
    (comma-separated files), ``model``, ``checkpoint``, ``device``, ``precision``, ``max_resident``, ``replicas``,
    ``min_replicas``/``max_replicas`` (autoscaling), ``api_key``; the rest of the settings take their defaults."""
    options = {
        "tasks": [t for t in args.get("task", "").split(",") if t],
        "task_dir": args.get("task_dir"),
        "model_name": args.get("model"),
        "checkpoint": args.get("checkpoint"),
        "device": args.get("device", "auto"),
        "precision": args.get("precision", "auto"),
        "max_resident": int(args["max_resident"]) if "max_resident" in args else None,
    }
    settings = ServeSettings(host="0.0.0.0", api_key=args.get("api_key"), insecure="api_key" not in args)
    autoscaling = None
    if "max_replicas" in args:
        autoscaling = {
            "min_replicas": int(args.get("min_replicas", 1)),
            "max_replicas": int(args["max_replicas"]),
            "target_ongoing_requests": int(args.get("target_ongoing_requests", 16)),
        }
    return deployment(options, settings, int(args.get("replicas", 1)), autoscaling)
