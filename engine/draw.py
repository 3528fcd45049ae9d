"""Everything RadLens draws for a screen or a file: CAM overlays and comparison sheets, segmentation
outlines with the fitted ellipse and the ground truth, PNG encoding. Pure numpy/OpenCV, no model."""

from __future__ import annotations

import cv2
import numpy as np

from engine.errors import ExportError, InvalidOption
from engine.inference.measure import ellipse_outline

__all__ = ["DISPLAY_MAX_SIDE", "COLORMAPS", "overlay", "fit_within", "keep_top", "comparison_sheet", "png_bytes",
           "COLOURS", "TRUTH_COLOUR", "ELLIPSE_COLOUR", "DISPLAY_SIDE", "draw_segmentation", "with_banner", "font_path"]


DISPLAY_MAX_SIDE = 1280  # overlays on screen: a 2k film is shown at most this large


COLORMAPS = {"jet": cv2.COLORMAP_JET, "inferno": cv2.COLORMAP_INFERNO, "viridis": cv2.COLORMAP_VIRIDIS,
             "turbo": cv2.COLORMAP_TURBO}


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4, colormap: str = "jet",
            max_side: int | None = None) -> np.ndarray:
    """An RGB uint8 image: the CAM (any size, values in [0, 1]) resized onto the gray image. Each pixel's
    blend weight is alpha x its CAM value, so regions without evidence keep the radiograph unchanged
    instead of being tinted by the colormap's low end. `max_side` first shrinks the image (area
    interpolation) to what a screen shows; the CAM's own resolution is 1/32 of the model input anyway."""
    if colormap not in COLORMAPS:
        raise InvalidOption(f"Unknown colormap {colormap!r}. Available: {', '.join(COLORMAPS)}")
    gray = fit_within(gray, max_side) if max_side else gray
    h, w = gray.shape[:2]
    heat = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    np.clip(heat, 0.0, 1.0, out=heat)
    colour = cv2.cvtColor(cv2.applyColorMap(cv2.convertScaleAbs(heat, alpha=255), COLORMAPS[colormap]),
                          cv2.COLOR_BGR2RGB)
    weight = heat * np.float32(alpha)
    return cv2.blendLinear(colour, cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), weight, 1.0 - weight)


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """The image shrunk (area interpolation, aspect kept) so its longer side is at most max_side."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def keep_top(cam: np.ndarray, percent: float) -> np.ndarray:
    """The map with everything below its top `percent` % of pixels set to 0 (100 keeps the whole map)."""
    if percent >= 100:
        return cam
    return np.where(cam >= np.percentile(cam, 100 - percent), cam, 0).astype(cam.dtype)


def comparison_sheet(gray: np.ndarray, cams: dict[str, np.ndarray], alpha: float = 0.4, colormap: str = "jet",
                     columns: int = 3, tile: int = 512) -> np.ndarray:
    """One RGB image: the overlays of several maps on the same image in a grid, each titled."""
    tiles = []
    for title, cam in cams.items():
        image = overlay(gray, cam, alpha, colormap, max_side=tile)
        canvas = np.full((tile + 40, tile, 3), 255, np.uint8)
        h, w = image.shape[:2]
        canvas[40 + (tile - h) // 2:40 + (tile - h) // 2 + h, (tile - w) // 2:(tile - w) // 2 + w] = image
        cv2.putText(canvas, title, (8, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2, cv2.LINE_AA)
        tiles.append(canvas)
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % columns)
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB (or gray) uint8 image as PNG file bytes."""
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ExportError("could not encode the image as PNG")
    return encoded.tobytes()


def fast_png(image: np.ndarray) -> bytes:
    """An RGB or gray uint8 image as PNG at compression level 1 (a batch run's overlays and masks: level 6 cost
    three times the forward pass)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


COLOURS = {"green": (60, 220, 90), "yellow": (255, 214, 0), "cyan": (0, 200, 255), "red": (255, 60, 60)}


TRUTH_COLOUR = (255, 0, 255)  # magenta: never one of the mask colours


ELLIPSE_COLOUR = (255, 255, 255)


DISPLAY_SIDE = 900  # small ultrasound images are enlarged so 2-px lines stay thin on screen


def draw_segmentation(gray: np.ndarray, mask: np.ndarray, style: str = "contour", opacity: float = 0.35,
                      colour: str = "green", ellipse=None, truth: np.ndarray | None = None) -> np.ndarray:
    """An RGB image for the screen: the mask filled or outlined, the fitted ellipse (white) and the ground
    truth outline (magenta, wider and underneath, so it shows as a rim where the two agree). Enlarged
    (cubic) to DISPLAY_SIDE on its long side when smaller, before the lines are drawn, so outlines are
    sharp rather than upsampled pixels."""
    scale = max(1.0, DISPLAY_SIDE / max(gray.shape))
    size = (round(gray.shape[1] * scale), round(gray.shape[0] * scale))
    rgb = cv2.cvtColor(cv2.resize(gray, size, interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2RGB)
    big = _enlarge(mask, size)
    rgb_colour = np.array(COLOURS[colour], np.float32)
    # Bottom to top: the truth (wide), the ellipse (thin), the model's mask, so the model's line is the one
    # seen where they coincide and the others show where they differ. Widths suit the ~600 px it is shown at.
    if truth is not None:
        _outline(rgb, _enlarge(truth, size), TRUTH_COLOUR, 7)
    if ellipse is not None:
        points = np.round(ellipse_outline(ellipse) * scale + (scale - 1) / 2).astype(np.int32)
        cv2.polylines(rgb, [points], True, ELLIPSE_COLOUR, 2, cv2.LINE_AA)
    if style == "filled":
        rgb[big] = (rgb[big] * (1 - opacity) + rgb_colour * opacity).astype(np.uint8)
    else:
        _outline(rgb, big, COLOURS[colour], 3)
    return rgb


def _enlarge(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A mask at display size with smooth edges (linear, > 0.5) instead of enlarged pixel steps."""
    return cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) > 0.5


def _outline(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int = 2) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, colour, thickness, cv2.LINE_AA)


def font_path(bold: bool = False) -> str:
    """DejaVu Sans, as shipped inside matplotlib's wheel (a Unicode TrueType font with no system install)."""
    import matplotlib

    return f"{matplotlib.get_data_path()}/fonts/ttf/DejaVuSans{'-Bold' if bold else ''}.ttf"


def with_banner(rgb: np.ndarray, title: str, lines: list[str], min_width: int = 768) -> np.ndarray:
    """The image (enlarged to `min_width` when narrower) with a black band above it holding `title` (bold,
    yellow) and `lines` (white), sized so the longest fits: burned into the pixels, never over the image
    itself, so no evidence is hidden."""
    from PIL import Image, ImageDraw, ImageFont

    if rgb.shape[1] < min_width:
        scale = min_width / rgb.shape[1]
        rgb = cv2.resize(rgb, (min_width, round(rgb.shape[0] * scale)), interpolation=cv2.INTER_CUBIC)
    width = rgb.shape[1]
    size = min(40, width // 36)
    while size > 8:
        bold, regular = ImageFont.truetype(font_path(True), size), ImageFont.truetype(font_path(), round(size * 0.8))
        widest = max([bold.getlength(title), *(regular.getlength(line) for line in lines)])
        if widest <= width - size:
            break
        size -= 1
    height = round(size * 1.5 + len(lines) * size * 1.15 + size * 0.6)
    band = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    draw.text((size // 2, size // 3), title, font=bold, fill=(255, 214, 0))
    for n, line in enumerate(lines):
        draw.text((size // 2, round(size * 1.6 + n * size * 1.15)), line, font=regular, fill=(255, 255, 255))
    return np.vstack([np.asarray(band), rgb])
