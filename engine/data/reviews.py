"""Clinician reviews as training data: the latest review of each case that gives a label.

"agree" takes the reviewed prediction's label, "corrected" the label the reviewer chose. A "disagree"
without a corrected label says what the image is not, not what it is, so it is left out, as is a review
superseded by a later one of the same case. A reviewed image that is the same film as a validation or
test image of the base dataset (the demo's cases are test films) is left out too: training on it would
make the held-out comparison with the active model meaningless.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.context import Context
from engine.data.loaders import ImageSet, Splits, gray_of_file
from engine.errors import DatasetError
from engine.models.preprocess import Preprocessing
from engine.store import Store

__all__ = ["ReviewedImage", "reviewed_images", "usable_review_ids", "add_reviews", "SAME_FILM_DISTANCE"]

# Mean absolute difference (0-1 scale) of two images at 32x32 below which they are the same film. The same
# film at another resolution or JPEG quality scores < 0.01 here; two different chest films score > 0.05.
SAME_FILM_DISTANCE = 0.02
_COMPARE_SIDE = 32

_LATEST_REVIEWS = """
SELECT r.id AS review_id, r.case_id, r.verdict, r.label AS corrected,
       coalesce((SELECT p.label FROM predictions p WHERE p.id = r.prediction_id),
                (SELECT p.label FROM predictions p WHERE p.case_id = r.case_id AND p.created_at <= r.created_at
                 ORDER BY p.id DESC LIMIT 1)) AS predicted,
       (SELECT max(id) FROM reviews s WHERE s.case_id = r.case_id) AS latest_id,
       i.id AS image_id, i.path, coalesce(r.actor, r.reviewer) AS reviewer
FROM reviews r JOIN images i ON i.id = (SELECT min(id) FROM images j WHERE j.case_id = r.case_id)
ORDER BY r.id
"""


@dataclass(frozen=True)
class ReviewedImage:
    review_id: int
    case_id: int
    image_id: int
    path: str  # the de-identified file, relative to RADLENS_HOME
    label: str
    reviewer: str  # the authenticated id of who reviewed it (local:alice, sub@issuer)


def reviewed_images(store: Store, labels: list[str], ids: Iterable[int] | None = None
                    ) -> tuple[list[ReviewedImage], dict[int, str]]:
    """(usable reviews, {review id: why it is left out}), restricted to `ids` when given."""
    wanted = set(ids) if ids is not None else None
    with store.read() as db:
        rows = [r for r in db.query(_LATEST_REVIEWS) if wanted is None or r["review_id"] in wanted]
    usable, left_out = [], {}
    for r in rows:
        label = r["corrected"] if r["verdict"] == "corrected" else r["predicted"] if r["verdict"] == "agree" else None
        if r["review_id"] != r["latest_id"]:
            reason = f"superseded by review {r['latest_id']} of case {r['case_id']}"
        elif label is None:
            reason = "a disagreement without a corrected label" if r["verdict"] == "disagree" else "no label"
        elif label not in labels:
            reason = f"label {label!r} is not one of {', '.join(labels)}"
        else:
            usable.append(ReviewedImage(r["review_id"], r["case_id"], r["image_id"], r["path"], label,
                                        r["reviewer"] or ""))
            continue
        left_out[r["review_id"]] = reason
    if wanted is not None:
        left_out.update({i: "no such review" for i in wanted - {r["review_id"] for r in rows}})
    return usable, left_out


def usable_review_ids(store: Store, labels: list[str]) -> list[int]:
    return [r.review_id for r in reviewed_images(store, labels)[0]]


def _thumbs(images: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(images, _COMPARE_SIDE).flatten(1)


def add_reviews(splits: Splits, ctx: Context, ids: Iterable[int], prep: Preprocessing,
                with_base_train: bool) -> dict:
    """Put the usable reviewed images into splits' training set (replacing it unless with_base_train);
    returns the card's record of exactly which reviews were used and which were left out, and why."""
    reviewed, left_out = reviewed_images(ctx.store, splits.label_names, ids)
    images = torch.stack([prep.resize_uint8(gray_of_file(ctx.config.home / r.path)) for r in reviewed]) if reviewed \
        else torch.zeros((0, 1, *prep.shape))
    held_out = {split: splits.sets[split] for split in ("val", "test") if split in splits.sets}
    keep = torch.ones(len(reviewed), dtype=torch.bool)
    for split, data in held_out.items():
        if not len(reviewed):
            break
        distance = torch.cdist(_thumbs(images), _thumbs(data.images), p=1) / _COMPARE_SIDE ** 2
        nearest, index = distance.min(dim=1)
        for i in torch.nonzero(nearest < SAME_FILM_DISTANCE).flatten().tolist():
            if keep[i]:
                keep[i] = False
                left_out[reviewed[i].review_id] = f"the same film as {split} image {data.names[int(index[i])]}"
    used = [r for r, k in zip(reviewed, keep.tolist()) if k]
    if not used:
        reasons = "; ".join(f"review {i}: {why}" for i, why in sorted(left_out.items())[:5]) or "no reviews"
        raise DatasetError(f"none of the selected reviews can be used for training ({reasons})")
    label_index = torch.tensor([splits.label_names.index(r.label) for r in used])
    review_set = ImageSet(images[keep], label_index, [f"review {r.review_id} (case {r.case_id})" for r in used])
    base = splits.sets["train"]
    splits.sets["train"] = ImageSet(torch.cat([base.images, review_set.images]), torch.cat([base.labels, label_index]),
                                    base.names + review_set.names) if with_base_train else review_set
    return {"used": [r.review_id for r in used], "cases": [r.case_id for r in used],
            "labels": {r.review_id: r.label for r in used},
            "reviewers": {name: sum(r.reviewer == name for r in used) for name in sorted({r.reviewer for r in used})},
            "left_out": {str(k): v for k, v in sorted(left_out.items())}, "with_base_train": with_base_train}
