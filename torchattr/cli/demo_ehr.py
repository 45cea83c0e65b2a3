"""``torchattr demo --ehr``: train an outcome model on synthetic EHR codes, find the planted code.

Steps: generate seeded synthetic patients (:func:`torchattr.data.make_ehr`: bags of condition
and procedure codes, four lab values, an outcome driven by the planted condition
``I21.9 acute myocardial infarction`` plus weaker effects), train :class:`torchattr.data.EHRNet`
on the CPU (AdamW, binary cross-entropy; codes randomly replaced by UNK 10% of the time, so
that UNK learns to mean "some code" and makes a neutral baseline), report the held-out accuracy
next to that of the true risk model, then explain the outcome logit of held-out positive
patients who carry the planted code with Integrated Gradients in embedding space: condition and
procedure codes move from UNK to their own embedding (PAD positions stay PAD and score exactly
zero), the labs from the training mean to their value. :func:`torchattr.top_codes` ranks each
patient's condition codes; the summary gives the rank of the planted code among them (UNK codes,
whose attribution against the UNK baseline is zero by construction, are left out), next to what
a random ordering would give, the condition codes with the highest mean score over those
patients, and the largest completeness gap ``|sum of attributions - (logit - baseline logit)|``.
A JSON record goes to ``<out>/ehr_summary.json``.

Everything is seeded: the same options give the same numbers. Each random stream (training and
held-out patients, model initialisation, shuffling, code dropout) has its own seed derived from
``--seed`` (:func:`torchattr.data.derive_seed`); the caller's global random state is left as it
was.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import torchattr as ta
from torchattr.cli import _runs
from torchattr.cli._common import one_thread
from torchattr.data import EHRData, EHRNet, derive_seed, make_ehr
from torchattr.data.ehr import PAD, UNK

__all__ = ["EHRDemoConfig", "run", "run_demo"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class EHRDemoConfig:
    """Settings of one EHR demo run (defaults: the full demo, a few seconds on 2 CPU cores).

    ``n_explain`` caps the number of explained patients (held-out positives with the planted
    code, about 23% of ``n_test``); ``n_show`` of them are printed.
    """

    out: Path = Path("torchattr_demo")
    seed: int = 0
    epochs: int = 10
    n_train: int = 2000
    n_test: int = 500
    n_explain: int = 200
    n_show: int = 5
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 1e-2
    code_dropout: float = 0.1
    dim: int = 8
    ig_steps: int = 32


QUICK = {"epochs": 5, "n_train": 400, "n_test": 120, "n_explain": 16, "n_show": 3}


def run(args: argparse.Namespace) -> int:
    """Run the EHR demo from the ``demo`` subcommand's parsed arguments; return the exit code."""
    run_demo(config_from_args(args))
    return 0


def config_from_args(args: argparse.Namespace) -> EHRDemoConfig:
    """Defaults, then the ``--quick`` preset, then ``--epochs``, ``--n-train``, ``--n-test``,
    ``--n-explain`` where given explicitly (the ``demo`` parser leaves them None otherwise)."""
    settings: dict[str, Any] = dict(QUICK) if getattr(args, "quick", False) else {}
    for name in ("epochs", "n_train", "n_test", "n_explain"):
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    return EHRDemoConfig(out=args.out, seed=args.seed, **settings)


def run_demo(config: EHRDemoConfig, log: Log = print) -> dict[str, Any]:
    """Run every step of the EHR demo; print progress and the summary; return the summary dict.

    Runs on one CPU thread (restored afterwards): the model is so small that intra-op threads only
    add synchronisation, which costs 10x and more on a busy machine; one thread also keeps the
    numbers independent of the core count.
    """
    with one_thread():
        return _run_demo(config, log)


def _run_demo(config: EHRDemoConfig, log: Log) -> dict[str, Any]:
    start = time.perf_counter()
    log(
        f"[1/5] generating {config.n_train} training and {config.n_test} held-out synthetic "
        f"patients (seed {config.seed})"
    )
    train_data = make_ehr(config.n_train, seed=_seed(config, "train"))
    test_data = make_ehr(config.n_test, seed=_seed(config, "test"))
    log(
        f"      planted condition: {train_data.planted_name} (id {train_data.planted}); "
        f"{_percent(train_data.has_planted)} of training patients carry it, "
        f"{_percent(train_data.labels)} are positive"
    )

    log(f"[2/5] training EHRNet for {config.epochs} epoch(s) on the CPU")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(config, "model"))
        model = EHRNet(
            len(train_data.condition_names), len(train_data.procedure_names), dim=config.dim
        )
    shuffle = torch.Generator().manual_seed(_seed(config, "shuffle"))
    dropout = torch.Generator().manual_seed(_seed(config, "code dropout"))
    train(model, train_data, config, shuffle, dropout, log)
    model.eval()

    logits = predict(model, test_data)
    correct = ((logits > 0).long() == test_data.labels).sum().item()
    accuracy = correct / len(test_data)
    bayes = ((test_data.true_logits > 0).long() == test_data.labels).float().mean().item()
    log(
        f"[3/5] held-out accuracy: {accuracy:.3f} ({correct}/{len(test_data)}; the true risk "
        f"model scores {bayes:.3f})"
    )

    chosen = torch.nonzero((test_data.labels == 1) & test_data.has_planted)[:, 0]
    chosen = chosen[: config.n_explain]
    if len(chosen) == 0:
        raise ValueError(
            f"none of the {config.n_test} held-out patients is a positive carrier of the planted "
            "code: raise n_test"
        )
    log(
        f"[4/5] Integrated Gradients ({config.ig_steps} Gauss-Legendre steps) for "
        f"{len(chosen)} held-out positive carriers of the planted code"
    )
    tick = time.perf_counter()
    inputs = test_data.inputs(chosen)
    attributions, delta = explain(model, inputs, train_data.labs.mean(0), config.ig_steps)
    log(f"      {time.perf_counter() - tick:.2f} s, max |delta| {delta.abs().max().item():.2e}")

    conditions = inputs["conditions"]
    known = (conditions != PAD) & (conditions != UNK)
    rankings = ta.top_codes(
        attributions["conditions"],
        conditions,
        test_data.condition_names,
        k=conditions.shape[1],
        mask=known,
    )
    planted_name = test_data.planted_name
    code_means = mean_scores(attributions["conditions"], conditions, known)
    ranks = torch.tensor([[n for n, _ in r].index(planted_name) + 1 for r in rankings])
    n_codes = torch.tensor([len(r) for r in rankings])
    ids = [f"patient_{i:05d}" for i in chosen.tolist()]
    summary = build_summary(
        config,
        test_data,
        (accuracy, bayes),
        ids,
        rankings,
        ranks,
        n_codes,
        attributions,
        delta,
        code_means,
    )
    for patient, logit in zip(summary["patients"], logits[chosen].tolist(), strict=True):
        patient["logit"] = logit  # the model's outcome logit, and its probability
        patient["probability"] = 1 / (1 + math.exp(-logit))
    summary["created"] = _runs.now()
    summary["versions"] = {
        "torchattr": ta.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    config.out.mkdir(parents=True, exist_ok=True)
    path = config.out / "ehr_summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    from torchattr.cli.report import write_report

    report = write_report(config.out, config.out / "report")
    log(f"[5/5] wrote {path} and the report {report.resolve()}")

    log("")
    log(format_patients(ids, rankings, ranks, logits[chosen], config.n_show))
    log("")
    log(format_summary(summary))
    log(f"\ndone in {time.perf_counter() - start:.1f} s")
    return summary


def train(
    model: EHRNet,
    data: EHRData,
    config: EHRDemoConfig,
    shuffle: torch.Generator,
    dropout: torch.Generator,
    log: Log = print,
) -> None:
    """AdamW on ``binary_cross_entropy_with_logits``, mini-batches shuffled by ``shuffle``.

    Code dropout: in every batch each real code becomes UNK with probability
    ``config.code_dropout`` (drawn from ``dropout``), so that UNK learns to stand for "some
    code, unknown which" and the UNK baseline of the explanation is neutral. Logs the mean
    training loss of about four evenly spaced epochs, the last one included.
    """
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    targets = data.labels.float()
    every = max(1, config.epochs // 4)
    model.train()
    tick = time.perf_counter()
    for epoch in range(config.epochs):
        order = torch.randperm(len(data), generator=shuffle)
        total = 0.0
        for batch in order.split(config.batch_size):
            inputs = data.inputs(batch)
            for key in ("conditions", "procedures"):
                codes = inputs[key]
                hidden = torch.rand(codes.shape, generator=dropout) < config.code_dropout
                inputs[key] = torch.where(hidden & (codes != PAD), UNK, codes)
            logits = model(**inputs)[:, 0]
            loss = nn.functional.binary_cross_entropy_with_logits(logits, targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        if (epoch + 1) % every == 0 or epoch + 1 == config.epochs:
            log(
                f"      epoch {epoch + 1}/{config.epochs}: loss {total / len(data):.4f} "
                f"({time.perf_counter() - tick:.1f} s)"
            )


def predict(model: nn.Module, data: EHRData) -> Tensor:
    """Outcome logits ``[N]``, without gradients."""
    with torch.no_grad():
        return model(**data.inputs())[:, 0]


def explain(
    model: EHRNet, inputs: dict[str, Tensor], lab_baseline: Tensor, steps: int
) -> tuple[dict[str, Tensor], Tensor]:
    """IG of the outcome logit in embedding space; attributions ``[K, Lc]``, ``[K, Lp]``,
    ``[K, 4]`` and the completeness gap ``[K]``.

    Baseline: UNK for every code (PAD positions keep PAD and get zero attribution), the
    ``lab_baseline`` ``[4]`` (the training mean) for the labs.
    """
    return ta.integrated_gradients(
        model,
        inputs,
        baseline={"conditions": UNK, "procedures": UNK, "labs": lab_baseline},
        layer={"conditions": model.condition_embedding, "procedures": model.procedure_embedding},
        mask={"conditions": PAD, "procedures": PAD},
        steps=steps,
        return_delta=True,
    )


def mean_scores(scores: Tensor, codes: Tensor, keep: Tensor) -> list[tuple[int, float, int]]:
    """Per code, the mean score over its kept positions ``[K, L]``; ``(id, mean, count)`` tuples,
    highest mean first (ties by id)."""
    kept_codes, kept_scores = codes[keep], scores[keep].double()
    unique, inverse, counts = torch.unique(kept_codes, return_inverse=True, return_counts=True)
    totals = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, kept_scores)
    means = totals / counts
    order = means.argsort(descending=True, stable=True)
    return [(int(unique[i]), means[i].item(), int(counts[i])) for i in order]


def format_patients(
    ids: list[str],
    rankings: list[list[tuple[str, float]]],
    ranks: Tensor,
    logits: Tensor,
    count: int,
) -> str:
    """The top-3 condition codes with their IG scores for the first ``count`` patients."""
    lines = ["top condition codes per patient (IG score on the outcome logit)"]
    for patient, ranking, rank, logit in list(zip(ids, rankings, ranks, logits))[:count]:
        lines.append(
            f"{patient}  logit {logit.item():+.2f}, {len(ranking)} known condition codes, "
            f"planted code ranked #{int(rank)}"
        )
        for place, (name, score) in enumerate(ranking[:3], start=1):
            lines.append(f"    {place}. {name:<46}{score:+8.3f}")
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    """Rank of the planted code (against a random ordering), completeness, attribution shares."""
    rank, chance = summary["planted_rank"], summary["chance"]
    shares = summary["mean_attribution"]
    return "\n".join(
        [
            f"planted code {summary['planted_code']['name']!r} among each patient's condition "
            f"codes ({summary['n_explained']} patients, median "
            f"{summary['median_condition_codes']:g} known codes each)",
            f"{'':<22}{'IG':>8}{'random order':>14}",
            f"{'mean rank':<22}{rank['mean']:>8.2f}{chance['mean_rank']:>14.2f}",
            f"{'fraction ranked #1':<22}{rank['fraction_first']:>8.3f}"
            f"{chance['fraction_first']:>14.3f}",
            "highest mean scores over these patients: "
            + ", ".join(
                f"{c['name'].split()[0]} {c['mean']:+.2f} (n={c['patients']})"
                for c in summary["highest_mean_condition_scores"][:3]
            ),
            f"completeness: max |sum of attributions - (logit - baseline logit)| = "
            f"{summary['max_abs_delta']:.2e}",
            "mean attribution per input: " + ", ".join(f"{k} {v:+.3f}" for k, v in shares.items()),
        ]
    )


def build_summary(
    config: EHRDemoConfig,
    data: EHRData,
    accuracy: tuple[float, float],
    ids: list[str],
    rankings: list[list[tuple[str, float]]],
    ranks: Tensor,
    n_codes: Tensor,
    attributions: dict[str, Tensor],
    delta: Tensor,
    code_means: list[tuple[int, float, int]],
) -> dict[str, Any]:
    """JSON-ready record: settings, accuracy, planted-code ranks and per patient the top 5.

    ``accuracy``: the model's held-out accuracy and that of the true risk model;
    ``code_means``: the output of :func:`mean_scores` (the first five are kept).
    """
    settings = {
        k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()
    }
    patients = [
        {
            "id": patient,
            "planted_rank": int(rank),
            "known_condition_codes": int(n),
            "top_conditions": [[name, score] for name, score in ranking[:5]],
            "delta": d.item(),
        }
        for patient, ranking, rank, n, d in zip(ids, rankings, ranks, n_codes, delta)
    ]
    return {
        "settings": settings,
        "held_out_accuracy": accuracy[0],
        "true_risk_model_accuracy": accuracy[1],
        "planted_code": {"id": data.planted, "name": data.planted_name},
        "n_explained": len(ids),
        "median_condition_codes": n_codes.float().median().item(),
        "planted_rank": {
            "mean": ranks.float().mean().item(),
            "fraction_first": (ranks == 1).float().mean().item(),
        },
        "chance": {
            "mean_rank": ((n_codes + 1) / 2).float().mean().item(),
            "fraction_first": (1 / n_codes.float()).mean().item(),
        },
        "max_abs_delta": delta.abs().max().item(),
        "highest_mean_condition_scores": [
            {"id": code, "name": data.condition_names[code], "mean": mean, "patients": count}
            for code, mean, count in code_means[:5]
        ],
        "mean_attribution": {k: v.flatten(1).sum(1).mean().item() for k, v in attributions.items()},
        "patients": patients,
    }


def _percent(flags: Tensor) -> str:
    return f"{100 * flags.float().mean().item():.0f}%"


def _seed(config: EHRDemoConfig, stream: str) -> int:
    return derive_seed(config.seed, f"ehr/{stream}")
