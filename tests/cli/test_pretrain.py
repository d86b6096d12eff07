from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from cytostore.cli import main
from cytostore.cli.pretrain import BACKBONE_CHOICES, METHOD_CHOICES


def test_pretrain_choices__match_the_library() -> None:
    from cytostore.embedder.backbones import BACKBONES
    from cytostore.embedder.pretrain import PRETRAIN_METHODS

    assert METHOD_CHOICES == tuple(PRETRAIN_METHODS)
    assert BACKBONE_CHOICES == tuple(BACKBONES)


def test_pretrain_cli__unknown_method_exits_2_listing_valid_ones(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        main, ["pretrain", str(tmp_path), "--name", "m", "--method", "swav"]
    )
    assert result.exit_code == 2
    assert (
        "'swav' is not one of 'simclr', 'byol', 'dino', 'vicreg', 'barlowtwins', "
        "'moco', 'none'" in result.output
    )


def test_pretrain_cli__unknown_backbone_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["pretrain", str(tmp_path), "--name", "m", "--backbone", "vgg"]
    )
    assert result.exit_code == 2
    assert "'vgg' is not one of 'tiny', 'resnet18'" in result.output


def test_pretrain_cli__missing_store_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["pretrain", str(tmp_path / "nope"), "--name", "m"]
    )
    assert result.exit_code == 1  # a well-formed name the store lacks
    assert "no store at" in result.output
    assert not (tmp_path / "nope").exists()


def test_pretrain_cli__trains_and_registers_a_tiny_model(
    synthetic_store_copy: Path,
) -> None:
    result = CliRunner().invoke(
        main,
        [
            "pretrain",
            str(synthetic_store_copy),
            "--name",
            "tiny-simclr",
            "--backbone",
            "tiny",
            "--epochs",
            "1",
            "--crop-px",
            "32",
            "--batch-size",
            "32",
            "--device",
            "cpu",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    import json

    doc = json.loads(result.stdout)
    assert (
        doc["name"] == "tiny-simclr"
        and doc["method"] == "simclr"
        and doc["epochs"] == 1
    )
    assert "registered tiny-simclr: simclr/tiny, 1 epochs" in result.stderr
