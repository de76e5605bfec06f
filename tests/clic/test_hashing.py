"""clic.hashing: the one copy of "the same content" (ids of the harness, records of the tiny world)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from clic.hashing import BLOCK_BYTES, canonical_json, file_sha256, json_sha256


def test_json_hash_is_sha256_of_sorted_compact_json_whatever_the_key_order() -> None:
    value = {"b": [1, 2.5, "x"], "a": {"z": None, "y": True}}
    expected = hashlib.sha256(b'{"a":{"y":true,"z":null},"b":[1,2.5,"x"]}').hexdigest()
    assert canonical_json(value) == '{"a":{"y":true,"z":null},"b":[1,2.5,"x"]}'
    assert json_sha256(value) == expected == json_sha256(json.loads(json.dumps(value, sort_keys=False)[::1]))
    assert json_sha256({"a": Path("p")}) == hashlib.sha256(b'{"a":"p"}').hexdigest()  # default=str


def test_file_hash_reads_in_blocks_and_equals_the_hash_of_the_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * (BLOCK_BYTES // 256 * 2 + 3)  # two blocks and a part
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
