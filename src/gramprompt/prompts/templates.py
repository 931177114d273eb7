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


def template_for(dataset_name: str) -> str:
    """The dataset's template; a validation view (``name@val``) uses its dataset's."""
    key = dataset_name.partition("@")[0].lower().replace("-", "").replace("_", "")
    return DATASET_TEMPLATES.get(key, DEFAULT_TEMPLATE)
