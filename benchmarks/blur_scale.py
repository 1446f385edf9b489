"""The blur score's scale: full-resolution (before issue 27) vs the fixed working size, full vs
DCT-reduced decode, for the same scenes photographed at several resolutions.

    .venv/bin/python -m benchmarks.blur_scale

Each scene is a synthetic lesion (``worker.pipeline.synthetic``) rendered once at 4096 x 3072
with an optical blur (Gaussian sigma given in 1024-pixel units, i.e. 4x that at 4096), then
area-averaged down to 2048 x 1536 and 1024 x 768 (what a camera with fewer pixels records of the
same scene), each encoded as JPEG q92. Printed per scene and resolution: the old score
(Laplacian variance of the whole decoded image), the new score (at ``BLUR_WORKING_SIDE``) on the
full decode and on the DCT-reduced decode that ``DECODE_REDUCED`` makes at default sizes, and
whether each is under the threshold (``BLUR_THRESHOLD``).
"""

from __future__ import annotations

import cv2
import numpy as np

from shared.clinical import BLUR_THRESHOLD
from worker.pipeline.decode import decode_upright
from worker.pipeline.quality import BLUR_WORKING_SIDE, blur_score
from worker.pipeline.synthetic import encode_jpeg, make_lesion

SIZES = ((768, 1024), (1536, 2048), (3072, 4096))
SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0)  # in pixels of the 1024-wide rendering
KEEP = (512, 1024)  # DECODE_REDUCED's keep at default sizes: (network, max(network, artifact side))


def _old_score(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def main() -> None:
    print(f"threshold {BLUR_THRESHOLD:g}; working side {BLUR_WORKING_SIDE}; scores old | new full | new reduced "
          "(* = under the threshold: rejected blurry)")
    print(f"{'scene':<22}" + "".join(f"{f'{w}x{h}':>34}" for h, w in SIZES))
    for seed, hair in ((1, False), (2, True)):
        for sigma in SIGMAS:
            cells = []
            height, width = SIZES[-1]
            scene = make_lesion(seed, (height, width), radius_frac=0.2, irregularity=0.4, variegation=0.5,
                                hair=hair, blur=sigma * width / 1024).image
            for height, width in SIZES:
                data = encode_jpeg(cv2.resize(scene, (width, height), interpolation=cv2.INTER_AREA))
                full, _ = decode_upright(data, 40_000_000)
                reduced, _ = decode_upright(data, 40_000_000, KEEP)
                scores = (_old_score(full), blur_score(full), blur_score(reduced))
                cells.append(" ".join(f"{s:9.1f}{'*' if s < BLUR_THRESHOLD else ' '}" for s in scores))
            print(f"{f'seed {seed} hair {int(hair)} sigma {sigma:g}':<22}" + "".join(f"{c:>34}" for c in cells),
                  flush=True)


if __name__ == "__main__":
    main()
