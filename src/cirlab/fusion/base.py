"""The ``Fusion`` interface and the registry of fusion methods.

A fusion method maps (reference image views, modification text views) to a query vector in
the space of the gallery vectors, which the same module computes from gallery image views.
The two encoders live in different spaces (1280-d image, 384-d text by default), so every
method owns learned projections into a shared ``embed_dim`` space and the gallery side goes
through the same image projection as the reference. Inputs are L2-normalised first.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import asdict, dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.errors import CirlabError
from cirlab.fusion.views import mirrored_views
from cirlab.registry import Registry

Views = dict[str, torch.Tensor]

fusion_methods: Registry = Registry("fusion method")
MIRROR_GATE_SCALE = 10.0  # the mirror gate's logit is this times its linear layer's output


@dataclass(frozen=True)
class FeatureDims:
    """The shapes of the encoders' views that a fusion method is built for."""

    image: int  # pooled image vector
    text: int  # pooled text vector
    image_token: int = 0  # one region of the spatial map
    image_tokens: int = 0  # regions in the map (a square, e.g. 7x7 = 49)
    text_token: int = 0  # one token state
    levels: tuple[int, int] = (0, 0)  # (depths, padded width) of the levels view
    colour: int = 0  # width of the colour view (0: the encoder has none)
    local: tuple[int, int] = (0, 0)  # (regions, width) of the local view, a map before the last stage (0: none)

    @classmethod
    def of(cls, image_encoder, text_encoder) -> "FeatureDims":
        return cls(image_encoder.dim, text_encoder.dim, image_encoder.token_dim, image_encoder.num_tokens,
                   text_encoder.token_dim, tuple(getattr(image_encoder, "levels_shape", (0, 0))),
                   int(getattr(image_encoder, "colour_dim", 0)), tuple(getattr(image_encoder, "local_shape", (0, 0))))

    def map_shape(self, view: str) -> tuple[int, int]:
        """(regions, width) of a region map view: the final map's ``tokens`` or the ``local`` map."""
        return self.local if view == "local" else (self.image_tokens, self.image_token)

    def to_dict(self) -> dict:
        return asdict(self)


class ReferenceMirror(nn.Module):
    """Lets the text mirror the reference (``reference_mirror: true`` in a model config): a gate
    ``g = sigmoid(10 (w t + b))`` read from the text mixes the reference's spatial views with the same views flipped
    left-right, ``v + g (flip(v) - v)``, before the method composes. A facing edit ("turn it to the right") asks
    for the reference's mirror image, which no sum or MLP of vectors can compute from an unseen reference; a flip
    of a layout can. The gate starts nearly closed (``g`` = 0.018), so training starts close to the model without
    it. Its logit is ``MIRROR_GATE_SCALE`` times the linear layer's output: Adam moves each weight by about the
    learning rate per step, and a unit-scale gate would need thousands of steps to open. The pooled vector is
    kept: an ImageNet network's pooled vector barely changes under a mirror (cosine 0.95 on EmojiEdit)."""

    def __init__(self, text_dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(text_dim, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, -4.0 / MIRROR_GATE_SCALE)

    def share(self, text: Views) -> torch.Tensor:
        """(B, 1): how much of its mirror image each query's reference takes, from the text."""
        return torch.sigmoid(MIRROR_GATE_SCALE * self.gate(F.normalize(text["pooled"].float(), dim=-1)))

    def forward(self, reference: Views, text: Views) -> Views:
        """The reference's views with the text's share of their mirror image mixed in."""
        g = self.share(text)
        out = dict(reference)
        for name, flipped in mirrored_views(reference).items():
            v = reference[name].float()
            # only the values a mirror moves are mixed: the rest (the colour histogram) stay constant inputs,
            # with no gradient through them (a head's sqrt at an empty bin would send it an infinite one)
            out[name] = torch.where(flipped == v, v, v + g.view(-1, *[1] * (v.dim() - 1)) * (flipped - v))
        return out


def _legacy_mirror_keys(module, state_dict, prefix, *args) -> None:
    """Checkpoints saved before the mirror was its own module name its gate ``mirror_gate``: read them as
    ``mirror.gate``."""
    for key in [k for k in state_dict if k.startswith(prefix + "mirror_gate.")]:
        state_dict[prefix + "mirror.gate." + key[len(prefix + "mirror_gate."):]] = state_dict.pop(key)


class Fusion(nn.Module):
    """Base class: subclasses implement :meth:`compose` and build their own layers in :meth:`build_layers`; the
    image side is shared.

    A model is whole when it is constructed: ``Method(dims, embed_dim, image_head=, head_map=,
    reference_mirror=, **params)`` builds the image projection and the text projection (where the method has them:
    :attr:`projections`), then the method's own
    layers (``build_layers(**params)``), then the image heads (``fusion.heads``) and the reference mirror
    (:class:`ReferenceMirror`), in that order (the order their weights are drawn in). Nothing is attached later.

    ``image_views`` / ``text_views`` name the encoder views the query side reads (a method may narrow them in
    :meth:`build_layers`); the gallery side reads ``gallery_views`` only; the heads' views join both. An image
    (reference or gallery) is embedded by :meth:`embed_image`: the projection of its pooled vector plus the image
    heads (attention pooling over the region map, a grid, a colour layout), so both sides see what global pooling
    loses.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    zero_shot: ClassVar[bool] = False  # training-free, on an aligned pair (fusion.zero_shot): no triplet is read
    image_views: tuple[str, ...] = ("pooled",)
    text_views: tuple[str, ...] = ("pooled",)
    gallery_views: tuple[str, ...] = ("pooled",)
    # whether the method learns the image and text projections into its space (a zero-shot method maps with fixed
    # ones instead: fusion.zero_shot)
    projections: ClassVar[bool] = True

    def __init__(self, dims: FeatureDims, embed_dim: int = 512, image_head: str = "pooled", head_map: str = "tokens",
                 reference_mirror: bool = False, **params: object) -> None:
        super().__init__()
        self.dims, self.embed_dim = dims, embed_dim
        if self.projections:
            self.image_proj = nn.Linear(dims.image, embed_dim)
            self.text_proj = nn.Linear(dims.text, embed_dim)
        self.image_head, self.head_map = str(image_head or "pooled"), str(head_map)
        self.heads = nn.ModuleList()
        self.mirror: ReferenceMirror | None = None
        self.build_layers(**params)
        if self.image_head != "pooled":
            self._build_heads()
        elif self.head_map != "tokens":
            raise ValueError(f"head_map: {self.head_map} needs an image head that reads regions (image_head: grid, "
                             "attnpool)")
        if reference_mirror:
            if not {"tokens", "local", "colour", "thumbnail"} & set(self.image_views):
                raise CirlabError("reference_mirror needs a view that keeps left and right (region tokens or the "
                                  "colour layout): add an image head such as colour or grid (--image-head colour)")
            self.mirror = ReferenceMirror(dims.text)
        self.register_load_state_dict_pre_hook(_legacy_mirror_keys)

    def build_layers(self) -> None:
        """The method's own layers; a subclass's keyword arguments are its config's ``model`` parameters."""

    @classmethod
    def options(cls) -> dict[str, tuple[type | None, object]]:
        """Every option the method takes, with its type and default: the shared ones of :class:`Fusion` (width,
        image head...) and its own (:meth:`build_layers`'s keyword arguments)."""
        out: dict[str, tuple[type | None, object]] = {}
        for fn in (Fusion.__init__, cls.build_layers):
            hints = typing.get_type_hints(fn)
            for p in inspect.signature(fn).parameters.values():
                if p.name in ("self", "dims") or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                    continue
                kinds = [k for k in typing.get_args(hints.get(p.name)) or [hints.get(p.name)] if k is not type(None)]
                out[p.name] = (kinds[0] if len(kinds) == 1 and kinds[0] in (bool, int, float, str) else None, p.default)
        return out

    @classmethod
    def checked_options(cls, given: dict) -> dict:
        """``given`` with each value of its option's type (``"0.7"`` and ``1`` read as numbers, ``"true"`` as a bool),
        refused in one line that lists the method's options where a key is unknown or a value is not of its type."""
        known = cls.options()
        listing = ", ".join(f"{k} ({t.__name__ if t else 'any'}, default {d!r})" for k, (t, d) in sorted(known.items()))
        out = {}
        for key, value in given.items():
            if key not in known:
                raise CirlabError(f"{cls.name} has no option {key!r}; its options: {listing}")
            kind = known[key][0]
            try:
                out[key] = value if kind is None or value is None else _as(kind, value)
            except (TypeError, ValueError):
                what = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}[kind]
                raise CirlabError(f"{cls.name} option {key}={value!r}: expected {what}; its options: {listing}") from None
        return out

    def _build_heads(self) -> None:
        """The image heads ``image_head`` names (``"attnpool"``, ``"grid:cells=3+colour"``) on both sides; the views
        they read join the query's and the gallery's. ``head_map``: the map the heads that read regions read, the
        encoder's region ``tokens`` or its ``local`` map (from before the last stage)."""
        from cirlab.fusion.heads import build_heads

        if self.head_map not in ("tokens", "local"):
            raise CirlabError(f"head_map must be 'tokens' or 'local', not {self.head_map!r}")
        if self.head_map == "local" and not self.dims.local[0]:
            raise CirlabError("head_map: local needs an image encoder with a local view (efficientnet_lite0)")
        self.heads = build_heads(self.image_head, self.head_channels(), self.head_regions(), self.embed_dim,
                                 self.dims.colour)
        extra = sorted({self.head_view() if v == "tokens" else v for h in self.heads for v in h.views})
        self.gallery_views = tuple(dict.fromkeys((*self.gallery_views, *extra)))
        self.image_views = tuple(dict.fromkeys((*self.image_views, *extra)))

    def raw_query_views(self, image, text: str, image_encoder, text_encoder) -> tuple[Views, Views] | None:
        """Hook for a method that makes its query's inputs from the raw reference image and text itself (DQU draws
        the text's keywords on the reference and writes its caption into the text): the views of that one query.
        None, the default: the encoders' views of the reference and of the text, as they are."""
        return None

    @property
    def reads_raw_queries(self) -> bool:
        """Whether this method makes its queries' inputs itself (it overrides :meth:`raw_query_views`): then a
        query is answered one by one, and a data set's queries are made by the method's own preparation."""
        return type(self).raw_query_views is not Fusion.raw_query_views

    def query_texts(self, reference: Views, texts: Sequence[str], text_encoder) -> Views | None:
        """Hook for a method that reads each query's text together with its reference (a pseudo-word made from the
        reference, as Pic2Word, LinCIR and SEARLE's OTI do; the reference's caption, as the text-shift proxy does):
        the text views of each (reference, text) pair, which :meth:`compose` then reads. ``reference``: the
        references' views (one row a query). None, the default: the texts' own views, encoded apart (and cached)."""
        return None

    @property
    def writes_query_texts(self) -> bool:
        """Whether this method reads each query's text with its reference (it overrides :meth:`query_texts`)."""
        return type(self).query_texts is not Fusion.query_texts

    def score_parts(self, reference: Views, text: Views) -> torch.Tensor | None:
        """Hook for a method whose composed query has a second stage: the unit vectors (B, parts, D) that
        re-score the best ``candidates`` of the first stage by the product of their similarities to each
        (``index.scoring.ProductScoring``). None, the default: the query vector's cosine is the score."""
        return None

    @property
    def rescores(self) -> bool:
        """Whether this method re-scores its candidates (it overrides :meth:`score_parts`)."""
        return type(self).score_parts is not Fusion.score_parts

    def head_view(self) -> str:
        """The view the heads' region rows come from (it replaces ``tokens`` among the views they read)."""
        return self.head_map

    def head_channels(self) -> int:
        """The width of the region rows the heads read (:meth:`head_tokens`)."""
        return self.dims.map_shape(self.head_map)[1]

    def head_regions(self) -> int:
        """How many region rows the heads read (a square map)."""
        return self.dims.map_shape(self.head_map)[0]

    def head_tokens(self, image: Views) -> torch.Tensor:
        """The region rows the heads read: the scaled ``head_map`` (see :meth:`scaled_map`)."""
        return self.scaled_map(image, self.head_map)

    def head_output(self, image: Views, tokens: torch.Tensor | None = None) -> torch.Tensor | float:
        """The sum of the image heads' outputs (0 without heads); ``tokens`` replaces :meth:`head_tokens`."""
        if not len(self.heads):
            return 0.0
        if tokens is None and any(h.needs_tokens for h in self.heads):
            tokens = self.head_tokens(image)
        return sum(h(tokens, image) for h in self.heads)

    def image_base(self, pooled: torch.Tensor) -> torch.Tensor:
        """``W_i L2(x)``: the linear projection of the pooled vector, before the L2."""
        return self.image_proj(F.normalize(pooled.float(), dim=-1))

    def project_image(self, pooled: torch.Tensor) -> torch.Tensor:
        """x -> L2(W_i L2(x)): the pooled projection alone."""
        return F.normalize(self.image_base(pooled), dim=-1)

    def embed_image(self, image: Views) -> torch.Tensor:
        """An image's views -> its unit vector, ``L2(W_i L2(x) + sum of heads)``: the reference and every
        gallery image go through this one function."""
        return F.normalize(self.image_base(image["pooled"]) + self.head_output(image), dim=-1)

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(F.normalize(pooled.float(), dim=-1)), dim=-1)

    def scaled_tokens(self, image: Views) -> torch.Tensor:
        """Region tokens (B, N, D) divided by the norm of the image's pooled vector.

        For a CNN the pooled vector is the mean of its region tokens, so ``mean(W s) + b`` over
        the scaled tokens ``s`` equals ``W L2(pooled) + b``: a linear (1x1-convolution) projection
        of the map, averaged, lands exactly where :meth:`project_image` puts the gallery.
        """
        norm = image["pooled"].float().norm(dim=-1).clamp(min=1e-6)
        return image["tokens"].float() / norm[:, None, None]

    def scaled_map(self, image: Views, view: str) -> torch.Tensor:
        """A region map view's rows (B, N, D), scaled: ``tokens`` by :meth:`scaled_tokens`; the ``local`` map divided
        by the norm of its rows' mean, so that its scale is the same for every image, as for the tokens."""
        if view != "local":
            return self.scaled_tokens(image)
        x = image["local"].float()
        return x / x.mean(dim=1).norm(dim=-1).clamp(min=1e-6)[:, None, None]

    def embed_gallery(self, image: Views) -> torch.Tensor:
        """Gallery image views -> unit vectors (B, embed_dim)."""
        return self.embed_image(image)

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        """(reference image views, text views) -> unit query vectors (B, embed_dim)."""
        raise NotImplementedError

    def forward(self, reference: Views, text: Views) -> torch.Tensor:
        """The query vectors: :meth:`compose` of the reference, mirrored where the text asks for it and the
        model has a :class:`ReferenceMirror`. Training, evaluation and serving call this."""
        return self.compose(reference if self.mirror is None else self.mirror(reference, text), text)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def learned_methods() -> list[str]:
    """The registered methods that learn from triplets (all but the zero-shot family)."""
    return [n for n in fusion_methods.names() if not fusion_methods.get(n).zero_shot]


def zero_shot_methods() -> list[str]:
    """The registered zero-shot methods (``fusion.zero_shot``): training-free, on an aligned pair."""
    return [n for n in fusion_methods.names() if fusion_methods.get(n).zero_shot]


def _as(kind: type, value: object) -> object:
    """``value`` as ``kind`` (bool, int, float or str), where it reads as one without loss; else ValueError."""
    if kind is bool:
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.strip().lower() in ("true", "yes", "1", "on")
        raise ValueError(value)
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)  # a number the command line read as one ("head_map=3") is still a text
        raise ValueError(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    number = float(value)
    if kind is int:
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    return number


def build_fusion(method: str, dims: FeatureDims, **params: object) -> Fusion:
    """A fusion method by its registered name, with its config's ``model`` parameters (the image side's
    ``image_head``, ``head_map`` and ``reference_mirror`` among them), checked by the method
    (:meth:`Fusion.checked_options`)."""
    cls = fusion_methods.get(method)
    params = cls.checked_options(params)
    try:
        return cls(dims, **params)
    except (TypeError, ValueError) as e:
        raise CirlabError(f"method {method!r} cannot be built: {e}; check its config (cirlab methods --configs)") from None


def mlp(sizes: list[int], dropout: float = 0.0, norm: bool = False) -> nn.Sequential:
    """Linear layers with ReLU (and optional batch norm, dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += ([nn.BatchNorm1d(b)] if norm else []) + [nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers)
