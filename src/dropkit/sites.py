"""Dropout sites: every place in a model where dropout or stochastic depth happens.

A *site* is a (module, attribute) pair holding a rate: ``nn.Dropout.p``, timm
``DropPath.drop_prob``, torchvision ``StochasticDepth.p``, or a float that an attention module
reads at forward time (``nn.MultiheadAttention.dropout``, Hugging Face ``attention_dropout``).
Sites are recognised by class and attribute, so models from timm, torchvision or Hugging Face are
handled without importing them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

from dropkit.layers import Dropout, DropPath, check_rate

__all__ = [
    "SITE_KINDS",
    "Site",
    "SiteKind",
    "add_dropout_sites",
    "describe",
    "find_sites",
    "register_site",
    "replace_placeholders",
    "unregister_site",
    "unwrap",
]

SiteKind = Literal["dropout", "drop_path"]
"""What a site's rate does: ``"dropout"`` (elements are zeroed: ``nn.Dropout`` and its variants,
[`Dropout`][dropkit.Dropout], attention dropout floats) or ``"drop_path"`` (whole residual
branches of a sample are dropped: [`DropPath`][dropkit.DropPath], timm ``DropPath``, torchvision
``StochasticDepth``). [`DropoutScheduler`][dropkit.DropoutScheduler] schedules each kind
separately."""
SITE_KINDS: tuple[str, ...] = ("dropout", "drop_path")
"""The values of [`SiteKind`][dropkit.sites.SiteKind], for checks and messages."""

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
    """One dropout site: a module attribute holding a dropout or drop-path rate.

    What [`find_sites`][dropkit.find_sites] returns; [`DropoutScheduler`][dropkit.DropoutScheduler]
    writes rates through it. A site does not copy the rate: ``p`` reads the module's current rate
    each time it is accessed, and ``set_p`` writes it.

    Attributes:
        name: The module's qualified name in the model, as ``model.named_modules()`` gives it
            (``""`` for the model itself); ``"<module name>:<attribute>"`` for a float rate
            attribute of an attention module, e.g. ``"encoder.0.attn:dropout"``.
        kind: ``"dropout"`` or ``"drop_path"`` (see [`SiteKind`][dropkit.sites.SiteKind]).
        controllable: Whether the rate can be written: False for ``nn.Identity`` placeholders
            built at rate 0 and for modules that match a rule but hold no numeric rate.
        note: Why a site is not controllable and what to do about it;
            ``"float attribute read at forward time"`` for attention floats; otherwise ``""``.
        module: The module that holds the rate (left out of comparisons and the repr).
        attr: The name of the rate attribute on ``module`` (``"p"``, ``"drop_prob"``, ...), or
            None when the site is not controllable.
        block: The qualified name of the module's parent, the block the site belongs to;
            [`DropoutScheduler`][dropkit.DropoutScheduler] groups drop-path sites by it to give
            each block its depth multiplier.
    """

    name: str
    kind: SiteKind
    controllable: bool
    note: str = ""
    module: nn.Module | None = field(default=None, repr=False, compare=False)
    attr: str | None = None
    block: str = ""

    @property
    def p(self) -> float:
        """The site's current rate, read from the module at each access (0 if not controllable)."""
        if not self.controllable or self.module is None or self.attr is None:
            return 0.0
        return float(getattr(self.module, self.attr))

    def set_p(self, rate: float) -> None:
        """Write ``rate`` into the module's rate attribute, used from the module's next forward.

        Args:
            rate: The new rate, in [0, 1].

        Raises:
            RuntimeError: If the site is not controllable (its ``note`` says why).
            TypeError: If ``rate`` is not a number (or is a bool).
            ValueError: If ``rate`` lies outside [0, 1] or is NaN.
        """
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
    """Teach [`find_sites`][dropkit.find_sites] that instances of ``cls`` hold a rate in ``attr``.

    For a custom dropout class that the built-in rules do not recognise (they know torch's
    dropout modules, dropkit's layers, torchvision ``StochasticDepth``, classes named
    ``...DropPath``, and the float attention-dropout attributes). The registration covers
    subclasses of ``cls`` too, lasts for the process, and takes precedence over the built-in
    rules; registering ``cls`` again replaces the earlier registration. An instance whose
    ``attr`` is not a number at the time of [`find_sites`][dropkit.find_sites] is reported as not
    controllable.

    Args:
        cls: The module class (not an instance: pass ``type(module)`` for one).
        attr: The name of the attribute that holds the rate, read at forward time.
        kind: ``"dropout"`` or ``"drop_path"`` (see [`SiteKind`][dropkit.sites.SiteKind]).

    Raises:
        TypeError: If ``cls`` is not a class.
        ValueError: If ``attr`` is not a string that is an identifier, or ``kind`` is unknown.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import dropkit
        >>> class NoisyLinear(nn.Linear):
        ...     def __init__(self, *args, noise: float = 0.1, **kwargs):
        ...         super().__init__(*args, **kwargs)
        ...         self.noise = noise
        >>> dropkit.register_site(NoisyLinear, attr="noise")
        >>> [site.name for site in dropkit.find_sites(nn.Sequential(NoisyLinear(2, 2)))]
        ['0']
        >>> dropkit.unregister_site(NoisyLinear)
    """
    if not isinstance(cls, type):
        raise TypeError(
            f"register_site needs a class, got {cls!r}; pass type(module) for instances"
        )
    if not isinstance(attr, str):
        raise TypeError(f"attr must be the name of the rate attribute (a string), got {attr!r}")
    if not attr.isidentifier():
        raise ValueError(f"attr={attr!r} is not an attribute name (a Python identifier)")
    if kind not in SITE_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {SITE_KINDS}")
    unregister_site(cls)
    rule = _Rule(_is_subclass_of(cls), attr, kind, f"registered {cls.__name__}", registered=cls)
    _user_rules.insert(0, rule)


def unregister_site(cls: type) -> None:
    """Forget a registration made with [`register_site`][dropkit.register_site].

    Args:
        cls: The class passed to [`register_site`][dropkit.register_site]; nothing happens if it
            was not registered.
    """
    _user_rules[:] = [rule for rule in _user_rules if rule.registered is not cls]


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel / ``torch.compile`` and similar wrappers to reach the model.

    Args:
        model: A model, possibly wrapped (several times) by ``torch.compile``,
            ``DistributedDataParallel``, ``DataParallel``, FSDP v1, DeepSpeed or Lightning.

    Returns:
        The innermost model; ``model`` itself if it is not wrapped.
    """
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

    Sites are recognised by class and attribute: torch's dropout modules (``nn.Dropout``,
    ``Dropout1d/2d/3d``, ``AlphaDropout``, ...), dropkit's [`Dropout`][dropkit.Dropout] and
    [`DropPath`][dropkit.DropPath], torchvision ``StochasticDepth``, classes whose name ends in
    ``DropPath`` (timm, Hugging Face; rate ``drop_prob``), classes registered with
    [`register_site`][dropkit.register_site], and float attributes that attention modules read
    as their dropout rate (``dropout``, ``attention_dropout``, ``attn_dropout``,
    ``dropout_prob``, ``dropout_p``). ``nn.Identity`` modules whose names say drop path or dropout
    are reported as placeholders built at rate 0. Wrappers (DDP, DataParallel,
    ``torch.compile``) are unwrapped first, so names match the user's model.

    Args:
        model: The model to search.

    Returns:
        The sites, in ``model.named_modules()`` order (an attention module's float sites right
            after the module's own site, if any). Sites that cannot be scheduled have
            ``controllable=False`` and a ``note`` saying why and what to do.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.

    Examples:
        >>> from torch import nn
        >>> import dropkit
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 2))
        >>> [(site.name, site.kind, site.p) for site in dropkit.find_sites(model)]
        [('1', 'dropout', 0.1)]
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
    """Swap ``nn.Identity`` drop placeholders for rate-0 [`DropPath`][dropkit.DropPath] /
    [`Dropout`][dropkit.Dropout].

    Models such as timm's build ``nn.Identity`` where a rate is 0 at build time, which no
    schedule can switch on. The placeholders are those that [`find_sites`][dropkit.find_sites]
    reports as not controllable with that note: an ``nn.Identity`` whose name contains
    ``drop_path``, ``droppath`` or ``stochastic_depth`` becomes a ``DropPath``, one whose name
    contains ``drop`` a ``Dropout``. At rate 0 the replacements compute the identity, so the
    model's outputs do not change, but the sites become schedulable. The model is changed in
    place; call this before creating a [`DropoutScheduler`][dropkit.DropoutScheduler], which
    finds its sites when it is built.

    Args:
        model: The model (wrappers are looked through, as by
            [`find_sites`][dropkit.find_sites]).

    Returns:
        The qualified names of the replaced modules, in module order.

    Examples:
        >>> from torch import nn
        >>> import dropkit
        >>> block = nn.Module()
        >>> block.fc, block.drop_path = nn.Linear(2, 2), nn.Identity()
        >>> dropkit.replace_placeholders(nn.Sequential(block))
        ['0.drop_path']
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


ADDED_SITE = "dropkit_dropout"
"""The name of the child module [`add_dropout_sites`][dropkit.add_dropout_sites] adds."""


def _drop_output(module: nn.Module, args: object, output: Tensor) -> Tensor:
    return getattr(module, ADDED_SITE)(output)


def add_dropout_sites(
    model: nn.Module,
    names: Sequence[str] | None = None,
    *,
    after: type[nn.Module] | tuple[type[nn.Module], ...] = nn.Linear,
) -> list[str]:
    """Give a model without dropout rate-0 dropout sites a schedule can switch on.

    Each chosen module gets a child [`Dropout(0.0)`][dropkit.Dropout] named ``dropkit_dropout``
    and a forward hook that passes its output through it: at rate 0 the model computes what
    it did, its ``state_dict`` keys do not change (a dropout has no weights), and
    [`find_sites`][dropkit.find_sites] (so a [`DropoutScheduler`][dropkit.DropoutScheduler])
    finds the new sites. The model is changed in place; call this before building the
    scheduler or the optimizer-wrapping tools that copy the model.

    Args:
        model: The model (wrappers are looked through, as by [`find_sites`][dropkit.find_sites]).
        names: Qualified names of the modules whose output to drop (as in
            ``model.named_modules()``); None (default): every module of type ``after`` but the
            last one in module order (the hidden layers; the last is taken to be the output
            layer, whose logits are not dropped).
        after: The module type(s) chosen when ``names`` is None (default ``nn.Linear``).

    Returns:
        The qualified names of the added sites (``"<module>.dropkit_dropout"``), in module order.

    Raises:
        ValueError: If a name is not a module of the model, a module already has an added site,
            or nothing is chosen (no module of type ``after`` besides the output layer).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import dropkit
        >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
        ...                     nn.Linear(8, 2))
        >>> dropkit.add_dropout_sites(mlp)
        ['0.dropkit_dropout', '2.dropkit_dropout']
    """
    root = unwrap(model)
    modules = dict(root.named_modules())
    if names is None:
        chosen = [name for name, module in modules.items() if isinstance(module, after)][:-1]
        if not chosen:
            raise ValueError(
                f"{type(root).__name__} has no {_type_names(after)} module besides its output "
                "layer to add dropout after; name the modules: "
                "add_dropout_sites(model, names=[...])"
            )
    else:
        unknown = [name for name in names if name not in modules]
        if unknown:
            raise ValueError(f"{unknown} are not modules of {type(root).__name__}")
        chosen = list(names)
    taken = [name for name in chosen if hasattr(modules[name], ADDED_SITE)]
    if taken:
        raise ValueError(f"{taken} already have an added dropout site")
    for name in chosen:
        modules[name].add_module(ADDED_SITE, Dropout(0.0))
        modules[name].register_forward_hook(_drop_output)
    return [f"{name}.{ADDED_SITE}" if name else ADDED_SITE for name in chosen]


def _type_names(types: type | tuple[type, ...]) -> str:
    return " / ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def describe(model: nn.Module) -> str:
    """A readable table of the model's sites: name, kind, rate, controllable, note.

    The first thing to look at before scheduling a model: it shows which sites
    [`find_sites`][dropkit.find_sites] recognises, their current rates, and for each site that
    cannot be scheduled what to do about it.

    Args:
        model: The model (wrappers are looked through).

    Returns:
        A summary line and one row per site, for printing; if there is no site, a sentence
            saying so and how to register a custom dropout class.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.

    Examples:
        >>> from torch import nn
        >>> import dropkit
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 2))
        >>> print(dropkit.describe(model))
        Sequential: 1 site (1 dropout, 0 drop_path), 0 not controllable
        site  kind     p    controllable  note
        --------------------------------------
        1     dropout  0.1  yes
    """
    sites = find_sites(model)
    if not sites:
        return (
            f"{type(unwrap(model)).__name__}: no dropout sites found. To add rate-0 sites a "
            "schedule can switch on, call dropkit.add_dropout_sites(model) (after the hidden "
            "linear layers) or add_dropout_sites(model, names=[...]); if the model uses a custom "
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
        f"{type(unwrap(model)).__name__}: {len(sites)} site{'' if len(sites) == 1 else 's'} "
        f"({n_drop} dropout, {len(sites) - n_drop} drop_path), {n_off} not controllable"
    )
    rule = "-" * len(line(header))
    return "\n".join([summary, line(header), rule, *map(line, rows)])
