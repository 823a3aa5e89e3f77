"""The Modal app behind `fibmoe bench --remote`, and `execute`, which runs requests on it. It imports modal
at the top, so the CLI imports it only when a remote run starts (Modal imports it inside the container to
find the function). Every constant comes from `remote`; constructing the app opens no connection."""

from __future__ import annotations

import contextlib
import sys

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


def execute(gpu: str, requests: list[dict]) -> list[dict]:
    """Run the requests on Modal, one container each, in parallel when there are several."""
    problem = remote.credentials_problem()
    if problem:
        raise remote.FibmoeError(problem)
    print(f"running {len(requests)} container(s) on Modal {gpu} ...", file=sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr), modal.enable_output():  # stdout stays for --json
            with app.run():
                fn = bench_remote.with_options(gpu=gpu)
                if len(requests) == 1:
                    return [fn.remote(requests[0])]
                return list(fn.map(requests))
    except Exception as e:
        mapped = remote.modal_error(modal, e)
        if mapped is None:
            raise
        raise mapped from None
