"""``cirlab methods``: the registered fusion methods, their parameters and papers, or every config."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    m = sub.add_parser("methods", help="list the registered fusion methods: name, parameters (default encoders), paper")
    m.add_argument("--configs", action="store_true",
                   help="print every method's and ablation variant's full config (JSON lines)")
    m.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from cirlab.config import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, method_config, variant_names
    from cirlab.encoders import build_image_encoder, build_text_encoder
    from cirlab.fusion import FeatureDims, build_fusion, fusion_methods

    if a.configs:
        for name in fusion_methods.names() + variant_names():
            print(json.dumps({"name": name, **method_config(name)}))
        return 0
    dims = FeatureDims.of(build_image_encoder(DEFAULT_IMAGE_ENCODER), build_text_encoder(DEFAULT_TEXT_ENCODER))
    # a zero-shot method runs on an aligned pair: counted on one as wide as the default text encoder
    aligned = FeatureDims(image=dims.text, text=dims.text, text_token=dims.text_token)
    for name in fusion_methods.names():
        model = build_fusion(name, aligned if fusion_methods.get(name).zero_shot else dims,
                             **method_config(name)["model"])
        print(f"{name:<14} {model.num_parameters():>11,}  {model.paper}")
    return 0
