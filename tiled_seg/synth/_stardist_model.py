"""A small StarDist2D model built here, for tests and benchmarks of the ``stardist`` backend.

No pretrained StarDist weights can be downloaded in this environment, so the
tests and ``benchmarks/bench_stardist.py`` build a model in a folder with the
layout ``StarDist2D(None, name, basedir)`` loads. Its U-Net keeps the random
weights Keras draws (seeded); only its two 1 x 1 output heads (``prob`` and
``dist``) are set, by least squares on one example image, so that the object
probability and the ray distances follow real nuclei: the network's features
stay random, but the outputs are meaningful enough for objects of a real
size at real places. No gradient training takes place.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["make_stardist_model"]


def make_stardist_model(
    folder: str | Path,
    image: np.ndarray,
    nuclei: np.ndarray,
    *,
    n_rays: int = 16,
    seed: int = 0,
    prob_thresh: float = 0.4,
    nms_thresh: float = 0.3,
) -> Path:
    """Save a small random-feature StarDist2D model with fitted output heads.

    Parameters
    ----------
    folder : str or Path
        Model folder to write (``config.json``, ``weights_best.h5``,
        ``thresholds.json``); its name is the model's name.
    image : ndarray, shape (Y, X), float
        Example nuclear image, normalised to 0-1; Y and X are cropped to
        multiples of 8 (the network's ``div_by``).
    nuclei : ndarray of int, shape (Y, X)
        Nuclear labels of ``image`` that the heads are fitted to.
    n_rays : int
        Rays per star-convex polygon.
    seed : int
        Seed of the U-Net's random weights.
    prob_thresh, nms_thresh : float
        Thresholds written to ``thresholds.json``.

    Returns
    -------
    Path
        ``folder``.
    """
    import keras
    from stardist import edt_prob, star_dist
    from stardist.models import Config2D, StarDist2D

    folder = Path(folder)
    keras.utils.set_random_seed(seed)
    config = Config2D(n_rays=n_rays, grid=(2, 2), n_channel_in=1, unet_n_depth=2, unet_n_filter_base=8)
    model = StarDist2D(config, name=folder.name, basedir=str(folder.parent))
    h, w = (s - s % 8 for s in image.shape)
    x = np.asarray(image[:h, :w], np.float32)
    truth = np.asarray(nuclei[:h, :w]).astype(np.int32)
    features_model = keras.Model(model.keras_model.input, model.keras_model.get_layer("features").output)
    features = features_model.predict(x[None, ..., None], verbose=0)[0]
    design = np.c_[features.reshape(-1, features.shape[-1]), np.ones(features[..., 0].size)]
    probability = np.clip(edt_prob(truth)[::2, ::2], 1e-3, 1 - 1e-3)
    logit = np.clip(np.log(probability / (1 - probability)), -6, 6).ravel()
    prob_head = np.linalg.lstsq(design, logit, rcond=None)[0]
    inside = truth[::2, ::2].ravel() > 0
    distances = star_dist(truth, n_rays)[::2, ::2].reshape(-1, n_rays)
    dist_head = np.linalg.lstsq(design[inside], distances[inside], rcond=None)[0]
    channels = features.shape[-1]
    model.keras_model.get_layer("prob").set_weights(
        [prob_head[:-1].reshape(1, 1, channels, 1).astype(np.float32), prob_head[-1:].astype(np.float32)]
    )
    model.keras_model.get_layer("dist").set_weights(
        [dist_head[:-1].reshape(1, 1, channels, n_rays).astype(np.float32), dist_head[-1].astype(np.float32)]
    )
    model.keras_model.save_weights(str(folder / "weights_best.h5"))
    (folder / "thresholds.json").write_text(json.dumps({"prob": prob_thresh, "nms": nms_thresh}))
    return folder
