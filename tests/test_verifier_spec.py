"""Bad verifier specs stop `ponder worker` at start with INVALID_ARGUMENT naming `verifier`
(before it touches Redis), never inside a batch: a spec that names nothing, a calibration fitted
on another model (or a likelihood calibration for another policy/judge pair), a value head for
another hidden size, a PRM whose tokenizer splits its tag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ponder.cli import main as cli
from ponder.workers.prm.confidence import FEATURES, Calibration
from ponder.workers.prm.value_head import ValueHead


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-spec"), "llama")


def _start(model_dir: Path, spec: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    # Port 9 (discard) on loopback: nothing listens, so reaching Redis would fail differently.
    rc = cli.main(["worker", "--redis", "redis://127.0.0.1:9/0", "--model", str(model_dir), "--verifier", spec,
                   "--backend", "hf"])
    return rc, capsys.readouterr().err


def test_a_spec_that_names_nothing(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _start(model_dir, str(tmp_path / "no-such-verifier"), capsys)
    assert rc == 2 and "INVALID_ARGUMENT: verifier:" in err


def test_a_calibration_for_another_model(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    k = len(FEATURES)
    Calibration("another-model", "0" * 16, 4, 8, (0.0,) * k, (1.0,) * k, (0.0,) * k, 0.0).save(tmp_path / "c.json")
    rc, err = _start(model_dir, f"confidence:{tmp_path / 'c.json'}", capsys)
    assert rc == 2 and "INVALID_ARGUMENT: verifier:" in err and "another-model" in err


def test_a_value_head_for_another_hidden_size(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ValueHead(32).save(tmp_path / "head.safetensors")  # the tiny model's hidden size is 64
    rc, err = _start(model_dir, str(tmp_path / "head.safetensors"), capsys)
    assert rc == 2 and "INVALID_ARGUMENT: verifier:" in err and "hidden size" in err


def test_a_prm_whose_tokenizer_splits_its_tag(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tiny_models import make_tiny_model

    prm = make_tiny_model(tmp_path / "prm", "llama")
    # "ки" (Math-Shepherd's tag) is four bytes in the byte-level vocabulary: not one token
    (prm / "ponder_prm.json").write_text(json.dumps({"layout": "shepherd", "tag": "ки", "step_suffix": " ки\n"}))
    rc, err = _start(model_dir, str(prm), capsys)
    assert rc == 2 and "INVALID_ARGUMENT: verifier:" in err and "tokenises" in err


def test_a_likelihood_calibration_for_another_pair(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ponder.workers.prm.likelihood import FEATURES as LK_FEATURES
    from ponder.workers.prm.likelihood import LikelihoodCalibration

    k = len(LK_FEATURES)
    LikelihoodCalibration("p+j", "0" * 16 + ":" + "1" * 16, 2, 1, (0.0,) * k, (1.0,) * k, (0.0,) * k, 0.0).save(
        tmp_path / "l.json")
    # the tiny model judging itself: same tokenizer, but the calibration names another pair
    rc, err = _start(model_dir, f"likelihood:{model_dir}:{tmp_path / 'l.json'}", capsys)
    assert rc == 2 and "INVALID_ARGUMENT: verifier:" in err and "p+j" in err
    rc, err = _start(model_dir, "likelihood", capsys)
    assert rc == 2 and "INVALID_ARGUMENT: verifier:" in err and "judge" in err
