"""MinIO (any S3 endpoint) image storage through the official minio SDK. minio/urllib3 errors stop here."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from sdapi.config import MinioConfig
from sdapi.errors import StorageError
from sdapi.storage import new_image_key

logger = logging.getLogger(__name__)

# S3 error codes that mean the credentials or permissions are wrong: named in the message, never the secret.
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}


def _describe(error: Exception, config: MinioConfig) -> str:
    """A short, secret-free description of an S3 failure, naming the storage and the problem."""
    where = f"MinIO {config.endpoint}/{config.bucket}"
    if isinstance(error, S3Error):
        if error.code in _CREDENTIAL_CODES:
            return f"图片存储失败（{where}）：凭证或权限错误（{error.code}）"
        return f"图片存储失败（{where}）：{error.code}"
    if isinstance(error, urllib3.exceptions.HTTPError | OSError):
        return f"图片存储失败（{where}）：无法连接存储服务"
    return f"图片存储失败（{where}）：{type(error).__name__}"


# What the minio SDK and urllib3 under it raise: S3 error answers, transport failures, bad arguments.
_VENDOR_ERRORS = (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError)


class MinioImageStorage:
    """ImageStorage on an S3 bucket. Keys are random; content types are set; URLs are public or presigned."""

    name = "minio"

    def __init__(self, config: MinioConfig) -> None:
        self._config = config
        # No urllib3-level retries: the worker retries uploads with its own backoff and budget.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=config.timeout_seconds, read=config.timeout_seconds),
            retries=urllib3.Retry(total=0, connect=0, read=0, redirect=0),
        )
        self._client = Minio(
            config.endpoint,
            access_key=config.access_key,
            secret_key=config.secret_key,
            secure=config.secure,
            region=config.region,
            http_client=http,
        )
        # Presigned URLs sign the host clients use; when that differs from `endpoint`, sign for it instead.
        # Signing is local computation (the region is configured), so this client never connects anywhere.
        self._signer = self._client
        self._public_base = self._public_base_url()
        if config.url_mode == "presigned" and config.public_base_url:
            public = urlsplit(config.public_base_url)
            self._signer = Minio(
                public.netloc,
                access_key=config.access_key,
                secret_key=config.secret_key,
                secure=public.scheme == "https",
                region=config.region,
            )
        self._state = "not checked yet"

    def _public_base_url(self) -> str:
        if self._config.public_base_url:
            return self._config.public_base_url.rstrip("/")
        scheme = "https" if self._config.secure else "http"
        return f"{scheme}://{self._config.endpoint}"

    def prepare(self) -> None:
        """At start-up: make sure the bucket exists (create it when missing). Raise StorageError."""
        with self._translated():
            if not self._client.bucket_exists(self._config.bucket):
                self._client.make_bucket(self._config.bucket, location=self._config.region)
                logger.info("created bucket %s", self._config.bucket)
                if self._config.url_mode == "public":
                    # Public URLs need anonymous reads. Only a bucket we created gets this policy; an existing
                    # bucket's policy is its administrator's choice.
                    self._client.set_bucket_policy(self._config.bucket, self._public_read_policy())

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """The one map from minio/urllib3 exceptions to StorageError; also keeps the state /health shows."""
        try:
            yield
        except _VENDOR_ERRORS as error:
            self._state = _describe(error, self._config)
            raise StorageError(self._state) from None
        self._state = "ok"

    def _public_read_policy(self) -> str:
        """Anonymous GetObject on this service's prefix only (no listing, no writes)."""
        return json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": ["*"]},
                        "Action": ["s3:GetObject"],
                        "Resource": [f"arn:aws:s3:::{self._config.bucket}/{self._config.prefix}*"],
                    }
                ],
            }
        )

    def new_key(self, extension: str) -> str:
        return f"{self._config.prefix}{new_image_key(extension)}"

    def save(self, key: str, data: bytes, content_type: str) -> None:
        with self._translated():
            self._client.put_object(self._config.bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def read(self, key: str) -> bytes:
        with self._translated():
            response = self._client.get_object(self._config.bucket, key)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

    def delete(self, keys: Sequence[str]) -> None:
        with self._translated():
            for key in keys:
                self._client.remove_object(self._config.bucket, key)

    def url(self, key: str, base_url: str | None) -> str:
        if self._config.url_mode == "presigned":
            signed: str = self._signer.presigned_get_object(
                self._config.bucket, key, expires=timedelta(seconds=self._config.presign_ttl)
            )
            return signed
        return f"{self._public_base}/{self._config.bucket}/{key}"

    def local_path(self, key: str) -> Path | None:
        """Images live in the bucket: the service serves none itself."""
        return None

    def check(self) -> str:
        """The state seen by the last start-up check or upload ("ok", or what went wrong); no network call."""
        return self._state
