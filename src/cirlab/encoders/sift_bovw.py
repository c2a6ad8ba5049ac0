"""Paper 003's image representation: SIFT descriptors quantised into a bag of visual words (BoVW).

``sift_bovw:k=1000`` names the encoder before it has a vocabulary; fitting (``cirlab encode
--fit-vocabulary``, or the first ``train``/``bench`` on a data set, over its training images)
learns ``k`` visual words by k-means on the images' SIFT descriptors and writes them, with their
idf weights, to ``<cache>/vocabularies/``. The fitted spec names that file
(``sift_bovw:k=1000,vocab=/.../sift_bovw-k1000-<source>.npz``) and the encoder id carries its
content hash, so a refit on other images is a new encoder with its own cached features.

Views (OpenCV's SIFT on the image padded to a square, resized to ``size`` px, in grey):
- ``pooled``: the tf-idf-weighted, L2-normalised histogram of visual words (``k`` values); with
  ``pyramid=1`` the 1x1 + 2x2 + 4x4 spatial pyramid of Lazebnik et al. (21 ``k`` values, level
  weights 1/4, 1/4, 1/2), since a bag of words alone has no layout;
- ``tokens`` (``tokens=keypoints``, the default): the 32 strongest keypoints, each its
  L2-normalised 128-d descriptor, then x, y and scale (fractions of the side) and the cosine and
  sine of its orientation; rows past an image's keypoints are zero;
- ``tokens`` (``tokens=grid``): a 4 x 4 map of per-cell tf-idf histograms scaled so that their
  mean is the pooled vector: the feature map paper 003's gating convolves (``tirg_gate``);
- ``colour``: the colour statistics every image encoder gives (``encoders.base.pixel_views``), and the ``thumbnail``.

An image without a single keypoint (a flat emoji, a tiny image) has an all-zero histogram and no
tokens; each batch logs how many there were. Needs OpenCV: ``pip install 'cirlab[sift]'``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from cirlab import __version__
from cirlab.encoders.base import (
    COLOUR_DIM,
    PIXEL_VIEWS,
    check_views,
    fingerprint_file,
    image_encoders,
    pad_to_square,
    pixel_views,
)
from cirlab.errors import CirlabError
from cirlab.files import atomic_write
from cirlab.optional import need
from cirlab.registry import parse_spec

log = logging.getLogger("cirlab")

KIND = "cirlab-visual-vocabulary"
FORMAT_VERSION = 1
DEFAULT_K = 1000
KEYPOINT_TOKENS = 32
GRID = 4  # the tokens=grid map, and the finest pyramid level
PYRAMID = ((1, 0.25), (2, 0.25), (4, 0.5))  # (cells per side, weight) of the spatial pyramid
MAX_DESCRIPTORS = 200_000  # k-means sample; more adds time, not words


def _sift():
    return need("cv2", "sift", "the sift_bovw encoder").SIFT_create()


class SiftBovwEncoder:
    """SIFT + bag of visual words behind the image encoder protocol; see the module docstring."""

    def __init__(self, k: int = DEFAULT_K, pyramid: bool = False, tokens: str = "keypoints", size: int = 128,
                 vocab: str | Path | None = None) -> None:
        if k < 2:
            raise CirlabError(f"sift_bovw needs at least 2 visual words, got k={k}")
        if tokens not in ("keypoints", "grid"):
            raise CirlabError(f"sift_bovw tokens={tokens!r}: choose keypoints or grid")
        if size < 32:
            raise CirlabError(f"sift_bovw size={size} is too small for SIFT; use 32 px or more")
        self.k, self.pyramid, self.tokens, self.size = k, pyramid, tokens, size
        self.sift = _sift()
        self.centroids: np.ndarray | None = None
        self.idf: np.ndarray | None = None
        self.vocab_path: Path | None = None
        if vocab is not None:
            self._load(Path(vocab).expanduser().resolve())
        cells = sum(s * s for s, _ in PYRAMID) if pyramid else 1
        self.dim = k * cells
        self.num_tokens = KEYPOINT_TOKENS if tokens == "keypoints" else GRID * GRID
        self.token_dim = 128 + 5 if tokens == "keypoints" else k
        self.levels_shape = (0, 0)
        self.colour_dim = COLOUR_DIM
        self.no_keypoints = 0  # images seen without a keypoint, over this instance's life

    # identity ------------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.centroids is not None

    def _options(self) -> str:
        opts = [f"k={self.k}"] + (["pyramid=1"] if self.pyramid else []) + \
            ([f"tokens={self.tokens}"] if self.tokens != "keypoints" else []) + \
            ([f"size={self.size}"] if self.size != 128 else [])
        return ",".join(opts)

    @property
    def spec(self) -> str:
        return f"sift_bovw:{self._options()}" + (f",vocab={self.vocab_path}" if self.vocab_path else "")

    @property
    def id(self) -> str:
        name = f"sift_bovw-k{self.k}{'-spm' if self.pyramid else ''}-{self.tokens}@{self.size}"
        return f"{name}:{fingerprint_file(self.vocab_path) if self.vocab_path else 'unfitted'}"

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise CirlabError(f"no visual vocabulary at {path}; fit one with 'cirlab encode --fit-vocabulary'")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                centroids, idf = z["centroids"].astype(np.float32), z["idf"].astype(np.float32)
        except Exception as e:
            raise CirlabError(f"{path} is not a readable visual vocabulary ({type(e).__name__})") from None
        if meta.get("kind") != KIND or meta.get("format_version") != FORMAT_VERSION:
            raise CirlabError(f"{path} is not a cirlab visual vocabulary of this version; fit it again")
        if centroids.shape != (self.k, 128) or idf.shape != (self.k,):
            raise CirlabError(f"{path} holds {centroids.shape[0]} visual words, the spec asks for k={self.k}")
        self.centroids, self.idf, self.vocab_path, self.meta = centroids, idf, path, meta

    # SIFT ------------------------------------------------------------------------------------------
    def keypoints(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """(n, 5) keypoint geometry (x, y, scale as fractions of the side; cos, sin of the orientation)
        and (n, 128) descriptors, strongest first; n may be 0."""
        grey = np.asarray(pad_to_square(image.convert("RGB")).resize((self.size, self.size), Image.BICUBIC).convert("L"))
        kps, desc = self.sift.detectAndCompute(grey, None)
        if desc is None or not len(kps):
            return np.zeros((0, 5), np.float32), np.zeros((0, 128), np.float32)
        order = np.argsort([-kp.response for kp in kps], kind="stable")
        angle = np.radians([kps[i].angle for i in order])
        geo = np.array([[kps[i].pt[0] / self.size, kps[i].pt[1] / self.size, kps[i].size / self.size] for i in order],
                       np.float32)
        geo = np.concatenate([geo, np.cos(angle)[:, None], np.sin(angle)[:, None]], axis=1).astype(np.float32)
        return geo, desc[order].astype(np.float32)

    def words(self, desc: np.ndarray) -> np.ndarray:
        """The nearest visual word of each descriptor."""
        return _nearest(desc, self.centroids)

    def histograms(self, geo: np.ndarray, words: np.ndarray, side: int) -> np.ndarray:
        """(side * side, k) tf-idf weights of the words in each cell; tf counts over the whole image."""
        out = np.zeros((side * side, self.k), np.float32)
        if len(words):
            cell = (np.minimum((geo[:, 1] * side).astype(int), side - 1) * side
                    + np.minimum((geo[:, 0] * side).astype(int), side - 1))
            np.add.at(out, (cell, words), 1.0)
            out *= self.idf[None] / len(words)
        return out

    # the encoder protocol -----------------------------------------------------------------------
    def encode_images(self, images: Sequence[Image.Image], views: Sequence[str] = ("pooled",)) -> dict[str, np.ndarray]:
        check_views(views, ("pooled", "tokens", "colour", "thumbnail"), self.spec)
        out: dict[str, np.ndarray] = pixel_views(images, views)
        if not set(views) - set(PIXEL_VIEWS):
            return out
        if not self.fitted:
            raise CirlabError(f"{self.spec} has no visual vocabulary yet: 'cirlab encode --fit-vocabulary' learns one "
                              "(train and bench fit one on the training images themselves)")
        pooled = np.zeros((len(images), self.dim), np.float32)
        tokens = np.zeros((len(images), self.num_tokens, self.token_dim), np.float32)
        empty = 0
        for n, im in enumerate(images):
            geo, desc = self.keypoints(im)
            empty += not len(desc)
            words = self.words(desc)
            whole = self.histograms(geo, words, 1)[0]
            norm = float(np.linalg.norm(whole))
            if self.pyramid:  # the 1x1 level is the whole-image histogram already computed
                parts = [w * (whole if s == 1 else self.histograms(geo, words, s).ravel()) for s, w in PYRAMID]
                vec = np.concatenate(parts)
                pooled[n] = vec / max(float(np.linalg.norm(vec)), 1e-12)
            else:
                pooled[n] = whole / max(norm, 1e-12)
            if self.tokens == "keypoints":
                m = min(len(desc), KEYPOINT_TOKENS)
                unit = desc[:m] / np.maximum(np.linalg.norm(desc[:m], axis=1, keepdims=True), 1e-12)
                tokens[n, :m] = np.concatenate([unit, geo[:m]], axis=1)
            else:  # cells scaled so that their mean is the pooled (unpyramided) vector
                tokens[n] = self.histograms(geo, words, GRID) * (GRID * GRID / max(norm, 1e-12))
        if empty:
            self.no_keypoints += empty
            log.info("sift_bovw: %d of %d images had no SIFT keypoint; their histograms are all zero", empty, len(images))
        if "pooled" in views:
            out["pooled"] = pooled
        if "tokens" in views:
            out["tokens"] = tokens.astype(np.float16)
        return out

    # fitting ----------------------------------------------------------------------------------------
    def fit(self, paths: Sequence[str | Path], cache_root: str | Path, progress: bool = False, seed: int = 0,
            refit: bool = False) -> "SiftBovwEncoder":
        """This encoder with a vocabulary learnt on ``paths``: read from ``<cache_root>/vocabularies/`` where
        one was fitted on the same images with the same ``k`` (unless ``refit``), else fitted and saved there."""
        from cirlab.images import UnreadableImage, load_image

        paths = sorted({Path(p).resolve() for p in paths})
        source = hashlib.sha1("\n".join(f"{p}:{p.stat().st_size if p.is_file() else -1}" for p in paths).encode())
        target = Path(cache_root) / "vocabularies" / f"sift_bovw-k{self.k}@{self.size}-{source.hexdigest()[:12]}.npz"
        if target.is_file() and not refit:
            return self._fitted(target)
        per_image, unreadable = [], 0
        for p in _progress(paths, progress, f"SIFT descriptors for a {self.k}-word vocabulary"):
            try:
                per_image.append(self.keypoints(load_image(p))[1])
            except UnreadableImage:
                unreadable += 1
        desc = np.concatenate(per_image) if per_image else np.zeros((0, 128), np.float32)
        if len(desc) < self.k:
            raise CirlabError(f"{len(paths)} images gave only {len(desc)} SIFT descriptors, fewer than k={self.k} "
                              "visual words; fit on more images or choose a smaller k")
        rng = np.random.default_rng(seed)
        sample = desc if len(desc) <= MAX_DESCRIPTORS else desc[rng.choice(len(desc), MAX_DESCRIPTORS, replace=False)]
        centroids = _kmeans(sample, self.k, seed)
        df = np.zeros(self.k, np.float64)
        for d in per_image:  # this instance stays unfitted: the fitted one is built from the file below
            df[np.unique(_nearest(d, centroids))] += 1
        idf = (np.log((1 + len(per_image)) / (1 + df)) + 1).astype(np.float32)  # smoothed, as scikit-learn's
        meta = {"kind": KIND, "format_version": FORMAT_VERSION, "cirlab_version": __version__, "k": self.k,
                "size": self.size, "seed": seed, "images": len(per_image), "unreadable": unreadable,
                "descriptors": int(len(desc)), "sampled": int(len(sample)),
                "images_without_keypoints": int(sum(not len(d) for d in per_image))}
        _save_npz(target, centroids=centroids, idf=idf, meta=np.array(json.dumps(meta)))
        log.info("sift_bovw: %d visual words from %d descriptors of %d images -> %s", self.k, len(sample),
                 len(per_image), target)
        return self._fitted(target)

    def _fitted(self, path: Path) -> "SiftBovwEncoder":
        return SiftBovwEncoder(self.k, self.pyramid, self.tokens, self.size, vocab=path)


def _nearest(desc: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of the nearest centroid (visual word) of each descriptor."""
    if not len(desc):
        return np.zeros(0, np.int64)
    return ((centroids ** 2).sum(1)[None] - 2 * desc @ centroids.T).argmin(axis=1)


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means (scikit-learn's mini-batch form: the same objective, minutes less at 200k x 128) -> (k, 128)."""
    MiniBatchKMeans = need("sklearn.cluster", "index", "fitting a sift_bovw vocabulary").MiniBatchKMeans
    km = MiniBatchKMeans(k, random_state=seed, batch_size=4096, n_init=3, max_iter=100, max_no_improvement=20)
    return km.fit(x).cluster_centers_.astype(np.float32)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Written beside the target and renamed: a reader never sees half a vocabulary."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


def _progress(items, show: bool, desc: str):
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img")


@image_encoders.register("sift_bovw")
def _sift_bovw(arg: str | None = None) -> SiftBovwEncoder:
    _, options = parse_spec(f"sift_bovw:{arg or ''}")
    if "factory" in options:  # a bare path: the vocabulary file
        options.setdefault("vocab", options.pop("factory"))
    known = {"k", "pyramid", "tokens", "size", "vocab"}
    bad = sorted(set(options) - known)
    if bad:
        raise CirlabError(f"sift_bovw has no option {bad[0]!r}; it takes k, pyramid, tokens, size and vocab "
                          "(e.g. sift_bovw:k=1000,pyramid=1)")
    try:
        k = int(options.get("k", DEFAULT_K))
        size = int(options.get("size", 128))
        pyramid = {"0": False, "1": True, "false": False, "true": True}[options.get("pyramid", "0").lower()]
    except (ValueError, KeyError):
        raise CirlabError(f"sift_bovw options {arg!r}: k and size are whole numbers, pyramid is 0 or 1") from None
    return SiftBovwEncoder(k, pyramid, options.get("tokens", "keypoints"), size, options.get("vocab"))
