"""Where the sample guest images are: guests/ beside the hv package (a source checkout or an
editable install), else guests/ in the current directory."""

from __future__ import annotations

from pathlib import Path

__all__ = ["guest_image", "GUESTS_DIR"]

GUESTS_DIR = Path(__file__).resolve().parents[1] / "guests"


def guest_image(name: str) -> Path:
    """Path of guests/<name>.img; FileNotFoundError with a hint when it is not there."""
    for base in (GUESTS_DIR, Path.cwd() / "guests"):
        p = base / f"{name}.img"
        if p.is_file():
            return p
    raise FileNotFoundError(f"guest image {name}.img not found in {GUESTS_DIR} "
                            "(install hv from a source checkout with `pip install -e .`)")
