"""The task data generators of benchmarks/tasks (issue 23's evidence): their truth is checkable."""

import numpy as np

from benchmarks.tasks import files, text_pages


def test_pages_boxes_are_the_ink_and_the_scorer_matches_them():
    pages = text_pages.render(6, seed=3)
    for image, boxes in zip(pages.images, pages.boxes, strict=True):
        assert 1 <= len(boxes) <= 7
        ink = np.asarray(image.convert("L"), np.float32) < 120
        for x0, y0, x1, y1 in boxes:
            assert ink[y0:y1, x0:x1].any()  # dark text inside every true box
        outside = ink.copy()
        for x0, y0, x1, y1 in boxes:
            outside[max(0, y0 - 3) : y1 + 3, max(0, x0 - 3) : x1 + 3] = False
        assert outside.mean() < 0.001  # and none outside them
    truth = pages.boxes
    assert text_pages.f_score(truth, truth) == 1.0
    shifted = [[(x0, y1, x1, 2 * y1 - y0) for x0, y0, x1, y1 in b] for b in truth]  # one line lower: no overlap
    assert text_pages.f_score(shifted, truth) == 0.0
    prob = np.zeros((64, 64), np.float32)
    prob[10:20, 5:40] = 0.9  # one region: one box, grown by the unclip distance
    (box,) = text_pages.db_boxes(prob)
    assert box[0] < 5 and box[1] < 10 and box[2] > 40 and box[3] > 20


def test_magika_bytes_are_the_stripped_head_and_tail(tmp_path):
    p = tmp_path / "a.py"
    p.write_bytes(b"\n\n  " + b"x" * 5000 + b"end\n\n")
    v = files.magika_bytes(p)
    assert v.shape == (2048,) and v.dtype == np.int32
    assert bytes(v[:4].astype(np.uint8)) == b"xxxx" and bytes(v[-3:].astype(np.uint8)) == b"end"
    q = tmp_path / "b.py"
    q.write_bytes(b"short")
    w = files.magika_bytes(q)
    assert bytes(w[:5].astype(np.uint8)) == b"short" and (w[5:1024] == 256).all()
    assert bytes(w[-5:].astype(np.uint8)) == b"short" and (w[1024:-5] == 256).all()
    found = files.collect(per_type=3, seed=0, roots=[str(tmp_path)])
    assert found.paths == [p] and found.types == ["python"]  # b.py is under 64 bytes: left out
    assert files.EXTENSIONS[p.suffix] == "python"
