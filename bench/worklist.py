"""Worklist query time at 100,000 cases (seeded rows), for the queries the page issues.

Run: python -m bench.worklist   Target (issue #2): <= 100 ms per page query.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from bench.common import report, summary, timed
from engine.cases.worklist import WorklistQuery, facet_values, query_worklist
from engine.store import Store

N_CASES = 100_000
MODALITIES = ("CR", "CT", "MR", "US", "DX", "OT")
PARTS = ("CHEST", "HEAD", "ABDOMEN", "EXTREMITY", "PELVIS", "")
WORDS = ("THORAX", "PA", "LAT", "BRAIN", "AXIAL", "PORTABLE", "KNEE", "FOLLOW", "UP", "SCREENING")


def seed(store: Store, n: int) -> None:
    rng = random.Random(7)
    rows = [{
        "study_key": f"bench:{i}", "source": "bench", "modality": rng.choice(MODALITIES),
        "body_part": rng.choice(PARTS), "view_position": rng.choice(("PA", "AP", "")), "laterality": "",
        "study_description": " ".join(rng.sample(WORDS, 2)), "series_description": rng.choice(WORDS),
        "study_date": f"20{rng.randint(10, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "received_at": f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00",
        "image_count": 1, "burned_in_risk": rng.randint(0, 1),
    } for i in range(n)]
    with store.write() as db:
        db["cases"].insert_all(rows, batch_size=5000)


QUERIES = {
    "default_page_1": WorklistQuery(),
    "page_1000": WorklistQuery(page=1000),
    "modality_CT": WorklistQuery(modalities=("CT",)),
    "modality_and_part": WorklistQuery(modalities=("CR", "DX"), body_parts=("CHEST",)),
    "date_range": WorklistQuery(received_from="2026-03-01", received_to="2026-04-15"),
    "text_search": WorklistQuery(text="thor port"),
    "status_not_reviewed": WorklistQuery(status="Not reviewed"),
    "everything_sorted_by_study_date": WorklistQuery(modalities=("MR",), sort="Study date (newest)", text="axial"),
}


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        store = Store(Path(home) / "radlens.db")
        store.migrate()
        seed(store, N_CASES)
        figures = {name: {**summary(timed(lambda q=q: query_worklist(store, q), 21)),
                          "total": query_worklist(store, q).total} for name, q in QUERIES.items()}
        facets = lambda: (facet_values(store, "modality"), facet_values(store, "body_part"))  # noqa: E731
        figures["facets"] = summary(timed(facets, 21))
    report("worklist", {"cases": N_CASES, "target_ms": 100, "queries": figures})


if __name__ == "__main__":
    main()
