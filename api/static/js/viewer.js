/* The segmentation viewer: submitted photo, mask layer, outline/fill mode and opacity. */

import { $ } from "./dom.js";

function setImage(img, url) {
  if (url) {
    // Presigned URLs change on every poll; keep the loaded picture unless the object changed.
    const base = url.split("?")[0];
    if (img.dataset.base !== base) {
      img.dataset.base = base;
      img.src = url;
    }
    img.hidden = false;
  } else {
    img.hidden = true;
    img.removeAttribute("src");
    delete img.dataset.base;
  }
}

export function renderImages(analysis) {
  const artifacts = analysis.artifacts || {};
  setImage($("original"), artifacts.image);
  setImage($("mask-layer"), artifacts.mask);
  const link = $("overlay-link");
  if (artifacts.overlay) {
    link.href = artifacts.overlay;
    link.hidden = false;
  } else {
    link.hidden = true;
  }
}

function setOverlayMode(mode) {
  $("viewer-stage").dataset.mode = mode;
  for (const id of ["overlay-outline", "overlay-fill"]) {
    const button = $(id);
    button.setAttribute("aria-checked", String(button.dataset.mode === mode));
  }
  $("viewer-caption").firstChild.textContent = mode === "outline"
    ? "Submitted photo with the segmented lesion outlined. "
    : "Submitted photo with the segmented lesion filled. ";
}

function setOverlayOpacity(percent) {
  $("mask-layer").style.opacity = String(percent / 100);
  $("overlay-opacity-value").textContent = `${percent}%`;
}

export function bindViewer() {
  for (const id of ["overlay-outline", "overlay-fill"]) {
    $(id).addEventListener("click", () => setOverlayMode($(id).dataset.mode));
  }
  $("overlay-opacity").addEventListener("input", () => setOverlayOpacity(Number($("overlay-opacity").value)));
  setOverlayMode("outline");
  setOverlayOpacity(Number($("overlay-opacity").value));
}
