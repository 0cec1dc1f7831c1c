"""The `catpot weights` demo: its tables hold the closed forms and the figure is written."""

from fractions import Fraction

from recipes.weight_tables import TABLE_PS, main, weight_tables


def _passn_sft_exact(p: Fraction, n: int) -> Fraction:
    return n * p * (1 - p) ** (n - 1) / (1 - (1 - p) ** n)


def test_tables_hold_the_pass_at_n_sft_weights():
    sft = weight_tables(ns=(1, 4, 16))[0]
    columns = [list(col.cells) for col in sft.columns]
    assert columns[0] == [f"{p:g}" for p in TABLE_PS]
    for j, n in enumerate((1, 4, 16), start=1):
        for i, p in enumerate(TABLE_PS):
            expected = float(_passn_sft_exact(Fraction(p), n))
            assert float(columns[j][i]) == float(f"{expected:.4g}")


def test_main_writes_the_figure(tmp_path):
    out = main(tmp_path / "weights.png", ns=(1, 4))
    assert out.exists() and out.stat().st_size > 10_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
