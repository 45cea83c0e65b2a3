"""Composites: which rule goes to which node of the graph.

A :class:`Composite` is an ordered tuple of ``(matcher, rule)`` entries; the first entry whose
matcher accepts a node's :class:`Site` gives its rule. ``a | b`` tries ``a``'s entries first, then
``b``'s, so a user's map overrides or extends a named composite::

    composite = ta.composites.by_name({"classifier.*": ta.rules.Epsilon(0.25)}) | EpsilonPlusFlat()

Nodes no entry matches get the base defaults shared by every composite: activations ``Pass``,
sums / means / average pools / products ``Norm``, an unmerged BatchNorm ``Pass``; layer and
group norms, softmax and attention their AttnLRP treatment (see :mod:`torchattr.lrp.ops`). A dense
or convolution layer that no entry matches is an error (a composite must say what to do with it).

The named composites take the defaults of Zennit, the reference LRP library for PyTorch:

========================== ============ ============ ===================================
composite                  convolutions dense layers first layer
========================== ============ ============ ===================================
EpsilonPlus                ZPlus        Epsilon      --
EpsilonAlpha2Beta1         AlphaBeta    Epsilon      --
EpsilonPlusFlat            ZPlus        Epsilon      first conv or dense -> Flat
EpsilonAlpha2Beta1Flat     AlphaBeta    Epsilon      first conv or dense -> Flat
EpsilonGammaBox(low, high) Gamma(0.25)  Epsilon      first convolution -> ZBox(low, high)
========================== ============ ============ ===================================

The *first layer* is every dense or convolution layer with no other such layer between it and
the inputs.

Example::

    relevance = ta.lrp(model, x, composite=ta.composites.EpsilonGammaBox(low=0.0, high=1.0))
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from torchattr.lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, ZBox, ZPlus, _Rule

Rule = _Rule


@dataclass(frozen=True)
class Site:
    """What a matcher sees of a node.

    ``name``: the module's qualified name (``"features.0"``) for a module call, the graph node's
    name (``"add_1"``) otherwise; ``kind``: see :mod:`torchattr.lrp.ops`; ``module``: the called
    module or None; ``first``: a dense or convolution layer with no such layer before it;
    ``target``: a readable description of the operation; ``alias``: the name as seen from a
    wrapper (``"module.features.0"`` inside ``nn.DataParallel``, ``"_orig_mod..."`` inside a
    compiled module), so that name patterns work with or without the prefix.
    """

    name: str
    kind: str
    module: nn.Module | None = None
    first: bool = False
    target: str = ""
    alias: str = ""  # the name with a wrapper's prefix ("module.fc" for DataParallel)


Matcher = Callable[[Site], bool]


@dataclass(frozen=True)
class _ByType:
    types: tuple[type, ...]

    def __call__(self, site: Site) -> bool:
        return site.module is not None and isinstance(site.module, self.types)


@dataclass(frozen=True)
class _ByName:
    pattern: str

    def __call__(self, site: Site) -> bool:
        return fnmatch.fnmatchcase(site.name, self.pattern) or (
            bool(site.alias) and fnmatch.fnmatchcase(site.alias, self.pattern)
        )


@dataclass(frozen=True)
class _ByKind:
    kinds: tuple[str, ...]
    first: bool = False

    def __call__(self, site: Site) -> bool:
        return site.kind in self.kinds and (site.first or not self.first)


@dataclass(frozen=True)
class Composite:
    """An ordered map from nodes to rules; ``a | b`` gives ``a``'s entries precedence."""

    entries: tuple[tuple[Matcher, Rule], ...] = ()

    def __or__(self, other: Composite) -> Composite:
        if not isinstance(other, Composite):
            return NotImplemented
        return Composite(self.entries + other.entries)

    def rule_for(self, site: Site) -> Rule | None:
        """The rule of the first matching entry, or None."""
        for matcher, rule in self.entries:
            if matcher(site):
                return rule
        return None


def _check_rule(rule: Any, where: str) -> Rule:
    if not isinstance(rule, _Rule):
        raise TypeError(f"{where}: expected a rule from ta.rules (e.g. Epsilon()), got {rule!r}")
    return rule


def by_type(mapping: Mapping[type | tuple[type, ...], Rule]) -> Composite:
    """Rules by module type: ``{nn.Conv2d: Gamma(0.25), (nn.Linear,): Epsilon()}`` (isinstance)."""
    entries = []
    for types, rule in mapping.items():
        types = types if isinstance(types, tuple) else (types,)
        if not all(isinstance(t, type) for t in types):
            raise TypeError(f"by_type: keys must be module types, got {types!r}")
        entries.append((_ByType(types), _check_rule(rule, f"by_type[{types!r}]")))
    return Composite(tuple(entries))


def by_name(mapping: Mapping[str, Rule]) -> Composite:
    """Rules by name glob (``fnmatch``): module names like ``"layer1.*.conv2"``, or graph node
    names like ``"add_3"`` for functional operations (``ta.lrp_graph(model)`` lists them)."""
    entries = []
    for pattern, rule in mapping.items():
        if not isinstance(pattern, str):
            raise TypeError(f"by_name: keys must be str patterns, got {pattern!r}")
        entries.append((_ByName(pattern), _check_rule(rule, f"by_name[{pattern!r}]")))
    return Composite(tuple(entries))


def by_kind(mapping: Mapping[str, Rule], *, first: bool = False) -> Composite:
    """Rules by node kind (``"conv"``, ``"dense"``, ``"op"``, ``"activation"``, ...); with
    ``first=True`` only for first layers."""
    return Composite(
        tuple(
            (_ByKind((kind,), first), _check_rule(rule, f"by_kind[{kind!r}]"))
            for kind, rule in mapping.items()
        )
    )


def by_predicate(predicate: Callable[[Site], bool], rule: Rule) -> Composite:
    """``rule`` for every node whose :class:`Site` satisfies ``predicate``."""
    if not callable(predicate):
        raise TypeError(f"by_predicate: predicate must be callable, got {predicate!r}")
    return Composite(((predicate, _check_rule(rule, "by_predicate")),))


def from_mapping(mapping: Mapping[Any, Rule]) -> Composite:
    """A user's dict: type keys by type, str keys by name, other callables as predicates."""
    entries: list[tuple[Matcher, Rule]] = []
    for key, rule in mapping.items():
        if isinstance(key, str):
            entries += by_name({key: rule}).entries
        elif isinstance(key, type) or (
            isinstance(key, tuple) and all(isinstance(k, type) for k in key)
        ):
            entries += by_type({key: rule}).entries
        elif callable(key):
            entries += by_predicate(key, rule).entries
        else:
            raise TypeError(
                f"composite: dict keys must be module types, name patterns or predicates, "
                f"got {key!r}"
            )
    return Composite(tuple(entries))


def resolve(composite: Composite | Mapping[Any, Rule] | Iterable[Composite] | None) -> Composite:
    """``None`` -> EpsilonPlusFlat(); a dict -> its entries over EpsilonPlusFlat()."""
    if composite is None:
        return EpsilonPlusFlat()
    if isinstance(composite, Composite):
        return composite
    if isinstance(composite, Mapping):
        return from_mapping(composite) | EpsilonPlusFlat()
    raise TypeError(
        f"composite must be a Composite (e.g. ta.composites.EpsilonPlusFlat()), a dict of rules, "
        f"or None, got {type(composite).__name__}"
    )


def default_rule(site: Site) -> Rule | None:
    """Base defaults: activations and unmerged BatchNorm Pass, weight-free linear ops Norm."""
    if site.kind in ("activation", "batchnorm"):
        return Pass()
    if site.kind == "op":
        return Norm()
    return None


# ----------------------------------------------------------------------------------------------
# named composites (CapWords: they read like the rules they combine)


def EpsilonPlus(epsilon: float = 1e-6) -> Composite:
    """Convolutions ``ZPlus``, dense layers ``Epsilon(epsilon)``."""
    return by_kind({"conv": ZPlus(), "dense": Epsilon(epsilon)})


def EpsilonAlpha2Beta1(epsilon: float = 1e-6) -> Composite:
    """Convolutions ``AlphaBeta(2, 1)``, dense layers ``Epsilon(epsilon)``."""
    return by_kind({"conv": AlphaBeta(2.0, 1.0), "dense": Epsilon(epsilon)})


def EpsilonPlusFlat(epsilon: float = 1e-6) -> Composite:
    """``EpsilonPlus`` with ``Flat`` on the first layer (the default composite)."""
    return by_kind({"conv": Flat(), "dense": Flat()}, first=True) | EpsilonPlus(epsilon)


def EpsilonAlpha2Beta1Flat(epsilon: float = 1e-6) -> Composite:
    """``EpsilonAlpha2Beta1`` with ``Flat`` on the first layer."""
    return by_kind({"conv": Flat(), "dense": Flat()}, first=True) | EpsilonAlpha2Beta1(epsilon)


def EpsilonGammaBox(
    low: float | Tensor, high: float | Tensor, gamma: float = 0.25, epsilon: float = 1e-6
) -> Composite:
    """First convolution ``ZBox(low, high)``, other convolutions ``Gamma(gamma)``, dense
    ``Epsilon(epsilon)``; ``low``/``high`` bound the inputs (numbers or broadcastable tensors)."""
    return by_kind({"conv": ZBox(low, high)}, first=True) | by_kind(
        {"conv": Gamma(gamma), "dense": Epsilon(epsilon)}
    )


__all__ = [
    "Composite",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonGammaBox",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "Site",
    "by_kind",
    "by_name",
    "by_predicate",
    "by_type",
]
