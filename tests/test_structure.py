"""The package's shape: small modules, stages that meet only in manifests. (The layers and the
absence of import cycles are import-linter's contracts, run by `make test` before pytest.)"""

from pathlib import Path

from mortgagellm import manifest, stages

PACKAGE = Path(manifest.__file__).resolve().parent
MAX_LINES = 450


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_stage_imports_another_stage_or_the_runner():
    for stage in (*stages.STAGES, "report"):
        imported = manifest._closure(f"mortgagellm.pipelines.{stage}")
        others = {m for m in imported if m.startswith("mortgagellm.pipelines.")}
        assert others == {f"mortgagellm.pipelines.{stage}"}, (stage, others)
