"""The pages of the dashboard, in sidebar order. The README test checks each title is documented."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["PageSpec", "PAGES", "ROOT", "page_path"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PageSpec:
    script: str  # path from the repository root
    title: str
    icon: str
    url_path: str

    @property
    def path(self) -> Path:
        return ROOT / self.script


PAGES = (
    PageSpec("pages/worklist.py", "Worklist", ":material/list_alt:", "worklist"),
    PageSpec("pages/upload.py", "Upload", ":material/upload_file:", "upload"),
    PageSpec("pages/viewer.py", "Viewer", ":material/radiology:", "viewer"),
    PageSpec("pages/diagnosis.py", "Diagnosis", ":material/diagnosis:", "diagnosis"),
    PageSpec("pages/segmentation.py", "Segmentation", ":material/donut_large:", "segmentation"),
    PageSpec("pages/explainability.py", "Explainability", ":material/blur_on:", "explainability"),
    PageSpec("pages/training.py", "Training", ":material/monitoring:", "training"),
    PageSpec("pages/models.py", "Models", ":material/model_training:", "models"),
)


def page_path(url_path: str) -> str:
    """The absolute script path st.page_link / st.switch_page need for the page at `url_path`."""
    return str(next(p for p in PAGES if p.url_path == url_path).path)
