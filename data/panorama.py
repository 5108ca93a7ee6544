"""Drawing on an equirectangular panorama with a level camera, so generated scenes have true 360° geometry.

Pixel (x, y) of a W x H panorama looks at azimuth ``theta`` (-pi at x=0 .. +pi at x=W, 0 straight ahead at the
centre) and elevation ``phi`` (+pi/2 at the top, 0 on the horizon row H/2, -pi/2 at the bottom). The camera stands
``CAMERA_HEIGHT`` metres above a flat ground plane, so ground features (a shoreline, a road, a lake) are computed
per pixel from where that pixel's ray meets the ground, and upright objects (trees, houses, people) are drawn as the
angular box their real size covers at their distance. Everything that crosses the left/right seam wraps around.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

CAMERA_HEIGHT = 1.6  # metres, eye height of a person holding the camera

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Grid:
    """Per-pixel viewing angles and ground-plane coordinates of a W x H panorama."""

    width: int
    height: int
    theta: np.ndarray  # (H, W) azimuth in radians
    phi: np.ndarray  # (H, W) elevation in radians
    below_horizon: np.ndarray  # (H, W) bool: the ray meets the ground
    ground_x: np.ndarray  # (H, W) metres to the right of the camera (NaN above the horizon)
    ground_z: np.ndarray  # (H, W) metres ahead of the camera (NaN above the horizon)

    @property
    def ground_distance(self) -> np.ndarray:
        return np.hypot(self.ground_x, self.ground_z)


def make_grid(width: int, height: int) -> Grid:
    theta_row = ((np.arange(width) + 0.5) / width * 2.0 - 1.0) * math.pi
    phi_col = (0.5 - (np.arange(height) + 0.5) / height) * math.pi
    theta, phi = np.meshgrid(theta_row, phi_col)
    below = phi < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where(below, CAMERA_HEIGHT / np.tan(-phi), np.nan)
    return Grid(
        width=width,
        height=height,
        theta=theta,
        phi=phi,
        below_horizon=below,
        ground_x=distance * np.sin(theta),
        ground_z=distance * np.cos(theta),
    )


def vertical_gradient(grid: Grid, stops: list[tuple[float, RGB]]) -> np.ndarray:
    """(H, W, 3) float colours interpolated over elevation; stops are (elevation in degrees, colour)."""
    degrees = np.degrees(grid.phi[:, 0])
    positions = [position for position, _ in stops]
    channels = [np.interp(degrees, positions, [colour[c] for _, colour in stops]) for c in range(3)]
    column = np.stack(channels, axis=-1)  # (H, 3)
    return np.repeat(column[:, None, :], grid.width, axis=1)


def to_pixel(grid: Grid, azimuth_deg: float, elevation_deg: float) -> tuple[float, float]:
    x = (azimuth_deg / 360.0 + 0.5) * grid.width
    y = (0.5 - elevation_deg / 180.0) * grid.height
    return x, y


@dataclass(frozen=True)
class Box:
    """The angular box, in pixels, that an upright object covers: left/right/top/bottom and its base width."""

    left: float
    right: float
    top: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def centre_x(self) -> float:
        return (self.left + self.right) / 2


def upright_box(grid: Grid, azimuth_deg: float, distance: float, width: float, height: float) -> Box:
    """Pixel box of an object `width` x `height` metres standing on the ground `distance` metres away."""
    half_angle = math.degrees(math.atan2(width / 2, distance))
    top_elevation = math.degrees(math.atan2(height - CAMERA_HEIGHT, distance))
    bottom_elevation = math.degrees(math.atan2(-CAMERA_HEIGHT, distance))
    left, top = to_pixel(grid, azimuth_deg - half_angle, top_elevation)
    right, bottom = to_pixel(grid, azimuth_deg + half_angle, bottom_elevation)
    return Box(left, right, top, bottom)


def draw_wrapped(grid: Grid, draw: ImageDraw.ImageDraw, box: Box, painter: Callable[[ImageDraw.ImageDraw, Box], None]):
    """Paint at the box and at its copies one panorama-width left and right, so objects wrap across the seam."""
    for shift in (-grid.width, 0, grid.width):
        if box.right + shift >= 0 and box.left + shift <= grid.width:
            painter(draw, Box(box.left + shift, box.right + shift, box.top, box.bottom))


def blend(pixels: np.ndarray, mask: np.ndarray, colour: RGB | np.ndarray, opacity: float = 1.0) -> None:
    """Paint `colour` over `pixels` where `mask` is true (in place)."""
    colour_array = np.asarray(colour, dtype=np.float64)
    pixels[mask] = (
        pixels[mask] * (1.0 - opacity) + (colour_array[mask] if colour_array.ndim == 3 else colour_array) * opacity
    )


def angular_distance_deg(grid: Grid, azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Great-circle angle from each pixel's ray to a direction: a sun or moon drawn with it stays round."""
    theta0, phi0 = math.radians(azimuth_deg), math.radians(elevation_deg)
    cos_angle = np.sin(grid.phi) * math.sin(phi0) + np.cos(grid.phi) * math.cos(phi0) * np.cos(grid.theta - theta0)
    return np.degrees(np.arccos(np.clip(cos_angle, -1.0, 1.0)))
