"""Draw the product-catalog example's packaging images: a box, bottle or can per product, with the brand,
product name and a few details printed large on its label, so OCR (and people) can read them.

    python examples/product-catalog/make_images.py        # rewrites images/*.png

The font is the one Pillow bundles (``ImageFont.load_default(size=...)``, Pillow 10.1 or newer), so the
images come out the same on every machine. The product names are only on the images, never in
products.csv: a good answer has to read them off the packaging.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
WIDTH, HEIGHT = 600, 760
BACKGROUND = (242, 242, 238)
INK = (20, 20, 20)
LABEL = (255, 255, 255)


@dataclass(frozen=True)
class Product:
    id: str
    shape: str  # box | bottle | can
    color: tuple[int, int, int]
    brand: str
    name: str
    details: tuple[str, ...]


PRODUCTS = (
    Product(
        "P001", "box", (196, 120, 40), "HARVEST HILL", "Honey Almond Granola", ("500 g", "Whole Grain Oats")
    ),
    Product("P002", "can", (60, 150, 60), "FIZZCO", "Lemon Lime Soda", ("330 ml", "Zero Sugar")),
    Product(
        "P003", "bottle", (70, 140, 200), "PURE SPRING", "Sparkling Water", ("1 Litre", "Natural Minerals")
    ),
    Product("P004", "box", (40, 110, 190), "BRIGHT SMILE", "Mint Toothpaste", ("75 ml", "With Fluoride")),
    Product("P005", "bottle", (110, 130, 40), "OLIVIA", "Extra Virgin Olive Oil", ("750 ml", "Cold Pressed")),
    Product("P006", "can", (30, 90, 150), "OCEAN BAY", "Tuna in Spring Water", ("160 g", "Dolphin Safe")),
    Product("P007", "box", (80, 50, 30), "NIGHT OWL", "Dark Roast Coffee", ("250 g", "Ground Arabica")),
    Product("P008", "bottle", (200, 90, 150), "GLOW", "Coconut Shampoo", ("400 ml", "For Dry Hair")),
    Product("P009", "box", (200, 60, 50), "CRUNCHY", "Sea Salt Crackers", ("200 g", "Baked Not Fried")),
    Product("P010", "can", (170, 20, 40), "RED PEAK", "Energy Drink", ("250 ml", "Berry Flavour")),
    Product("P011", "box", (230, 160, 30), "TINY PAWS", "Puppy Food", ("2 kg", "Chicken and Rice")),
    Product("P012", "bottle", (130, 90, 180), "CLEAN HOME", "Lavender Dish Soap", ("500 ml", "Plant Based")),
)


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_package(product: Product) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    label = _draw_shape(draw, product)
    draw.rectangle(label, fill=LABEL, outline=INK, width=3)
    left, top, right, _ = label
    y = top + 24
    y = _centered(draw, product.brand, y, left, right, font(40), _shade(product.color, 0.6))
    y += 18
    for line in _wrap(draw, product.name, font(52), right - left - 40):
        y = _centered(draw, line, y, left, right, font(52), INK, bold=True)
    y += 18
    for detail in product.details:
        y = _centered(draw, detail, y, left, right, font(38), INK)
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, product: Product) -> tuple[int, int, int, int]:
    """Draw the package outline; return the label rectangle (left, top, right, bottom)."""
    c = product.color
    if product.shape == "box":
        draw.polygon([(70, 90), (110, 50), (550, 50), (510, 90)], fill=_shade(c, 1.25), outline=INK)
        draw.polygon([(510, 90), (550, 50), (550, 700), (510, 740)], fill=_shade(c, 0.7), outline=INK)
        draw.rectangle((70, 90, 510, 740), fill=c, outline=INK, width=3)
        return (95, 170, 485, 640)
    if product.shape == "bottle":
        draw.rectangle((250, 20, 350, 70), fill=INK)
        draw.polygon([(255, 70), (345, 70), (440, 200), (160, 200)], fill=c, outline=INK)
        draw.rounded_rectangle((120, 190, 480, 740), radius=40, fill=c, outline=INK, width=3)
        return (80, 250, 520, 660)
    draw.ellipse((110, 30, 490, 110), fill=(190, 190, 190), outline=INK, width=3)  # can
    draw.rectangle((110, 70, 490, 700), fill=c)
    draw.ellipse((110, 660, 490, 740), fill=c, outline=INK, width=3)
    draw.line((110, 70, 110, 700), fill=INK, width=3)
    draw.line((490, 70, 490, 700), fill=INK, width=3)
    return (70, 180, 530, 600)


def _shade(color: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    r, g, b = (min(255, int(v * factor)) for v in color)
    return (r, g, b)


def _wrap(
    draw: ImageDraw.ImageDraw, text: str, face: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int
) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=face) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _centered(
    draw: ImageDraw.ImageDraw,
    text: str,
    y: int,
    left: int,
    right: int,
    face: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    fill: tuple[int, int, int],
    *,
    bold: bool = False,
) -> int:
    """Draw one line centred between left and right; return the y of the next line."""
    stroke = 1 if bold else 0
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=face, stroke_width=stroke)
    x = (left + right - (x1 - x0)) // 2 - x0
    draw.text((x, y - y0), text, font=face, fill=fill, stroke_width=stroke, stroke_fill=fill)
    return int(y + (y1 - y0) + 14)


def main() -> None:
    folder = HERE / "images"
    folder.mkdir(exist_ok=True)
    for product in PRODUCTS:
        image = draw_package(product).quantize(colors=32)  # flat colours: small PNGs
        image.save(folder / f"{product.id.lower()}.png", optimize=True)
        print(f"wrote images/{product.id.lower()}.png")


if __name__ == "__main__":
    main()
