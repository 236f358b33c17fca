"""The model registry: plain data about each SAM variant and its published checkpoint.

Nothing here builds a model or touches the network; :mod:`.builders` turns an
entry's ``architecture`` into a module and :mod:`.checkpoints` finds its file, as
segment-anything's ``build_sam.py`` keeps a registry next to, not inside, the models.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "vit_b"
TINY_MODEL = "tiny"


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the registry.

    Attributes
    ----------
    name : str
        Registry key (``"vit_b"``...).
    description : str
        One line for menus and ``napari-persam models list``.
    architecture : str
        What :func:`napari_persam.core.models.builders.build_architecture` builds:
        ``"sam_vit_b"``, ``"sam_vit_l"``, ``"sam_vit_h"``, ``"mobile_sam"`` or ``"tiny"``.
    url : str
        The publisher's download address of the checkpoint; ``""`` when the model
        has no published weights (``"tiny"``).
    filename : str
        The checkpoint's file name in the cache folder (the publisher's name).
    size : int
        Size of the checkpoint file in bytes.
    sha256 : str
        SHA-256 of the checkpoint file, lowercase hex.
    signature : str
        The image encoder as :func:`napari_persam.core.models.state_dicts.encoder_signature`
        describes it; used to name the model a wrong checkpoint belongs to.
    key_layout : str
        How the published checkpoint names its modules: ``"sam"`` (as the model
        here) or ``"mobile_sam_official"`` (MobileSAM's names, renamed to timm's).
    embedding_channels : int
        Channels of the image embedding (C of its (C, gh, gw) features), so the
        length of a concept's embeddings; checked before a model is loaded.
    """

    name: str
    description: str
    architecture: str
    url: str = ""
    filename: str = ""
    size: int = 0
    sha256: str = ""
    signature: str = ""
    key_layout: str = "sam"
    embedding_channels: int = 256

    @property
    def downloadable(self) -> bool:
        """Whether the model has published weights to fetch."""
        return bool(self.url and self.filename and self.sha256)


_SAM_RELEASE = "https://dl.fbaipublicfiles.com/segment_anything/"

# URLs, sizes and SHA-256 hashes of the publishers' files. segment-anything's URLs
# are in its README; MobileSAM's file is in its repository's weights/ folder.
# Sizes and hashes agree between independent projects that pin these files
# (micro-sam's model registry and several download manifests); see docs/models.md.
MODEL_REGISTRY: dict[str, ModelSpec] = {
    "vit_b": ModelSpec(
        "vit_b",
        "SAM ViT-B (91M parameters, 375 MB; the default)",
        "sam_vit_b",
        url=_SAM_RELEASE + "sam_vit_b_01ec64.pth",
        filename="sam_vit_b_01ec64.pth",
        size=375_042_383,
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        signature="ViT, width 768, 12 blocks",
    ),
    "vit_l": ModelSpec(
        "vit_l",
        "SAM ViT-L (308M parameters, 1.2 GB)",
        "sam_vit_l",
        url=_SAM_RELEASE + "sam_vit_l_0b3195.pth",
        filename="sam_vit_l_0b3195.pth",
        size=1_249_524_607,
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        signature="ViT, width 1024, 24 blocks",
    ),
    "vit_h": ModelSpec(
        "vit_h",
        "SAM ViT-H (636M parameters, 2.6 GB; best, slowest)",
        "sam_vit_h",
        url=_SAM_RELEASE + "sam_vit_h_4b8939.pth",
        filename="sam_vit_h_4b8939.pth",
        size=2_564_550_879,
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        signature="ViT, width 1280, 32 blocks",
    ),
    "vit_t": ModelSpec(
        "vit_t",
        "MobileSAM TinyViT (10M parameters, 41 MB; fastest on CPU)",
        "mobile_sam",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        filename="mobile_sam.pt",
        size=40_728_226,
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        signature="TinyViT, widths 64-128-160-320",
        key_layout="mobile_sam_official",
    ),
    TINY_MODEL: ModelSpec(
        TINY_MODEL,
        "Tiny random SAM for tests and demos (no weights, meaningless masks)",
        "tiny",
        signature="ViT, width 48, 2 blocks",
    ),
}


def model_names() -> list[str]:
    """Registry keys in menu order."""
    return list(MODEL_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``, or a ValueError listing the known names."""
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown model {name!r}; choose one of {', '.join(MODEL_REGISTRY)}."
        ) from None
