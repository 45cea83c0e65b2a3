"""Tests of the synthetic EHR data (torchattr.data.ehr), EHRNet and ``torchattr demo --ehr``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import torchattr as ta
from torchattr.cli import build_parser, main
from torchattr.cli import demo as image_demo
from torchattr.cli.demo_ehr import EHRDemoConfig, config_from_args, run_demo
from torchattr.data import EHRData, EHRNet, make_ehr
from torchattr.data.ehr import PAD, PLANTED_CONDITION, UNK

FIELDS = ("conditions", "procedures", "labs", "labels", "true_logits", "has_planted")


def _model(data: EHRData, seed: int = 0) -> EHRNet:
    torch.manual_seed(seed)
    return EHRNet(len(data.condition_names), len(data.procedure_names)).double().eval()


# ---------------------------------------------------------------- data


def test_make_ehr_shapes_dtypes_and_vocabularies() -> None:
    data = make_ehr(300, seed=3)
    assert len(data) == 300
    assert data.conditions.shape == (300, 12) and data.conditions.dtype == torch.long
    assert data.procedures.shape == (300, 6) and data.procedures.dtype == torch.long
    assert data.labs.shape == (300, 4) and data.labs.dtype == torch.float32
    assert data.labels.shape == (300,) and set(data.labels.tolist()) == {0, 1}
    assert data.has_planted.dtype == torch.bool
    assert data.planted == PLANTED_CONDITION
    assert data.planted_name == "I21.9 acute myocardial infarction"
    assert data.condition_names[PAD] == "<PAD>" and data.condition_names[UNK] == "<UNK>"
    assert data.conditions.max() < len(data.condition_names)
    assert data.procedures.max() < len(data.procedure_names)
    assert len(data.lab_names) == 4
    inputs = data.inputs(torch.tensor([0, 5]))
    assert list(inputs) == ["conditions", "procedures", "labs"]
    assert inputs["conditions"].shape == (2, 12)
    narrow = make_ehr(10, seed=3, max_conditions=5, max_procedures=2)
    assert narrow.conditions.shape == (10, 5) and narrow.procedures.shape == (10, 2)


def test_make_ehr_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    first, second, other = make_ehr(200, seed=1), make_ehr(200, seed=1), make_ehr(200, seed=2)
    assert torch.equal(state, torch.get_rng_state())
    for name in FIELDS:
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert not torch.equal(first.conditions, other.conditions)


def test_padding_is_trailing_and_bags_are_sets() -> None:
    data = make_ehr(2000, seed=0)
    for codes, least in ((data.conditions, 2), (data.procedures, 0)):
        real = codes != PAD
        # Once a row is padded it stays padded; counts vary between patients.
        assert torch.all(real[:, 1:] <= real[:, :-1])
        counts = real.sum(1)
        assert counts.min() == least and counts.max() == codes.shape[1]
        for row in codes:
            known = row[row >= 2]
            assert len(known.unique()) == len(known)  # no code twice in one patient
    assert (data.procedures == PAD).all(1).any()  # some patients have no procedure at all
    share_unk = (data.conditions == UNK).sum() / (data.conditions != PAD).sum()
    assert 0.02 < share_unk < 0.08
    carriers = (data.conditions == data.planted).sum(1)
    assert torch.equal(carriers, data.has_planted.long())  # once for carriers, never otherwise


def test_planted_code_drives_the_labels() -> None:
    data = make_ehr(4000, seed=0)
    carriers = data.has_planted
    assert 0.2 < carriers.float().mean() < 0.3
    positive_rate_carriers = data.labels[carriers].float().mean()
    positive_rate_others = data.labels[~carriers].float().mean()
    assert positive_rate_carriers > 0.85 and positive_rate_others < 0.35
    # No other condition comes close: the largest gap in positive rate between patients with and
    # without a code belongs to the planted one.
    gaps = {}
    for code in range(2, len(data.condition_names)):
        has = (data.conditions == code).any(1)
        gaps[code] = (data.labels[has].float().mean() - data.labels[~has].float().mean()).item()
    ranked = sorted(gaps, key=gaps.get, reverse=True)
    assert ranked[0] == data.planted and gaps[ranked[1]] < 0.5 * gaps[data.planted]
    # The labels follow the generative log-odds.
    accuracy = ((data.true_logits > 0).long() == data.labels).float().mean()
    assert accuracy > 0.75


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n": 0}, ValueError),
        ({"n": 5, "seed": 1.5}, TypeError),
        ({"n": 5, "planted_fraction": 1.5}, ValueError),
        ({"n": 5, "max_conditions": 1}, ValueError),
    ],
)
def test_make_ehr_rejects_bad_arguments(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        make_ehr(**kwargs)


# ---------------------------------------------------------------- model


def test_ehrnet_ignores_padding() -> None:
    data = make_ehr(16, seed=0)
    model = _model(data)
    inputs = data.inputs()
    inputs["labs"] = inputs["labs"].double()
    logits = model(**inputs)
    assert logits.shape == (16, 1)
    # Extra PAD columns and a different PAD embedding change nothing.
    wider = dict(inputs)
    wider["conditions"] = torch.cat([inputs["conditions"], torch.zeros(16, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        model.condition_embedding.weight[PAD] = 5.0
        model.procedure_embedding.weight[PAD] = -5.0
    torch.testing.assert_close(model(**wider), logits)
    mean = EHRNet(len(data.condition_names), len(data.procedure_names), pool="mean")
    assert mean(**data.inputs()).shape == (16, 1)
    with pytest.raises(ValueError, match="pool"):
        EHRNet(30, 20, pool="max")


def test_ig_scores_padding_zero_and_is_complete() -> None:
    data = make_ehr(12, seed=4)
    model = _model(data)
    inputs = data.inputs()
    inputs["labs"] = inputs["labs"].double()
    attributions, delta = ta.integrated_gradients(
        model,
        inputs,
        baseline={"conditions": UNK, "procedures": UNK, "labs": 0.0},
        layer={"conditions": model.condition_embedding, "procedures": model.procedure_embedding},
        mask={"conditions": PAD, "procedures": PAD},
        steps=32,
        return_delta=True,
    )
    for key in ("conditions", "procedures"):
        codes = inputs[key]
        assert attributions[key].shape == codes.shape
        assert torch.all(attributions[key][codes == PAD] == 0)
        assert torch.all(attributions[key][codes == UNK] == 0)  # the baseline itself
        assert torch.all(attributions[key][codes >= 2] != 0)
    assert delta.abs().max() < 1e-8  # GELU: smooth, so Gauss-Legendre converges fast


# ---------------------------------------------------------------- demo


def test_quick_ehr_demo_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    assert main(["demo", "--ehr", "--quick", "--out", tmp_path]) == 0
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is untouched
    assert torch.get_num_threads() == threads  # runs on one thread, then restores the count
    printed = capsys.readouterr().out
    assert "held-out accuracy" in printed and "planted code ranked #" in printed
    assert "fraction ranked #1" in printed and "I21.9 acute myocardial infarction" in printed
    assert not list(tmp_path.glob("*.npy")) and not (tmp_path / "manifest.json").exists()
    summary = json.loads((tmp_path / "ehr_summary.json").read_text())
    assert summary["n_explained"] == len(summary["patients"]) > 0
    assert summary["settings"]["n_train"] == 400
    assert all(1 <= p["planted_rank"] <= p["known_condition_codes"] for p in summary["patients"])
    assert summary["max_abs_delta"] < 1e-3
    # The report: the planted code's rank against a random order, and per patient its rank
    # and top codes (the planted code framed where it is among them).
    page = (tmp_path / "report" / "index.html").read_text()
    assert "I21.9 acute myocardial infarction" in page and "random order" in page
    for patient in summary["patients"]:
        assert patient["id"] in page
        assert f"#{patient['planted_rank']} of {patient['known_condition_codes']}" in page
        assert 0 < patient["probability"] < 1
    assert page.count('class="code planted"') == sum(
        any(name == summary["planted_code"]["name"] for name, _ in p["top_conditions"])
        for p in summary["patients"]
    )
    assert "://" not in page.replace("http://www.w3.org/2000/svg", "")

    again = tmp_path / "again"
    assert main(["demo", "--ehr", "--quick", "--out", str(again)]) == 0
    repeated = json.loads((again / "ehr_summary.json").read_text())
    assert repeated.pop("settings")["out"] == str(again)
    del summary["settings"], summary["created"], repeated["created"]
    assert repeated == summary  # same seed, same numbers


def test_ehr_demo_ranks_the_planted_code_first(tmp_path: Path) -> None:
    """The full training set and model (a smaller held-out set): IG finds the planted code."""
    summary = run_demo(EHRDemoConfig(out=tmp_path, n_test=300), log=lambda _: None)
    assert summary["held_out_accuracy"] > 0.7
    assert summary["held_out_accuracy"] > summary["true_risk_model_accuracy"] - 0.08
    assert summary["n_explained"] >= 50
    rank, chance = summary["planted_rank"], summary["chance"]
    assert rank["fraction_first"] >= 0.9 and chance["fraction_first"] < 0.3
    assert rank["mean"] < 1.2 < chance["mean_rank"]
    assert summary["max_abs_delta"] < 1e-3
    assert summary["mean_attribution"]["conditions"] > 0
    # Trained with code dropout, UNK is a neutral baseline: the planted code leads the mean
    # scores by far (ahead of the weaker true effects, E11.9 and I10).
    means = summary["highest_mean_condition_scores"]
    assert means[0]["id"] == PLANTED_CONDITION and means[0]["mean"] > 2 * means[1]["mean"]


def test_ehr_flag_and_options() -> None:
    parser = build_parser()
    image = parser.parse_args(["demo"])
    assert not image.ehr and image.handler is image_demo.run
    assert image_demo.config_from_args(image).n_train == 600  # the image demo is the default
    quick = config_from_args(parser.parse_args(["demo", "--ehr", "--quick", "--epochs", "3"]))
    assert quick.epochs == 3 and quick.n_train == 400
    full = config_from_args(parser.parse_args(["demo", "--ehr", "--seed", "7", "--out", "x"]))
    assert full == EHRDemoConfig(out=Path("x"), seed=7)
