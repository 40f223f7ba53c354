"""Draw detections on images (Pillow), and put visualizations side by side."""

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_color(class_id):
    """A stable, well-spread colour per class (golden-ratio hues)."""
    hue = (int(class_id) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 scales its built-in font
    except TypeError:
        return ImageFont.load_default()


def label_text(class_id, score, labels=None):
    name = labels[class_id] if labels is not None and 0 <= class_id < len(labels) else f"class {class_id}"
    return f"{name}: {score * 100:.0f}%"


def visualize_detections(image, boxes_xyxy, scores, classes, labels=None, line_width=None):
    """Return a copy of `image` (PIL) with boxes (x1, y1, x2, y2 in its pixels) and 'label: score%' tags."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    size = max(canvas.width, canvas.height)
    width = line_width or max(2, round(size / 300))
    font = _font(max(11, round(size / 45)))
    for box, score, cls in sorted(zip(np.asarray(boxes_xyxy).tolist(), scores, classes), key=lambda d: d[1]):
        color = class_color(cls)
        x1, y1, x2, y2 = box
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        text = label_text(int(cls), float(score), labels)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top
        ty = y1 - text_h - 2 * width if y1 - text_h - 2 * width >= 0 else y1
        draw.rectangle((x1, ty, x1 + text_w + 2 * width, ty + text_h + 2 * width), fill=color)
        draw.text((x1 + width - left, ty + width - top), text, fill=(0, 0, 0), font=font)
    return canvas


def concat_visualizations(images, titles=None, gap=8, background=(255, 255, 255)):
    """Place images left to right (scaled to a common height), with optional titles above."""
    height = max(im.height for im in images)
    scaled = [im if im.height == height else im.resize((round(im.width * height / im.height), height), Image.BILINEAR)
              for im in images]
    font = _font(max(12, height // 30))
    title_h = 0
    if titles:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        title_h = max(probe.textbbox((0, 0), t, font=font)[3] for t in titles) + 2 * gap
    total_w = sum(im.width for im in scaled) + gap * (len(scaled) - 1)
    canvas = Image.new("RGB", (total_w, height + title_h), background)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for index, im in enumerate(scaled):
        canvas.paste(im.convert("RGB"), (x, title_h))
        if titles:
            draw.text((x + gap, gap), titles[index], fill=(0, 0, 0), font=font)
        x += im.width + gap
    return canvas
