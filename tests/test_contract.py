"""exports.contract: the one check of a graph's inputs and outputs, and its torch-freedom."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from exports.contract import Port, Signature, signature_problems

REPO = Path(__file__).resolve().parents[1]
GOOD_IN = Port("input", "float32", ("batch", 3, 200, 200))
GOOD_OUT = Port("logits", "float32", ("batch", 6))
STRICT = Signature(input_dims=(3, 200, 200), num_classes=6)


def test_the_exporters_graph_keeps_the_contract():
    assert signature_problems([GOOD_IN], [GOOD_OUT], STRICT) == []


def test_every_problem_is_collected_names_first():
    bad_in = Port("images", "float16", (1, 3, 224, 224))
    bad_out = Port("out", "float32", (1, 21))
    problems = signature_problems([bad_in], [bad_out], STRICT)
    assert problems[0].startswith("graph inputs are ['images']")
    assert problems[1].startswith("graph outputs are ['out']")
    assert any("input type float16" in p for p in problems)
    assert any("input shape [1, 3, 224, 224]" in p for p in problems)
    assert any("21 outputs but the metadata lists 6 classes" in p for p in problems)
    assert len(problems) == 6, problems  # names x2, input dtype + shape, output batch + classes


def test_a_loaded_file_may_have_a_fixed_batch_but_not_another_class_count():
    fixed_in = Port("input", "float32", (1, 3, 200, 200))
    fixed_out = Port("logits", "float32", (1, 6))
    loose = Signature(input_dims=(3, 200, 200), num_classes=6, strict=False)
    assert signature_problems([fixed_in], [fixed_out], loose) == []
    assert len(signature_problems([fixed_in], [fixed_out], STRICT)) == 2  # both batch axes
    wrong = Port("logits", "float32", (1, 5))
    assert signature_problems([fixed_in], [wrong], loose) == [
        "the model has 5 outputs but the metadata lists 6 classes"
    ]


def test_the_contract_imports_without_torch_or_onnx():
    code = (
        "import sys; sys.modules.update(torch=None, onnx=None, onnxruntime=None); "
        "import exports.contract"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
