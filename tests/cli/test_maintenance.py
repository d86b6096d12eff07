"""CLI verify, ls, gc and relocate: exit codes and exact output lines."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cytostore.cli import main
from cytostore.store import Store


def _run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_verify_cli__ok_then_corrupt_byte_exits_1_with_fix(
    embedded_store_copy: Path,
) -> None:
    store = embedded_store_copy
    assert _run("verify", store) == (0, "ok: 5 files, 1 sets checked\n", "")
    vec = store / "vectors" / "1.f32"
    data = bytearray(vec.read_bytes())
    data[10] ^= 1
    vec.write_bytes(bytes(data))
    code, out, _ = _run("verify", store)
    assert code == 1
    assert out.splitlines() == [
        "checksum: vectors/1.f32: vectors file's sha256 differs from the one recorded "
        f"when it was written ({out.split('(')[1].split(')')[0]}): it was changed or "
        f"damaged; fix: cytostore rm {store} set random-tiny --cascade && cytostore "
        f"embed {store} --model random-tiny"
    ]
    code, out, _ = _run("verify", store, "--format", "json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["problems"][0]["kind"] == "checksum"


def test_verify_cli__repair_truncates_tail(embedded_store_copy: Path) -> None:
    with open(embedded_store_copy / "vectors" / "1.ids", "ab") as f:
        f.write(b"\1" * 8)
    assert _run("verify", embedded_store_copy)[0] == 1
    code, out, err = _run("verify", embedded_store_copy, "--repair")
    assert (code, out) == (0, "ok: 5 files, 1 sets checked\n")
    assert err.startswith("repaired: vectors/1.ids: 1 uncommitted rows")


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_ls_cli__models_same_as_models_command(embedded_store: Path, fmt: str) -> None:
    ls_out = _run("ls", embedded_store, "models", "--format", fmt)
    models_out = _run("models", embedded_store, "--format", fmt)
    assert ls_out == models_out
    assert ls_out[0] == 0 and "random-tiny" in ls_out[1]


def test_ls_cli__all_groups(embedded_store: Path) -> None:
    code, out, _ = _run("ls", embedded_store)
    assert code == 0
    assert [line for line in out.splitlines() if line.endswith(":")] == [
        "models:",
        "sets:",
        "heads:",
        "tables:",
    ]
    doc = json.loads(_run("ls", embedded_store, "--format", "json")[1])
    assert doc["sets"][0]["rows"] == 360
    assert _run("ls", embedded_store, "cells")[0] == 2


def test_gc_cli__reports_bytes(embedded_store_copy: Path) -> None:
    orphan = embedded_store_copy / "indexes" / "5.faiss"
    orphan.write_bytes(b"\0" * 2048)
    stale = embedded_store_copy / "vectors" / "1.f32.tmp"
    stale.write_bytes(b"\0" * 1024)
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    code, out, err = _run("gc", embedded_store_copy, "--dry-run")
    assert code == 0 and orphan.exists()
    assert err == "would remove 2 files (3.0 KiB) and 0 stale checksum rows\n"
    code, out, err = _run("gc", embedded_store_copy)
    assert [line.split() for line in out.splitlines()[2:]] == [
        ["indexes/5.faiss", "2048", "orphan"],
        ["vectors/1.f32.tmp", "1024", "temporary"],
    ]
    assert err == "removed 2 files (3.0 KiB) and 0 stale checksum rows\n"
    assert not orphan.exists() and not stale.exists()


def test_relocate_cli__moves_and_refuses(
    synthetic_store_copy: Path, tmp_path: Path
) -> None:
    store = Store.open(synthetic_store_copy)
    old = store.sql("SELECT root FROM datasets WHERE dataset = 'lmu'").rows[0][0]
    new = Path(shutil.copytree(old, tmp_path / "lmu")).resolve()
    code, out, _ = _run("relocate", synthetic_store_copy, "lmu", new)
    assert (code, out) == (
        0,
        f"dataset lmu: {old} -> {new} (20 of 120 cells checked)\n",
    )
    code, out, err = _run("relocate", synthetic_store_copy, "bm", new)
    assert code == 1 and err.startswith("Error: refused: 20 of 20 sampled cells")
    code, _, err = _run("relocate", synthetic_store_copy, "nope", new)
    assert code == 1 and "no dataset 'nope'" in err
