"""kill -9 at any moment leaves no stored image that no task refers to: a run records the keys it is about to write
on its task before uploading, and the reaper deletes them when that run's lease expires. A kill loop on a real
service process, with local storage and with MinIO (moto's S3 server), then every stored object is counted against
the images the tasks refer to."""

from __future__ import annotations

import random
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from minio import Minio

from tests.support.services import API_KEY, ServiceProcess, submit, wait_for_task, write_config

pytestmark = [pytest.mark.slow]

ACCESS_KEY = "sdapi-orphans-access"
SECRET_KEY = "sdapi-orphans-secret"
ROUNDS = 3
# Eight 512x512 images take a few hundred milliseconds to encode and store: the kill lands inside that upload.
TASK = {"prompt": "kill me", "width": 512, "height": 512, "num_inference_steps": 1, "num_images": 8}


def _stored(backend: str, config_dir: Path, s3: dict[str, object] | None, bucket: str) -> set[str]:
    if backend == "local":
        return {path.name for path in (config_dir / "data" / "images").iterdir() if not path.name.startswith(".")}
    assert s3 is not None
    client = Minio(str(s3["endpoint"]), access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False)
    return {Path(item.object_name).name for item in client.list_objects(bucket, recursive=True)}


@pytest.mark.parametrize("backend", ["local", "minio"])
def test_a_kill_loop_leaves_no_orphaned_images(tmp_path, tiny_model, backend, request):
    s3 = request.getfixturevalue("s3") if backend == "minio" else None
    bucket = f"orphans-{random.randrange(10**9)}"
    storage: dict[str, object] = {"backend": "local"}
    if s3 is not None:
        minio = {"endpoint": s3["endpoint"], "access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "bucket": bucket}
        storage = {"backend": "minio", "minio": minio}
    config = write_config(tmp_path, tiny_model, storage=storage, queue={"lease_seconds": 2, "max_attempts": ROUNDS + 5})
    task_ids: list[str] = []
    for _ in range(ROUNDS):
        with ServiceProcess(config) as service:
            service.wait_ready()
            before = len(_stored(backend, tmp_path, s3, bucket))
            with service.client() as client:
                task_ids += [submit(client, **TASK, seed=len(task_ids) + n) for n in range(2)]
            # Kill the moment a run's first image is stored: its others are still being encoded and uploaded (a few
            # hundred milliseconds for eight), and its outcome is not written yet. Looked at every 10 ms: often
            # enough to land inside that upload, seldom enough not to take the CPU the upload needs (a MinIO listing
            # is an HTTP request to moto in this process).
            deadline = time.monotonic() + 120
            while len(_stored(backend, tmp_path, s3, bucket)) <= before:
                assert time.monotonic() < deadline, "no image was stored in two minutes"
                time.sleep(0.01)
            service.kill()
    with ServiceProcess(config) as service:
        service.wait_ready()
        with service.client(key=API_KEY) as client:
            bodies = [wait_for_task(client, task_id, timeout=600) for task_id in task_ids]
    assert all(body["status"] == "completed" for body in bodies), [b for b in bodies if b["status"] != "completed"]
    referenced = {Path(urlparse(url).path).name for body in bodies for url in body["result_urls"]}
    assert len(referenced) == len(task_ids) * TASK["num_images"]
    stored = _stored(backend, tmp_path, s3, bucket)
    assert stored - referenced == set(), f"{len(stored - referenced)} orphaned object(s)"
    assert referenced <= stored
