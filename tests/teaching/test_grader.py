"""The autograder passes a correct solution and names each typical mistake in words."""

from pathlib import Path

import pytest

from minidl.cli import main
from minidl.teaching import grader

SOLUTION = (Path(__file__).parent / "student_solution.py").read_text()


def grade_text(tmp_path, text):
    path = tmp_path / "my_layers.py"
    path.write_text(text)
    return grader.grade_file(str(path), print_fn=lambda line: None)


def failures(results):
    return [finding for findings in results.values() for finding in findings if not finding.passed]


def test_a_correct_solution_passes_everything(tmp_path):
    results = grade_text(tmp_path, SOLUTION)
    assert sorted(results) == sorted(grader.EXERCISES) and failures(results) == []


MISTAKES = [
    ("self.db = grad_out.sum(axis=0)", "self.db = grad_out.mean(axis=0)", "Dense", "db", "4 times too small"),
    ("self.dW = self.x.T @ grad_out", "self.dW = grad_out.T @ self.x", "Dense", "dW", "the transpose"),
    ("return grad_out * (self.x > 0)", "return grad_out * (self.x > 0) * 2", "ReLU", "dx", "twice too large"),
    ("self.db = grad_out.sum(axis=(0, 1, 2))", "self.db = grad_out.sum(axis=(1, 2))", "Conv2D", "db",
     "has shape (2, 3), expected (3,)"),
    ("grad_in[:, i:i + kh, j:j + kw, :] +=", "grad_in[:, i:i + kh, j:j + kw, :] =", "Conv2D", "dx",
     "overlapping windows add up"),
    ("shifted = logits - logits.max(axis=1, keepdims=True)", "shifted = logits", "SoftmaxCrossEntropy",
     "stability", "subtract each row's max"),
    ("return (self.probs - self.targets) / len(self.targets)", "return self.probs - self.targets",
     "SoftmaxCrossEntropy", "dz", "4 times too large"),
    ("return x @ self.W + self.b", "return x @ self.W", "Dense", "forward", "differs from minidl's"),
    ("return float(-(targets * log_probs).sum(axis=1).mean())", "return -(targets * log_probs).sum(axis=1)",
     "SoftmaxCrossEntropy", "forward", "returns shape (4,), expected ()"),
    ("np.put_along_axis(routed, self.argmax[..., None], grad_out[..., None], axis=-1)",
     "routed[:] = grad_out[..., None] * (windows_max_mask := 1)", "MaxPooling2D", "dx", "maximum"),
]


@pytest.mark.parametrize("right, wrong, exercise, part, words", MISTAKES, ids=[m[1][:30] for m in MISTAKES])
def test_each_typical_mistake_is_named(tmp_path, right, wrong, exercise, part, words):
    assert right in SOLUTION
    wrong_findings = failures(grade_text(tmp_path, SOLUTION.replace(right, wrong)))
    assert [(f.exercise, f.part) for f in wrong_findings] == [(exercise, part)]
    assert words in wrong_findings[0].message


def test_an_unwritten_method_and_an_exception_are_reported_not_raised(tmp_path):
    text = SOLUTION.replace("return np.maximum(x, 0)", "raise NotImplementedError").replace(
        "return x @ self.W + self.b", "return x @ self.Q")
    found = {f.exercise: f for f in failures(grade_text(tmp_path, text))}
    assert "not written yet" in found["ReLU"].message
    assert "AttributeError" in found["Dense"].message and "line" in found["Dense"].message


def test_bad_files_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        grader.grade_file(str(tmp_path / "missing.py"))
    (tmp_path / "broken.py").write_text("def (")
    with pytest.raises(ValueError, match="broken.py does not import: SyntaxError"):
        grader.grade_file(str(tmp_path / "broken.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="none of the exercise classes"):
        grader.grade_file(str(tmp_path / "empty.py"))


def test_the_command_writes_the_scaffold_then_grades_it(tmp_path, capsys):
    path = str(tmp_path / "mine.py")
    assert main(["grade", "--new", path]) == 0
    assert main(["grade", "--new", path]) == 1  # never overwrites
    assert main(["grade", path]) == 1
    assert "not written yet" in capsys.readouterr().out
    Path(path).write_text(SOLUTION)
    assert main(["grade", path]) == 0
