"""The converted SmolLM2 cache: when is it current for a GGUF file (models/gguf_cache.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from meerkat_core.models.gguf_cache import SOURCE_RECORD, _source_record, cache_is_current


def _cache_for(tmp_path: Path, gguf: Path) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "config.json").write_text("{}")
    (cache / SOURCE_RECORD).write_text(json.dumps(_source_record(gguf)))
    return cache


def test_cache_follows_the_gguf_content_not_its_mtime(tmp_path: Path) -> None:
    """The same bytes installed again (another venv: a new mtime) keep the cache; other bytes of the same
    size, or another size, do not."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    cache = _cache_for(tmp_path, gguf)
    assert cache_is_current(cache, gguf)
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_is_current(cache, gguf)  # same content, new mtime
    data = bytearray(gguf.read_bytes())
    data[100] ^= 0xFF
    gguf.write_bytes(bytes(data))
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert gguf.stat().st_size == st.st_size and not cache_is_current(cache, gguf)
    gguf.write_bytes(bytes(data) + b"x")
    assert not cache_is_current(cache, gguf)


def test_records_without_a_hash_still_match_their_own_file(tmp_path: Path) -> None:
    """A cache converted before the hash was recorded stays current for its file, and is rebuilt (not
    trusted) when only the mtime changed, since its content cannot be compared."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    cache = _cache_for(tmp_path, gguf)
    rec = json.loads((cache / SOURCE_RECORD).read_text())
    del rec["sha256"]
    (cache / SOURCE_RECORD).write_text(json.dumps(rec))
    assert cache_is_current(cache, gguf)
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not cache_is_current(cache, gguf)
    (cache / SOURCE_RECORD).write_text("not json")
    assert not cache_is_current(cache, gguf)
