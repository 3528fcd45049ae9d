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
    permission: str  # the page is listed (and runs) only for roles holding it; the engine checks each action

    @property
    def path(self) -> Path:
        return ROOT / self.script


PAGES = (
    PageSpec("pages/worklist.py", "Worklist", ":material/list_alt:", "worklist", "case.read"),
    PageSpec("pages/upload.py", "Upload", ":material/upload_file:", "upload", "case.upload"),
    PageSpec("pages/pacs.py", "PACS", ":material/lan:", "pacs", "pacs.query"),
    PageSpec("pages/viewer.py", "Viewer", ":material/radiology:", "viewer", "case.read"),
    PageSpec("pages/diagnosis.py", "Diagnosis", ":material/diagnosis:", "diagnosis", "case.analyse"),
    PageSpec("pages/segmentation.py", "Segmentation", ":material/donut_large:", "segmentation", "case.analyse"),
    PageSpec("pages/sequence.py", "Sequence", ":material/view_in_ar:", "sequence", "case.analyse"),
    PageSpec("pages/explainability.py", "Explainability", ":material/blur_on:", "explainability", "explain.audit"),
    PageSpec("pages/batch.py", "Batch", ":material/dataset:", "batch", "batch.run"),
    PageSpec("pages/training.py", "Training", ":material/monitoring:", "training", "job.submit"),
    PageSpec("pages/synthetic.py", "Synthetic data", ":material/auto_awesome:", "synthetic", "synthetic.generate"),
    PageSpec("pages/models.py", "Models", ":material/model_training:", "models", "model.compare"),
    PageSpec("pages/admin.py", "Admin", ":material/admin_panel_settings:", "admin", "user.manage"),
)


def page_path(url_path: str) -> str:
    """The absolute script path st.page_link / st.switch_page need for the page at `url_path`."""
    return str(next(p for p in PAGES if p.url_path == url_path).path)
