"""A parametric 3-D mouth, ray-cast under orthographic projection from any yaw angle.

Geometry (head frame: x to the image right in the frontal view, y up, z towards the
frontal camera; lengths in units of half the crop height). Along every row y the face
is the parabola ``z = a_face(y) - x**2 / (2 R)`` and the lips are a bump on it,
``z = a_lip(y) - b_lip(y) x**2``: protrusion `p` at the centre falling to the face at the
corners ``x = +-w_row(y) / 2``, where `w_row` follows an ellipse around the opening (so the
lip outline is a 3-D curve). A camera at yaw `theta` casts rays along
``d = (sin theta, 0, cos theta)``; a ray stays in its row, so its first hit with each
parabola's solid is the larger root of a quadratic, solved for all pixels at once. The
mouth opening (an ellipse in x, y) is cut out of the lips; through it a ray reaches the
back of the mouth (a plane `CAVITY_DEPTH` behind the lips) with the teeth and the tongue.

What each view can see is the point of the generator (see `mplstm.core.synth`):
- the inside of the mouth (tongue, teeth, teeth gaps) is scaled by `frontal_visibility`,
  1 up to 30 degrees of yaw, 0 from 42 degrees (the lips occlude it);
- lip protrusion and the lip/chin profile are scaled by `profile_visibility`, 0 up to 55
  degrees, 1 from 75 degrees (they only show as the silhouette leaving the cheek line;
  under orthographic projection a frontal camera cannot see depth, and the gate removes
  the small shading and parallax cues in between);
- opening, width, head motion, lighting and skin are seen by every view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mplstm.core.synth.speakers import TEETH_SHADE, Speaker

LIP_REST = 0.12  # lips stand this far in front of the face at rest
CAVITY_DEPTH = 0.25  # back of the mouth behind the lips
CROP_CENTRE_Z = 0.15  # cameras are centred on this depth, near the front of the lips
INNER_WIDTH = 0.86  # mouth opening width as a fraction of the lip width

# Materials; the first three take their colours from the clip and the speaker.
_BACKGROUND, _SKIN, _LIP, _CAVITY, _TONGUE, _TEETH = range(6)
_COLOURS = np.array(
    [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0.16, 0.05, 0.06], [0.78, 0.38, 0.4], [0.93, 0.9, 0.82]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class MouthTrack:
    """The mouth and head over the T frames one camera sees (each array has length T)."""

    opening: np.ndarray  # height of the opening between the lips
    width: np.ndarray  # multiplier on the speaker's mouth width
    protrusion: np.ndarray  # lip protrusion beyond rest
    tongue: np.ndarray  # tongue raise, 0..1
    teeth: np.ndarray  # teeth exposure, 0..1
    yaw: np.ndarray  # head yaw (degrees) added to the camera's yaw
    roll: np.ndarray  # in-plane rotation (radians)
    shift: np.ndarray  # [T, 2] translation in the image plane (u, v)
    scale: np.ndarray  # zoom


@dataclass(frozen=True)
class Lighting:
    """One clip's light (head frame) and one camera's response."""

    direction: tuple[float, float, float]  # unit vector towards the light
    ambient: float
    gain: float
    tint: tuple[float, float, float]
    background: tuple[float, float, float]


def frontal_visibility(yaw_deg: float) -> float:
    """How much of the inside of the mouth a camera at this yaw sees (1 frontal, 0 beyond 42)."""
    return float(_smoothstep((42.0 - abs(yaw_deg)) / 12.0))


def profile_visibility(yaw_deg: float) -> float:
    """How much of the lips' depth profile a camera at this yaw sees (0 frontal, 1 beyond 75)."""
    return float(_smoothstep((abs(yaw_deg) - 55.0) / 20.0))


@dataclass(frozen=True)
class _Rays:
    """Each pixel's ray in the head frame, per frame (arrays broadcast to [T, H, W])."""

    v_img: np.ndarray  # [1, H, 1] image row coordinate, 1 at the top
    theta: np.ndarray  # [T, 1, 1] camera yaw including the head's (radians)
    ct: np.ndarray  # cos theta
    st: np.ndarray  # sin theta
    u: np.ndarray  # the ray's offset across its row
    y: np.ndarray  # the ray's row (height in the head frame)


@dataclass(frozen=True)
class _Hit:
    """Where each ray first meets the face or the lips (arrays broadcast to [T, H, W])."""

    x: np.ndarray  # head-frame coordinates of the hit
    z: np.ndarray
    b: np.ndarray  # curvature of the parabola hit
    on_lip: np.ndarray  # the ray hits the lips, not the face
    missed: np.ndarray  # the ray hits nothing (background)
    h: np.ndarray  # [T, 1, 1] height of the opening
    w: np.ndarray  # [T, 1, 1] lip width
    half: np.ndarray  # half-height of the lips' ellipse in the row (upper or lower lip)
    sqrt_e: np.ndarray  # lip bump profile along the row's height, 1 at the centre


def render(
    spk: Speaker,
    track: MouthTrack,
    view_yaw: float,
    lighting: Lighting,
    size: tuple[int, int] = (64, 64),
    *,
    rng: np.random.Generator | None = None,
    noise_sigma: float = 0.03,
) -> np.ndarray:
    """Render the frames [T, H, W, 3] uint8 a camera at `view_yaw` degrees sees.

    `rng` adds sensor noise (`noise_sigma` of the brightness); without it the frames are
    a noiseless function of the inputs.
    """
    f32 = np.float32
    vis_in, vis_pr = frontal_visibility(view_yaw), profile_visibility(view_yaw)
    rays = _rays(track, view_yaw, size)
    hit = _trace(spk, track, vis_pr, rays)
    shade = _shade(lighting, rays, hit)
    material, brightness = _materials(spk, track, vis_in, rays, hit, shade)
    if rng is not None:
        brightness += rng.standard_normal(brightness.shape, dtype=f32) * f32(noise_sigma)
    palette = _palette(spk, lighting, vis_in)
    image = palette[material] * brightness[..., None]
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _col(values: np.ndarray, n: int) -> np.ndarray:
    """Per-frame values as a float32 [n, 1, 1] column."""
    return np.asarray(values, dtype=np.float32).reshape(n, 1, 1)


def _rays(track: MouthTrack, view_yaw: float, size: tuple[int, int]) -> _Rays:
    """Each pixel's ray after the camera's yaw and the head's roll, zoom and shift."""
    f32 = np.float32
    height, width = size
    n = len(track.opening)
    v_img = (1 - (np.arange(height, dtype=f32) + 0.5) * 2 / height)[None, :, None]
    u_img = (((np.arange(width, dtype=f32) + 0.5) * 2 / width - 1) * (width / height))[
        None, None, :
    ]
    theta = np.radians(_col(view_yaw + np.asarray(track.yaw), n))
    ct, st = np.cos(theta), np.sin(theta)
    roll, scale = _col(track.roll, n), _col(track.scale, n)
    shift = np.asarray(track.shift, dtype=f32)
    cr, sr = np.cos(roll), np.sin(roll)
    u = (cr * u_img - sr * v_img) / scale + _col(shift[:, 0], n) - CROP_CENTRE_Z * st
    y = (sr * u_img + cr * v_img) / scale + _col(shift[:, 1], n)
    return _Rays(v_img=v_img, theta=theta, ct=ct, st=st, u=u, y=y)


def _trace(spk: Speaker, track: MouthTrack, vis_pr: float, rays: _Rays) -> _Hit:
    """Row geometry: the lip bump of each row and the face under it, and each ray's first hit."""
    f32 = np.float32
    n = len(track.opening)
    u, y, ct, st = rays.u, rays.y, rays.ct, rays.st
    upper_extra, lower_extra, chin = (vis_pr * v for v in spk.profile)
    h = _col(track.opening, n)
    w = _col(track.width, n) * f32(spk.mouth_width)
    p = LIP_REST + vis_pr * _col(track.protrusion, n)
    upper = y >= 0
    half = np.where(upper, h / 2 + spk.upper_lip, h / 2 + spk.lower_lip)
    e = np.clip(1 - (y / half) ** 2, 0, 1)
    sqrt_e = np.sqrt(e)
    bump = (p + np.where(upper, f32(upper_extra), f32(lower_extra))) * sqrt_e
    b_face = f32(1 / (2 * spk.face_radius))
    a_face = f32(0)
    if chin:
        a_face = f32(chin) * _smoothstep((-(h / 2 + spk.lower_lip) - 0.05 - y) / 0.25)
    b_lip = b_face + 4 * bump / np.maximum(w * w * e, 1e-6)
    s_face, hit_face = _entry(a_face, b_face, u, ct, st)
    s_lip, hit_lip = _entry(a_face + bump, b_lip, u, ct, st)
    on_lip = hit_lip & (bump > 0) & (s_lip > s_face + 1e-5)
    missed = ~(hit_face | hit_lip)
    s = np.where(on_lip, s_lip, np.where(missed, 0, s_face))
    b = np.where(on_lip, b_lip, b_face)
    x = u * ct + s * st
    z = -u * st + s * ct
    return _Hit(x=x, z=z, b=b, on_lip=on_lip, missed=missed, h=h, w=w, half=half, sqrt_e=sqrt_e)


def _shade(lighting: Lighting, rays: _Rays, hit: _Hit) -> np.ndarray:
    """Lambert shading; the lips' normals tilt up (upper lip) and down (lower lip)."""
    tilt = np.where(hit.on_lip, 0.6 * rays.y / hit.half, 0)
    nx = 2 * hit.b * hit.x
    lx, ly, lz = lighting.direction
    lambert = (nx * lx + tilt * ly + lz) / np.sqrt(nx * nx + tilt * tilt + 1)
    return lighting.ambient + (1 - lighting.ambient) * np.clip(lambert, 0, 1)


def _materials(
    spk: Speaker, track: MouthTrack, vis_in: float, rays: _Rays, hit: _Hit, shade: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One material and one brightness per pixel, coloured at the end (3x less work)."""
    x, y = hit.x, rays.y
    texture = sum(a * np.sin(kx * x + ky * y + ph) for kx, ky, ph, a in spk.texture)
    brightness = shade * np.where(hit.on_lip, 0.85 + 0.15 * hit.sqrt_e, 1 + texture)
    material = hit.on_lip.astype(np.uint8) + np.uint8(_SKIN)  # _LIP == _SKIN + 1
    opening = hit.on_lip & ((2 * x / (INNER_WIDTH * hit.w)) ** 2 + (2 * y / hit.h) ** 2 < 1)
    if vis_in > 0:
        material[opening] = _inside(spk, track, x, y, hit.z, hit.w, rays.theta, opening)
    else:
        material[opening] = _CAVITY
    brightness = np.where(opening, 0.5 + 0.5 * shade, brightness)
    material[hit.missed] = _BACKGROUND
    brightness = np.where(hit.missed, 1 + 0.15 * rays.v_img, brightness)
    return material, brightness


def _palette(spk: Speaker, lighting: Lighting, vis_in: float) -> np.ndarray:
    """The colour of each material under this clip's light and this camera's response."""
    f32 = np.float32
    palette = np.empty((len(_COLOURS), 3), dtype=f32)
    palette[_BACKGROUND] = lighting.background
    palette[_SKIN], palette[_LIP] = spk.skin, spk.lip
    # The inside of the mouth fades to the cavity's colour as the lips occlude it.
    colours = _COLOURS
    if spk.teeth_shade != TEETH_SHADE:  # generator 3's per-speaker shade (frontal trait)
        colours = _COLOURS.copy()
        colours[_TEETH] *= np.float32(spk.teeth_shade / TEETH_SHADE)
    palette[_CAVITY:] = colours[_CAVITY] + vis_in * (colours[_CAVITY:] - colours[_CAVITY])
    palette *= f32(lighting.gain) * np.asarray(lighting.tint, f32) * 255
    return palette


def _inside(
    spk: Speaker,
    track: MouthTrack,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    w: np.ndarray,
    theta: np.ndarray,
    opening: np.ndarray,
) -> np.ndarray:
    """Material seen through the opening pixels: tongue and teeth on the back of the mouth."""
    frame = np.nonzero(opening)[0]
    x, y, z = x[opening], y[opening], z[opening]
    tongue = np.asarray(track.tongue, dtype=np.float32)[frame]
    teeth = np.asarray(track.teeth, dtype=np.float32)[frame]
    w = np.broadcast_to(w, opening.shape)[opening]
    tan = np.clip(np.tan(theta.reshape(-1)[frame]), -4, 4)
    # Follow the ray past the lips to the back plane; oblique views see the side walls.
    xr = (x - (z + CAVITY_DEPTH) * tan) / w
    in_tongue = (xr / 0.3) ** 2 + ((y + 0.17 - 0.3 * tongue) / 0.14) ** 2 < 1
    upper_teeth = (y > 0.05 - 0.1 * teeth) & (np.abs(xr) < 0.34)
    for gap, half_width in spk.teeth_gaps:
        upper_teeth &= np.abs(xr - gap) > half_width
    lower_teeth = (y < -0.13 + 0.08 * teeth) & (np.abs(xr) < 0.3)
    material = np.where(in_tongue, _TONGUE, _CAVITY)
    material = np.where(upper_teeth | lower_teeth, _TEETH, material)
    return np.where(np.abs(xr) > 0.42, _CAVITY, material)


def _entry(
    a: np.ndarray, b: np.ndarray, u: np.ndarray, ct: np.ndarray, st: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Depth along the ray where it enters the solid z <= a - b x^2 (-inf and False on a miss).

    On the ray x = u cos + s sin, z = -u sin + s cos, the surface is A s^2 + B s + C = 0; the
    camera is at s = +inf, so the entry is the larger root.
    """
    qa = b * st * st
    qb = ct * (1 + 2 * b * u * st)
    qc = b * u * u * ct * ct - u * st - a
    disc = qb * qb - 4 * qa * qc
    hit = disc >= 0
    root = np.sqrt(np.maximum(disc, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        # The two forms of the same root; each is the stable one for its sign of B.
        s = np.where(qb > 0, 2 * qc / (-qb - root), (-qb + root) / (2 * qa))
    return np.where(hit, s, -np.inf), hit


def _smoothstep(t: np.ndarray | float) -> np.ndarray | float:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)
