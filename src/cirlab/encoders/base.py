"""Encoder protocols, the two encoder registries, and helpers every backend shares.

An encoder turns raw inputs into *views*: ``pooled`` (one vector per input, float32),
``tokens`` (a sequence per input: image regions of the spatial map, or text token states;
stored float16), for text ``mask`` (which tokens are real) and for images ``levels``
(global averages of a few intermediate depths, zero-padded to one width; float16) and ``colour``
(colour statistics computed from the pixels, the same for every image encoder, float16: the mean
RGB of each cell of an 8 x 8 grid over the padded image, then the share of the non-background
pixels in each of 6 x 6 x 6 joint RGB bins) and ``thumbnail`` (the padded image at 32 x 32 px, for heads
that learn a small network of their own). Fusion methods declare the views they need; the feature cache
stores exactly those.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from PIL import Image

from cirlab.config import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER
from cirlab.devices import Placement, placed
from cirlab.encoders.runtime import Network, Wrapped, run_network
from cirlab.errors import CirlabError
from cirlab.registry import Registry

VIEWS = ("pooled", "tokens", "local", "mask", "levels", "colour", "thumbnail")
PIXEL_VIEWS = ("colour", "thumbnail")  # computed from the pixels, the same for every image encoder
COLOUR_GRID = 8  # the layout: mean RGB of each cell of an 8 x 8 grid
COLOUR_BINS = 6  # the histogram: 6 x 6 x 6 joint RGB bins
COLOUR_LAYOUT = COLOUR_GRID * COLOUR_GRID * 3  # the view's first values: the layout, row by row, RGB
COLOUR_DIM = COLOUR_LAYOUT + COLOUR_BINS ** 3
THUMBNAIL = 32  # the thumbnail view: the image at 32 x 32 px, RGB


@runtime_checkable
class ImageEncoder(Protocol):
    """Images -> views. ``id`` names architecture, weights and preprocessing: the cache key."""

    spec: str
    id: str
    dim: int
    token_dim: int
    num_tokens: int
    levels_shape: tuple[int, int]
    colour_dim: int  # width of the ``colour`` view (COLOUR_DIM), 0 where the encoder has none

    def encode_images(self, images: Sequence[Image.Image], views: Sequence[str] = ("pooled",)) -> dict[str, np.ndarray]: ...


@runtime_checkable
class TextEncoder(Protocol):
    """Texts -> views (``pooled``, ``tokens``, ``mask``)."""

    spec: str
    id: str
    dim: int
    token_dim: int
    max_tokens: int

    def encode_texts(self, texts: Sequence[str], views: Sequence[str] = ("pooled",)) -> dict[str, np.ndarray]: ...


image_encoders: Registry = Registry("image encoder")
text_encoders: Registry = Registry("text encoder")



def _split_spec(spec: str) -> tuple[str, str | None]:
    """``"clip:/models/clip-b32"`` -> ``("clip", "/models/clip-b32")``; ``"minilm"`` -> ``("minilm", None)``."""
    name, sep, arg = spec.partition(":")
    return name, (arg if sep else None)


def new_encoder(side: str, spec: str):
    """A new instance of the ``image`` or ``text`` encoder a spec names (``name`` or ``name:/local/path``).
    Stage 1 uses it directly, since fine-tuning changes the weights; everything else shares one
    instance per spec through :func:`build_image_encoder` / :func:`build_text_encoder`."""
    name, arg = _split_spec(spec)
    factory = (image_encoders if side == "image" else text_encoders).get(name)
    return factory(arg) if arg is not None else factory()


def build_image_encoder(spec: str = DEFAULT_IMAGE_ENCODER, placement: Placement | None = None) -> ImageEncoder:
    """Build (once per process and placement) the image encoder a spec names (``name`` or ``name:/local/path``)
    for inference, its network run by ``placement.runtime`` on ``placement.device`` (None: the defaults'
    placement, :meth:`cirlab.devices.Placement.resolve`)."""
    placement = placed(placement)
    return _built("image", spec, placement.runtime, placement.device, placement.encoding)


def build_text_encoder(spec: str = DEFAULT_TEXT_ENCODER, placement: Placement | None = None) -> TextEncoder:
    """As :func:`build_image_encoder`, for texts."""
    placement = placed(placement)
    return _built("text", spec, placement.runtime, placement.device, placement.encoding)


@lru_cache(maxsize=16)
def _built(side: str, spec: str, runtime: str, device: torch.device, encoding: str = "auto"):
    """One instance per spec, runtime, device and encoder precision (see :func:`place`)."""
    encoder = new_encoder(side, spec)
    if hasattr(encoder, "network"):  # a neural network: the runtime runs it (sift_bovw has none)
        encoder.runtime = runtime
        place(encoder, device, encoding)
    return encoder


def place(encoder, device: torch.device, encoding: str = "auto") -> None:
    """Move a neural encoder's network to ``device`` and set the precision its inference runs in
    (:func:`cirlab.encoders.precision.encoder_precision`: by default bf16 or fp16 autocast on CUDA, fp32 on the
    CPU unless it has bf16 instructions that pay). Outputs always come back as float32 CPU arrays."""
    from cirlab.encoders.precision import encoder_precision

    if device.type != "cpu":
        encoder.network_module.to(device)
    encoder.device = device
    encoder.precision = encoder_precision(encoder, encoding, device)


def fit_image_encoder(encoder: ImageEncoder, paths: Callable[[], Sequence[Path]], cache_root: Path,
                      progress: bool = False) -> ImageEncoder:
    """The encoder ready to encode: one that learns from images (``sift_bovw``'s visual vocabulary) and
    names no fitted state yet is fitted on ``paths()`` (a data set's training images) and returned as a
    new instance whose spec names that state; every other encoder is returned as it is."""
    if getattr(encoder, "fitted", True):
        return encoder
    return encoder.fit(paths(), cache_root, progress)


def set_threads() -> None:
    """Apply ``CIRLAB_THREADS`` to torch's intra-op pool, where it is set. Otherwise torch's own choice
    stands: ``OMP_NUM_THREADS`` if the user set it, else the physical cores (not ``os.cpu_count()``, which
    counts hyper-threads: two jobs on two cores would run four threads)."""
    value = os.environ.get("CIRLAB_THREADS", "").strip()
    if not value:
        return
    if not value.isdigit() or int(value) < 1:
        raise CirlabError(f"CIRLAB_THREADS={value!r} must be a whole number of threads, 1 or more")
    torch.set_num_threads(int(value))


def fingerprint_file(path: Path) -> str:
    """Short content hash of a weights file: the same file always gives the same encoder id."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def fingerprint_bytes(data: bytes) -> str:
    """:func:`fingerprint_file` of a file holding ``data``."""
    return hashlib.sha1(data).hexdigest()[:12]


def fingerprint_folder(folder: Path) -> str:
    """Hash of a Hugging Face folder: config texts and the weights files' bytes."""
    h = hashlib.sha1()
    for p in sorted(folder.iterdir()):
        if p.suffix in (".json", ".txt"):
            h.update(p.name.encode() + p.read_bytes())
        elif p.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            h.update(p.name.encode() + fingerprint_file(p).encode())
    return h.hexdigest()[:12]


HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "bert-base-uncased", "openai/clip-vit-base-patch32"
HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors"]  # configs, vocabularies, weights (safetensors first)


def model_folder(arg: str | None, backend: str, what: str) -> tuple[Path, str]:
    """The local folder of a Hugging Face model, and the spec that names it (``backend:arg``): ``arg`` is a
    folder, or a hub name (``openai/clip-vit-base-patch32``) read from the Hugging Face cache, and downloaded
    there first only where the hub is allowed (``HF_HUB_OFFLINE=0``; cirlab sets 1 unless told). Anything
    else is a one-line error naming the local-folder form."""
    if not arg:
        raise CirlabError(f"the {backend} encoder needs a local folder or a hub name: use '{backend}:/path/to/{what}'")
    folder = Path(arg).expanduser()
    if folder.is_dir() or not HUB_NAME.match(arg):
        if not (folder / "config.json").is_file():
            raise CirlabError(f"{folder} is not a local Hugging Face model folder (no config.json); "
                              f"save the {what} there first")
        folder = folder.resolve()
        return folder, f"{backend}:{folder}"
    return _hub_snapshot(arg, backend, what), f"{backend}:{arg}"


def _hub_snapshot(name: str, backend: str, what: str) -> Path:
    """The cached snapshot folder of hub model ``name`` (downloaded into the cache where the hub is allowed)."""
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")
    local = f"'{backend}:/path/to/folder' (a folder holding the {what})"
    try:
        folder = Path(snapshot_download(name, local_files_only=offline, allow_patterns=HUB_FILES))
        if not offline and not any(folder.glob("*.safetensors")):  # an older repository: PyTorch pickles only
            folder = Path(snapshot_download(name, allow_patterns=HUB_FILES + ["*.bin"]))
    except Exception as e:
        if offline:
            raise CirlabError(f"{name!r} is not a local folder, and it is not in the Hugging Face cache while the hub "
                              f"is off (HF_HUB_OFFLINE=1): use the local-folder form {local}, or set HF_HUB_OFFLINE=0 "
                              "to download it (docs/devices.md)") from None
        raise CirlabError(f"could not fetch {name!r} from the Hugging Face hub ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'no detail'}); check the name and the network, or "
                          f"use the local-folder form {local}") from None
    if not (folder / "config.json").is_file():
        raise CirlabError(f"the hub model {name!r} has no config.json: it is not a transformers model; use {local}")
    return folder


def pad_to_square(im: Image.Image, fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Pad the short side so nothing is cropped away (a garment's hem, an emoji's edge)."""
    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(im, ((side - w) // 2, (side - h) // 2))
    return canvas


def to_pixels(images: Sequence[Image.Image], size: int, mean: Sequence[float], std: Sequence[float],
              scale: float = 255.0) -> torch.Tensor:
    """Pad to square, resize (bicubic, antialiased) and normalise: a (B, 3, size, size) float tensor.

    ``mean``/``std`` are given in units of ``scale`` (255 for 0..255 statistics, 1 for 0..1). The pixels stay uint8
    until one fused multiply-add writes them channels-first (a third of the time of float32 steps one by one).
    """
    u8 = np.stack([np.asarray(pad_to_square(im.convert("RGB")).resize((size, size), Image.BICUBIC)) for im in images])
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    gain = (scale / 255.0 / std).astype(np.float32)[:, None, None]
    out = np.empty((len(u8), 3, size, size), dtype=np.float32)
    np.multiply(u8.transpose(0, 3, 1, 2), gain, out=out)
    out += (-mean / std).astype(np.float32)[:, None, None]
    return torch.from_numpy(out)


def pixel_views(images: Sequence[Image.Image], views: Sequence[str]) -> dict[str, np.ndarray]:
    """The views computed from the pixels, not by a network, that ``views`` asks for (float16, 0..1), each image
    padded to a square like the encoders' input:

    - ``colour`` (B, COLOUR_DIM): its 8 x 8 grid of mean RGB (where the colours are), then the share of its
      pixels in each 6 x 6 x 6 RGB bin, counting only pixels that are not near-white background (which
      colours, however small: a skin tone);
    - ``thumbnail`` (B, THUMBNAIL * THUMBNAIL * 3): the image at 32 x 32 px (box filter), row by row, RGB, for
      image heads that learn their own small network end to end (``fusion.heads``)."""
    if not set(PIXEL_VIEWS) & set(views):
        return {}
    squares = [pad_to_square(im.convert("RGB")) for im in images]
    out: dict[str, np.ndarray] = {}
    if "thumbnail" in views:
        thumb = np.zeros((len(squares), THUMBNAIL * THUMBNAIL * 3), np.float32)
        for n, sq in enumerate(squares):
            thumb[n] = np.asarray(sq.resize((THUMBNAIL, THUMBNAIL), Image.BOX), np.float32).ravel()
        out["thumbnail"] = thumb.astype(np.float16) / np.float16(255)
    if "colour" in views:
        colour = np.zeros((len(squares), COLOUR_DIM), np.float32)
        for n, sq in enumerate(squares):
            colour[n] = _colour(sq)
        out["colour"] = colour.astype(np.float16)
    return out


def _colour(square: Image.Image) -> np.ndarray:
    """One padded image's ``colour`` view (float32)."""
    out = np.zeros(COLOUR_DIM, np.float32)
    out[:COLOUR_LAYOUT] = np.asarray(square.resize((COLOUR_GRID, COLOUR_GRID), Image.BOX), np.float32).ravel() / 255
    pixels = np.asarray(square.resize((64, 64), Image.BOX) if square.width > 64 else square).reshape(-1, 3)
    pixels = pixels[(pixels < 235).any(axis=1)]
    if len(pixels):
        bins = pixels.astype(np.int64) * COLOUR_BINS // 256
        codes = (bins[:, 0] * COLOUR_BINS + bins[:, 1]) * COLOUR_BINS + bins[:, 2]
        out[COLOUR_LAYOUT:] = np.bincount(codes, minlength=COLOUR_BINS ** 3) / len(pixels)
    return out


def as_tensors(views: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Encoder output arrays as the tensors fusion methods read: float, masks as bool."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)).bool() if k == "mask"
            else torch.from_numpy(np.ascontiguousarray(v)).float() for k, v in views.items()}


def stack_levels(levels: Sequence[torch.Tensor], width: int) -> np.ndarray:
    """Per-depth (B, D_i) averages -> one (B, L, width) float16 array, zero-padded."""
    out = torch.zeros(levels[0].shape[0], len(levels), width)
    for i, lv in enumerate(levels):
        out[:, i, :lv.shape[-1]] = lv.float()
    return out.numpy().astype(np.float16)


def hidden_levels(hidden_states: Sequence[torch.Tensor], count: int = 3) -> list[torch.Tensor]:
    """Averages of ``count`` evenly spaced intermediate hidden states (conv maps or token sequences)."""
    n = len(hidden_states) - 1  # hidden_states[0] is the embedding output
    picks = [max(1, round(n * (i + 1) / (count + 1))) for i in range(count)]
    return [hidden_states[p].mean(dim=(2, 3)) if hidden_states[p].dim() == 4 else hidden_states[p].mean(dim=1)
            for p in picks]


def check_views(views: Sequence[str], allowed: Sequence[str], who: str) -> None:
    bad = [v for v in views if v not in allowed]
    if bad:
        raise CirlabError(f"{who} has no view {bad[0]!r}; it offers {', '.join(allowed)}")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


# -- a pseudo-word: a token embedding injected into a text encoder's input (Pic2Word, LinCIR, SEARLE's OTI) --------
PSEUDO_WORD = "$"  # where a prompt's pseudo-word goes: "a photo of $, {text}"


def pseudo_word_id(tokenizer, spec: str) -> int:
    """The token id the pseudo-word ``$`` is written as; refused where the tokenizer has no single token for it."""
    ids = tokenizer(PSEUDO_WORD, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == getattr(tokenizer, "unk_token_id", None):
        raise CirlabError(f"{spec}: its tokenizer has no single token for the pseudo-word {PSEUDO_WORD!r}, which the "
                          "methods with a pseudo-word need: use a text encoder whose vocabulary has it (MiniLM, BERT, "
                          "CLIP do)")
    return int(ids[0])


class PseudoWordInput:
    """What a text encoder with a ``tokenizer``, a ``spec``, input ``word_embeddings`` and a ``network`` offers the
    pseudo-word methods: the width of a word, the id ``$`` is written as, and its network with each text's word
    vector as one more input (``word_network``), which the inference runtimes run like the plain one.

    The encoder supplies ``text_feeds(texts)`` (the network's inputs by name, ``input_ids`` first) and
    ``pooled_from(outputs, feeds)`` (its pooled view from the network's outputs)."""

    @property
    def word_dim(self) -> int:
        return int(self.word_embeddings.embedding_dim)

    @cached_property
    def pseudo_word(self) -> int:
        return pseudo_word_id(self.tokenizer, self.spec)

    @cached_property
    def word_network_module(self) -> torch.nn.Module:
        return Wrapped(self.network_module, self._word_network_outputs)

    def _word_network_outputs(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *feeds, words = inputs
        with injected(self.word_embeddings, feeds[0], self.pseudo_word, words, check=False):
            return self.network_module(*feeds)

    def word_network(self) -> Network:
        """The network an inference runtime runs for a pseudo-word: the plain network's inputs and ``words``
        (one vector a text, ``word_dim`` wide) -> its outputs."""
        plain = self.network()
        feeds = self.text_feeds([f"a photo of {PSEUDO_WORD}, a red one", f"a photo of {PSEUDO_WORD} that is blue"])
        dynamic = {**{n: {0: "batch", 1: "sequence"} for n in feeds}, "words": {0: "batch"}}
        return Network(self.word_network_module, {**feeds, "words": torch.zeros(2, self.word_dim)}, plain.outputs,
                       dynamic, version=plain.version)

    def encode_with_words(self, texts: Sequence[str], words: torch.Tensor) -> torch.Tensor:
        """The pooled vectors of ``texts``, each one's ``$`` read as its row of ``words``, under the encoder's
        runtime (no gradient; :meth:`pooled_with_grad` is the one to train through)."""
        feeds = self.text_feeds(texts)
        check_pseudo_words(feeds["input_ids"], self.pseudo_word)
        outputs = run_network(self, {**feeds, "words": words.detach().float().cpu()}, "word_network")
        return self.pooled_from(outputs, feeds)


def check_pseudo_words(input_ids: torch.Tensor, placeholder: int) -> None:
    if not bool((input_ids == placeholder).any(dim=1).all()):
        raise CirlabError(f"every prompt needs the pseudo-word {PSEUDO_WORD!r} (within the text encoder's token limit)")


@contextmanager
def injected(embedding: torch.nn.Module, input_ids: torch.Tensor, placeholder: int, tokens: torch.Tensor | None,
             check: bool = True):
    """While open, the word embedding of every ``placeholder`` in ``input_ids`` is replaced, row by row, by that row's
    ``tokens`` (one vector a prompt): the output of ``embedding`` is rewritten by a forward hook, so position, type and
    the rest of the text model run as for a real word, and gradients reach ``tokens``. ``tokens=None``: nothing.
    ``check``: refuse a prompt without the placeholder (off inside a graph being exported, where it is checked
    before the graph runs)."""
    if tokens is None:
        yield
        return
    where = (input_ids == placeholder).unsqueeze(-1)
    if check:
        check_pseudo_words(input_ids, placeholder)

    def hook(module, args, output):
        return torch.where(where.to(output.device), tokens[:, None, :].to(output.device, output.dtype), output)

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
