"""sRGB <-> CIELAB (D65, 2 degree observer) conversions in numpy.

Written out here so the Equity Engine and the synthetic generator share one exact definition
without depending on scikit-image.
"""

import numpy as np

_RGB_TO_XYZ = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_EPSILON = (6 / 29) ** 3


def _linearise(values: np.ndarray) -> np.ndarray:
    return np.where(values > 0.04045, ((values + 0.055) / 1.055) ** 2.4, values / 12.92)


# uint8 input has 256 possible values: a table gives the same numbers as the formula, ~5x faster.
_LINEAR_U8 = _linearise(np.arange(256, dtype=np.float64) / 255.0)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 (or 0..1 float) sRGB of shape (..., 3) to float CIELAB (L* 0..100)."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        linear = _LINEAR_U8[rgb]
    elif np.issubdtype(rgb.dtype, np.integer):
        linear = _linearise(rgb.astype(np.float64) / 255.0)
    else:
        linear = _linearise(rgb.astype(np.float64))
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE_D65
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lightness = 116 * f[..., 1] - 16
    a_star = 500 * (f[..., 0] - f[..., 1])
    b_star = 200 * (f[..., 1] - f[..., 2])
    return np.stack([lightness, a_star, b_star], axis=-1)


# Y and Z contributions of each uint8 channel value: the Y and Z rows of the matrix above
# applied through the table, so L* and b* cost three lookups and two adds per pixel.
_Y_U8 = _LINEAR_U8[:, None] * (_RGB_TO_XYZ[1] / _WHITE_D65[1])
_Z_U8 = _LINEAR_U8[:, None] * (_RGB_TO_XYZ[2] / _WHITE_D65[2])


def _f(t: np.ndarray) -> np.ndarray:
    return np.where(t > _EPSILON, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)


def lightness_and_b_star(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L* and b* of uint8 sRGB pixels (..., 3): what ITA needs, without a* (same numbers as
    ``srgb_to_lab`` up to the last bits of float rounding)."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    f_y = _f(_Y_U8[r, 0] + _Y_U8[g, 1] + _Y_U8[b, 2])
    f_z = _f(_Z_U8[r, 0] + _Z_U8[g, 1] + _Z_U8[b, 2])
    return 116 * f_y - 16, 200 * (f_y - f_z)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB of shape (..., 3) to sRGB floats in 0..1 (out-of-gamut values clipped)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16) / 116
    fx = fy + lab[..., 1] / 500
    fz = fy - lab[..., 2] / 200
    f = np.stack([fx, fy, fz], axis=-1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * _WHITE_D65
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)
    return np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)
