"""A synthetic electronic health record (EHR) data set with one planted risk factor.

Each patient has a bag of condition codes, a bag of procedure codes, four lab values and a
binary outcome. The code vocabularies are invented, ICD-10-like (conditions) and CPT-like
(procedures) names; they describe no real coding system or population.

Codes are stored as padded LongTensors: ``PAD = 0`` fills the unused trailing positions,
``UNK = 1`` stands for a rare code outside the vocabulary (about 5% of the drawn codes), real
codes start at 2. A patient has 2 to ``max_conditions`` distinct condition codes and 0 to
``max_procedures`` distinct procedure codes, drawn without replacement with Zipf-like
popularity, in random order. About ``planted_fraction`` of the patients carry the planted
condition :data:`PLANTED_CONDITION` (``"I21.9 acute myocardial infarction"``).

The outcome is drawn from ``Bernoulli(sigmoid(logit))`` with

``logit = -1.5 + 4.0 [planted] + 0.8 [E11.9] + 0.5 [I10] + 0.6 [93458] + 0.4 z_LDL``

so the planted code dominates (about 94% of its carriers are positive, against about 29% of the
others) while a few weaker effects (two conditions, one procedure, one lab value) add signal and
the Bernoulli draw adds label noise. Lab values are z-scores (creatinine, glucose, LDL
cholesterol, haemoglobin), standard normal except that diabetes (E11.9) raises glucose by one
standard deviation.

Everything is drawn from one ``torch.Generator`` seeded with ``derive_seed(seed, "ehr")``: the
same arguments give bit-identical data, and the global random state is neither used nor changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from torchattr._core.checks import check_positive_int
from torchattr.data.seeding import derive_seed

__all__ = [
    "CONDITIONS",
    "CONDITION_NAMES",
    "FIRST_CODE",
    "LABS",
    "PLANTED_CONDITION",
    "PROCEDURES",
    "PROCEDURE_NAMES",
    "EHRData",
    "make_ehr",
]

PAD, UNK = 0, 1
FIRST_CODE = 2

CONDITIONS = (
    "E11.9 type 2 diabetes mellitus",
    "I10 essential hypertension",
    "E78.5 hyperlipidaemia",
    "J44.9 chronic obstructive pulmonary disease",
    "N18.3 chronic kidney disease, stage 3",
    "J45.909 asthma",
    "K21.9 gastro-oesophageal reflux disease",
    "I21.9 acute myocardial infarction",
    "M54.5 low back pain",
    "F32.9 major depressive disorder",
    "F41.1 generalised anxiety disorder",
    "E03.9 hypothyroidism",
    "M17.9 osteoarthritis of knee",
    "G47.33 obstructive sleep apnoea",
    "E66.9 obesity",
    "D64.9 anaemia",
    "J06.9 acute upper respiratory infection",
    "N39.0 urinary tract infection",
    "R51 headache",
    "L40.0 psoriasis",
    "K58.9 irritable bowel syndrome",
    "G43.909 migraine",
    "H40.9 glaucoma",
    "M81.0 osteoporosis",
    "I48.91 atrial fibrillation",
    "Z87.891 history of nicotine dependence",
    "J30.9 allergic rhinitis",
    "B34.9 viral infection",
    "R05 cough",
    "K59.00 constipation",
)
PROCEDURES = (
    "99213 office visit, established patient",
    "93000 electrocardiogram",
    "80053 comprehensive metabolic panel",
    "85025 complete blood count",
    "71046 chest x-ray, 2 views",
    "93306 echocardiogram",
    "93458 left heart catheterisation",
    "36415 venipuncture",
    "90471 immunisation administration",
    "45378 diagnostic colonoscopy",
    "70450 CT head without contrast",
    "97110 therapeutic exercise",
    "81002 urinalysis",
    "83036 haemoglobin A1c",
    "80061 lipid panel",
    "94010 spirometry",
    "99284 emergency department visit",
    "73721 MRI knee",
    "G0439 annual wellness visit",
    "92014 eye examination",
)
LABS = ("creatinine", "glucose", "LDL cholesterol", "haemoglobin")

PLANTED_CONDITION = FIRST_CODE + CONDITIONS.index("I21.9 acute myocardial infarction")
_DIABETES = FIRST_CODE + CONDITIONS.index("E11.9 type 2 diabetes mellitus")
_HYPERTENSION = FIRST_CODE + CONDITIONS.index("I10 essential hypertension")
_CATHETER = FIRST_CODE + PROCEDURES.index("93458 left heart catheterisation")
_LDL, _GLUCOSE = LABS.index("LDL cholesterol"), LABS.index("glucose")

_INTERCEPT = -1.5
_PLANTED_EFFECT = 4.0
_WEAK_EFFECTS = {"diabetes": 0.8, "hypertension": 0.5, "catheterisation": 0.6, "ldl": 0.4}
_UNK_RATE = 0.05


def _vocabulary(names: tuple[str, ...]) -> dict[int, str]:
    return {PAD: "<PAD>", UNK: "<UNK>"} | {FIRST_CODE + i: n for i, n in enumerate(names)}


CONDITION_NAMES: dict[int, str] = _vocabulary(CONDITIONS)
PROCEDURE_NAMES: dict[int, str] = _vocabulary(PROCEDURES)


@dataclass(frozen=True)
class EHRData:
    """A synthetic EHR cohort of N patients (see :func:`make_ehr`).

    * ``conditions``: long ``[N, Lc]`` condition codes, trailing ``PAD``;
    * ``procedures``: long ``[N, Lp]`` procedure codes, trailing ``PAD`` (a row may be all PAD);
    * ``labs``: float32 ``[N, 4]`` lab z-scores, columns named by ``lab_names``;
    * ``labels``: long ``[N]`` binary outcome, drawn from ``sigmoid(true_logits)``;
    * ``true_logits``: float32 ``[N]`` log-odds of the generative model (thresholding them at 0
      gives the best accuracy any model can expect);
    * ``has_planted``: bool ``[N]``, whether the patient carries the planted condition;
    * ``condition_names`` / ``procedure_names``: id -> readable name (PAD and UNK included);
    * ``planted``: the id of the planted condition code.

    Example::

        cohort = ta.data.make_ehr(256, seed=0)
        cohort.conditions.shape, cohort.labels.float().mean()
    """

    conditions: Tensor
    procedures: Tensor
    labs: Tensor
    labels: Tensor
    true_logits: Tensor
    has_planted: Tensor
    condition_names: dict[int, str]
    procedure_names: dict[int, str]
    lab_names: tuple[str, ...]
    planted: int

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def planted_name(self) -> str:
        """The readable name of the planted condition."""
        return self.condition_names[self.planted]

    def inputs(self, index: Tensor | slice | None = None) -> dict[str, Tensor]:
        """Model inputs ``{"conditions", "procedures", "labs"}`` (the rows ``index``, or all).

        The keys match the keyword arguments of :class:`torchattr.data.EHRNet`.
        """
        index = slice(None) if index is None else index
        return {
            "conditions": self.conditions[index],
            "procedures": self.procedures[index],
            "labs": self.labs[index],
        }


def make_ehr(
    n: int,
    seed: int = 0,
    *,
    planted_fraction: float = 0.25,
    max_conditions: int = 12,
    max_procedures: int = 6,
) -> EHRData:
    """Generate ``n`` synthetic patients; see the module docstring for the generative model.

    ``planted_fraction``: the probability that a patient carries the planted condition.
    ``max_conditions`` (at least 2, at most 29) and ``max_procedures`` (at least 1, at most 20)
    set the padded widths ``Lc`` and ``Lp`` (larger values are capped); a patient has
    ``U{2..Lc}`` condition and ``U{0..Lp}`` procedure codes.

    Example::

        data = make_ehr(2000, seed=0)
        data.conditions.shape, data.procedures.shape    # [2000, 12], [2000, 6]
        data.labs.shape, data.labels.shape              # [2000, 4], [2000]
        data.condition_names[data.planted]              # 'I21.9 acute myocardial infarction'
    """
    n = check_positive_int(n, "n")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if isinstance(planted_fraction, bool) or not isinstance(planted_fraction, (int, float)):
        kind = type(planted_fraction).__name__
        raise TypeError(f"planted_fraction must be a number, got {kind}")
    if not 0.0 <= planted_fraction <= 1.0:
        raise ValueError(f"planted_fraction must lie in [0, 1], got {planted_fraction}")
    max_conditions = check_positive_int(max_conditions, "max_conditions", minimum=2)
    max_conditions = min(max_conditions, len(CONDITIONS) - 1)  # the planted code is drawn apart
    max_procedures = min(check_positive_int(max_procedures, "max_procedures"), len(PROCEDURES))

    gen = torch.Generator().manual_seed(derive_seed(seed, "ehr"))
    has_planted = torch.rand(n, generator=gen) < planted_fraction
    n_conditions = torch.randint(2, max_conditions + 1, (n,), generator=gen)
    n_procedures = torch.randint(0, max_procedures + 1, (n,), generator=gen)
    exclude = torch.tensor([PLANTED_CONDITION - FIRST_CODE])
    conditions = _draw_bags(len(CONDITIONS), n_conditions, max_conditions, gen, exclude=exclude)
    procedures = _draw_bags(len(PROCEDURES), n_procedures, max_procedures, gen)
    # The planted code takes a uniformly chosen real position of its carriers.
    slot = (torch.rand(n, generator=gen) * n_conditions).long()
    rows = torch.nonzero(has_planted)[:, 0]
    conditions[rows, slot[rows]] = PLANTED_CONDITION

    labs = torch.randn((n, len(LABS)), generator=gen)
    has_diabetes = (conditions == _DIABETES).any(1)
    labs[:, _GLUCOSE] += has_diabetes.float()
    logit = (
        _INTERCEPT
        + _PLANTED_EFFECT * has_planted.float()
        + _WEAK_EFFECTS["diabetes"] * has_diabetes.float()
        + _WEAK_EFFECTS["hypertension"] * (conditions == _HYPERTENSION).any(1).float()
        + _WEAK_EFFECTS["catheterisation"] * (procedures == _CATHETER).any(1).float()
        + _WEAK_EFFECTS["ldl"] * labs[:, _LDL]
    )
    labels = (torch.rand(n, generator=gen) < torch.sigmoid(logit)).long()
    return EHRData(
        conditions=conditions,
        procedures=procedures,
        labs=labs,
        labels=labels,
        true_logits=logit,
        has_planted=has_planted,
        condition_names=dict(CONDITION_NAMES),
        procedure_names=dict(PROCEDURE_NAMES),
        lab_names=LABS,
        planted=PLANTED_CONDITION,
    )


def _draw_bags(
    vocabulary: int,
    counts: Tensor,
    width: int,
    gen: torch.Generator,
    exclude: Tensor | None = None,
) -> Tensor:
    """Per row ``i``, ``counts[i] <= width`` distinct codes (``[N, width]`` long, trailing PAD).

    Codes are drawn without replacement with Zipf-like weights ``1 / (rank + 2)`` (Gumbel top-k on
    a random popularity order), ``exclude`` (0-based code offsets) never drawn; each drawn code
    becomes UNK with probability 5%.
    """
    n = counts.shape[0]
    popularity = torch.randperm(vocabulary, generator=gen)
    log_weights = -torch.log(popularity.double() + 2)
    if exclude is not None:
        log_weights[exclude] = -torch.inf
    uniform = torch.rand((n, vocabulary), generator=gen, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    codes = (log_weights + gumbel).argsort(dim=1, descending=True)[:, :width] + FIRST_CODE
    unknown = torch.rand(codes.shape, generator=gen) < _UNK_RATE
    codes = torch.where(unknown, UNK, codes)
    real = torch.arange(width)[None, :] < counts[:, None]
    return torch.where(real, codes, PAD)
