"""An object's meta message, as `NatsBus.put_object` writes it (so its readers work unchanged)."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime

from nats.js.api import ObjectInfo, ObjectMetaOptions


def object_meta(
    store: str, name: str, nuid: str, data: bytes, chunk_bytes: int, chunks: int, mtime: datetime
) -> bytes:
    """The JSON meta of object `name` stored as `chunks` chunks under `nuid`."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    info = ObjectInfo(
        name=name,
        bucket=store,
        nuid=nuid,
        size=len(data),
        chunks=chunks,
        mtime=mtime.isoformat(),
        digest=f"SHA-256={digest}",
        options=ObjectMetaOptions(max_chunk_size=chunk_bytes),
    )
    return json.dumps(info.as_dict()).encode()
