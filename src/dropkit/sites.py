"""Dropout sites: every place in a model where dropout or stochastic depth happens.

A *site* is a (module, attribute) pair holding a rate: ``nn.Dropout.p``, timm
``DropPath.drop_prob``, torchvision ``StochasticDepth.p``, or a float that an attention module
reads at forward time (``nn.MultiheadAttention.dropout``, Hugging Face ``attention_dropout``).
Sites are recognised by class and attribute, so models from timm, torchvision or Hugging Face are
handled without importing them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from dropkit.layers import Dropout, DropPath, check_rate

__all__ = [
    "SITE_KINDS",
    "Site",
    "describe",
    "find_sites",
    "register_site",
    "replace_placeholders",
    "unregister_site",
    "unwrap",
]

SiteKind = Literal["dropout", "drop_path"]
SITE_KINDS: tuple[str, ...] = ("dropout", "drop_path")

# Float attributes that attention implementations read at forward time as their dropout rate.
FLOAT_RATE_ATTRS: tuple[str, ...] = (
    "dropout",  # nn.MultiheadAttention
    "attention_dropout",  # Hugging Face Llama / Mistral / Qwen / ... attention
    "attn_dropout",
    "dropout_prob",  # Hugging Face BERT-style attention (some versions)
    "dropout_p",
)

# timm (and the official early-dropout models) build nn.Identity where a rate is 0 at build time.
PLACEHOLDER_NOTE = (
    "nn.Identity placeholder built at rate 0; build with a small positive rate "
    "(timm: drop_path_rate=1e-6) or call dropkit.replace_placeholders(model)"
)


@dataclass(frozen=True)
class Site:
    """One dropout site. ``p`` reads the module's current rate each time it is accessed."""

    name: str
    kind: SiteKind
    controllable: bool
    note: str = ""
    module: nn.Module | None = field(default=None, repr=False, compare=False)
    attr: str | None = None
    block: str = ""  # qualified name of the enclosing block; groups drop-path sites by depth

    @property
    def p(self) -> float:
        """The site's current rate, read from the module at each access (0 if not controllable)."""
        if not self.controllable or self.module is None or self.attr is None:
            return 0.0
        return float(getattr(self.module, self.attr))

    def set_p(self, rate: float) -> None:
        """Write ``rate`` into the module (raises for a site that is not controllable)."""
        if not self.controllable or self.module is None or self.attr is None:
            raise RuntimeError(f"site {self.name!r} is not controllable: {self.note}")
        setattr(self.module, self.attr, check_rate(rate, f"rate for {self.name}"))


@dataclass(frozen=True)
class _Rule:
    matches: Callable[[type], bool]
    attr: str
    kind: SiteKind
    label: str
    registered: type | None = None  # the class a user registered, for unregister_site


def _is_subclass_of(cls: type) -> Callable[[type], bool]:
    return lambda t: issubclass(t, cls)


def _class_named(name: str, suffix: bool = False) -> Callable[[type], bool]:
    def matches(t: type) -> bool:
        names = (k.__name__ for k in t.__mro__)
        return any(n.endswith(name) if suffix else n == name for n in names)

    return matches


_BUILTIN_RULES: tuple[_Rule, ...] = (
    # nn.Dropout1d/2d/3d, AlphaDropout and FeatureAlphaDropout all derive from _DropoutNd.
    _Rule(_is_subclass_of(nn.modules.dropout._DropoutNd), "p", "dropout", "torch dropout"),
    _Rule(_is_subclass_of(Dropout), "p", "dropout", "dropkit.Dropout"),
    _Rule(_is_subclass_of(DropPath), "drop_prob", "drop_path", "dropkit.DropPath"),
    _Rule(_class_named("StochasticDepth"), "p", "drop_path", "torchvision StochasticDepth"),
    # timm DropPath and Hugging Face ViTDropPath, ConvNextDropPath, SwinDropPath, ...
    _Rule(_class_named("DropPath", suffix=True), "drop_prob", "drop_path", "drop-path module"),
)
_user_rules: list[_Rule] = []


def register_site(cls: type, attr: str, kind: SiteKind = "dropout") -> None:
    """Teach :func:`find_sites` that instances of ``cls`` (and subclasses) hold a rate in ``attr``.

    User registrations take precedence over the built-in rules; registering ``cls`` again replaces
    the earlier registration.
    """
    if not isinstance(cls, type):
        raise TypeError(
            f"register_site needs a class, got {cls!r}; pass type(module) for instances"
        )
    if not isinstance(attr, str) or not attr.isidentifier():
        raise ValueError(f"attr must be the name of the rate attribute (a string), got {attr!r}")
    if kind not in SITE_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {SITE_KINDS}")
    unregister_site(cls)
    rule = _Rule(_is_subclass_of(cls), attr, kind, f"registered {cls.__name__}", registered=cls)
    _user_rules.insert(0, rule)


def unregister_site(cls: type) -> None:
    """Forget a registration made with :func:`register_site` (no error if there was none)."""
    _user_rules[:] = [rule for rule in _user_rules if rule.registered is not cls]


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel / ``torch.compile`` and similar wrappers to reach the model."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if not isinstance(inner, nn.Module):
            wrapped = isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
            wrapped = wrapped or type(model).__name__ in _WRAPPER_NAMES
            inner = getattr(model, "module", None) if wrapped else None
        if not isinstance(inner, nn.Module):
            return model
        model = inner


# Wrappers that keep the real model in ``.module`` (FSDP v1, DeepSpeed, Lightning's wrapper).
_WRAPPER_NAMES = frozenset(
    {"FullyShardedDataParallel", "DeepSpeedEngine", "_LightningModuleWrapperBase"}
)


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _rate_is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _module_site(name: str, module: nn.Module) -> Site | None:
    for rule in (*_user_rules, *_BUILTIN_RULES):
        if not rule.matches(type(module)):
            continue
        if _rate_is_number(getattr(module, rule.attr, None)):
            return Site(name, rule.kind, True, "", module, rule.attr, _parent(name))
        return Site(
            name,
            rule.kind,
            False,
            f"{type(module).__name__} matches the {rule.label} rule but has no numeric "
            f"attribute {rule.attr!r}; call dropkit.register_site({type(module).__name__}, "
            "attr=<its rate attribute>, kind=...)",
            module,
            None,
            _parent(name),
        )
    return None


def _placeholder_site(name: str, module: nn.Module) -> Site | None:
    if type(module) is not nn.Identity:
        return None
    leaf = name.rpartition(".")[2].lower()
    if "drop_path" in leaf or "droppath" in leaf or "stochastic_depth" in leaf:
        kind: SiteKind = "drop_path"
    elif "drop" in leaf:
        kind = "dropout"
    else:
        return None
    return Site(name, kind, False, PLACEHOLDER_NOTE, module, None, _parent(name))


def _float_attr_sites(name: str, module: nn.Module) -> list[Site]:
    sites = []
    for attr in FLOAT_RATE_ATTRS:
        value = module.__dict__.get(attr)
        if isinstance(value, float):
            note = "float attribute read at forward time"
            sites.append(Site(f"{name}:{attr}", "dropout", True, note, module, attr, _parent(name)))
    return sites


def find_sites(model: nn.Module) -> list[Site]:
    """Every dropout / stochastic-depth site in ``model``, in module order.

    Wrappers (DDP, DataParallel, ``torch.compile``) are unwrapped first, so names match the
    user's model. Sites that cannot be scheduled are reported with ``controllable=False`` and a
    note saying why and what to do.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"find_sites needs an nn.Module, got {type(model).__name__}")
    sites: list[Site] = []
    for name, module in unwrap(model).named_modules():
        site = _module_site(name, module) or _placeholder_site(name, module)
        if site is not None:
            sites.append(site)
        sites.extend(_float_attr_sites(name, module))
    return sites


def replace_placeholders(model: nn.Module) -> list[str]:
    """Swap ``nn.Identity`` drop placeholders for rate-0 :class:`DropPath` / :class:`Dropout`.

    At rate 0 the replacements compute the identity, so the model's outputs do not change, but
    the sites become schedulable. Returns the names of the replaced modules.
    """
    root = unwrap(model)
    replaced = []
    for site in find_sites(root):
        if site.note != PLACEHOLDER_NOTE:
            continue
        parent_name, _, leaf = site.name.rpartition(".")
        parent = root.get_submodule(parent_name)
        setattr(parent, leaf, DropPath(0.0) if site.kind == "drop_path" else Dropout(0.0))
        replaced.append(site.name)
    return replaced


def describe(model: nn.Module) -> str:
    """A readable table of the model's sites: name, kind, rate, controllable, note."""
    sites = find_sites(model)
    if not sites:
        return (
            f"{type(unwrap(model)).__name__}: no dropout sites found. If the model uses a custom "
            "dropout class, call dropkit.register_site(cls, attr=..., kind=...)."
        )
    header = ("site", "kind", "p", "controllable", "note")
    rows = [
        (s.name, s.kind, f"{s.p:.4g}", "yes" if s.controllable else "NO", s.note) for s in sites
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        return "  ".join([*cells, row[4]]).rstrip()

    n_drop = sum(s.kind == "dropout" for s in sites)
    n_off = sum(not s.controllable for s in sites)
    summary = (
        f"{type(unwrap(model)).__name__}: {len(sites)} sites "
        f"({n_drop} dropout, {len(sites) - n_drop} drop_path), {n_off} not controllable"
    )
    rule = "-" * len(line(header))
    return "\n".join([summary, line(header), rule, *map(line, rows)])
