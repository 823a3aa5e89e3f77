"""The Modal app behind `fibmoe bench --remote`. It imports modal at the top, so only `remote` imports it,
and only when a remote run starts (or inside the container, where Modal imports it to find the function).
Every constant comes from `remote`; constructing the app opens no connection."""

from __future__ import annotations

import modal

from . import remote

image = (
    modal.Image.from_registry(remote.BASE_IMAGE, add_python=remote.PYTHON_VERSION)
    .entrypoint([])  # no NVIDIA banner in the logs
    .pip_install(*remote.PIP_PACKAGES)
    .env(remote.IMAGE_ENV)
    .add_local_python_source("fibmoe")  # our package, as local source (no variants: solutions travel as JSON)
)
volume = modal.Volume.from_name(remote.VOLUME_NAME)
app = modal.App(remote.APP_NAME, image=image)


@app.function(gpu=remote.DEFAULT_GPU, timeout=remote.TIMEOUT_S, volumes={remote.VOLUME_MOUNT: volume})
def bench_remote(request: dict) -> dict:
    """Solution JSON strings and settings in, plain JSON out (see `remote.remote_body`)."""
    return remote.remote_body(request)
