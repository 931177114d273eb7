"""Hand-crafted prompt templates: CoOp's per-dataset templates, "a photo of a {}." otherwise."""
from __future__ import annotations

DEFAULT_TEMPLATE = "a photo of a {}."

# Keys are lower-cased canonical dataset names (see gramprompt.data.coop.canonical_name).
DATASET_TEMPLATES: dict[str, str] = {
    "oxfordpets": "a photo of a {}, a type of pet.",
    "oxfordflowers": "a photo of a {}, a type of flower.",
    "fgvcaircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanfordcars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenetsketch": "a photo of a {}.",
    "imageneta": "a photo of a {}.",
    "imagenetr": "a photo of a {}.",
    # the offline sets (gramprompt.data.offline), chosen a priori to describe the images' kind
    "emojigroups": "an emoji of {}.",
    "emojisubgroups": "an emoji of {}.",
    "emojigroupssymbola": "an emoji of {}.",  # the same emoji in other drawing styles (cross-domain targets)
    "emojigroupsemojione": "an emoji of {}.",
    "clipartcategories": "a clipart of {}.",
    "notoscripts": "a letter of the {} script.",
    "tuxpaintstamps": "a picture of {}.",
}

# The 60 of the 80 ImageNet prompts of OpenAI's CLIP prompt-engineering notebook that PromptSRC averages into its
# frozen text targets (its trainers/imagenet_templates.py): data, listed here so the targets need no download.
ENSEMBLE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.", "the plastic {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.", "the toy {}.",
    "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
)


def template_for(dataset_name: str) -> str:
    """The dataset's template; a validation view (``name@val``) uses its dataset's."""
    key = dataset_name.partition("@")[0].lower().replace("-", "").replace("_", "")
    return DATASET_TEMPLATES.get(key, DEFAULT_TEMPLATE)
