"""Generate ``data/sample/``: small synthetic equirectangular panoramas and their QuIC-360-style captions.

    python -m data.make_sample [--out data/sample]

Each scene is a set of parameters (sky, ground, objects with their direction, distance and colour). The same
parameters drive the drawing and the captions, so every caption states only what was drawn: counts, colours and
places come from the scene, not from free text. Output is deterministic (seeded numpy, fixed encoder settings):
running the script again rewrites byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from data.panorama import (
    RGB,
    Box,
    Grid,
    angular_distance_deg,
    blend,
    draw_wrapped,
    make_grid,
    to_pixel,
    upright_box,
    vertical_gradient,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "sample"
CSV_NAME = "sample.csv"
IMAGE_FOLDER = "images"
JPEG_QUALITY = 85
EXIF_ORIENTATION_TAG = 0x0112
# Orientation 6: the stored pixels must be turned 90° clockwise for display (what a phone held upright writes).
EXIF_ROTATE_CLOCKWISE = 6

COLOURS: dict[str, RGB] = {
    "red": (196, 40, 36),
    "yellow": (232, 196, 52),
    "blue": (40, 86, 196),
    "green": (52, 150, 64),
    "white": (240, 240, 236),
    "orange": (236, 128, 32),
    "purple": (120, 60, 160),
}

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven")


@dataclass(frozen=True)
class Thing:
    """An upright object on the ground: its direction (degrees, 0 = image centre, positive = right), its distance
    in metres and its main colour (a key of COLOURS)."""

    azimuth: float
    distance: float
    colour: str = "green"


@dataclass(frozen=True)
class Scene:
    name: str
    width: int
    height: int
    image_format: Literal["JPEG", "PNG"]
    place: str  # what the scene depicts, used by the location captions
    sky: Literal["clear", "overcast", "sunset", "night"]
    ground: Literal["sand", "snow", "grass", "pavement"]
    queries: tuple[str, ...]
    seed: int
    exif_rotated: bool = False
    sun: tuple[float, float] | None = None  # (azimuth, elevation) in degrees
    moon: tuple[float, float] | None = None
    stars: int = 0
    clouds: tuple[tuple[float, float], ...] = ()
    snowfall: bool = False
    sea_azimuth: float | None = None  # the sea fills the half of the view centred on this direction
    lake: tuple[float, float, float] | None = None  # (azimuth, distance, radius) of a round lake
    road_azimuth: float | None = None  # a straight road through the camera position, along this direction
    mountains: bool = False  # a snow-capped range all around the horizon
    dunes: bool = False
    tree_kind: Literal["pine", "leafy"] = "leafy"
    trees: tuple[Thing, ...] = ()
    houses: tuple[Thing, ...] = ()
    buildings: tuple[Thing, ...] = ()
    people: tuple[Thing, ...] = ()
    cars: tuple[Thing, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return f"{IMAGE_FOLDER}/{self.name}.{'png' if self.image_format == 'PNG' else 'jpg'}"


SCENES: tuple[Scene, ...] = (
    Scene(
        name="beach",
        width=1024,
        height=512,
        image_format="JPEG",
        place="beach",
        sky="clear",
        ground="sand",
        queries=("location", "weather", "people", "sea"),
        seed=1,
        sun=(-40.0, 55.0),
        clouds=((60.0, 30.0), (-120.0, 22.0)),
        sea_azimuth=0.0,
        people=(Thing(150.0, 6.0, "red"), Thing(-120.0, 5.0, "yellow"), Thing(100.0, 7.0, "blue")),
    ),
    Scene(
        name="snowy_village",
        width=768,
        height=384,
        image_format="JPEG",
        exif_rotated=True,
        place="village",
        sky="overcast",
        ground="snow",
        queries=("weather", "trees", "houses"),
        seed=2,
        snowfall=True,
        tree_kind="pine",
        trees=(Thing(-150.0, 14.0), Thing(-100.0, 12.0), Thing(30.0, 16.0), Thing(80.0, 13.0), Thing(130.0, 20.0)),
        houses=(Thing(-30.0, 16.0, "red"), Thing(170.0, 18.0, "yellow")),
    ),
    Scene(
        name="night_city",
        width=768,
        height=384,
        image_format="PNG",
        place="city square",
        sky="night",
        ground="pavement",
        queries=("weather", "building", "location"),
        seed=3,
        moon=(-54.0, 58.0),
        stars=160,
        buildings=tuple(Thing(-162.0 + 36.0 * index, 60.0 + 8.0 * (index % 3)) for index in range(10)),
    ),
    Scene(
        name="street",
        width=1024,
        height=512,
        image_format="JPEG",
        place="street",
        sky="clear",
        ground="grass",
        queries=("street", "cars", "houses", "people"),
        seed=4,
        sun=(140.0, 45.0),
        clouds=((-30.0, 28.0), (40.0, 35.0), (-150.0, 25.0)),
        road_azimuth=0.0,
        houses=(
            Thing(60.0, 15.0, "blue"),
            Thing(120.0, 15.0, "green"),
            Thing(-60.0, 15.0, "yellow"),
            Thing(-120.0, 15.0, "red"),
        ),
        cars=(Thing(0.0, 12.0, "red"), Thing(180.0, 9.0, "blue")),
        people=(Thing(90.0, 4.6, "orange"), Thing(-92.0, 4.8, "purple")),
    ),
    Scene(
        name="park_lake",
        width=800,
        height=400,
        image_format="JPEG",
        place="park",
        sky="clear",
        ground="grass",
        queries=("location", "trees", "lake", "people"),
        seed=5,
        sun=(70.0, 50.0),
        clouds=((-100.0, 30.0),),
        lake=(-10.0, 17.0, 9.0),
        tree_kind="leafy",
        trees=(
            Thing(60.0, 12.0),
            Thing(100.0, 16.0),
            Thing(140.0, 11.0),
            Thing(-170.0, 14.0),
            Thing(-125.0, 12.0),
            Thing(-80.0, 15.0),
        ),
        people=(Thing(160.0, 7.0, "white"), Thing(-150.0, 8.0, "red")),
    ),
    Scene(
        name="mountains",
        width=640,
        height=320,
        image_format="PNG",
        place="mountain valley",
        sky="clear",
        ground="grass",
        queries=("mountains", "landscape", "weather"),
        seed=6,
        sun=(150.0, 45.0),
        mountains=True,
    ),
    Scene(
        name="desert_sunset",
        width=512,
        height=256,
        image_format="JPEG",
        place="desert",
        sky="sunset",
        ground="sand",
        queries=("weather", "landscape", "location"),
        seed=7,
        sun=(0.0, 5.0),
        dunes=True,
    ),
)


# ---------------------------------------------------------------------------------------------------------
# Drawing.

SKY_STOPS: dict[str, list[tuple[float, RGB]]] = {
    "clear": [(0.0, (186, 216, 240)), (30.0, (110, 168, 228)), (90.0, (40, 90, 190))],
    "overcast": [(0.0, (205, 208, 212)), (90.0, (150, 154, 160))],
    "sunset": [(0.0, (255, 196, 90)), (10.0, (246, 128, 70)), (35.0, (190, 90, 120)), (90.0, (60, 50, 110))],
    "night": [(0.0, (30, 40, 80)), (90.0, (6, 8, 24))],
}
GROUND_NEAR: dict[str, RGB] = {
    "sand": (222, 196, 140),
    "snow": (244, 246, 250),
    "grass": (78, 150, 60),
    "pavement": (70, 70, 76),
}
HAZE: dict[str, RGB] = {"clear": (200, 215, 225), "overcast": (210, 212, 216), "sunset": (240, 170, 110)}


def _paint_sky(scene: Scene, grid: Grid, pixels: np.ndarray) -> None:
    sky = ~grid.below_horizon
    blend(pixels, sky, vertical_gradient(grid, SKY_STOPS[scene.sky]))
    if scene.sun is not None:
        angle = angular_distance_deg(grid, *scene.sun)
        sun_colour = (255, 226, 120) if scene.sky == "sunset" else (255, 246, 200)
        glow = np.exp(-angle / 8.0)[..., None] * 0.6
        pixels[sky] = (pixels * (1 - glow) + np.array(sun_colour) * glow)[sky]
        radius = 4.5 if scene.sky == "sunset" else 3.0
        blend(pixels, sky & (angle <= radius), sun_colour)
    if scene.moon is not None:
        blend(pixels, sky & (angular_distance_deg(grid, *scene.moon) <= 4.0), (236, 236, 216))


def _paint_ground(scene: Scene, grid: Grid, pixels: np.ndarray) -> None:
    ground = grid.below_horizon
    distance = np.nan_to_num(grid.ground_distance, nan=1e6)
    near = np.array(GROUND_NEAR[scene.ground], dtype=np.float64)
    colours = np.broadcast_to(near, pixels.shape).copy()
    if scene.dunes:
        ripples = 1.0 + 0.14 * np.sin(grid.ground_z * 0.8 + 1.5 * np.sin(grid.ground_x * 0.3))
        colours *= np.nan_to_num(ripples, nan=1.0)[..., None]
    if scene.sea_azimuth is not None:
        direction = math.radians(scene.sea_azimuth)
        along = grid.ground_x * math.sin(direction) + grid.ground_z * math.cos(direction)
        along = np.nan_to_num(along, nan=-1e6)
        colours[along > 2.5] = (30, 100, 170)
        colours[(along > 2.5) & (along < 2.9)] = (236, 240, 240)  # foam where the waves reach the sand
    if scene.lake is not None:
        azimuth, centre_distance, radius = scene.lake
        centre_x = centre_distance * math.sin(math.radians(azimuth))
        centre_z = centre_distance * math.cos(math.radians(azimuth))
        in_lake = np.nan_to_num(np.hypot(grid.ground_x - centre_x, grid.ground_z - centre_z), nan=1e6) < radius
        colours[in_lake] = (50, 110, 180)
    if scene.road_azimuth is not None:
        direction = math.radians(scene.road_azimuth)
        lateral = np.abs(grid.ground_x * math.cos(direction) - grid.ground_z * math.sin(direction))
        along = grid.ground_x * math.sin(direction) + grid.ground_z * math.cos(direction)
        lateral, along = np.nan_to_num(lateral, nan=1e6), np.nan_to_num(along, nan=0.0)
        colours[(lateral >= 3.5) & (lateral < 5.5)] = (180, 178, 172)  # pavement for people on both sides
        colours[lateral < 3.5] = (64, 64, 68)
        dashes = (lateral < 0.12) & (np.mod(along, 6.0) < 3.0) & (np.abs(along) > 3.0)  # not under the camera
        colours[dashes] = (245, 245, 245)
    # Haze: far ground fades into the colour of the sky at the horizon.
    haze = np.array(HAZE.get(scene.sky, (40, 40, 60)), dtype=np.float64)
    fade = (distance / (distance + 120.0))[..., None] * 0.7
    blend(pixels, ground, colours * (1 - fade) + haze * fade)


def _paint_mountains(scene: Scene, grid: Grid, pixels: np.ndarray) -> None:
    # A ring of pointed peaks: each one a triangle over azimuth, the ridge the highest of them (plus foothills).
    theta = np.degrees(grid.theta[0])
    ridge = np.full_like(theta, 5.0)
    for index in range(9):
        centre = -180.0 + 40.0 * index + 12.0 * math.sin(index * 2.3)
        peak, half_width = 16.0 + 9.0 * abs(math.sin(index * 1.7)), 24.0
        offset = np.abs((theta - centre + 180.0) % 360.0 - 180.0)
        ridge = np.maximum(ridge, peak * (1.0 - offset / half_width))
    elevation = np.degrees(grid.phi)
    rock = (elevation >= 0) & (elevation <= ridge[None, :])
    shade = np.clip(elevation / 32.0, 0, 1)[..., None]
    rock_colour = np.array((96, 104, 120)) * (1 - shade) + np.array((130, 134, 148)) * shade
    blend(pixels, rock, rock_colour)
    snow_cap = rock & (elevation >= ridge[None, :] * 0.75) & (ridge[None, :] >= 12.0)
    blend(pixels, snow_cap, (246, 248, 252))


def _paint_stars(scene: Scene, grid: Grid, image: Image.Image, rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(image)
    for _ in range(scene.stars):
        x = float(rng.uniform(0, grid.width))
        y = float(rng.uniform(0, grid.height * 0.42))
        size = 1.0 if rng.uniform() < 0.8 else 1.8
        draw.ellipse((x - size / 2, y - size / 2, x + size / 2, y + size / 2), fill=(255, 255, 240))


def _paint_snowfall(grid: Grid, image: Image.Image, rng: np.random.Generator) -> None:
    """Flakes over everything, painted last so they also fall in front of trees and houses."""
    draw = ImageDraw.Draw(image)
    for _ in range(grid.width * grid.height // 250):
        x, y = float(rng.uniform(0, grid.width)), float(rng.uniform(0, grid.height))
        draw.ellipse((x - 1.2, y - 1.2, x + 1.2, y + 1.2), fill=(255, 255, 255))


def _paint_clouds(scene: Scene, grid: Grid, image: Image.Image, rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(image)
    for azimuth, elevation in scene.clouds:
        x, y = to_pixel(grid, azimuth, elevation)
        unit = grid.width / 60.0
        puffs = [(float(rng.uniform(-1.6, 1.6)) * unit, float(rng.uniform(-0.3, 0.3)) * unit) for _ in range(5)]
        for dx, dy in puffs:
            for shift in (-grid.width, 0, grid.width):
                cx, cy = x + dx + shift, y + dy
                draw.ellipse((cx - 1.1 * unit, cy - 0.55 * unit, cx + 1.1 * unit, cy + 0.55 * unit), fill="white")


def _paint_person(colour: RGB) -> Callable[[ImageDraw.ImageDraw, Box], None]:
    def paint(draw: ImageDraw.ImageDraw, box: Box) -> None:
        head = box.height * 0.13
        cx = box.centre_x
        draw.ellipse((cx - head / 2, box.top, cx + head / 2, box.top + head), fill=(224, 180, 140))
        draw.rectangle((box.left, box.top + head * 1.05, box.right, box.top + box.height * 0.55), fill=colour)
        leg = box.width * 0.18
        for x in (cx - box.width * 0.25, cx + box.width * 0.25 - leg):
            draw.rectangle((x, box.top + box.height * 0.55, x + leg, box.bottom), fill=(40, 44, 70))

    return paint


def _paint_house(colour: RGB, snowy: bool) -> Callable[[ImageDraw.ImageDraw, Box], None]:
    def paint(draw: ImageDraw.ImageDraw, box: Box) -> None:
        eaves = box.top + box.height * 0.35
        draw.rectangle((box.left, eaves, box.right, box.bottom), fill=colour)
        roof = (250, 250, 252) if snowy else (110, 50, 40)
        overhang = box.width * 0.06
        draw.polygon([(box.left - overhang, eaves), (box.centre_x, box.top), (box.right + overhang, eaves)], fill=roof)
        door_w, door_h = box.width * 0.16, box.height * 0.32
        draw.rectangle(
            (box.centre_x - door_w / 2, box.bottom - door_h, box.centre_x + door_w / 2, box.bottom), fill=(80, 50, 30)
        )
        window = box.width * 0.14
        for x in (box.left + box.width * 0.12, box.right - box.width * 0.12 - window):
            top = eaves + box.height * 0.12
            draw.rectangle((x, top, x + window, top + window), fill=(170, 210, 235), outline=(250, 250, 250))

    return paint


def _paint_building(rng: np.random.Generator) -> Callable[[ImageDraw.ImageDraw, Box], None]:
    grey = int(rng.integers(50, 90))
    lit = rng.uniform(size=(40, 12)) < 0.55  # fixed before painting so wrapped copies match

    def paint(draw: ImageDraw.ImageDraw, box: Box) -> None:
        draw.rectangle((box.left, box.top, box.right, box.bottom), fill=(grey, grey, grey + 10))
        columns = 5
        rows = max(3, int(box.height / (box.width / columns)))
        cell_w, cell_h = box.width / columns, box.height / rows
        for row in range(rows - 1):
            for column in range(columns):
                if lit[row % 40, column]:
                    x, y = box.left + column * cell_w, box.top + row * cell_h
                    draw.rectangle(
                        (x + cell_w * 0.25, y + cell_h * 0.3, x + cell_w * 0.75, y + cell_h * 0.75),
                        fill=(250, 214, 110),
                    )

    return paint


def _paint_tree(kind: str, snowy: bool) -> Callable[[ImageDraw.ImageDraw, Box], None]:
    def paint(draw: ImageDraw.ImageDraw, box: Box) -> None:
        trunk_w = box.width * 0.16
        cx = box.centre_x
        if kind == "pine":
            draw.rectangle(
                (cx - trunk_w / 2, box.bottom - box.height * 0.15, cx + trunk_w / 2, box.bottom), fill=(90, 60, 36)
            )
            for level in range(3):
                top = box.top + box.height * 0.25 * level
                bottom = top + box.height * 0.4
                half = box.width * (0.3 + 0.1 * level)
                draw.polygon([(cx, top), (cx - half, bottom), (cx + half, bottom)], fill=(28, 86, 48))
                if snowy:  # the top fifth of each layer is white: same slope, so a similar small triangle
                    draw.polygon(
                        [
                            (cx, top),
                            (cx - half / 5, top + (bottom - top) / 5),
                            (cx + half / 5, top + (bottom - top) / 5),
                        ],
                        fill=(250, 250, 252),
                    )
        else:
            draw.rectangle(
                (cx - trunk_w / 2, box.top + box.height * 0.55, cx + trunk_w / 2, box.bottom), fill=(100, 68, 40)
            )
            draw.ellipse((box.left, box.top, box.right, box.top + box.height * 0.7), fill=(40, 120, 50))

    return paint


def _paint_car(colour: RGB) -> Callable[[ImageDraw.ImageDraw, Box], None]:
    def paint(draw: ImageDraw.ImageDraw, box: Box) -> None:
        wheel = box.height * 0.28
        body_top = box.top + box.height * 0.45
        draw.rectangle((box.left + box.width * 0.18, box.top, box.right - box.width * 0.18, body_top), fill=colour)
        draw.rectangle(
            (
                box.left + box.width * 0.26,
                box.top + box.height * 0.08,
                box.right - box.width * 0.26,
                body_top - box.height * 0.04,
            ),
            fill=(150, 190, 215),
        )
        draw.rectangle((box.left, body_top, box.right, box.bottom - wheel * 0.5), fill=colour)
        for x in (box.left + box.width * 0.05, box.right - box.width * 0.05 - wheel):
            draw.ellipse((x, box.bottom - wheel, x + wheel, box.bottom), fill=(20, 20, 20))

    return paint


def render(scene: Scene) -> Image.Image:
    """The upright (display-orientation) panorama of a scene."""
    grid = make_grid(scene.width, scene.height)
    rng = np.random.default_rng(scene.seed)
    pixels = np.zeros((scene.height, scene.width, 3), dtype=np.float64)
    _paint_sky(scene, grid, pixels)
    _paint_ground(scene, grid, pixels)
    if scene.mountains:
        _paint_mountains(scene, grid, pixels)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    _paint_stars(scene, grid, image, rng)
    _paint_clouds(scene, grid, image, rng)

    snowy = scene.ground == "snow"
    # (distance, box, painter): painted far to near so nearer objects cover farther ones.
    objects: list[tuple[float, Box, Callable[[ImageDraw.ImageDraw, Box], None]]] = []
    for tree in scene.trees:
        size = (3.2, 8.0) if scene.tree_kind == "pine" else (4.5, 6.5)
        objects.append(
            (tree.distance, upright_box(grid, tree.azimuth, tree.distance, *size), _paint_tree(scene.tree_kind, snowy))
        )
    for house in scene.houses:
        box = upright_box(grid, house.azimuth, house.distance, 8.0, 6.5)
        objects.append((house.distance, box, _paint_house(COLOURS[house.colour], snowy)))
    for building in scene.buildings:
        height = 34.0 + 12.0 * ((building.azimuth // 36) % 3)
        box = upright_box(grid, building.azimuth, building.distance, 22.0, height)
        objects.append((building.distance, box, _paint_building(rng)))
    for car in scene.cars:
        objects.append(
            (car.distance, upright_box(grid, car.azimuth, car.distance, 1.9, 1.5), _paint_car(COLOURS[car.colour]))
        )
    for person in scene.people:
        box = upright_box(grid, person.azimuth, person.distance, 0.55, 1.75)
        objects.append((person.distance, box, _paint_person(COLOURS[person.colour])))
    draw = ImageDraw.Draw(image)
    for _, box, painter in sorted(objects, key=lambda item: -item[0]):
        draw_wrapped(grid, draw, box, painter)
    if scene.snowfall:
        _paint_snowfall(grid, image, rng)
    return image


def encode(scene: Scene, image: Image.Image) -> bytes:
    """The file bytes; an EXIF-rotated scene stores its pixels turned 90° counter-clockwise plus the tag that
    tells viewers (and PIL.ImageOps.exif_transpose) to turn them back."""
    buffer = io.BytesIO()
    if scene.image_format == "PNG":
        image.save(buffer, format="PNG", optimize=False, compress_level=9)
    elif scene.exif_rotated:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = EXIF_ROTATE_CLOCKWISE
        stored = image.transpose(Image.Transpose.ROTATE_90)
        stored.save(buffer, format="JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    else:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Captions: every sentence is built from the scene's parameters.


def number(count: int) -> str:
    return NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else str(count)


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    return f"{number(count)} {singular if count == 1 else (plural_form or singular + 's')}"


def join_words(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


def _colour_list(things: tuple[Thing, ...]) -> str:
    return join_words([f"{'an' if thing.colour[0] in 'aeiou' else 'a'} {thing.colour}" for thing in things])


def _sides_of_road(scene: Scene, things: tuple[Thing, ...]) -> tuple[int, int]:
    """How many of `things` stand right / left of the road (seen from the camera facing along the road)."""
    assert scene.road_azimuth is not None
    right = sum(1 for thing in things if math.sin(math.radians(thing.azimuth - scene.road_azimuth)) > 0)
    return right, len(things) - right


def _cloud_phrase(scene: Scene) -> str:
    if not scene.clouds:
        return "not a single cloud"
    return "a single small white cloud" if len(scene.clouds) == 1 else f"{number(len(scene.clouds))} small white clouds"


def _ground_words(scene: Scene) -> str:
    return {"sand": "sand", "snow": "snow", "grass": "green grass", "pavement": "paved ground"}[scene.ground]


def caption_weather(scene: Scene) -> list[str]:
    if scene.sky == "clear" and scene.sun is not None:
        return [
            f"It is a sunny day with a clear blue sky and {_cloud_phrase(scene)}.",
            "The weather is bright and sunny; the sun is high in a blue sky."
            + (" The snowy peaks are clearly visible." if scene.mountains else ""),
            f"Sunny and dry weather, with {_cloud_phrase(scene)} in the sky.",
            "A warm, clear day with plenty of sunshine and no rain.",
        ]
    if scene.sky == "overcast" and scene.snowfall:
        return [
            "It is snowing and the sky is grey and overcast.",
            "Cold winter weather: snowflakes are falling from a cloudy grey sky.",
            f"A snowy day; {_ground_words(scene)} covers the ground and more snow is falling.",
            "The sky is completely overcast and it is snowing, so there is no sunshine.",
        ]
    if scene.sky == "night":
        moon = " and a bright full moon" if scene.moon else ""
        return [
            f"A clear, calm night: the dark sky is full of stars{moon}.",
            "It is night time and the weather is clear, with no clouds at all.",
            "The sky is dark blue, almost black, with many small white stars.",
            "A cloudless night with stars" + (" and the moon shining above the buildings." if scene.buildings else "."),
        ]
    if scene.sky == "sunset":
        return [
            "The sun is setting and the sky glows orange and pink.",
            "Clear, dry weather at sunset with not a single cloud in the sky.",
            "A warm evening: the low sun sits just above the horizon.",
            "It is dusk and the weather is clear, with an orange sky.",
        ]
    raise ValueError(f"scene {scene.name!r}: no weather captions for sky {scene.sky!r}")


def caption_location(scene: Scene) -> list[str]:
    if scene.sea_azimuth is not None:
        return [
            "This is a sandy beach next to the sea on a sunny day.",
            f"A beach with the blue sea on one side and {plural(len(scene.people), 'person', 'people')} on the sand.",
            "The location is a seaside beach with sand, waves and a wide horizon.",
            "An outdoor beach where the sand meets the ocean under a blue sky.",
        ]
    if scene.buildings:
        return [
            f"A paved city square at night surrounded by {plural(len(scene.buildings), 'tall building')}.",
            "This is the middle of a city at night, with office buildings all around.",
            "An empty square in a city centre after dark, with lit windows in the buildings.",
        ]
    if scene.lake is not None:
        return [
            f"A green park with a lake and {plural(len(scene.trees), 'tree')} on a sunny day.",
            "This is a public park: grass all around, a round blue lake and leafy trees.",
            "An outdoor park next to a small lake under a blue sky.",
            f"A grassy park where {plural(len(scene.people), 'person', 'people')} stand near the trees.",
        ]
    if scene.dunes:
        return [
            "A sandy desert at sunset, with dunes all around.",
            "This is the middle of an empty desert as the sun goes down.",
            "The location is a desert of sand dunes far from any town or road.",
        ]
    raise ValueError(f"scene {scene.name!r}: no location captions")


def caption_people(scene: Scene) -> list[str]:
    if not scene.people:
        raise ValueError(f"scene {scene.name!r}: no people were drawn")
    count = len(scene.people)
    who = plural(count, "person", "people")
    shirts = join_words([person.colour for person in scene.people])
    where = {
        "sand": "on the sand",
        "grass": "on the grass",
        "snow": "in the snow",
        "pavement": "on the pavement",
    }[scene.ground]
    if scene.road_azimuth is not None:
        where = "on the pavements beside the road"
        right, left = _sides_of_road(scene, scene.people)
        sides = (
            "one on each side of the street"
            if right == left == 1
            else f"{number(right)} right and {number(left)} left of the road"
        )
        return [
            f"{capitalised(who)} are standing {where}.",
            f"There are {who}, {sides}.",
            f"{capitalised(who)} wearing {shirts} tops stand by the road.",
            f"Pedestrians in {shirts} wait on the pavements, nobody is on the road.",
        ]
    return [
        f"{capitalised(who)} are standing {where}.",
        f"There are {who} in the scene, wearing {shirts} tops.",
        f"{capitalised(who)} stand apart from each other {where}.",
        f"I can see {who} " + where + ", each in a different coloured shirt.",
    ]


def caption_sea(scene: Scene) -> list[str]:
    return [
        "The calm blue sea stretches all the way to the horizon.",
        "Blue sea water fills half of the view, with a line of white foam where it meets the sand.",
        "A wide, calm ocean beyond the beach.",
        "The sea is deep blue and flat, with small white waves at the shore.",
    ]


def caption_trees(scene: Scene) -> list[str]:
    count = len(scene.trees)
    if scene.tree_kind == "pine":
        snow = " with snow on their tips" if scene.ground == "snow" else ""
        return [
            f"{capitalised(plural(count, 'dark green pine tree'))} stand in the snow{snow}.",
            f"There are {plural(count, 'tall pointed evergreen tree')} around the village.",
            f"{capitalised(number(count))} pine trees are scattered between the houses.",
            f"Several conifers, {number(count)} in total, grow on the snowy ground.",
        ]
    return [
        f"{capitalised(plural(count, 'leafy green tree'))} grow on the grass.",
        f"There are {plural(count, 'tree')} with round green crowns and brown trunks.",
        f"{capitalised(number(count))} trees stand around the park, away from the lake.",
        "Green deciduous trees are spread around the grassy park.",
    ]


def caption_houses(scene: Scene) -> list[str]:
    count = len(scene.houses)
    colours = _colour_list(scene.houses)
    if scene.ground == "snow":
        return [
            f"{capitalised(plural(count, 'small house'))}, {colours} one, with snow on their roofs.",
            f"There is {colours} house, both with snow-covered roofs.",
            f"{capitalised(number(count))} houses with white snowy roofs stand among pine trees.",
        ]
    right, left = _sides_of_road(scene, scene.houses)
    return [
        f"{capitalised(plural(count, 'house'))} line the street: {colours} one.",
        f"There are {number(right)} houses on one side of the road and {number(left)} on the other.",
        f"Small houses with brown pointed roofs, painted {join_words([house.colour for house in scene.houses])}.",
        f"{capitalised(number(count))} colourful houses stand on the grass on both sides of the street.",
    ]


def caption_building(scene: Scene) -> list[str]:
    count = len(scene.buildings)
    return [
        f"{capitalised(plural(count, 'tall grey building'))} surround the square, many windows lit yellow.",
        "Dark office towers with rows of lit windows stand all around.",
        f"There are {number(count)} high-rise buildings with glowing windows at night.",
        "Tall rectangular city buildings, some windows lit and others dark.",
    ]


def caption_street(scene: Scene) -> list[str]:
    return [
        "A straight asphalt road with a dashed white centre line runs through the scene.",
        f"A quiet street with {plural(len(scene.houses), 'house')} and {plural(len(scene.cars), 'car')}.",
        "The grey road stretches in both directions to the horizon, with pavements on each side.",
        "A residential street on a sunny day, lined with grass and small houses.",
    ]


def caption_cars(scene: Scene) -> list[str]:
    count = len(scene.cars)
    return [
        f"{capitalised(plural(count, 'car'))} on the road: {_colour_list(scene.cars)} one.",
        f"There is {_colour_list(scene.cars)} car on the street, one in front of the camera and one behind it."
        if count == 2
        else f"There are {plural(count, 'car')} on the street.",
        f"{capitalised(number(count))} cars are on the asphalt road, one ahead and one behind.",
        f"The road has {plural(count, 'vehicle')}, {join_words([car.colour for car in scene.cars])}.",
    ]


def caption_lake(scene: Scene) -> list[str]:
    return [
        "A round blue lake lies in the middle of the green grass.",
        "There is a small calm lake in the park.",
        "The lake is blue and still, surrounded by grass.",
        "A pond of blue water in the park, a little way from the trees.",
    ]


def caption_mountains(scene: Scene) -> list[str]:
    return [
        "Grey mountains with snow-capped peaks surround the valley on every side.",
        "A range of rocky mountains, the highest peaks covered in snow.",
        "Snowy mountain tops rise all around the green valley.",
        "The mountains are grey and jagged, with white snow on their summits.",
    ]


def caption_landscape(scene: Scene) -> list[str]:
    if scene.mountains:
        return [
            "A wide green valley surrounded by snowy mountains under a blue sky.",
            "A mountain landscape: grassland in the middle and grey peaks all around.",
            "Open grassy land with no trees or buildings, ringed by mountains.",
        ]
    if scene.dunes:
        return [
            "A sandy desert with rippled dunes stretching to the horizon at sunset.",
            "An empty desert landscape: only sand, with no plants, people or buildings.",
            "Rippled sand dunes under an orange evening sky.",
            "Flat, dry desert land covered in sand as far as the eye can see.",
        ]
    raise ValueError(f"scene {scene.name!r}: no landscape captions")


CAPTIONERS: dict[str, Callable[[Scene], list[str]]] = {
    "weather": caption_weather,
    "location": caption_location,
    "people": caption_people,
    "sea": caption_sea,
    "trees": caption_trees,
    "houses": caption_houses,
    "building": caption_building,
    "street": caption_street,
    "cars": caption_cars,
    "lake": caption_lake,
    "mountains": caption_mountains,
    "landscape": caption_landscape,
}


def captions(scene: Scene) -> list[tuple[str, str, str]]:
    """(url, query, annotation) rows of one scene, url relative to the CSV's folder."""
    rows = []
    for query in scene.queries:
        for caption in CAPTIONERS[query](scene):
            rows.append((scene.file_name, query, caption))
    return rows


def csv_text(rows: list[tuple[str, str, str]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["url", "query", "annotation"])
    writer.writerows(rows)
    return buffer.getvalue()


def write_sample(out_dir: Path) -> list[Path]:
    """Write every scene's image and the CSV; returns the files written."""
    written = []
    rows: list[tuple[str, str, str]] = []
    for scene in SCENES:
        path = out_dir / scene.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(scene, render(scene)))
        written.append(path)
        rows.extend(captions(scene))
    csv_path = out_dir / CSV_NAME
    csv_path.write_text(csv_text(rows), encoding="utf-8", newline="")
    written.append(csv_path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.make_sample", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    written = write_sample(args.out)
    total = sum(path.stat().st_size for path in written)
    print(f"wrote {len(written) - 1} panoramas and {args.out / CSV_NAME} ({total / 1024:.0f} KiB in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
