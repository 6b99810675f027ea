"""What a run may cost: input tokens per image for each OpenAI model family, and the estimate line the prompts
stage prints before sending anything."""
from __future__ import annotations

import math

from cater.prompts.base import PromptRequest
from cater.prompts.openai_backend.messages import INSTRUCTIONS, user_text


# Image input tokens per model family, from OpenAI's API documentation ("Images and vision", "Calculating costs",
# as of 2025). Tile models: base + per-512-px-tile tokens after fitting into 2048 px and scaling the short side
# to 768 px (detail low: the base only). Patch models: 32-px patches (at most 1536, the image scaled down to fit),
# times a multiplier; detail does not change them. Longest prefix wins; anything else (a local server's model)
# falls back to gpt-4o's rule, and the estimate says so.
TILE_RULES = {"gpt-4o-mini": (2833, 5667), "gpt-4o": (85, 170), "gpt-4.1": (85, 170), "gpt-4.5": (85, 170),
              "o1": (75, 150), "o3": (75, 150)}
PATCH_RULES = {"gpt-4.1-mini": 1.62, "gpt-4.1-nano": 2.46, "o4-mini": 1.72}
FALLBACK_RULE = "gpt-4o"


def image_rule(model: str) -> tuple[str, bool]:
    """(the rule's family name, whether the model is known) for `model`, e.g. gpt-4o-mini-2024-07-18 -> gpt-4o-mini."""
    names = sorted([*TILE_RULES, *PATCH_RULES], key=len, reverse=True)
    family = next((name for name in names if model == name or model.startswith(name + "-")), None)
    return (family, True) if family else (FALLBACK_RULE, False)


def image_tokens(height: int, width: int, detail: str, model: str = "gpt-4o") -> int:
    """Input tokens of one image for `model`'s family (TILE_RULES / PATCH_RULES)."""
    family, _ = image_rule(model)
    if family in PATCH_RULES:
        patches = math.ceil(width / 32) * math.ceil(height / 32)
        if patches > 1536:
            shrink = math.sqrt(32 * 32 * 1536 / (width * height))
            w, h = width * shrink / 32, height * shrink / 32
            shrink *= min(math.floor(w) / w, math.floor(h) / h)  # whole patches along the tighter side
            patches = math.ceil(width * shrink / 32) * math.ceil(height * shrink / 32)
        return math.ceil(min(patches, 1536) * PATCH_RULES[family])
    base, tile = TILE_RULES[family]
    if detail == "low":
        return base
    scale = min(1.0, 2048 / max(height, width))
    h, w = height * scale, width * scale
    scale = min(1.0, 768 / min(h, w))
    h, w = h * scale, w * scale
    return base + tile * math.ceil(h / 512) * math.ceil(w / 512)


def estimate_line(requests: list[PromptRequest], model: str, image_size: int, detail: str, max_output_tokens: int,
                  prices: tuple[float | None, float | None], batch: bool, use_subtitles: bool) -> str:
    """A worst-case cost line for `requests` (cached responses not subtracted); frames may be memory-mapped.
    `prices`: USD per 1M input and output tokens (either None: no cost given); `batch` halves them."""
    images = text_tokens = img_tokens = 0
    for request in requests:
        _, h, w, _ = request.frames.shape
        scale = min(1.0, image_size / max(h, w))
        per_image = image_tokens(round(h * scale), round(w * scale), detail, model)
        images += len(request.frame_times)
        img_tokens += per_image * len(request.frame_times)
        text_tokens += (len(INSTRUCTIONS) + len(user_text(request, use_subtitles)) + 20 * len(request.frame_times)) // 4
    out_tokens = max_output_tokens * len(requests)
    family, known = image_rule(model)
    rule = f"the {family} image rule" if known else f"no image rule known for {model}: {family}'s, a rough guide"
    line = (
        f"up to {len(requests)} request(s) to {model} with {images} image(s): "
        f"~{text_tokens + img_tokens:,} input tokens ({img_tokens:,} for images at detail={detail}, "
        f"{rule}), <= {out_tokens:,} output tokens"
    )
    usd_in, usd_out = prices
    if usd_in is not None and usd_out is not None:
        cost = (text_tokens + img_tokens) * usd_in / 1e6 + out_tokens * usd_out / 1e6
        line += f", <= ${cost * 0.5:.2f} with the Batch API (half the listed prices)" if batch else f", <= ${cost:.2f}"
    return line
